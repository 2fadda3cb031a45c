//! Knowledge search: hybrid semantic + keyword retrieval over standard operating procedures,
//! incident reports, sales proposals and support tickets.
//!
//! ```text
//! knowledge.sops / .incidents / .proposals / support.tickets   (Delta, CDF on)
//!        │  each new table version: the documents that changed   (sync)
//!        ▼
//!   chunk (overlapping words) ──► embed (candle, all-MiniLM-L6-v2) ──► knowledge.chunks (Delta)
//!        │                                  ▲ a stored chunk with the same text is reused
//!        ▼
//!   Index: exact vectors + BM25 (tantivy), fused by reciprocal rank
//!        ▲
//!   search(query, visible documents)   ◄── the caller's governed session says which documents
//!                                          it may read (row filters), before any ranking
//! ```
//!
//! The index never decides who sees what: the caller's own DataFusion session (with its row
//! filters) lists the document ids it can read, and only those are ranked ([`index`]).

pub mod chunk;
pub mod embed;
pub mod index;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::{Float32Type, TimestampMicrosecondType};
use chrono::{DateTime, Utc};
use deltalake::protocol::SaveMode;
use tokio::sync::RwLock;

pub use embed::Embedder;
pub use index::{DocMeta, Hit, Links, Mode};

use crate::config::KnowledgeConfig;
use crate::lakehouse::Lakehouse;
use crate::{Error, Result};

/// The tables whose rows are searchable documents, with the kind each holds.
pub const SOURCES: [(&str, &str); 4] = [
    ("knowledge.sops", "sop"),
    ("knowledge.incidents", "incident"),
    ("knowledge.proposals", "proposal"),
    ("support.tickets", "ticket"),
];

/// Where embedded chunks are kept.
pub const CHUNKS: &str = "knowledge.chunks";

/// The kinds a search can ask for.
pub const KINDS: [&str; 4] = ["sop", "incident", "proposal", "ticket"];

/// What one sync did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SyncStats {
    pub documents: usize,
    pub chunks: usize,
    pub upserted: usize,
    pub removed: usize,
    /// Chunks whose vector came from `knowledge.chunks`.
    pub reused: usize,
    /// Chunks embedded now (and appended to `knowledge.chunks`).
    pub embedded: usize,
    pub seconds: f64,
}

/// The knowledge service: the model, the index and the table versions it reflects.
pub struct Knowledge {
    lake: Lakehouse,
    cfg: KnowledgeConfig,
    embedder: Embedder,
    index: RwLock<index::Index>,
    /// Source table → version the index reflects.
    versions: std::sync::Mutex<BTreeMap<&'static str, i64>>,
    /// One sync at a time.
    syncing: tokio::sync::Mutex<()>,
}

/// Vectors by chunk-text hash.
type Vectors = HashMap<u64, [f32; embed::DIM]>;

impl std::fmt::Debug for Knowledge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Knowledge").finish_non_exhaustive()
    }
}

impl Knowledge {
    /// Loads the model (an error naming `knowledge.model_dir` when it is absent); the index
    /// starts empty: [`Self::sync`] fills it.
    pub fn open(lake: Lakehouse, cfg: &KnowledgeConfig) -> Result<Arc<Knowledge>> {
        let embedder = Embedder::load(&cfg.model_dir)?;
        Ok(Arc::new(Knowledge {
            lake,
            cfg: cfg.clone(),
            embedder,
            index: RwLock::new(index::Index::new()?),
            versions: Default::default(),
            syncing: Default::default(),
        }))
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Every indexed document id (what an unrestricted caller may see).
    pub async fn document_ids(&self) -> HashSet<String> {
        self.index
            .read()
            .await
            .document_ids()
            .map(str::to_string)
            .collect()
    }

    /// The version of each source table the index reflects.
    pub fn versions(&self) -> BTreeMap<&'static str, i64> {
        self.versions.lock().expect("poisoned").clone()
    }

    /// Brings the index up to the latest version of every source table: new and changed
    /// documents are chunked and embedded (or their stored vectors reused), removed ones
    /// disappear. Tables at the version already reflected are skipped.
    pub async fn sync(&self) -> Result<SyncStats> {
        let _one = self.syncing.lock().await;
        let started = Instant::now();
        let mut stats = SyncStats::default();
        // A fresh index (a start) takes the vectors stored by earlier runs; later syncs find an
        // unchanged chunk's vector in the index itself.
        let mut stored = if self.index.read().await.documents() == 0 {
            self.load_stored().await?
        } else {
            Vectors::new()
        };
        for (table, kind) in SOURCES {
            if !self.lake.exists(table).await? {
                continue;
            }
            // One snapshot per table: the documents read are those of the version recorded.
            let snapshot = self.lake.open(table).await?;
            let version = snapshot.version().map_or(-1, |v| v as i64);
            if self.versions().get(table) == Some(&version) {
                continue;
            }
            let docs = read_documents(&snapshot, table, kind).await?;
            self.apply(table, docs, &mut stored, &mut stats).await?;
            self.versions
                .lock()
                .expect("poisoned")
                .insert(table, version);
        }
        let index = self.index.read().await;
        stats.documents = index.documents();
        stats.chunks = index.chunks();
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Brings the index's documents of `table` to `docs`.
    async fn apply(
        &self,
        table: &'static str,
        docs: Vec<(DocMeta, String)>,
        stored: &mut Vectors,
        stats: &mut SyncStats,
    ) -> Result<()> {
        // What changed against the index: chunked, each chunk with its text hash.
        let (pending, gone) = {
            let index = self.index.read().await;
            let now: HashSet<&str> = docs.iter().map(|(d, _)| d.doc_id.as_str()).collect();
            let pending: Vec<(DocMeta, Vec<(chunk::Chunk, u64)>)> = docs
                .iter()
                .filter(|(d, _)| {
                    index.get(&d.doc_id).map(|i| i.content_hash) != Some(d.content_hash)
                })
                .map(|(d, body)| {
                    let chunks =
                        chunk::chunks(&d.title, body, self.cfg.chunk_words, self.cfg.chunk_overlap)
                            .into_iter()
                            .map(|c| {
                                let h = crate::model::stable_hash(&[&c.text]);
                                (c, h)
                            })
                            .collect();
                    (d.clone(), chunks)
                })
                .collect();
            let gone: Vec<String> = index
                .documents_of(table)
                .filter(|id| !now.contains(id))
                .map(str::to_string)
                .collect();
            // Vectors of unchanged chunks of changed documents are in the index already.
            for (_, chunks) in &pending {
                for (_, h) in chunks {
                    if let Some(v) = index.vector(*h) {
                        stored.entry(*h).or_insert(v);
                    }
                }
            }
            (pending, gone)
        };
        self.embed_missing(table, &pending, stored, stats).await?;
        let mut index = self.index.write().await;
        for (doc, chunks) in pending {
            let indexed = chunks
                .into_iter()
                .map(|(c, hash)| index::IndexedChunk {
                    vector: stored[&hash],
                    hash,
                    no: c.no,
                    text: c.text,
                })
                .collect();
            index.upsert(doc, indexed)?;
            stats.upserted += 1;
        }
        for id in gone {
            index.remove(&id);
            stats.removed += 1;
        }
        index.commit()?;
        Ok(())
    }

    /// Embeds the chunks of `pending` that `known` has no vector for, in batches off the async
    /// threads; appends them to `knowledge.chunks` and adds them to `known`.
    async fn embed_missing(
        &self,
        table: &'static str,
        pending: &[(DocMeta, Vec<(chunk::Chunk, u64)>)],
        known: &mut Vectors,
        stats: &mut SyncStats,
    ) -> Result<()> {
        let mut missing: Vec<(&DocMeta, &chunk::Chunk, u64)> = Vec::new();
        let mut queued = HashSet::new();
        for (doc, chunks) in pending {
            for (c, h) in chunks {
                if known.contains_key(h) {
                    stats.reused += 1;
                } else if queued.insert(*h) {
                    missing.push((doc, c, *h));
                }
            }
        }
        let size = self.cfg.embed_batch.max(1);
        // Several forward passes per Delta commit, so the commits stay few.
        for batch in missing.chunks(size * 8) {
            let texts: Vec<String> = batch.iter().map(|(_, c, _)| c.text.clone()).collect();
            let embedder = self.embedder.clone();
            let vectors = tokio::task::spawn_blocking(move || {
                let mut all = Vec::with_capacity(texts.len());
                for group in texts.chunks(size) {
                    let refs: Vec<&str> = group.iter().map(String::as_str).collect();
                    all.extend(embedder.embed(&refs)?);
                }
                Ok::<_, Error>(all)
            })
            .await
            .map_err(|e| Error::Internal(format!("embedding task: {e}")))??;
            let now = Utc::now();
            let rows: Vec<ChunkRow> = batch
                .iter()
                .zip(&vectors)
                .map(|((d, c, h), v)| ChunkRow {
                    chunk_id: format!("{}#{}", d.doc_id, c.no),
                    doc_id: &d.doc_id,
                    source: table,
                    chunk_no: c.no,
                    text: &c.text,
                    content_hash: format!("{h:016x}"),
                    model: embed::MODEL_ID,
                    vector: v,
                    embedded_at: now,
                })
                .collect();
            self.lake
                .ensure(CHUNKS)
                .await?
                .write(vec![crate::lakehouse::rows_batch(CHUNKS, &rows)?])
                .with_save_mode(SaveMode::Append)
                .await
                .map_err(|e| Error::delta(CHUNKS, e))?;
            for ((_, _, h), v) in batch.iter().zip(vectors) {
                known.insert(*h, v);
                stats.embedded += 1;
            }
        }
        Ok(())
    }

    /// Every vector of this model stored in `knowledge.chunks`, by chunk-text hash.
    async fn load_stored(&self) -> Result<Vectors> {
        let mut out = Vectors::new();
        if !self.lake.exists(CHUNKS).await? {
            return Ok(out);
        }
        let batches = self
            .lake
            .sql(&format!(
                "SELECT content_hash, vector FROM {CHUNKS} WHERE model = '{}'",
                embed::MODEL_ID
            ))
            .await?;
        for b in &batches {
            let hashes = crate::lakehouse::query::strings(b, "content_hash")?;
            let lists = b.column(1).as_list::<i32>();
            for row in 0..b.num_rows() {
                let values = lists.value(row);
                let floats = values.as_primitive::<Float32Type>();
                let (Ok(h), Ok(v)) = (
                    u64::from_str_radix(hashes.value(row), 16),
                    <[f32; embed::DIM]>::try_from(floats.values().as_ref()),
                ) else {
                    continue;
                };
                out.insert(h, v);
            }
        }
        Ok(out)
    }

    /// The `k` best documents for `request` among those `visible` (document ids the caller's
    /// governed session returned), embedding the query first.
    pub async fn search(
        &self,
        request: &SearchRequest,
        visible: &HashSet<String>,
    ) -> Result<Vec<Hit>> {
        request.check()?;
        let text = request.query.clone();
        let embedder = self.embedder.clone();
        let vector = tokio::task::spawn_blocking(move || embedder.embed(&[&text]))
            .await
            .map_err(|e| Error::Internal(format!("embedding task: {e}")))??
            .pop()
            .ok_or_else(|| Error::Internal("no query vector".into()))?;
        let index = self.index.read().await;
        let mask = index.mask(|d| visible.contains(&d.doc_id) && request.accepts(d));
        index.search(&request.query, &vector, &mask, request.k, request.mode)
    }
}

/// One row of `knowledge.chunks`.
#[derive(serde::Serialize)]
struct ChunkRow<'a> {
    chunk_id: String,
    doc_id: &'a str,
    source: &'a str,
    chunk_no: i32,
    text: &'a str,
    content_hash: String,
    model: &'a str,
    vector: &'a [f32],
    embedded_at: DateTime<Utc>,
}

/// The documents of one source table's snapshot, with their body text.
async fn read_documents(
    snapshot: &deltalake::DeltaTable,
    table: &'static str,
    kind: &'static str,
) -> Result<Vec<(DocMeta, String)>> {
    let sql = if table == "support.tickets" {
        "SELECT ticket_id AS doc_id, subject AS title, \
         concat(description, CASE WHEN resolution IS NULL THEN '' ELSE concat('\n\nResolution: ', resolution) END) AS body, \
         CAST(NULL AS VARCHAR) AS plant_id, CAST(NULL AS VARCHAR) AS warehouse_id, customer_id, \
         CAST(NULL AS VARCHAR) AS machine_id, CAST(NULL AS VARCHAR) AS machine_type, \
         CAST(NULL AS VARCHAR) AS sensor_type, CAST(NULL AS VARCHAR) AS part_id, \
         CAST(NULL AS VARCHAR) AS supplier_id, updated_at FROM t"
    } else {
        "SELECT doc_id, title, body, plant_id, warehouse_id, customer_id, machine_id, \
         machine_type, sensor_type, part_id, supplier_id, updated_at FROM t"
    };
    let mut out = Vec::new();
    for b in &crate::lakehouse::query::snapshot_sql(snapshot, sql).await? {
        let column = |name: &str| crate::lakehouse::query::strings(b, name);
        let (id, title, body) = (column("doc_id")?, column("title")?, column("body")?);
        let links: Vec<StringArray> = LINK_COLUMNS
            .iter()
            .map(|c| column(c))
            .collect::<Result<_>>()?;
        let at = b
            .column_by_name("updated_at")
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .ok_or_else(|| Error::Internal(format!("{table}: updated_at is not a timestamp")))?;
        for row in 0..b.num_rows() {
            let link = |i: usize| {
                links[i]
                    .is_valid(row)
                    .then(|| links[i].value(row).to_string())
            };
            let (title, body) = (title.value(row).to_string(), body.value(row).to_string());
            let doc = DocMeta {
                doc_id: id.value(row).to_string(),
                source: table,
                kind,
                content_hash: crate::model::stable_hash(&[&title, &body]),
                title,
                links: Links {
                    plant_id: link(0),
                    warehouse_id: link(1),
                    customer_id: link(2),
                    machine_id: link(3),
                    machine_type: link(4),
                    sensor_type: link(5),
                    part_id: link(6),
                    supplier_id: link(7),
                },
                updated_at: DateTime::from_timestamp_micros(at.value(row)).unwrap_or_default(),
            };
            out.push((doc, body));
        }
    }
    Ok(out)
}

/// The entity columns of a document table, in [`Links`]' order.
const LINK_COLUMNS: [&str; 8] = [
    "plant_id",
    "warehouse_id",
    "customer_id",
    "machine_id",
    "machine_type",
    "sensor_type",
    "part_id",
    "supplier_id",
];

/// A search: the query, how many documents, and filters by kind, linked entity and time.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SearchRequest {
    pub query: String,
    pub k: usize,
    pub kinds: Vec<String>,
    pub links: Links,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub mode: Mode,
}

/// Longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 1000;
pub const MAX_K: usize = 50;

impl SearchRequest {
    pub fn new(query: impl Into<String>, k: usize) -> SearchRequest {
        SearchRequest {
            query: query.into(),
            k,
            kinds: Vec::new(),
            links: Links::default(),
            since: None,
            until: None,
            mode: Mode::Hybrid,
        }
    }

    /// Refuses what cannot be searched, naming the argument.
    pub fn check(&self) -> Result<()> {
        let chars = self.query.chars().count();
        if self.query.trim().is_empty() || chars > MAX_QUERY_CHARS {
            return Err(Error::Invalid(format!(
                "query: give 1..={MAX_QUERY_CHARS} characters (got {chars})"
            )));
        }
        if !(1..=MAX_K).contains(&self.k) {
            return Err(Error::Invalid(format!(
                "k {} is outside 1..={MAX_K}",
                self.k
            )));
        }
        if let Some(bad) = self.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
            return Err(Error::Invalid(format!(
                "kinds: {bad:?} is not one of {}",
                KINDS.join(", ")
            )));
        }
        Ok(())
    }

    /// Whether a document passes the kind, entity and time filters.
    pub fn accepts(&self, d: &DocMeta) -> bool {
        let same = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        let l = &self.links;
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == d.kind))
            && same(&l.plant_id, &d.links.plant_id)
            && same(&l.warehouse_id, &d.links.warehouse_id)
            && same(&l.customer_id, &d.links.customer_id)
            && same(&l.machine_id, &d.links.machine_id)
            && same(&l.machine_type, &d.links.machine_type)
            && same(&l.sensor_type, &d.links.sensor_type)
            && same(&l.part_id, &d.links.part_id)
            && same(&l.supplier_id, &d.links.supplier_id)
            && self.since.is_none_or(|t| d.updated_at >= t)
            && self.until.is_none_or(|t| d.updated_at < t)
    }
}
