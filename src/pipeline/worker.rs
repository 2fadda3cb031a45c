//! The micro-batch worker of the bronze pipeline.
//!
//! Each iteration: read a batch (bounded by count and time) → keep only records some sink still
//! needs → [decode](Worker::decode) per stream, dead letters aside → [detect](Worker::detect)
//! anomalies → [write](Worker::write) every sink that has rows, each commit carrying the
//! batch's last offset per source partition as `txn` actions → [acknowledge](Worker::acknowledge)
//! the offsets to Kafka (for lag only) and tell the [`Observer`].
//!
//! Exactly once, per sink table (DESIGN §3): a sink's txn version for a partition is the last
//! offset it holds. A record is written to a sink only if its offset is above that version, so a
//! crash between the commits of two sinks is repaired by replay without duplicates. A sink with
//! nothing to write still has its version advanced by a txn-only commit once it has been idle
//! for `idle_commit`, which bounds replay after a restart. Nothing is acknowledged to Kafka
//! before it is durable in Delta, and Kafka's offsets are never trusted for correctness.
//!
//! The sinks come from the table definitions (every bronze table and action log, fed from its
//! `source_topic`), the pipeline definitions (MERGE-kept tables fed by a micro-batch), the dead
//! letters and the anomaly detector's two tables. Each writes one way ([`Write`]).
//!
//! The next batch is polled while this one is decoded and written ([`Poll`]): taking records
//! off librdkafka's queue costs CPU time that would otherwise leave a core idle between
//! commits. Everything else in a pass is sequential, and a rebalance callback (which runs
//! inside that poll) waits until the batch being written is committed
//! ([`Source::hold_writes`]), so an assignment change never races an in-flight commit. It takes
//! effect at the start of the next pass, as before. Decoding and the per-table commits run in
//! parallel within a batch.
//!
//! The one exception is a MERGE-kept sink ([`Lagged`]): a MERGE costs about the same whatever the
//! batch (it reads and rewrites the table's files), more than an append, so it commits off the
//! batch's path. Its rows queue for a task of its own that merges everything queued in one commit
//! (one merge in flight per sink); the loop moves on to the next batch. A record counts as
//! committed, for the [`Observer`] and the Kafka acknowledgement, once every sink fed from its
//! topic holds it, so a telemetry record never waits for the inventory MERGE. Before an
//! assignment change and at the end of a run the loop waits for every queued merge, and a
//! revocation waits in the rebalance callback for the merges in flight ([`Source::merges`]), so
//! the partitions' next owner reads offsets that hold them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use arrow::array::{BooleanArray, Int32Array, Int64Array, RecordBatch};
use deltalake::DeltaTable;
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, KafkaConfig};
use crate::decode::{self, BronzeDecoder, Rejection};
use crate::error::{Error, Result};
use crate::lakehouse::Lakehouse;
use crate::lakehouse::commit::{self, Offsets, SourcePartition};
use crate::model::EventKind;
use crate::model::tables::{Role, TableDef};
use crate::pipeline::definition::{Definition, Definitions};
use crate::signals::iot::{self, IotSignals};
use crate::source::{
    AssignmentChange, MergeGauge, MergeHeld, OutOfRange, PositionResolver, RawRecord, Source,
    partition_runs,
};
use crate::telemetry::events;

/// How a worker reads and writes, from the `[pipeline]` and `[kafka]` config.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub name: String,
    pub brokers: String,
    pub group_id: String,
    pub batch_max_events: usize,
    pub batch_max_wait: Duration,
    pub idle_commit: Duration,
    pub target_file_bytes: u64,
    /// Pipeline definitions directory; empty for the built-in ones.
    pub definitions: String,
    /// What to do when Delta's next offset is not in a partition's log.
    pub out_of_range: OutOfRange,
    /// Event ids remembered per source partition to drop duplicates (0: off).
    pub dedup_window: usize,
    /// Fields an event type does not have dead-letter the record (else they are counted).
    pub strict_fields: bool,
    /// The anomaly detector's parameters (`[signals.anomaly]`).
    pub detector: crate::signals::anomaly::Params,
}

impl PipelineOptions {
    pub fn from_config(config: &Config, brokers: &str) -> PipelineOptions {
        PipelineOptions {
            name: config.pipeline.name.clone(),
            brokers: brokers.to_string(),
            group_id: config.kafka.group_id.clone(),
            batch_max_events: config.pipeline.batch_max_events,
            batch_max_wait: Duration::from_millis(config.pipeline.batch_max_ms),
            idle_commit: Duration::from_secs(config.pipeline.idle_commit_secs),
            target_file_bytes: config.pipeline.target_file_mb * 1024 * 1024,
            definitions: config.pipeline.definitions.clone(),
            out_of_range: OutOfRange::from_config(&config.pipeline.offsets_out_of_range),
            dedup_window: config.pipeline.dedup_window,
            strict_fields: config.pipeline.strict_fields,
            detector: config.signals.anomaly.clone(),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct RunStats {
    pub records: u64,
    pub bytes: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub skipped: u64,
    /// Records dropped as later copies of an event id already ingested.
    pub duplicates: u64,
    pub batches: u64,
    pub commits: u64,
    /// How long each batch took from decoded to durable (Parquet files written, Delta commits
    /// made): the part of a batch's latency that the object store sets.
    pub write_ms: Latency,
    #[serde(skip)]
    pub first_fetch: Option<Instant>,
    #[serde(skip)]
    pub last_commit: Option<Instant>,
}

/// A latency distribution in bounded memory (a DDSketch: quantiles within 1 % of the true
/// value), shown as count, p50, p95, p99 and max in milliseconds.
#[derive(Clone, Default)]
pub struct Latency(sketches_ddsketch::DDSketch);

impl Latency {
    pub fn record(&mut self, d: Duration) {
        self.0.add(d.as_secs_f64() * 1000.0);
    }

    /// The `q` quantile in milliseconds (0 with no samples).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.0.quantile(q).ok().flatten().unwrap_or(0.0)
    }

    fn summary(&self) -> serde_json::Value {
        let r = |x: f64| (x * 10.0).round() / 10.0;
        serde_json::json!({
            "n": self.0.count(),
            "p50": r(self.quantile_ms(0.5)),
            "p95": r(self.quantile_ms(0.95)),
            "p99": r(self.quantile_ms(0.99)),
            "max": r(self.0.max().unwrap_or(0.0)),
        })
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.summary())
    }
}

impl Serialize for Latency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.summary().serialize(s)
    }
}

/// Watches a worker from outside (benchmarks, tests): told what became durable and when, and
/// after every poll, when it may end the run.
pub trait Observer: Send + Sync {
    /// `records` are now held by every sink fed from their topics, since `at`.
    fn committed(&self, _records: &[RawRecord], _at: SystemTime) {}

    /// After every poll. False stops the worker, as a cancelled token would.
    fn polled(&self, _stats: &RunStats) -> bool {
        true
    }
}

/// Stops the worker once it has handled (committed or skipped) `n` source records.
pub struct StopAfter(pub u64);

impl Observer for StopAfter {
    fn polled(&self, stats: &RunStats) -> bool {
        stats.records + stats.skipped < self.0
    }
}

/// How a sink takes its rows.
#[derive(Debug, Clone)]
enum Write {
    /// Appended.
    Append,
    /// Run through a `pipelines/` definition's SQL (the rows as `batch`) and merged by key.
    Merge(Arc<Definition>),
    /// Replacing the rows of the source partitions the batch touched (`_partition IN …`).
    ReplacePartitions,
}

/// Where a sink's rows come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// The valid events of one stream.
    Events(EventKind),
    /// Every stream's rejected records.
    Rejected,
    /// The anomaly detector's findings.
    Anomalies,
    /// The anomaly detector's state (committed after the anomalies it explains).
    DetectorState,
}

impl Feed {
    /// The one topic this feed reads; `None` for the dead letters, fed by every topic.
    fn topic(self) -> Option<&'static str> {
        match self {
            Feed::Events(k) => Some(k.topic()),
            Feed::Rejected => None,
            Feed::Anomalies | Feed::DetectorState => Some(EventKind::Telemetry.topic()),
        }
    }

    fn feeds_from(self, topic: &str) -> bool {
        match self.topic() {
            Some(t) => t == topic,
            None => EventKind::from_topic(topic).is_some(),
        }
    }

    /// The columns holding a row's source partition and offset.
    fn position_columns(self) -> (&'static str, &'static str) {
        match self {
            Feed::Rejected => ("partition", "offset"),
            _ => ("_partition", "_offset"),
        }
    }
}

/// A sink table and what this worker knows is durable in it.
struct Sink {
    name: &'static str,
    table: DeltaTable,
    feed: Feed,
    write: Write,
    durable: Offsets,
    /// Offsets processed with nothing to write here, not yet recorded in the table.
    pending: Offsets,
    last_commit: Instant,
    /// A MERGE-kept sink's queue and merge task; `None` for the sinks that commit in the batch.
    lag: Option<Lagged>,
}

/// One sink, before it is opened.
#[derive(Debug, Clone)]
struct SinkSpec {
    name: &'static str,
    feed: Feed,
    write: Write,
}

/// Every sink, in commit order: the detector's state last, so it never runs ahead of the
/// anomalies derived from it.
fn sinks(defs: &Definitions) -> Result<Vec<SinkSpec>> {
    let mut out = Vec::new();
    for table in TableDef::with_role(&[Role::Bronze, Role::ActionLog]) {
        let topic = table.source_topic.as_deref().unwrap_or_default();
        let kind = EventKind::from_topic(topic).ok_or_else(|| {
            Error::Internal(format!("{}: no event type for topic {topic}", table.name))
        })?;
        out.push(SinkSpec {
            name: &table.name,
            feed: Feed::Events(kind),
            write: Write::Append,
        });
    }
    for spec in out.clone() {
        let Feed::Events(kind) = spec.feed else {
            continue;
        };
        for def in defs.batch_pipelines(spec.name) {
            out.push(SinkSpec {
                name: &crate::model::tables::get(&def.sink.table)?.name,
                feed: Feed::Events(kind),
                write: Write::Merge(Arc::new(def.clone())),
            });
        }
    }
    out.extend([
        SinkSpec {
            name: decode::DEAD_LETTERS,
            feed: Feed::Rejected,
            write: Write::Append,
        },
        SinkSpec {
            name: iot::ANOMALIES_TABLE,
            feed: Feed::Anomalies,
            write: Write::Append,
        },
        SinkSpec {
            name: iot::STATE_TABLE,
            feed: Feed::DetectorState,
            write: Write::ReplacePartitions,
        },
    ]);
    Ok(out)
}

impl Sink {
    async fn open(lake: &Lakehouse, spec: SinkSpec) -> Result<Sink> {
        let lag = matches!(spec.write, Write::Merge(_)).then(Lagged::default);
        Ok(Sink {
            name: spec.name,
            table: lake.ensure(spec.name).await?,
            feed: spec.feed,
            write: spec.write,
            durable: Offsets::new(),
            pending: Offsets::new(),
            last_commit: Instant::now(),
            lag,
        })
    }

    fn feeds_from(&self, topic: &str) -> bool {
        self.feed.feeds_from(topic)
    }

    /// Durable offset per partition of `topic`.
    fn floors(&self, topic: &str) -> HashMap<i32, i64> {
        self.durable
            .iter()
            .filter(|(p, _)| p.topic == topic)
            .map(|(p, o)| (p.partition, *o))
            .collect()
    }
}

/// A MERGE-kept sink's commits, off the batch's path: units of rows queue here and one task at a
/// time merges everything queued in one commit, fenced on the offsets its previous commit left.
/// Each unit has a ticket; a finished commit reports the highest ticket it holds.
#[derive(Default)]
struct Lagged {
    state: Arc<Mutex<LagState>>,
    /// Woken when the task takes the queue or stops.
    taken: Arc<tokio::sync::Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Tickets handed out so far (the last unit queued).
    issued: u64,
    /// The highest ticket durable, as far as the worker has settled.
    settled: u64,
    /// When each recently settled commit became durable, by the highest ticket it holds; pruned
    /// as the records waiting on them are released.
    durable_at: Vec<(u64, SystemTime)>,
}

#[derive(Default)]
struct LagState {
    queue: Vec<Unit>,
    /// A task is merging (it clears this, under the lock, when it finds the queue empty).
    running: bool,
    done: Vec<Done>,
    failed: Option<Error>,
}

/// One batch's rows for a MERGE-kept sink, and the offsets they take its txn versions to.
struct Unit {
    rows: Vec<RecordBatch>,
    offsets: Offsets,
    ticket: u64,
}

/// A merge that committed: what it made durable, and the table at its version.
struct Done {
    offsets: Offsets,
    table: DeltaTable,
    rows: usize,
    ticket: u64,
    at: SystemTime,
}

/// Batches a MERGE-kept sink may hold queued behind its merge in flight before the worker waits
/// for that merge: what bounds the memory of a merge that falls behind.
const MAX_QUEUED: usize = 8;

/// What a merge task needs besides its queue.
struct MergeJob {
    table: DeltaTable,
    name: &'static str,
    def: Arc<Definition>,
    pipeline: String,
    /// The sink's txn versions as of the task's start; the task keeps them up to date.
    durable: Offsets,
    /// Counts this task as a merge in flight while it runs (a revocation waits for it).
    _held: MergeHeld,
}

impl MergeJob {
    /// Merges whatever is queued, one commit at a time, until the queue is empty or a merge
    /// fails (the failure is left for the worker, which ends the run with it).
    async fn run(mut self, state: Arc<Mutex<LagState>>, taken: Arc<tokio::sync::Notify>) {
        loop {
            let units = {
                let mut st = state.lock().expect("poisoned");
                if st.queue.is_empty() {
                    st.running = false;
                    return;
                }
                std::mem::take(&mut st.queue)
            };
            taken.notify_waiters();
            let ticket = units.last().map_or(0, |u| u.ticket);
            let (mut rows, mut offsets) = (Vec::new(), Offsets::new());
            for unit in units {
                rows.extend(unit.rows);
                raise(&mut offsets, unit.offsets);
            }
            let expected: Offsets = offsets
                .keys()
                .filter_map(|p| self.durable.get(p).map(|o| (p.clone(), *o)))
                .collect();
            let n: usize = rows.iter().map(|b| b.num_rows()).sum();
            let started = Instant::now();
            let result = merge(
                &self.table,
                self.name,
                &self.def,
                &self.pipeline,
                rows,
                &offsets,
                &expected,
            )
            .await;
            tracing::debug!(
                table = self.name,
                rows = n,
                ms = started.elapsed().as_millis() as u64,
                ok = result.is_ok(),
                "sink committed"
            );
            let mut st = state.lock().expect("poisoned");
            match result {
                Ok(table) => {
                    self.table = table.clone();
                    raise(&mut self.durable, offsets.clone());
                    st.done.push(Done {
                        offsets,
                        table,
                        rows: n,
                        ticket,
                        at: SystemTime::now(),
                    });
                }
                Err(e) => {
                    st.failed = Some(e);
                    st.running = false;
                    drop(st);
                    taken.notify_waiters();
                    return;
                }
            }
        }
    }
}

impl Drop for Lagged {
    /// A run that ends with an error leaves no merge running behind it (a commit is atomic: a
    /// merge stopped before its log entry leaves only unreferenced files).
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Sink {
    /// Queues `rows` (with the offsets pending so far) for this MERGE-kept sink and starts its
    /// task unless one is running. Returns how many commits it settled on the way.
    fn enqueue(
        &mut self,
        rows: Vec<RecordBatch>,
        pipeline: &str,
        merges: &MergeGauge,
    ) -> Result<u64> {
        let offsets = std::mem::take(&mut self.pending);
        let Some(lag) = self.lag.as_mut() else {
            return Err(Error::Internal(format!("{} is not MERGE-kept", self.name)));
        };
        lag.issued += 1;
        let state = lag.state.clone();
        {
            let mut st = state.lock().expect("poisoned");
            st.queue.push(Unit {
                rows,
                offsets,
                ticket: lag.issued,
            });
            if st.running {
                return Ok(0);
            }
            st.running = true;
        }
        // The last task is done: its commits are settled first, so the next one starts from the
        // table and offsets they left.
        let settled = self.settle_lagged()?;
        let Write::Merge(def) = &self.write else {
            return Err(Error::Internal(format!("{} is not MERGE-kept", self.name)));
        };
        let job = MergeJob {
            table: self.table.clone(),
            name: self.name,
            def: def.clone(),
            pipeline: pipeline.to_string(),
            durable: self.durable.clone(),
            _held: merges.hold(),
        };
        if let Some(lag) = self.lag.as_mut() {
            lag.task = Some(tokio::spawn(job.run(state, lag.taken.clone())));
        }
        Ok(settled)
    }

    /// Takes in what this MERGE-kept sink's task has committed since the last call (its durable
    /// offsets and table move on), or the error of a merge that failed. Returns how many commits
    /// it took in.
    fn settle_lagged(&mut self) -> Result<u64> {
        let Some(lag) = self.lag.as_ref() else {
            return Ok(0);
        };
        let (done, failed) = {
            let mut st = lag.state.lock().expect("poisoned");
            (std::mem::take(&mut st.done), st.failed.take())
        };
        let n = done.len() as u64;
        for d in done {
            settle(self, d.offsets, Ok(d.table))?;
            events::TableCommitted {
                table: self.name,
                rows: d.rows as u64,
            }
            .emit();
            if let Some(lag) = self.lag.as_mut() {
                lag.settled = lag.settled.max(d.ticket);
                lag.durable_at.push((d.ticket, d.at));
            }
        }
        failed.map_or(Ok(n), Err)
    }

    /// Waits while this MERGE-kept sink has [`MAX_QUEUED`] batches queued behind its merge.
    async fn make_room(&self) {
        let Some(lag) = &self.lag else {
            return;
        };
        loop {
            let taken = lag.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            {
                let st = lag.state.lock().expect("poisoned");
                if st.queue.len() < MAX_QUEUED || !st.running {
                    return;
                }
            }
            taken.await;
        }
    }

    /// Whether this MERGE-kept sink has a merge queued or running.
    fn merging(&self) -> bool {
        self.lag
            .as_ref()
            .is_some_and(|l| l.state.lock().expect("poisoned").running)
    }

    /// Waits for this sink's merge task to finish what is queued.
    async fn wait_merges(&mut self) -> Result<()> {
        let Some(task) = self.lag.as_mut().and_then(|l| l.task.take()) else {
            return Ok(());
        };
        task.await
            .map_err(|e| Error::Internal(format!("{} merge task: {e}", self.name)))
    }
}

/// Reads where each partition must resume: one past the lowest txn version over the sinks it
/// feeds; from the beginning when any of them has never recorded it.
///
/// A rebalance waits for this, in every member of the group, so it is kept short: the tables
/// stay open from one assignment to the next (each brought up to date by reading only its new
/// log entries; on object storage, opening one afresh lists and reads its whole log), and they
/// are read side by side.
fn resolver(lake: Lakehouse, pipeline: String, specs: Vec<SinkSpec>) -> PositionResolver {
    let open: Arc<tokio::sync::Mutex<HashMap<&'static str, DeltaTable>>> = Arc::default();
    Arc::new(move |parts: Vec<SourcePartition>| {
        let (lake, pipeline, specs, open) =
            (lake.clone(), pipeline.clone(), specs.clone(), open.clone());
        async move {
            let mut open = open.lock().await;
            // Each table the partitions feed, with the partitions it is fed from.
            let mut fed: BTreeMap<&'static str, Vec<SourcePartition>> = BTreeMap::new();
            for p in &parts {
                for spec in specs.iter().filter(|s| s.feed.feeds_from(&p.topic)) {
                    fed.entry(spec.name).or_default().push(p.clone());
                }
            }
            let reads: Vec<_> = fed
                .into_iter()
                .map(|(name, fed_by)| {
                    let (cached, lake, pipeline) =
                        (open.remove(name), lake.clone(), pipeline.clone());
                    async move {
                        let table = match cached {
                            Some(mut t) => {
                                t.update_state().await.map_err(|e| Error::delta(name, e))?;
                                t
                            }
                            None => lake.ensure(name).await?,
                        };
                        let stored =
                            commit::txn_versions(&table, name, &pipeline, fed_by.iter().cloned())
                                .await?;
                        Ok::<_, Error>((name, table, fed_by, stored))
                    }
                })
                .collect();
            let read: Vec<_> = futures::stream::iter(reads)
                .buffer_unordered(commit::LOOKUPS_IN_FLIGHT)
                .try_collect()
                .await?;
            // Per partition, the next offset of each table it feeds (`None`: never recorded).
            let mut next: BTreeMap<SourcePartition, Vec<Option<i64>>> =
                parts.into_iter().map(|p| (p, Vec::new())).collect();
            for (name, table, fed_by, stored) in read {
                for p in fed_by {
                    let v = stored.get(&p).map(|v| v + 1);
                    next.entry(p).or_default().push(v);
                }
                open.insert(name, table);
            }
            Ok(next
                .into_iter()
                .map(|(p, nexts)| {
                    let lowest = nexts.iter().copied().collect::<Option<Vec<i64>>>();
                    (p, lowest.and_then(|n| n.into_iter().min()))
                })
                .collect())
        }
        .boxed()
    })
}

/// Runs the pipeline until `stop` is cancelled (finishing the batch in hand) or the
/// `observer` says so. Errors that a fresh start from the Delta log can cure are retried by
/// [`run_with_restarts`].
pub async fn run(
    kafka: &KafkaConfig,
    lake: &Lakehouse,
    opts: &PipelineOptions,
    stop: CancellationToken,
    observer: Option<Arc<dyn Observer>>,
) -> Result<RunStats> {
    let defs = Definitions::from_config(&opts.definitions).await?;
    let specs = sinks(&defs)?;
    let mut opened = Vec::new();
    for spec in specs.iter().cloned() {
        opened.push(Sink::open(lake, spec).await?);
    }
    let topics: Vec<&str> = EventKind::ALL.iter().map(|k| k.topic()).collect();
    let source = Source::new(
        kafka,
        &opts.brokers,
        &opts.group_id,
        &topics,
        resolver(lake.clone(), opts.name.clone(), specs),
        opts.out_of_range,
    )?;
    tracing::info!(pipeline = %opts.name, brokers = %opts.brokers, group = %opts.group_id, lakehouse = %lake.uri(), "pipeline started");
    let mut worker = Worker {
        opts: opts.clone(),
        sinks: opened,
        detector: IotSignals::new(opts.detector.clone()),
        decoders: Arc::new(
            EventKind::ALL
                .into_iter()
                .map(|k| BronzeDecoder::new(k).map(|d| (k, d.strict(opts.strict_fields))))
                .collect::<Result<_>>()?,
        ),
        owned: BTreeSet::new(),
        dedup: super::dedup::Dedup::new(opts.dedup_window),
        stats: RunStats::default(),
        observer,
        awaiting: Vec::new(),
        merges: source.merges(),
    };
    let source = Arc::new(source);
    let mut result = worker.run_loop(&source, &stop).await;
    // Queued merges finish either way: so that every record handled is recorded, and so that no
    // merge of this run outlives it.
    let merged = worker.finish_merges(&source).await;
    if result.is_ok() {
        result = merged;
    }
    // Record every pending offset so a restart does not replay what was already handled.
    if result.is_ok() {
        worker.commit_pending(Duration::ZERO).await?;
    }
    // The loop has ended its poll, so this is the last holder.
    match Arc::into_inner(source) {
        Some(source) => source.close()?,
        None => tracing::warn!("the Kafka source is still shared at the end of the run"),
    }
    let stats = worker.stats;
    tracing::info!(
        records = stats.records,
        rows = stats.rows,
        dead_letters = stats.dead_letters,
        commits = stats.commits,
        "pipeline stopped"
    );
    result.map(|()| stats)
}

/// The poll of the next batch, running in a task of its own while the loop writes the last.
struct Poll {
    task: tokio::task::JoinHandle<Result<(Vec<RawRecord>, Option<Instant>)>>,
    /// Ends this poll early (it also ends when the run's stop does).
    end: CancellationToken,
}

impl Poll {
    /// Starts polling; the batch does not close while the one before it is written
    /// ([`Source::next_batch`]).
    fn start(source: &Arc<Source>, opts: &PipelineOptions, stop: &CancellationToken) -> Poll {
        let end = stop.child_token();
        let (source, max, wait, token) = (
            source.clone(),
            opts.batch_max_events,
            opts.batch_max_wait,
            end.clone(),
        );
        let task = tokio::spawn(async move { source.next_batch(max, wait, &token).await });
        Poll { task, end }
    }

    async fn result(self) -> Result<(Vec<RawRecord>, Option<Instant>)> {
        self.task
            .await
            .map_err(|e| Error::Internal(format!("the Kafka poll task failed: {e}")))?
    }

    /// Ends the poll and waits for its task, dropping what it read.
    async fn end(self) {
        self.end.cancel();
        let _ = self.task.await;
    }
}

/// Restarts in a row (each failing within [`HEALTHY_RUN`] of its start) after which the worker
/// gives up: a failure that many restarts did not cure is not transient. Lost commit races do not
/// count (see [`Restarts`]).
pub const MAX_RESTARTS: u32 = 10;
/// A run this long resets the restart count.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What [`run_with_restarts`] does after a run ends with an error.
#[derive(Debug, Clone, PartialEq)]
pub enum Restart {
    /// Start again after this long (exponential, capped, with jitter).
    After(Duration),
    /// Stop with the error: not retryable, or [`MAX_RESTARTS`] failures in a row.
    GiveUp,
}

/// The restart policy of one worker: capped exponential backoff with jitter, and a limit on
/// failures in a row.
///
/// A lost commit race ([`Error::lost_commit_race`]) is another writer committing records this
/// one holds — the lakehouse is moving, nothing is lost — so it backs off like any failure but
/// never counts towards giving up: two writers that keep colliding (a zombie, two groups on one
/// lakehouse) must not end the one that happens to lose ten races in a row. The jitter (each
/// wait drawn from the upper half of the current backoff) is what stops two writers that failed
/// together from restarting, rejoining and colliding together again.
#[derive(Debug, Clone)]
pub struct Restarts {
    backoff: Duration,
    failures: u32,
}

impl Default for Restarts {
    fn default() -> Self {
        Self {
            backoff: FIRST_BACKOFF,
            failures: 0,
        }
    }
}

impl Restarts {
    /// Failures in a row that count towards [`MAX_RESTARTS`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Decides on a run that ended with `error` after running for `ran`.
    pub fn on_error(&mut self, error: &Error, ran: Duration) -> Restart {
        if ran >= HEALTHY_RUN {
            *self = Self::default();
        }
        if !error.retryable() {
            return Restart::GiveUp;
        }
        if !error.lost_commit_race() {
            if self.failures >= MAX_RESTARTS {
                return Restart::GiveUp;
            }
            self.failures += 1;
        }
        let wait = crate::error::jittered(self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Restart::After(wait)
    }
}

/// [`run`], restarted from the Delta log after retryable failures (Kafka hiccups, another
/// worker committing a partition we thought we owned) as [`Restarts`] decides; a non-retryable
/// error, or [`MAX_RESTARTS`] failures in a row, ends it with the error.
pub async fn run_with_restarts(
    kafka: &KafkaConfig,
    lake: &Lakehouse,
    opts: &PipelineOptions,
    stop: CancellationToken,
    observer: Option<Arc<dyn Observer>>,
) -> Result<RunStats> {
    let mut restarts = Restarts::default();
    loop {
        let started = Instant::now();
        let e = match run(kafka, lake, opts, stop.clone(), observer.clone()).await {
            Ok(stats) => return Ok(stats),
            Err(e) => e,
        };
        if let Error::ConflictingOffsets { table, .. } = &e {
            events::CommitConflict { table }.emit();
        }
        // A transient failure as the stop comes (another writer committed the batch in hand,
        // Kafka went away): nothing of the batch is ours in Delta and the next start reads it
        // again from the offsets stored there. A clean stop.
        if e.retryable() && stop.is_cancelled() {
            tracing::info!(error = %e, "stopping; the batch in hand is read again on the next start");
            return Ok(RunStats::default());
        }
        match restarts.on_error(&e, started.elapsed()) {
            Restart::After(backoff) => {
                tracing::warn!(error = %e, domain = %e.domain(), ?backoff, failures = restarts.failures(), "pipeline failed; resetting from the Delta log");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => {}
                }
            }
            Restart::GiveUp if e.retryable() => {
                tracing::error!(error = %e, restarts = restarts.failures(), "pipeline keeps failing; giving up");
                return Err(Error::Invalid(format!(
                    "the pipeline failed {} times in a row, each within {} s of starting; \
                     last error: {e}",
                    restarts.failures() + 1,
                    HEALTHY_RUN.as_secs()
                )));
            }
            Restart::GiveUp => return Err(e),
        }
    }
}

/// One worker of the pipeline: its sinks, its share of the detector, what it owns.
struct Worker {
    opts: PipelineOptions,
    sinks: Vec<Sink>,
    detector: IotSignals,
    decoders: Arc<BTreeMap<EventKind, BronzeDecoder>>,
    /// Source partitions assigned to this worker.
    owned: BTreeSet<SourcePartition>,
    /// Recent event ids per partition, to drop duplicates.
    dedup: super::dedup::Dedup,
    stats: RunStats,
    observer: Option<Arc<dyn Observer>>,
    /// Records committed by every sink but a MERGE-kept one still merging them, oldest first.
    awaiting: Vec<Awaiting>,
    /// The source's count of merges in flight, which each merge task holds while it runs.
    merges: MergeGauge,
}

/// Records of one topic of a batch, waiting for MERGE-kept sinks fed from that topic: released
/// once each `(sink index, ticket)` is durable.
struct Awaiting {
    records: Vec<RawRecord>,
    waits: Vec<(usize, u64)>,
}

/// A batch of source records and what it covers.
struct Batch {
    records: Arc<Vec<RawRecord>>,
    /// The last offset of each source partition in the batch.
    last: Offsets,
    /// Record indices per stream.
    by_kind: BTreeMap<EventKind, Vec<usize>>,
    bytes: u64,
    started: Instant,
    now_us: i64,
}

/// A batch decoded: rows per table, and the rejected records.
struct Decoded {
    rows: BTreeMap<&'static str, Vec<RecordBatch>>,
    rejected: Vec<Rejection>,
    at: Instant,
}

/// What writing a batch recorded.
struct Written {
    dead_letters: u64,
    decode: Duration,
}

/// What the detector made of a batch's telemetry.
struct Detected {
    detector: IotSignals,
    anomalies: Vec<RecordBatch>,
    state: Vec<RecordBatch>,
    touched: BTreeSet<i32>,
}

impl Worker {
    /// Passes until `stop` or the observer ends the run; a poll still running then is ended
    /// and its records dropped (they are not committed, so the next run reads them again).
    async fn run_loop(&mut self, source: &Arc<Source>, stop: &CancellationToken) -> Result<()> {
        let mut next = None;
        let result = self.passes(source, stop, &mut next).await;
        if let Some(poll) = next {
            poll.end().await;
        }
        result
    }

    async fn passes(
        &mut self,
        source: &Arc<Source>,
        stop: &CancellationToken,
        next: &mut Option<Poll>,
    ) -> Result<()> {
        // Polling beside a write needs the rebalance callback to wait for the write, which it
        // can only do on a multi-thread runtime; elsewhere each pass polls, then writes.
        let overlap = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        loop {
            let stopping = stop.is_cancelled();
            let waited = Instant::now();
            let (records, first_at) = match next.take() {
                Some(poll) => poll.result().await?,
                None if stopping => (Vec::new(), None),
                None => {
                    source
                        .next_batch(self.opts.batch_max_events, self.opts.batch_max_wait, stop)
                        .await?
                }
            };
            tracing::debug!(
                records = records.len(),
                wait_ms = waited.elapsed().as_millis() as u64,
                "polled"
            );
            let changes = source.take_changes();
            if !changes.is_empty() {
                // What a merge holds must be durable before offsets are read back from Delta.
                self.finish_merges(source).await?;
                self.apply_changes(&changes).await?;
            }
            if self.stats.first_fetch.is_none() {
                self.stats.first_fetch = first_at;
            }
            let kept = self.select(records);
            // From here to the end of the pass (on every exit path) this worker writes: a
            // rebalance in the next poll waits for it, and the next batch stays open until it.
            let writing = source.hold_writes();
            if overlap && !stopping {
                *next = Some(Poll::start(source, &self.opts, stop));
            }
            if !kept.is_empty() {
                let batch = Batch::new(kept);
                let mut decoded = self.decode(&batch).await?;
                self.deduplicate(&mut decoded)?;
                let written = self.write(&batch, decoded).await?;
                self.acknowledge(batch, written, source)?;
            }
            self.settle_merges(source)?;
            self.commit_pending(self.opts.idle_commit).await?;
            drop(writing);
            let go_on = self.observer.as_ref().is_none_or(|o| o.polled(&self.stats));
            if stopping || !go_on {
                // The batch in hand when the stop arrived was committed by the previous pass.
                return Ok(());
            }
        }
    }

    /// Lets every MERGE-kept sink's task finish what is queued, takes in its commits and releases
    /// the records they were the last to hold.
    async fn finish_merges(&mut self, source: &Source) -> Result<()> {
        for sink in self.sinks.iter_mut() {
            sink.wait_merges().await?;
        }
        self.settle_merges(source)
    }

    /// Takes in what the MERGE-kept sinks' tasks have committed (failing with a merge's error)
    /// and releases the records every sink now holds.
    fn settle_merges(&mut self, source: &Source) -> Result<()> {
        for sink in self.sinks.iter_mut() {
            self.stats.commits += sink.settle_lagged()?;
        }
        let (mut ready, mut waiting) = (Vec::new(), Vec::new());
        for a in std::mem::take(&mut self.awaiting) {
            let at = a
                .waits
                .iter()
                .try_fold(SystemTime::UNIX_EPOCH, |at, (i, t)| {
                    let lag = self.sinks[*i].lag.as_ref()?;
                    (lag.settled >= *t).then(|| {
                        let done = lag
                            .durable_at
                            .iter()
                            .find(|(ticket, _)| ticket >= t)
                            .map_or_else(SystemTime::now, |(_, at)| *at);
                        at.max(done)
                    })
                });
            match at {
                Some(at) => ready.push((a.records, at)),
                None => waiting.push(a),
            }
        }
        self.awaiting = waiting;
        // Keep the commit times that records still waiting may need.
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            if let Some(lag) = sink.lag.as_mut() {
                let oldest = self
                    .awaiting
                    .iter()
                    .flat_map(|a| a.waits.iter())
                    .filter(|(s, _)| *s == i)
                    .map(|(_, t)| *t)
                    .min()
                    .unwrap_or(u64::MAX);
                lag.durable_at.retain(|(ticket, _)| *ticket >= oldest);
            }
        }
        for (records, at) in ready {
            self.release(&records, at, source);
        }
        Ok(())
    }

    /// `records` are held by every sink fed from their topics since `at`: to Kafka (for lag
    /// only), the stats and the observer.
    fn release(&mut self, records: &[RawRecord], at: SystemTime, source: &Source) {
        if records.is_empty() {
            return;
        }
        let mut last = Offsets::new();
        for run in partition_runs(records) {
            let newest = run.iter().map(|r| r.offset).max().unwrap_or(-1);
            let offset = last.entry(run[0].source_partition()).or_insert(newest);
            *offset = (*offset).max(newest);
        }
        self.stats.bytes += records
            .iter()
            .map(|r| r.payload.as_ref().map_or(0, |p| p.len() as u64))
            .sum::<u64>();
        source.commit_offsets(&last);
        self.stats.records += records.len() as u64;
        if let Some(o) = &self.observer {
            o.committed(records, at);
        }
    }

    async fn apply_changes(&mut self, changes: &[AssignmentChange]) -> Result<()> {
        let pipeline = self.opts.name.clone();
        for change in changes {
            match change {
                AssignmentChange::Assigned(parts) => {
                    // Another worker may have committed these partitions: start from the log.
                    // The sinks are read side by side: the next rebalance waits for this.
                    let started = Instant::now();
                    let window = self.dedup.enabled().then(|| self.dedup.capacity());
                    let reads: Vec<_> = self
                        .sinks
                        .iter_mut()
                        .filter_map(|sink| {
                            let mine: Vec<_> = parts
                                .iter()
                                .filter(|p| sink.feeds_from(&p.topic))
                                .cloned()
                                .collect();
                            (!mine.is_empty()).then(|| resume_sink(sink, mine, &pipeline, window))
                        })
                        .collect();
                    let restored: Vec<Restored> = futures::stream::iter(reads)
                        .buffer_unordered(commit::LOOKUPS_IN_FLIGHT)
                        .try_collect()
                        .await?;
                    for r in restored {
                        match r {
                            Restored::Ids(topic, mine, rows) => {
                                self.dedup.restore(topic, &mine, &rows)?;
                            }
                            Restored::State(partitions, batches) => {
                                self.detector.forget(&partitions);
                                for batch in batches {
                                    self.detector.restore(&batch)?;
                                }
                                tracing::info!(
                                    sensors = self.detector.sensors(),
                                    "detector state restored"
                                );
                            }
                            Restored::Nothing => {}
                        }
                    }
                    self.owned.extend(parts.iter().cloned());
                    tracing::info!(
                        ms = started.elapsed().as_millis() as u64,
                        "assignment read back from Delta"
                    );
                }
                AssignmentChange::ResetTo(p, low) => {
                    // The log starts over: what the sinks store for this partition describes
                    // another log. The next commits record the new offsets.
                    for sink in self.sinks.iter_mut().filter(|s| s.feeds_from(&p.topic)) {
                        sink.durable.insert(p.clone(), low - 1);
                        sink.pending.remove(p);
                    }
                    if Feed::DetectorState.feeds_from(&p.topic) {
                        self.detector.forget(&BTreeSet::from([p.partition]));
                    }
                    self.dedup.forget(p);
                    tracing::warn!(topic = %p.topic, partition = p.partition, from = low, "ingesting the partition's log again from its earliest offset");
                }
                AssignmentChange::Revoked(parts) => {
                    let telemetry: BTreeSet<i32> = parts
                        .iter()
                        .filter(|p| Feed::DetectorState.feeds_from(&p.topic))
                        .map(|p| p.partition)
                        .collect();
                    self.detector.forget(&telemetry);
                    for p in parts {
                        self.owned.remove(p);
                        self.dedup.forget(p);
                        for sink in self.sinks.iter_mut() {
                            sink.durable.remove(p);
                            sink.pending.remove(p);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps the records of owned partitions that at least one sink does not hold yet, each
    /// offset once and in order (a re-assignment may make the consumer fetch a range again).
    fn select(&mut self, records: Vec<RawRecord>) -> Vec<RawRecord> {
        // Per run of one partition: the offset at or below which its records are done (durable
        // in every sink fed from it, or not ours), raised as records are kept.
        let mut floor: HashMap<SourcePartition, i64> = HashMap::new();
        let mut keep = Vec::with_capacity(records.len());
        for run in partition_runs(&records) {
            let p = run[0].source_partition();
            let min = floor.entry(p).or_insert_with_key(|p| {
                if !self.owned.contains(p) {
                    return i64::MAX;
                }
                self.sinks
                    .iter()
                    .filter(|s| s.feeds_from(&p.topic))
                    .map(|s| s.durable.get(p).copied().unwrap_or(-1))
                    .min()
                    .unwrap_or(i64::MAX)
            });
            for r in run {
                let kept = r.offset > *min;
                if kept {
                    *min = r.offset;
                } else {
                    self.stats.skipped += 1;
                }
                keep.push(kept);
            }
        }
        let mut keep = keep.into_iter();
        records
            .into_iter()
            .filter(|_| keep.next().unwrap_or(false))
            .collect()
    }

    /// Stage 1: each stream's records to Arrow, in parallel chunks off the async threads; the
    /// records that fail to decode or validate become dead letters.
    async fn decode(&self, batch: &Batch) -> Result<Decoded> {
        const CHUNK: usize = 16_384;
        let mut jobs = Vec::new();
        for (kind, indices) in &batch.by_kind {
            for chunk in indices.chunks(CHUNK) {
                let (records, decoders, chunk, kind, now_us) = (
                    batch.records.clone(),
                    self.decoders.clone(),
                    chunk.to_vec(),
                    *kind,
                    batch.now_us,
                );
                jobs.push(tokio::task::spawn_blocking(move || {
                    decoders[&kind]
                        .decode(&records, &chunk, now_us)
                        .map(|d| (kind, d))
                }));
            }
        }
        let mut rows: BTreeMap<&'static str, Vec<RecordBatch>> = BTreeMap::new();
        let mut rejected: Vec<Rejection> = Vec::new();
        let mut unknown: BTreeMap<EventKind, u64> = BTreeMap::new();
        for job in jobs {
            let (kind, decoded) = job
                .await
                .map_err(|e| Error::Internal(format!("decode task: {e}")))??;
            rows.entry(kind.bronze_table())
                .or_default()
                .push(decoded.rows);
            rejected.extend(decoded.rejected);
            *unknown.entry(kind).or_default() += decoded.unknown_fields;
        }
        for (kind, count) in unknown.into_iter().filter(|(_, n)| *n > 0) {
            events::UnknownFields {
                topic: kind.topic(),
                count,
            }
            .emit();
        }
        rejected.sort_by_key(|r| r.index);
        if !rejected.is_empty() {
            for r in &rejected {
                let record = &batch.records[r.index];
                events::RecordRejected {
                    topic: &record.topic,
                    partition: record.partition,
                    offset: record.offset,
                    reason: &r.reason,
                }
                .emit();
            }
            rows.entry(decode::DEAD_LETTERS)
                .or_default()
                .push(decode::dead_letters(
                    &self.opts.name,
                    &batch.records,
                    &rejected,
                    batch.now_us,
                )?);
        }
        Ok(Decoded {
            rows,
            rejected,
            at: Instant::now(),
        })
    }

    /// Stage 1b: later copies of event ids already ingested leave the rows (their offsets still
    /// count as handled), so no sink, MERGE or detector sees an event twice.
    fn deduplicate(&mut self, decoded: &mut Decoded) -> Result<()> {
        if !self.dedup.enabled() {
            return Ok(());
        }
        for kind in EventKind::ALL {
            let Some(batches) = decoded.rows.get_mut(kind.bronze_table()) else {
                continue;
            };
            let mut dropped = 0;
            for b in batches.iter_mut() {
                let (kept, n) = self.dedup.filter(kind.topic(), b)?;
                *b = kept;
                dropped += n;
            }
            if dropped > 0 {
                self.stats.duplicates += dropped;
                events::DuplicatesDropped {
                    topic: kind.topic(),
                    count: dropped,
                }
                .emit();
            }
        }
        Ok(())
    }

    /// Stage 2: the batch's telemetry through the anomaly detector, on a blocking thread
    /// (started while the data sinks commit).
    fn detect(
        &mut self,
        decoded: &Decoded,
        now_us: i64,
    ) -> tokio::task::JoinHandle<Result<Detected>> {
        let telemetry: Vec<RecordBatch> = decoded
            .rows
            .get(EventKind::Telemetry.bronze_table())
            .cloned()
            .unwrap_or_default();
        let floor = |feed: Feed| -> HashMap<i32, i64> {
            self.sinks
                .iter()
                .find(|s| s.feed == feed)
                .map(|s| s.floors(EventKind::Telemetry.topic()))
                .unwrap_or_default()
        };
        let (state_floor, anomaly_floor) = (floor(Feed::DetectorState), floor(Feed::Anomalies));
        let mut detector = std::mem::take(&mut self.detector);
        tokio::task::spawn_blocking(move || -> Result<Detected> {
            let mut anomalies = Vec::new();
            let mut touched = BTreeSet::new();
            for b in &telemetry {
                let observed = detector.observe(
                    b,
                    |p| state_floor.get(&p).copied().unwrap_or(-1),
                    |p| anomaly_floor.get(&p).copied().unwrap_or(-1),
                    now_us,
                )?;
                anomalies.push(observed.anomalies);
                touched.extend(observed.touched);
            }
            let state = if touched.is_empty() {
                Vec::new()
            } else {
                vec![detector.state_batch(&touched, now_us)?]
            };
            Ok(Detected {
                detector,
                anomalies,
                state,
                touched,
            })
        })
    }

    /// Stage 3: MERGE-kept sinks queue their rows for their own tasks ([`Lagged`]); every other
    /// sink with something to record commits, data sinks in parallel with the detector; then the
    /// anomalies, then the detector state.
    async fn write(&mut self, batch: &Batch, mut decoded: Decoded) -> Result<Written> {
        let detection = self.detect(&decoded, batch.now_us);
        let (pipeline, target) = (self.opts.name.clone(), self.opts.target_file_bytes);
        // MERGE-kept sinks first: they queue the stream's rows before its bronze table takes them.
        for sink in self.sinks.iter_mut().filter(|s| s.lag.is_some()) {
            let Feed::Events(kind) = sink.feed else {
                continue;
            };
            let rows = decoded
                .rows
                .get(kind.bronze_table())
                .cloned()
                .unwrap_or_default();
            if let Some((rows, _)) = prepare(sink, &batch.last, rows)? {
                sink.make_room().await;
                self.stats.commits += sink.enqueue(rows, &pipeline, &self.merges)?;
            }
        }
        let (mut data, mut signals): (Vec<&mut Sink>, Vec<&mut Sink>) = self
            .sinks
            .iter_mut()
            .filter(|s| s.lag.is_none())
            .partition(|s| !matches!(s.feed, Feed::Anomalies | Feed::DetectorState));
        let mut commits = Vec::new();
        for sink in data.iter_mut() {
            let rows = decoded.rows.remove(sink.name).unwrap_or_default();
            if let Some((rows, n)) = prepare(sink, &batch.last, rows)? {
                let pipeline = pipeline.as_str();
                commits.push(
                    async move {
                        commit_sink(sink, pipeline, rows, target, None)
                            .await
                            .map(|()| (sink.name, n))
                    }
                    .boxed(),
                );
            }
        }
        let signal_commits = async {
            let Detected {
                detector,
                anomalies,
                state,
                touched,
            } = detection
                .await
                .map_err(|e| Error::Internal(format!("detector task: {e}")))??;
            let mut done = Vec::new();
            for sink in signals.iter_mut() {
                let (rows, replace) = match sink.feed {
                    Feed::Anomalies => (anomalies.clone(), None),
                    _ => (state.clone(), Some(replace_partitions(&touched))),
                };
                if let Some((rows, n)) = prepare(sink, &batch.last, rows)? {
                    commit_sink(sink, &pipeline, rows, target, replace).await?;
                    done.push((sink.name, n));
                }
            }
            Ok::<_, Error>((detector, done))
        };
        let (results, signals) = futures::join!(futures::future::join_all(commits), signal_commits);
        let (detector, signal_results) = signals?;
        self.detector = detector;
        let mut written = 0u64;
        for (name, n) in results
            .into_iter()
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .chain(signal_results)
        {
            events::TableCommitted {
                table: name,
                rows: n as u64,
            }
            .emit();
            if crate::model::tables::get(name).is_ok_and(|t| t.role.from_topic()) {
                written += n as u64;
            }
            self.stats.commits += 1;
        }
        self.stats.rows += written;
        crate::lakehouse::announce_commit();
        Ok(Written {
            dead_letters: decoded.rejected.len() as u64,
            decode: decoded.at - batch.started,
        })
    }

    /// Stage 4: the batch's stats and metrics; its records held by every sink fed from their
    /// topic go to Kafka (for lag only) and the observer, the rest wait for their merges.
    fn acknowledge(&mut self, batch: Batch, written: Written, source: &Source) -> Result<()> {
        let done = Instant::now();
        self.stats.dead_letters += written.dead_letters;
        self.stats.batches += 1;
        self.stats
            .write_ms
            .record(done - batch.started - written.decode);
        self.stats.last_commit = Some(done);
        events::BatchCommitted {
            records: batch.records.len() as u64,
            bytes: batch.bytes,
            dead_letters: written.dead_letters,
            latency: done - batch.started,
            decode: written.decode,
            lag: source.lag(),
            by_topic: batch
                .by_kind
                .iter()
                .map(|(k, v)| (k.topic(), v.len() as u64))
                .collect(),
        }
        .emit();
        // Earlier records first, so each partition's records are released in order.
        self.settle_merges(source)?;
        // What each topic's records wait for: the last unit queued on every MERGE-kept sink fed
        // from it that has not committed it yet.
        let mut waits: HashMap<Arc<str>, Vec<(usize, u64)>> = HashMap::new();
        let mut waiting = Vec::with_capacity(batch.records.len());
        for run in partition_runs(&batch.records) {
            let topic = &run[0].topic;
            let w = waits.entry(topic.clone()).or_insert_with(|| {
                self.sinks
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.feeds_from(topic))
                    .filter_map(|(i, s)| s.lag.as_ref().map(|l| (i, l)))
                    .filter(|(_, l)| l.issued > l.settled)
                    .map(|(i, l)| (i, l.issued))
                    .collect()
            });
            waiting.extend(std::iter::repeat_n(!w.is_empty(), run.len()));
        }
        let records = Arc::try_unwrap(batch.records).unwrap_or_else(|r| (*r).clone());
        let mut now = Vec::with_capacity(records.len());
        let mut later: BTreeMap<Arc<str>, Vec<RawRecord>> = BTreeMap::new();
        for (r, waits) in records.into_iter().zip(waiting) {
            if waits {
                later.entry(r.topic.clone()).or_default().push(r);
            } else {
                now.push(r);
            }
        }
        self.release(&now, SystemTime::now(), source);
        for (topic, records) in later {
            let waits = waits.remove(&topic).unwrap_or_default();
            self.awaiting.push(Awaiting { records, waits });
        }
        Ok(())
    }

    /// Txn-only commits for sinks whose pending offsets have waited at least `idle`
    /// (`opts.idle_commit` while running; zero at the end of a run, so every one is recorded).
    async fn commit_pending(&mut self, idle: Duration) -> Result<()> {
        for sink in self.sinks.iter_mut() {
            if !sink.pending.is_empty() && sink.last_commit.elapsed() >= idle {
                // A MERGE-kept sink's offsets wait for its merges; its table is the one they left.
                if sink.merging() {
                    continue;
                }
                self.stats.commits += sink.settle_lagged()?;
                commit_sink(
                    sink,
                    &self.opts.name,
                    Vec::new(),
                    self.opts.target_file_bytes,
                    None,
                )
                .await?;
                self.stats.commits += 1;
            }
        }
        Ok(())
    }
}

impl Batch {
    fn new(records: Vec<RawRecord>) -> Batch {
        let mut last = Offsets::new();
        let mut by_kind: BTreeMap<EventKind, Vec<usize>> = BTreeMap::new();
        let bytes = records
            .iter()
            .map(|r| r.payload.as_ref().map_or(0, |p| p.len() as u64))
            .sum();
        let mut start = 0;
        for run in partition_runs(&records) {
            last.insert(run[0].source_partition(), run[run.len() - 1].offset);
            if let Some(kind) = EventKind::from_topic(&run[0].topic) {
                by_kind
                    .entry(kind)
                    .or_default()
                    .extend(start..start + run.len());
            }
            start += run.len();
        }
        Batch {
            records: Arc::new(records),
            last,
            by_kind,
            bytes,
            started: Instant::now(),
            now_us: chrono::Utc::now().timestamp_micros(),
        }
    }
}

/// What a sink restores of partitions newly assigned to it, beyond its own offsets.
enum Restored {
    /// A bronze table's newest event ids of these partitions (of this topic), for dedup.
    Ids(&'static str, Vec<SourcePartition>, Vec<RecordBatch>),
    /// The detector's saved state of these telemetry partitions.
    State(BTreeSet<i32>, Vec<RecordBatch>),
    Nothing,
}

/// Brings `sink` up to date with the log for the partitions it has just been assigned (`mine`):
/// its table, its stored offsets, and what it restores of them (`window` newest event ids per
/// partition for a bronze table when dedup is on; the detector state).
async fn resume_sink(
    sink: &mut Sink,
    mine: Vec<SourcePartition>,
    pipeline: &str,
    window: Option<usize>,
) -> Result<Restored> {
    sink.table
        .update_state()
        .await
        .map_err(|e| Error::delta(sink.name, e))?;
    for p in &mine {
        sink.durable.remove(p);
        sink.pending.remove(p);
    }
    sink.durable
        .extend(commit::txn_versions(&sink.table, sink.name, pipeline, mine.clone()).await?);
    if let (Feed::Events(kind), Write::Append, Some(window)) = (sink.feed, &sink.write, window)
        && kind.bronze_table() == sink.name
    {
        let stored: Vec<(i32, i64)> = mine
            .iter()
            .filter_map(|p| sink.durable.get(p).map(|o| (p.partition, *o)))
            .collect();
        let rows = recent_ids(&sink.table, &stored, window).await?;
        return Ok(Restored::Ids(kind.topic(), mine, rows));
    }
    if sink.feed == Feed::DetectorState {
        let partitions: BTreeSet<i32> = mine.iter().map(|p| p.partition).collect();
        let batches = load_state(&sink.table, &partitions).await?;
        return Ok(Restored::State(partitions, batches));
    }
    Ok(Restored::Nothing)
}

/// The event ids, partitions and offsets of a bronze table's newest rows of each partition
/// (partition, stored offset): those after `stored - window`. One scan for all of them.
async fn recent_ids(
    table: &DeltaTable,
    stored: &[(i32, i64)],
    window: usize,
) -> Result<Vec<RecordBatch>> {
    if stored.is_empty() {
        return Ok(Vec::new());
    }
    let ranges = stored
        .iter()
        .map(|(p, offset)| {
            format!(
                "(_partition = {p} AND _offset > {})",
                offset.saturating_sub(window as i64)
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    crate::lakehouse::query::snapshot_sql(
        table,
        &format!("SELECT event_id, _partition, _offset FROM t WHERE {ranges}"),
    )
    .await
}

/// The saved detector state of `partitions`, read from the state table's current version.
async fn load_state(table: &DeltaTable, partitions: &BTreeSet<i32>) -> Result<Vec<RecordBatch>> {
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let list = partitions
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    crate::lakehouse::query::snapshot_sql(
        table,
        &format!("SELECT * FROM t WHERE _partition IN ({list})"),
    )
    .await
}

/// Drops rows the sink already holds (only after a crash between two sinks' commits).
fn not_yet_durable(batch: RecordBatch, sink: &Sink) -> Result<RecordBatch> {
    if sink.durable.is_empty() || batch.num_rows() == 0 {
        return Ok(batch);
    }
    if let Write::ReplacePartitions = sink.write {
        // Replaced per partition, not appended.
        return Ok(batch);
    }
    let (pcol, ocol) = sink.feed.position_columns();
    let parts = batch
        .column_by_name(pcol)
        .and_then(|c| c.as_any().downcast_ref::<Int32Array>());
    let offs = batch
        .column_by_name(ocol)
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>());
    let (Some(parts), Some(offs)) = (parts, offs) else {
        return Err(Error::Internal(format!(
            "{} rows lack partition/offset",
            sink.name
        )));
    };
    // Dead letters carry their topic per row; every other sink has one topic.
    let topics = match sink.feed.topic() {
        Some(_) => None,
        None => Some(
            batch
                .column_by_name("topic")
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
                .ok_or_else(|| Error::Internal("dead letters lack topic".into()))?,
        ),
    };
    let fixed = sink.feed.topic().unwrap_or_default();
    let floor: HashMap<(&str, i32), i64> = sink
        .durable
        .iter()
        .map(|(p, o)| ((p.topic.as_str(), p.partition), *o))
        .collect();
    let mask: BooleanArray = (0..batch.num_rows())
        .map(|i| {
            let topic = topics.map_or(fixed, |t| t.value(i));
            Some(offs.value(i) > floor.get(&(topic, parts.value(i))).copied().unwrap_or(-1))
        })
        .collect();
    Ok(arrow::compute::filter_record_batch(&batch, &mask)?)
}

/// What a sink must commit for this batch: its rows not yet durable, with the batch's offsets
/// added to its pending ones; `None` when it has nothing to write (the offsets stay pending).
fn prepare(
    sink: &mut Sink,
    last: &Offsets,
    batches: Vec<RecordBatch>,
) -> Result<Option<(Vec<RecordBatch>, usize)>> {
    // Only partitions that moved past what this sink already holds: a replay for another
    // sink must never move this sink's txn version backwards.
    let offsets: Offsets = last
        .iter()
        .filter(|(p, o)| {
            sink.feeds_from(&p.topic) && **o > sink.durable.get(*p).copied().unwrap_or(-1)
        })
        .map(|(p, o)| (p.clone(), *o))
        .collect();
    if offsets.is_empty() {
        return Ok(None);
    }
    let batches: Vec<RecordBatch> = batches
        .into_iter()
        .map(|b| not_yet_durable(b, sink))
        .collect::<Result<_>>()?;
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    sink.pending.extend(offsets);
    // The anomaly table moves in lockstep with the state table (a txn-only commit when a batch
    // found nothing), so a restart never replays far for it.
    if n == 0 && sink.feed != Feed::Anomalies {
        return Ok(None);
    }
    Ok(Some((batches, n)))
}

/// `_partition IN (…)`: the rows of the state table a batch replaces.
fn replace_partitions(partitions: &BTreeSet<i32>) -> String {
    let list = partitions
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!("_partition IN ({list})")
}

/// Commits `batches` (appended, or replacing the rows matching `replace`) with the sink's pending
/// offsets; for a MERGE-kept sink, only its offsets (its rows go through [`Lagged`]).
async fn commit_sink(
    sink: &mut Sink,
    pipeline: &str,
    batches: Vec<RecordBatch>,
    target_file_bytes: u64,
    replace: Option<String>,
) -> Result<()> {
    let offsets = std::mem::take(&mut sink.pending);
    let started = Instant::now();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    // A MERGE-kept sink merges its rows in its own task; here it only records offsets.
    let result = commit::write(
        sink.table.clone(),
        sink.name,
        pipeline,
        batches,
        &offsets,
        target_file_bytes,
        replace,
    )
    .await;
    tracing::debug!(
        table = sink.name,
        rows,
        ms = started.elapsed().as_millis() as u64,
        ok = result.is_ok(),
        "sink committed"
    );
    settle(sink, offsets, result)
}

/// Raises each partition of `into` to its offset in `offsets` (offsets only grow).
fn raise(into: &mut Offsets, offsets: Offsets) {
    for (p, o) in offsets {
        let d = into.entry(p).or_insert(o);
        *d = (*d).max(o);
    }
}

/// After a commit attempt with `offsets`: on success they are durable (durable offsets only
/// grow); on failure they are pending again.
fn settle(sink: &mut Sink, offsets: Offsets, result: Result<DeltaTable>) -> Result<()> {
    match result {
        Ok(table) => {
            sink.table = table;
            raise(&mut sink.durable, offsets);
            sink.last_commit = Instant::now();
            Ok(())
        }
        Err(e) => {
            sink.pending = offsets;
            Err(e)
        }
    }
}

/// Runs `def`'s SQL over the batch's new rows (as `batch`) and the sink table at the version the
/// merge commits on — nothing else of the lake — and merges the result by key.
async fn merge(
    table: &DeltaTable,
    name: &str,
    def: &Definition,
    pipeline: &str,
    batches: Vec<RecordBatch>,
    offsets: &Offsets,
    expected: &Offsets,
) -> Result<DeltaTable> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| Error::Internal("merge without rows".into()))?;
    let own: std::sync::Arc<dyn datafusion::catalog::TableProvider> =
        table.clone().table_provider().await?;
    let ctx = super::session::with_tables(|t| Ok((t.name == name).then(|| own.clone())))?;
    let filter = match &def.kind {
        crate::pipeline::definition::Kind::Batch(_, filter) => filter.as_deref(),
        crate::pipeline::definition::Kind::Derived(_) => None,
    };
    let ctx = super::session::with_batch(&ctx, schema, batches, filter)?;
    let source = ctx.sql(&def.sql).await?;
    commit::merge(
        table.clone(),
        name,
        &def.sink.merge_spec(),
        pipeline,
        source,
        offsets,
        expected,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict() -> Error {
        Error::ConflictingOffsets {
            table: "iot.telemetry".into(),
            app_id: "(concurrent commit)".into(),
            expected: None,
            found: None,
        }
    }

    /// Delta refusing a replace-write because another writer appended to the table.
    fn concurrent_append() -> Error {
        use deltalake::kernel::transaction::{CommitConflictError, TransactionError};
        Error::delta(
            "iot.sensor_state",
            deltalake::DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(CommitConflictError::ConcurrentAppend),
            },
        )
    }

    fn kafka_down() -> Error {
        Error::Io(std::io::Error::other("broker went away"))
    }

    /// Two writers that keep colliding must not end the one that loses every race: fifty lost
    /// races in a row are restarted, with the wait capped at the maximum.
    #[test]
    fn lost_commit_races_never_end_the_worker() {
        let mut r = Restarts::default();
        for i in 0..50 {
            let e = if i % 2 == 0 {
                conflict()
            } else {
                concurrent_append()
            };
            match r.on_error(&e, Duration::from_secs(3)) {
                Restart::After(wait) => assert!(wait <= MAX_BACKOFF, "{wait:?}"),
                Restart::GiveUp => panic!("gave up on a lost commit race"),
            }
        }
        assert_eq!(r.failures(), 0);
    }

    /// Any other retryable failure ends the worker after MAX_RESTARTS in a row; a healthy run
    /// in between starts the count again; a non-retryable one ends it at once.
    #[test]
    fn other_failures_give_up_after_max_restarts_in_a_row() {
        // `n` Kafka failures are restarted, the next one gives up.
        let restarts_then_gives_up = |r: &mut Restarts, n: u32| {
            for _ in 0..n {
                let next = r.on_error(&kafka_down(), Duration::from_secs(1));
                assert!(matches!(next, Restart::After(_)), "{next:?}");
            }
            assert_eq!(
                r.on_error(&kafka_down(), Duration::from_secs(1)),
                Restart::GiveUp
            );
        };
        restarts_then_gives_up(&mut Restarts::default(), MAX_RESTARTS);
        // A lost race in between neither resets nor adds to the count.
        let mut r = Restarts::default();
        for _ in 0..MAX_RESTARTS - 1 {
            r.on_error(&kafka_down(), Duration::from_secs(1));
        }
        r.on_error(&conflict(), Duration::from_secs(1));
        restarts_then_gives_up(&mut r, 1);
        // A run of a minute or more resets the count.
        assert!(matches!(
            r.on_error(&kafka_down(), HEALTHY_RUN),
            Restart::After(_)
        ));
        assert_eq!(r.failures(), 1);
        let mut r = Restarts::default();
        assert_eq!(
            r.on_error(&Error::Invalid("bad flag".into()), Duration::ZERO),
            Restart::GiveUp
        );
    }

    /// Waits double up to the cap and are drawn from the upper half of the current backoff, so
    /// two workers that failed together do not restart together: the waits vary.
    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            let mut r = Restarts::default();
            let mut backoff = FIRST_BACKOFF;
            for _ in 0..10 {
                let Restart::After(wait) = r.on_error(&conflict(), Duration::ZERO) else {
                    panic!("gave up");
                };
                assert!(
                    wait >= backoff / 2 && wait <= backoff,
                    "{wait:?} vs {backoff:?}"
                );
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            let Restart::After(first) = Restarts::default().on_error(&conflict(), Duration::ZERO)
            else {
                panic!("gave up");
            };
            seen.insert(first);
        }
        assert!(seen.len() > 1, "every first wait was {seen:?}: no jitter");
    }
}
