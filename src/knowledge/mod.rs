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

use arrow::array::{
    Array, AsArray, Float32Builder, Int32Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Float32Type, TimestampMicrosecondType};
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
    /// Vectors already in `knowledge.chunks`, by chunk-text hash (loaded once, then kept).
    stored: tokio::sync::Mutex<Option<HashMap<u64, [f32; embed::DIM]>>>,
}

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
            stored: Default::default(),
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
            .hashes()
            .map(|(id, _)| id.to_string())
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
        let started = Instant::now();
        let mut stats = SyncStats::default();
        for (table, kind) in SOURCES {
            if !self.lake.exists(table).await? {
                continue;
            }
            let version = self
                .lake
                .open(table)
                .await?
                .version()
                .map_or(-1, |v| v as i64);
            if self.versions().get(table) == Some(&version) {
                continue;
            }
            let docs = self.read_documents(table, kind).await?;
            self.apply(table, docs, &mut stats).await?;
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

    async fn read_documents(
        &self,
        table: &'static str,
        kind: &'static str,
    ) -> Result<Vec<(DocMeta, String)>> {
        let sql = if table == "support.tickets" {
            "SELECT ticket_id AS doc_id, subject AS title, \
             concat(description, CASE WHEN resolution IS NULL THEN '' ELSE concat('\n\nResolution: ', resolution) END) AS body, \
             CAST(NULL AS VARCHAR) AS plant_id, CAST(NULL AS VARCHAR) AS warehouse_id, customer_id, \
             CAST(NULL AS VARCHAR) AS machine_id, CAST(NULL AS VARCHAR) AS machine_type, \
             CAST(NULL AS VARCHAR) AS sensor_type, CAST(NULL AS VARCHAR) AS part_id, \
             CAST(NULL AS VARCHAR) AS supplier_id, updated_at FROM support.tickets"
                .to_string()
        } else {
            format!(
                "SELECT doc_id, title, body, plant_id, warehouse_id, customer_id, machine_id, \
                 machine_type, sensor_type, part_id, supplier_id, updated_at FROM {table}"
            )
        };
        let batches = self.lake.sql(&sql).await?;
        let mut out = Vec::new();
        for b in &batches {
            // Strings may come as Utf8View (DataFusion's scan) or Utf8: read them as Utf8.
            let s = |i: usize| {
                arrow::compute::cast(b.column(i), &DataType::Utf8)
                    .ok()
                    .and_then(|c| c.as_string_opt::<i32>().cloned())
            };
            let cols: Vec<_> = (0..11).map(s).collect();
            let col = |i: usize, row: usize| -> Option<String> {
                cols[i]
                    .as_ref()
                    .filter(|c| c.is_valid(row))
                    .map(|c| c.value(row).to_string())
            };
            let at = b
                .column(11)
                .as_primitive_opt::<TimestampMicrosecondType>()
                .cloned()
                .ok_or_else(|| {
                    Error::Internal(format!("{table}: updated_at is not a timestamp"))
                })?;
            for row in 0..b.num_rows() {
                let title = col(1, row).unwrap_or_default();
                let body = col(2, row).unwrap_or_default();
                let doc = DocMeta {
                    doc_id: col(0, row).unwrap_or_default(),
                    source: table,
                    kind,
                    content_hash: hash(&[&title, &body]),
                    title,
                    links: Links {
                        plant_id: col(3, row),
                        warehouse_id: col(4, row),
                        customer_id: col(5, row),
                        machine_id: col(6, row),
                        machine_type: col(7, row),
                        sensor_type: col(8, row),
                        part_id: col(9, row),
                        supplier_id: col(10, row),
                    },
                    updated_at: DateTime::from_timestamp_micros(at.value(row)).unwrap_or_default(),
                };
                out.push((doc, body));
            }
        }
        Ok(out)
    }

    async fn apply(
        &self,
        table: &'static str,
        docs: Vec<(DocMeta, String)>,
        stats: &mut SyncStats,
    ) -> Result<()> {
        // What changed against the index.
        let (changed, gone) = {
            let index = self.index.read().await;
            let now: HashSet<&str> = docs.iter().map(|(d, _)| d.doc_id.as_str()).collect();
            let known: HashMap<&str, u64> = index.hashes().collect();
            let changed: Vec<&(DocMeta, String)> = docs
                .iter()
                .filter(|(d, _)| known.get(d.doc_id.as_str()) != Some(&d.content_hash))
                .collect();
            let gone: Vec<String> = index
                .hashes()
                .filter(|(id, _)| !now.contains(id))
                .filter(|(id, _)| index.get(id).is_some_and(|d| d.source == table))
                .map(|(id, _)| id.to_string())
                .collect();
            (changed, gone)
        };
        // Chunk, then find or compute every chunk's vector.
        let mut pending: Vec<(DocMeta, Vec<chunk::Chunk>)> = changed
            .iter()
            .map(|(d, body)| {
                (
                    d.clone(),
                    chunk::chunks(&d.title, body, self.cfg.chunk_words, self.cfg.chunk_overlap),
                )
            })
            .collect();
        let vectors = self.vectors_for(table, &mut pending, stats).await?;
        let mut index = self.index.write().await;
        for (doc, chunks) in pending {
            let indexed = chunks
                .into_iter()
                .map(|c| index::IndexedChunk {
                    vector: vectors[&hash(&[&c.text])],
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

    /// Vectors for every chunk of `pending`: stored ones reused, the rest embedded in batches
    /// (off the async threads) and appended to `knowledge.chunks`.
    async fn vectors_for(
        &self,
        table: &'static str,
        pending: &mut [(DocMeta, Vec<chunk::Chunk>)],
        stats: &mut SyncStats,
    ) -> Result<HashMap<u64, [f32; embed::DIM]>> {
        let mut stored = self.stored.lock().await;
        if stored.is_none() {
            *stored = Some(self.load_stored().await?);
        }
        let stored = stored.as_mut().expect("loaded above");
        let mut out = HashMap::new();
        let mut missing: Vec<(&DocMeta, &chunk::Chunk, u64)> = Vec::new();
        let mut queued = HashSet::new();
        for (doc, chunks) in pending.iter() {
            for c in chunks {
                let h = hash(&[&c.text]);
                if let Some(v) = stored.get(&h) {
                    out.insert(h, *v);
                    stats.reused += 1;
                } else if queued.insert(h) {
                    missing.push((doc, c, h));
                }
            }
        }
        for batch in missing.chunks(self.cfg.embed_batch.max(1) * 8) {
            let texts: Vec<String> = batch.iter().map(|(_, c, _)| c.text.clone()).collect();
            let embedder = self.embedder.clone();
            let size = self.cfg.embed_batch.max(1);
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
            let rows: Vec<(&DocMeta, &chunk::Chunk, u64, [f32; embed::DIM])> = batch
                .iter()
                .zip(vectors)
                .map(|((d, c, h), v)| (*d, *c, *h, v))
                .collect();
            self.store(table, &rows).await?;
            for (_, _, h, v) in rows {
                stored.insert(h, v);
                out.insert(h, v);
                stats.embedded += 1;
            }
        }
        Ok(out)
    }

    /// Every stored vector of this model, by chunk-text hash.
    async fn load_stored(&self) -> Result<HashMap<u64, [f32; embed::DIM]>> {
        let mut out = HashMap::new();
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
            let hashes = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
            let hashes = hashes.as_string::<i32>();
            let lists = b.column(1).as_list::<i32>();
            for row in 0..b.num_rows() {
                let values = lists.value(row);
                let floats = values.as_primitive::<Float32Type>();
                let (Ok(h), true) = (
                    u64::from_str_radix(hashes.value(row), 16),
                    floats.len() == embed::DIM,
                ) else {
                    continue;
                };
                let mut v = [0f32; embed::DIM];
                v.copy_from_slice(floats.values());
                out.insert(h, v);
            }
        }
        Ok(out)
    }

    async fn store(
        &self,
        table: &str,
        rows: &[(&DocMeta, &chunk::Chunk, u64, [f32; embed::DIM])],
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let schema = crate::model::tables::get(CHUNKS)?.arrow_schema();
        let mut chunk_id = StringBuilder::new();
        let mut doc_id = StringBuilder::new();
        let mut source = StringBuilder::new();
        let mut no = Int32Builder::new();
        let mut text = StringBuilder::new();
        let mut content = StringBuilder::new();
        let mut model = StringBuilder::new();
        let mut vector = ListBuilder::new(Float32Builder::with_capacity(rows.len() * embed::DIM))
            .with_field(Arc::new(Field::new("element", DataType::Float32, false)));
        let mut at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let now = Utc::now().timestamp_micros();
        for (d, c, h, v) in rows {
            chunk_id.append_value(format!("{}#{}", d.doc_id, c.no));
            doc_id.append_value(&d.doc_id);
            source.append_value(table);
            no.append_value(c.no);
            text.append_value(&c.text);
            content.append_value(format!("{h:016x}"));
            model.append_value(embed::MODEL_ID);
            vector.values().append_slice(v);
            vector.append(true);
            at.append_value(now);
        }
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(chunk_id.finish()),
                Arc::new(doc_id.finish()),
                Arc::new(source.finish()),
                Arc::new(no.finish()),
                Arc::new(text.finish()),
                Arc::new(content.finish()),
                Arc::new(model.finish()),
                Arc::new(vector.finish()),
                Arc::new(at.finish()),
            ],
        )?;
        let t = self.lake.ensure(CHUNKS).await?;
        t.write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .await
            .map_err(|e| Error::delta(CHUNKS, e))?;
        Ok(())
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

/// FNV-1a over the parts (stable across builds and platforms).
fn hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}
