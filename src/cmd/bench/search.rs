//! `millstream bench search --docs N`: knowledge search latency per query (embedding the query
//! included) at 1 and 16 concurrent callers over an index of N documents, indexing throughput,
//! and peak RSS.
//!
//! The index of N documents is built from the simulator's corpus (SOPs, incident reports,
//! proposals, tickets: about 4,800 documents at the default settings), repeated under new ids
//! until it holds N. Embedding is the slow part of indexing (a few chunks per second per core
//! here), so the corpus is embedded once per lakehouse (`knowledge.chunks` keeps the vectors;
//! pass `--lakehouse` to reuse them) and its repetitions reuse those vectors by content hash,
//! exactly as the index does for any unchanged text. Both throughputs are reported: embedding
//! (when there was anything to embed) and indexing (vectors and BM25 postings).
//!
//! Every document is visible to the benchmark's caller: the per-caller visibility query of the
//! MCP tool is not part of these figures (`bench mcp` measures tool calls end to end).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::Config;
use crate::knowledge::SearchRequest;
use crate::knowledge::index::{Index, Mode, embedded_text};

pub async fn run(config: Config, docs: usize, seconds: u64, k: usize) -> anyhow::Result<()> {
    let lake = crate::lakehouse::Lakehouse::from_config(&config.lakehouse)?;
    let corpus = crate::cmd::eval::write_corpus(&lake, &config).await?;
    let (knowledge, synced) =
        crate::cmd::eval::indexed(lake, &config.knowledge, "bench search").await?;
    let embedding = json!({
        "chunks": synced.embedded,
        "seconds": round(synced.seconds),
        "chunks_per_s": (synced.embedded > 0).then(|| round(synced.embedded as f64 / synced.seconds)),
    });
    let base = knowledge.export().await;
    anyhow::ensure!(!base.is_empty(), "the corpus has no documents");

    eprintln!("bench search: indexing {docs} documents");
    let started = Instant::now();
    let mut index = Index::new()?;
    let mut chunks = 0;
    for i in 0..docs {
        let (doc, base_chunks) = &base[i % base.len()];
        let mut doc = doc.clone();
        if i >= base.len() {
            doc.doc_id = format!("{}~{}", doc.doc_id, i / base.len());
        }
        let copy = base_chunks
            .iter()
            .map(|c| crate::knowledge::index::IndexedChunk {
                no: c.no,
                text: c.text.clone(),
                hash: c.hash,
                vector: c.vector,
            })
            .collect::<Vec<_>>();
        chunks += copy.len();
        index.upsert(doc, copy)?;
    }
    index.commit()?;
    let index_seconds = started.elapsed().as_secs_f64();
    let index = Arc::new(index);
    let questions: Arc<Vec<String>> =
        Arc::new(corpus.questions.iter().map(|q| q.query.clone()).collect());

    let mut latency = serde_json::Map::new();
    for callers in [1usize, 16] {
        eprintln!("bench search: {callers} caller(s) for {seconds}s");
        let until = Instant::now() + Duration::from_secs(seconds);
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let (index, questions, next) = (index.clone(), questions.clone(), next.clone());
            let embedder = knowledge.embedder().clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                let mut took = Vec::new();
                while Instant::now() < until {
                    let q = &questions[next.fetch_add(1, Ordering::Relaxed) % questions.len()];
                    let t = Instant::now();
                    let request = SearchRequest::new(q.clone(), k);
                    let vector = embedder.embed_one(&embedded_text(q, Mode::Hybrid))?;
                    let mask = index.mask(|d| request.accepts(d));
                    index.search(q, &vector, &mask, k, Mode::Hybrid)?;
                    took.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                Ok::<_, crate::Error>(took)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        let qps = all.len() as f64 / seconds as f64;
        let mut p = super::percentiles(all);
        p["queries_per_s"] = json!(round(qps));
        latency.insert(callers.to_string(), p);
    }
    let report = json!({
        "bench": "search",
        "documents": docs,
        "chunks": chunks,
        "corpus_documents": base.len(),
        "k": k,
        "embedding": embedding,
        "indexing": {
            "seconds": round(index_seconds),
            "chunks_per_s": round(chunks as f64 / index_seconds),
        },
        "latency_by_callers": latency,
        "peak_rss_mb": super::peak_rss_mb(),
    });
    println!("{report}");
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
