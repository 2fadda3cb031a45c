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
mod intent;
mod quant;
pub mod source;
pub mod visible;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::AsArray;
use arrow::datatypes::Float32Type;
use chrono::{DateTime, Utc};
use deltalake::protocol::SaveMode;
use tokio::sync::RwLock;

pub use embed::Embedder;
pub use index::{DocMeta, Hit, Links, Mode};
pub use source::{SOURCES, Source};
pub use visible::{Narrow, Visible, searchable, visible};

use crate::config::KnowledgeConfig;
use crate::lakehouse::Lakehouse;
use crate::{Error, Result};

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
    /// Tables read whole (a first sync, or a rebuild when the Change Data Feed is gone);
    /// the others' new versions were read from their Change Data Feed.
    pub snapshots: usize,
    pub seconds: f64,
}

/// The knowledge service: the model, the index and the table versions it reflects.
pub struct Knowledge {
    lake: Lakehouse,
    cfg: KnowledgeConfig,
    embedder: Embedder,
    /// Where documents are embedded: `knowledge.embed_threads` threads at the background
    /// priority (a query is embedded on the caller's blocking thread instead).
    pool: Arc<rayon::ThreadPool>,
    index: Arc<RwLock<index::Index>>,
    /// Source table → the Delta table as last read (followed with incremental log reads).
    tables: tokio::sync::Mutex<BTreeMap<&'static str, deltalake::DeltaTable>>,
    /// Source table → the version the index reflects.
    versions: std::sync::Mutex<BTreeMap<&'static str, Reflected>>,
    /// One sync at a time.
    syncing: tokio::sync::Mutex<()>,
    /// Whether a sync has gone through every source table once (the index is built).
    built: std::sync::atomic::AtomicBool,
    /// Query vectors by caller and embedded text ([`index::embedded_text`]): an agent or a
    /// console page asks the same thing again and again, and embedding is most of a search's
    /// time. Per caller, so how fast a search answers says nothing about what others asked.
    queries: std::sync::Mutex<lru::LruCache<(String, String), [f32; embed::DIM]>>,
}

/// Queries kept ([`Knowledge::search`]): 1.5 KiB of vector and at most
/// [`MAX_QUERY_CHARS`] of text each.
const QUERY_VECTORS_KEPT: usize = 1024;

/// Versions timed per table by one sync ([`telemetry::events::DocumentsSearchable`]): the
/// oldest, which waited longest, when a sync catches up more.
///
/// [`telemetry::events::DocumentsSearchable`]: crate::telemetry::events::DocumentsSearchable
const MAX_TIMED: usize = 100;

/// A table version the index reflects, and when it was committed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reflected {
    pub version: i64,
    pub committed_at: Option<DateTime<Utc>>,
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
        let pool = crate::runtime::background_pool("millstream-embed", cfg.embed_threads)
            .map_err(|e| Error::Internal(format!("embedding threads: {e}")))?;
        Ok(Arc::new(Knowledge {
            lake,
            cfg: cfg.clone(),
            embedder,
            pool: Arc::new(pool),
            index: Arc::new(RwLock::new(index::Index::new()?)),
            tables: Default::default(),
            versions: Default::default(),
            syncing: Default::default(),
            built: Default::default(),
            queries: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(QUERY_VECTORS_KEPT).expect("not zero"),
            )),
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

    /// Whether the index has been built: a sync went through every source table once (before,
    /// searches see only the documents indexed so far).
    pub fn built(&self) -> bool {
        self.built.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every indexed document with its chunks and vectors (benchmarks build larger indexes
    /// from it).
    pub async fn export(&self) -> Vec<(DocMeta, Vec<index::IndexedChunk>)> {
        self.index.read().await.export()
    }

    /// The version of each source table the index reflects.
    pub fn versions(&self) -> BTreeMap<&'static str, Reflected> {
        self.versions.lock().expect("poisoned").clone()
    }

    /// Brings the index up to the latest version of every source table. The first sync of a
    /// table reads its snapshot; later ones read only the Change Data Feed of the new versions
    /// (and fall back to the snapshot when that history is gone, e.g. vacuumed). New and changed
    /// documents are chunked and embedded (or their stored vectors reused); deleted ones
    /// disappear. Tables at the version already reflected cost one log listing.
    pub async fn sync(&self) -> Result<SyncStats> {
        let _one = self.syncing.lock().await;
        let started = Instant::now();
        let mut stats = SyncStats::default();
        // Vectors of the chunks to index: an unchanged chunk's from the index itself, and those
        // stored by earlier runs once `apply` finds it needs them (`loaded`).
        let (mut stored, mut loaded) = (Vectors::new(), false);
        // Live edits' new vectors, stored after the loop: once searchable, and without holding
        // up the next table's changes (losing them in a crash only means embedding them again).
        let mut deferred = Vec::new();
        let mut tables = self.tables.lock().await;
        for source in &SOURCES {
            let table = match tables.entry(source.table) {
                std::collections::btree_map::Entry::Occupied(t) => {
                    let t = t.into_mut();
                    crate::lakehouse::advance(t).await?;
                    t
                }
                std::collections::btree_map::Entry::Vacant(v) => {
                    if !self.lake.exists(source.table).await? {
                        continue;
                    }
                    v.insert(self.lake.open(source.table).await?)
                }
            };
            let version = table.version().map_or(-1, |v| v as i64);
            let reflected = self.versions().get(source.table).map(|r| r.version);
            if reflected == Some(version) {
                continue;
            }
            let changed = match reflected {
                Some(from) if from < version => {
                    match self.changes(source, table, from + 1, version).await {
                        Ok(changed) => Some(Change::Some(changed)),
                        Err(e) => {
                            tracing::warn!(
                                table = source.table, from = from + 1, to = version, error = %e,
                                "the Change Data Feed of these versions cannot be read \
                                 (vacuumed?): rebuilding from the table's snapshot"
                            );
                            None
                        }
                    }
                }
                _ => None,
            };
            let change = match changed {
                Some(change) => change,
                None => {
                    stats.snapshots += 1;
                    Change::All(source.snapshot(table).await?)
                }
            };
            let live = self
                .apply(source.table, change, (&mut stored, &mut loaded), &mut stats)
                .await?;
            deferred.extend(live);
            let committed_at = crate::lakehouse::commit_time(source.table, table, version).await?;
            // Each version committed while the index was following the table (not the state
            // found at a start): how long until its changes could be found. One sample per
            // version, so a sync that caught up several counts the older ones' longer waits (the
            // oldest MAX_TIMED when it caught up more).
            if let Some(from) = reflected {
                let now = Utc::now();
                for v in (from + 1..=version).take(MAX_TIMED) {
                    let at = if v == version {
                        committed_at
                    } else {
                        crate::lakehouse::commit_time(source.table, table, v).await?
                    };
                    if let Some(at) = at {
                        crate::telemetry::events::DocumentsSearchable {
                            table: source.table,
                            delay: (now - at).to_std().unwrap_or_default(),
                        }
                        .emit();
                    }
                }
            }
            self.versions.lock().expect("poisoned").insert(
                source.table,
                Reflected {
                    version,
                    committed_at,
                },
            );
        }
        drop(tables);
        if !deferred.is_empty() {
            self.store_chunks(deferred).await?;
        }
        self.built.store(true, std::sync::atomic::Ordering::Release);
        let index = self.index.read().await;
        stats.documents = index.documents();
        stats.chunks = index.chunks();
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// What versions `from..=to` of `source` changed, from its Change Data Feed.
    async fn changes(
        &self,
        source: &Source,
        table: &deltalake::DeltaTable,
        from: i64,
        to: i64,
    ) -> Result<source::Changed> {
        let rows = crate::lakehouse::cdf::read_changes(
            table.clone(),
            source.table,
            from as u64,
            Some(to as u64),
        )
        .await?;
        source.changes(rows).await
    }

    /// Keeps the index at the latest version of every source table until `stop`: syncs every
    /// `every`, logging what each sync that changed something did (the first one, which may
    /// embed the whole corpus, says so before it starts). A failed sync is logged and retried.
    pub async fn follow(
        self: Arc<Self>,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        tracing::info!("knowledge index: building (vectors stored by earlier runs are reused)");
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return Ok(()),
            }
            let synced = tokio::select! {
                s = self.sync() => s,
                _ = stop.cancelled() => return Ok(()),
            };
            match synced {
                Ok(s) if first || s.upserted + s.removed > 0 => {
                    tracing::info!(
                        documents = s.documents,
                        chunks = s.chunks,
                        upserted = s.upserted,
                        removed = s.removed,
                        embedded = s.embedded,
                        reused = s.reused,
                        seconds = s.seconds,
                        "knowledge index synced"
                    );
                    first = false;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "knowledge index sync failed; retrying"),
            }
        }
    }

    /// Applies `change` to the index's documents of `table`. `known` holds the vectors found so
    /// far in this sync, and whether those stored by earlier runs are among them. Returns the
    /// rows of a live edit's new chunk vectors, for the caller to store once every table's
    /// changes are searchable.
    async fn apply(
        &self,
        table: &'static str,
        change: Change,
        known: (&mut Vectors, &mut bool),
        stats: &mut SyncStats,
    ) -> Result<Option<arrow::array::RecordBatch>> {
        let (stored, loaded) = known;
        let whole = matches!(change, Change::All(_));
        // What changed against the index: chunked, each chunk with its text hash.
        let (pending, gone) = {
            let index = self.index.read().await;
            let (docs, gone): (Vec<(DocMeta, String)>, Vec<String>) = match change {
                Change::All(docs) => {
                    let now: HashSet<&str> = docs.iter().map(|(d, _)| d.doc_id.as_str()).collect();
                    let gone = index
                        .documents_of(table)
                        .filter(|id| !now.contains(id))
                        .map(str::to_string)
                        .collect();
                    (docs, gone)
                }
                Change::Some(c) => (c.upserted, c.removed),
            };
            // A document whose text and metadata (tenant columns, links, update time) are as
            // indexed is left alone; a metadata change alone re-indexes without embedding.
            let pending: Vec<(DocMeta, Vec<(chunk::Chunk, u64)>)> = docs
                .into_iter()
                .filter(|(d, _)| index.get(&d.doc_id).is_none_or(|i| **i != *d))
                .map(|(d, body)| {
                    let chunks = chunk::chunks(
                        &d.title,
                        &body,
                        self.cfg.chunk_words,
                        self.cfg.chunk_overlap,
                    )
                    .into_iter()
                    .map(|c| {
                        let h = crate::model::stable_hash(&[&c.text]);
                        (c, h)
                    })
                    .collect();
                    (d, chunks)
                })
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
        // Chunks this index has no vector for may have been embedded by an earlier run: read
        // the stored vectors (once per sync) when a table is read whole (a start, a rebuild), or
        // when more chunks are new than a live edit brings (the corpus written after the index
        // started). A live edit's few new chunks are just embedded.
        let missing = pending
            .iter()
            .flat_map(|(_, chunks)| chunks)
            .filter(|(_, h)| !stored.contains_key(h))
            .count();
        if !*loaded && (missing > self.cfg.embed_batch || (whole && missing > 0)) {
            stored.extend(self.load_stored().await?);
            *loaded = true;
        }
        let deferred = self.embed_missing(table, &pending, stored, stats).await?;
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
            if index.remove(&id) {
                stats.removed += 1;
            }
        }
        index.commit()?;
        Ok(deferred)
    }

    /// Appends embedded chunks to `knowledge.chunks`, in one commit.
    async fn store_chunks(&self, batches: Vec<arrow::array::RecordBatch>) -> Result<()> {
        self.lake
            .ensure(CHUNKS)
            .await?
            .write(batches)
            .with_save_mode(SaveMode::Append)
            .await
            .map_err(|e| Error::delta(CHUNKS, e))?;
        Ok(())
    }

    /// Embeds the chunks of `pending` that `known` has no vector for, in batches off the async
    /// threads, and adds them to `known`. Bulk work (building the index) appends each batch to
    /// `knowledge.chunks` as it goes, so an interrupted build resumes; a live edit's few
    /// chunks are returned instead, to be stored after they are searchable.
    async fn embed_missing(
        &self,
        table: &'static str,
        pending: &[(DocMeta, Vec<(chunk::Chunk, u64)>)],
        known: &mut Vectors,
        stats: &mut SyncStats,
    ) -> Result<Option<arrow::array::RecordBatch>> {
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
        // Texts of like length in the same `embed` call: it pads each forward pass to its
        // longest text and fits as many texts in a pass as its memory budget allows.
        missing.sort_by_key(|(_, c, _)| c.text.len());
        let size = self.cfg.embed_batch.max(1);
        let (total, started, before) = (missing.len(), Instant::now(), stats.embedded);
        let mut told = Instant::now();
        if total > size * 8 {
            tracing::info!(
                table,
                chunks = total,
                "knowledge index: embedding new chunks"
            );
        }
        // Several forward passes per Delta commit, so the commits stay few.
        for batch in missing.chunks(size * 8) {
            if told.elapsed() > std::time::Duration::from_secs(10) {
                told = Instant::now();
                let done = stats.embedded - before;
                tracing::info!(
                    table,
                    "knowledge index: embedded {done}/{total} chunks ({:.0} chunks/s)",
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
            let texts: Vec<String> = batch.iter().map(|(_, c, _)| c.text.clone()).collect();
            let (embedder, pool) = (self.embedder.clone(), self.pool.clone());
            // Building the index (or rebuilding it) is bulk work for the background threads; a
            // live edit of a few documents is embedded at once, at the priority of the runtime
            // that follows the tables (the serving one under `serve` and `up`, as a search
            // query is), so it is searchable within a second even while ingest keeps the cores
            // busy.
            let live = self.built.load(std::sync::atomic::Ordering::Relaxed) && total <= size;
            let vectors = tokio::task::spawn_blocking(move || {
                let embed = || {
                    let mut all = Vec::with_capacity(texts.len());
                    for group in texts.chunks(size) {
                        let refs: Vec<&str> = group.iter().map(String::as_str).collect();
                        all.extend(embedder.embed(&refs)?);
                    }
                    Ok::<_, Error>(all)
                };
                if live { embed() } else { pool.install(embed) }
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
            let rows = crate::lakehouse::rows_batch(CHUNKS, &rows)?;
            for ((_, _, h), v) in batch.iter().zip(vectors) {
                known.insert(*h, v);
                stats.embedded += 1;
            }
            if live {
                // At most one batch (`total <= size`).
                return Ok(Some(rows));
            }
            self.store_chunks(vec![rows]).await?;
        }
        Ok(None)
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

    /// The `k` best documents for `request` among those `visible` (see [`visible`]: what the
    /// caller's governed session returns), embedding the query first (unless `caller` asked
    /// the same recently).
    pub async fn search(
        &self,
        caller: &str,
        request: &SearchRequest,
        visible: &Visible,
    ) -> Result<Vec<Hit>> {
        use tracing::Instrument;
        request.check()?;
        let text = index::embedded_text(&request.query, request.mode).into_owned();
        let key = (caller.to_string(), text);
        let kept = self.queries.lock().expect("poisoned").get(&key).copied();
        let vector = match kept {
            Some(v) => v,
            None => {
                let (text, embedder) = (key.1.clone(), self.embedder.clone());
                let v = tokio::task::spawn_blocking(move || embedder.embed_one(&text))
                    .instrument(tracing::debug_span!("knowledge.embed_query"))
                    .await
                    .map_err(|e| Error::Internal(format!("embedding task: {e}")))??;
                self.queries.lock().expect("poisoned").put(key, v);
                v
            }
        };
        let index = self.index.clone().read_owned().await;
        let rank = tracing::debug_span!("knowledge.rank", k = request.k, mode = ?request.mode);
        let mask = rank.in_scope(|| index.mask(|d| visible.admits(d) && request.accepts(d)));
        // Ranking reads every visible vector and posting list (milliseconds at 100,000
        // chunks, on both cores): off the async workers.
        let (text, k, mode) = (request.query.clone(), request.k, request.mode);
        tokio::task::spawn_blocking(move || {
            rank.in_scope(|| index.search(&text, &vector, &mask, k, mode))
        })
        .await
        .map_err(|e| Error::Internal(format!("ranking task: {e}")))?
    }
}

/// What one sync applies to a source's documents.
enum Change {
    /// The whole table: documents not in it disappear.
    All(Vec<(DocMeta, String)>),
    /// Only these documents changed.
    Some(source::Changed),
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
        match self.problem() {
            Some((_, message)) => Err(Error::Invalid(message)),
            None => Ok(()),
        }
    }

    /// What is wrong with this request, if anything: the argument and why.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let chars = self.query.chars().count();
        if self.query.trim().is_empty() || chars > MAX_QUERY_CHARS {
            return Some((
                "query",
                format!("query: give 1..={MAX_QUERY_CHARS} characters (got {chars})"),
            ));
        }
        if !(1..=MAX_K).contains(&self.k) {
            return Some(("k", format!("k {} is outside 1..={MAX_K}", self.k)));
        }
        if let Some(bad) = self.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
            return Some((
                "kinds",
                format!("kinds: {bad:?} is not one of {}", KINDS.join(", ")),
            ));
        }
        None
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
