//! The micro-batch runner of the bronze pipeline.
//!
//! Each iteration: read a batch (bounded by count and time) → keep only records some sink still
//! needs → validate and decode per stream → commit every sink that has rows, each commit carrying
//! the batch's last offset per source partition as `txn` actions → record Kafka offsets for lag.
//!
//! Exactly once, per sink table (DESIGN §3): a sink's txn version for a partition is the last
//! offset it holds. A record is written to a sink only if its offset is above that version, so a
//! crash between the commits of two sinks is repaired by replay without duplicates. A sink with
//! nothing to write still has its version advanced by a txn-only commit once it has been idle
//! for `idle_commit`, which bounds replay after a restart. Nothing is acknowledged to Kafka
//! before it is durable in Delta, and Kafka's offsets are never trusted for correctness.
//!
//! The loop is deliberately sequential: commits never overlap polling, so a rebalance callback
//! never races an in-flight commit. librdkafka keeps prefetching in its own threads meanwhile,
//! and decoding and the per-table commits run in parallel within a batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, Int32Array, Int64Array, RecordBatch};
use deltalake::DeltaTable;
use futures::FutureExt;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::KafkaConfig;
use crate::decode::{self, BronzeDecoder, Rejection};
use crate::error::{Error, Result};
use crate::lakehouse::Lakehouse;
use crate::lakehouse::commit::{self, Offsets, SourcePartition};
use crate::model::EventKind;
use crate::pipeline::definition::Definition;
use crate::pipeline::definition::Definitions;
use crate::signals::iot::{self, IotSignals};
use crate::source::{AssignmentChange, PositionResolver, RawRecord, Source};
use crate::telemetry::events;

const DEAD_LETTERS: &str = "ops.dead_letters";

#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub name: String,
    pub brokers: String,
    pub group_id: String,
    pub batch_max_events: usize,
    pub batch_max_wait: Duration,
    pub idle_commit: Duration,
    pub target_file_bytes: u64,
    /// Stop once this many source records have been committed (benchmarks).
    pub stop_after: Option<u64>,
    /// Collects, per committed record, commit time minus Kafka timestamp in ms (benchmarks).
    pub freshness: Option<Arc<Mutex<Vec<u32>>>>,
    /// Pipeline definitions directory; empty for the built-in ones.
    pub definitions: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct RunStats {
    pub records: u64,
    pub bytes: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub skipped: u64,
    pub batches: u64,
    pub commits: u64,
    #[serde(skip)]
    pub first_fetch: Option<Instant>,
    #[serde(skip)]
    pub last_commit: Option<Instant>,
}

/// What a sink table holds, which decides what feeds it and how it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The valid events of one stream, appended.
    Bronze(EventKind),
    /// Rejected records of every stream, appended.
    DeadLetters,
    /// Anomalous telemetry readings, appended.
    Anomalies,
    /// Detector state, replaced per source partition, committed after the anomalies.
    SensorState,
    /// A table kept by MERGE from each batch's new bronze rows of a stream, through a
    /// `pipelines/` definition with a `batch` input (e.g. the inventory position).
    Merge(EventKind, &'static str),
}

/// A sink table and what this worker knows is durable in it.
struct Sink {
    table: DeltaTable,
    role: Role,
    /// For [`Role::Merge`]: the definition, and the lakehouse its SQL reads.
    merge: Option<(Arc<Definition>, Lakehouse)>,
    durable: Offsets,
    /// Offsets processed with nothing to write here, not yet recorded in the table.
    pending: Offsets,
    last_commit: Instant,
}

impl Role {
    fn table(self) -> &'static str {
        match self {
            Role::Bronze(k) => k.bronze_table(),
            Role::DeadLetters => DEAD_LETTERS,
            Role::Anomalies => iot::ANOMALIES_TABLE,
            Role::SensorState => iot::STATE_TABLE,
            Role::Merge(_, table) => table,
        }
    }

    /// The one topic this sink is fed from; `None` for the dead letters, fed by every topic.
    fn topic(self) -> Option<&'static str> {
        match self {
            Role::Bronze(k) => Some(k.topic()),
            Role::DeadLetters => None,
            Role::Anomalies | Role::SensorState => Some(EventKind::Telemetry.topic()),
            Role::Merge(k, _) => Some(k.topic()),
        }
    }

    fn feeds_from(self, topic: &str) -> bool {
        match self.topic() {
            Some(t) => t == topic,
            None => EventKind::from_topic(topic).is_some(),
        }
    }

    /// Every sink of the pipeline, in commit order: the state table last, so it never runs
    /// ahead of the anomalies derived from it. Merge sinks come from the definitions.
    fn all(defs: &Definitions) -> Vec<Role> {
        let mut roles: Vec<Role> = EventKind::ALL.into_iter().map(Role::Bronze).collect();
        for kind in EventKind::ALL {
            if let Some(d) = defs.batch_pipeline(kind.bronze_table())
                && let Ok(t) = crate::model::tables::get(&d.sink.table)
            {
                roles.push(Role::Merge(kind, t.name.as_str()));
            }
        }
        roles.extend([Role::DeadLetters, Role::Anomalies, Role::SensorState]);
        roles
    }
}

impl Sink {
    fn name(&self) -> &'static str {
        self.role.table()
    }

    fn feeds_from(&self, topic: &str) -> bool {
        self.role.feeds_from(topic)
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

/// The sinks each source topic feeds.
fn sink_names(topic: &str, roles: &[Role]) -> Vec<&'static str> {
    roles
        .iter()
        .copied()
        .filter(|r| r.feeds_from(topic))
        .map(Role::table)
        .collect()
}

/// Reads where each partition must resume: one past the lowest txn version over the sinks it
/// feeds; from the beginning when any of them has never recorded it.
fn resolver(lake: Lakehouse, pipeline: String, roles: Vec<Role>) -> PositionResolver {
    Arc::new(move |parts: Vec<SourcePartition>| {
        let lake = lake.clone();
        let pipeline = pipeline.clone();
        let roles = roles.clone();
        async move {
            let mut tables: HashMap<&'static str, DeltaTable> = HashMap::new();
            let mut out = BTreeMap::new();
            for p in parts {
                let mut next: Option<i64> = None;
                let mut missing = false;
                for name in sink_names(&p.topic, &roles) {
                    if !tables.contains_key(name) {
                        tables.insert(name, lake.ensure(name).await?);
                    }
                    let v =
                        commit::txn_versions(&tables[name], name, &pipeline, [p.clone()]).await?;
                    match v.get(&p) {
                        Some(v) => next = Some(next.map_or(v + 1, |n: i64| n.min(v + 1))),
                        None => missing = true,
                    }
                }
                out.insert(p, if missing { None } else { next });
            }
            Ok(out)
        }
        .boxed()
    })
}

/// Runs the pipeline until `stop` turns true (finishing the batch in hand) or `stop_after` is
/// reached. Errors that a fresh start from the Delta log can cure are retried by
/// [`run_with_restarts`].
pub async fn run(
    kafka: &KafkaConfig,
    lake: &Lakehouse,
    opts: &PipelineOptions,
    mut stop: watch::Receiver<bool>,
) -> Result<RunStats> {
    let defs = Definitions::from_config(&opts.definitions).await?;
    let roles = Role::all(&defs);
    let mut sinks = Vec::new();
    for role in roles.iter().copied() {
        let mut sink = open_sink(lake, role).await?;
        if let Role::Merge(kind, _) = role {
            let def = defs
                .batch_pipeline(kind.bronze_table())
                .expect("merge roles come from definitions");
            sink.merge = Some((Arc::new(def.clone()), lake.clone()));
        }
        sinks.push(sink);
    }
    let mut iot = IotSignals::new();
    let decoders: Arc<BTreeMap<EventKind, BronzeDecoder>> = Arc::new(
        EventKind::ALL
            .into_iter()
            .map(|k| BronzeDecoder::new(k).map(|d| (k, d)))
            .collect::<Result<_>>()?,
    );

    let topics: Vec<&str> = EventKind::ALL.iter().map(|k| k.topic()).collect();
    let source = Source::new(
        kafka,
        &opts.brokers,
        &opts.group_id,
        &topics,
        resolver(lake.clone(), opts.name.clone(), roles),
    )?;
    tracing::info!(pipeline = %opts.name, brokers = %opts.brokers, group = %opts.group_id, lakehouse = %lake.root().display(), "pipeline started");

    let mut stats = RunStats::default();
    let result = run_loop(
        &source, &mut sinks, &mut iot, &decoders, opts, &mut stop, &mut stats,
    )
    .await;
    // Record every pending offset so a restart does not replay what was already handled.
    if result.is_ok() {
        for sink in sinks.iter_mut() {
            if !sink.pending.is_empty() {
                commit_sink(sink, &opts.name, Vec::new(), opts.target_file_bytes, None).await?;
                stats.commits += 1;
            }
        }
    }
    source.close()?;
    tracing::info!(
        records = stats.records,
        rows = stats.rows,
        dead_letters = stats.dead_letters,
        commits = stats.commits,
        "pipeline stopped"
    );
    result.map(|()| stats)
}

/// [`run`], restarted from the Delta log after retryable failures (Kafka hiccups, another
/// worker committing a partition we thought we owned), with capped exponential backoff.
pub async fn run_with_restarts(
    kafka: &KafkaConfig,
    lake: &Lakehouse,
    opts: &PipelineOptions,
    stop: watch::Receiver<bool>,
) -> Result<RunStats> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match run(kafka, lake, opts, stop.clone()).await {
            Err(e) if e.retryable() && !*stop.borrow() => {
                tracing::warn!(error = %e, domain = %e.domain(), ?backoff, "pipeline failed; resetting from the Delta log");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

async fn open_sink(lake: &Lakehouse, role: Role) -> Result<Sink> {
    Ok(Sink {
        table: lake.ensure(role.table()).await?,
        role,
        merge: None,
        durable: Offsets::new(),
        pending: Offsets::new(),
        last_commit: Instant::now(),
    })
}

async fn run_loop(
    source: &Source,
    sinks: &mut [Sink],
    iot: &mut IotSignals,
    decoders: &Arc<BTreeMap<EventKind, BronzeDecoder>>,
    opts: &PipelineOptions,
    stop: &mut watch::Receiver<bool>,
    stats: &mut RunStats,
) -> Result<()> {
    let mut owned: std::collections::BTreeSet<SourcePartition> = Default::default();
    loop {
        let stopping = *stop.borrow();
        let polled = Instant::now();
        let (batch, first_at) = if stopping {
            (Vec::new(), None)
        } else {
            source
                .next_batch(opts.batch_max_events, opts.batch_max_wait, stop)
                .await?
        };
        tracing::debug!(
            records = batch.len(),
            poll_ms = polled.elapsed().as_millis() as u64,
            "polled"
        );
        let changes = source.take_changes();
        apply_changes(&changes, sinks, iot, &mut owned, &opts.name).await?;
        if stats.first_fetch.is_none() {
            stats.first_fetch = first_at;
        }

        let kept = select(batch, sinks, &owned);
        stats.skipped += kept.skipped;
        if !kept.records.is_empty() {
            process_batch(kept.records, sinks, iot, decoders, opts, source, stats).await?;
        }
        commit_idle(sinks, opts, stats).await?;

        if stopping {
            // The batch in hand when the stop arrived was committed by the previous pass.
            return Ok(());
        }
        if opts
            .stop_after
            .is_some_and(|n| stats.records + stats.skipped >= n)
        {
            return Ok(());
        }
    }
}

async fn apply_changes(
    changes: &[AssignmentChange],
    sinks: &mut [Sink],
    iot: &mut IotSignals,
    owned: &mut std::collections::BTreeSet<SourcePartition>,
    pipeline: &str,
) -> Result<()> {
    for change in changes {
        match change {
            AssignmentChange::Assigned(parts) => {
                // Another worker may have committed these partitions: start from the log.
                for sink in sinks.iter_mut() {
                    let mine: Vec<_> = parts
                        .iter()
                        .filter(|p| sink.feeds_from(&p.topic))
                        .cloned()
                        .collect();
                    if mine.is_empty() {
                        continue;
                    }
                    sink.table
                        .update_state()
                        .await
                        .map_err(|e| Error::delta(sink.name(), e))?;
                    for p in &mine {
                        sink.durable.remove(p);
                        sink.pending.remove(p);
                    }
                    sink.durable.extend(
                        commit::txn_versions(&sink.table, sink.name(), pipeline, mine.clone())
                            .await?,
                    );
                    if sink.role == Role::SensorState {
                        let partitions: BTreeSet<i32> = mine.iter().map(|p| p.partition).collect();
                        iot.forget(&partitions);
                        for batch in load_state(&sink.table, &partitions).await? {
                            iot.restore(&batch)?;
                        }
                        tracing::info!(sensors = iot.sensors(), "detector state restored");
                    }
                }
                owned.extend(parts.iter().cloned());
            }
            AssignmentChange::Revoked(parts) => {
                let telemetry: BTreeSet<i32> = parts
                    .iter()
                    .filter(|p| Role::SensorState.feeds_from(&p.topic))
                    .map(|p| p.partition)
                    .collect();
                iot.forget(&telemetry);
                for p in parts {
                    owned.remove(p);
                    for sink in sinks.iter_mut() {
                        sink.durable.remove(p);
                        sink.pending.remove(p);
                    }
                }
            }
        }
    }
    Ok(())
}

/// The saved detector state of `partitions`, read from the state table's current version.
async fn load_state(table: &DeltaTable, partitions: &BTreeSet<i32>) -> Result<Vec<RecordBatch>> {
    if table.snapshot().is_err() || partitions.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("state", table.table_provider().await?)?;
    let list = partitions
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let df = ctx
        .sql(&format!("SELECT * FROM state WHERE _partition IN ({list})"))
        .await?;
    Ok(df.collect().await?)
}

struct Selected {
    records: Vec<RawRecord>,
    skipped: u64,
}

/// Keeps the records of owned partitions that at least one sink does not hold yet, each offset
/// once and in order (a re-assignment may make the consumer fetch a range again).
fn select(
    batch: Vec<RawRecord>,
    sinks: &[Sink],
    owned: &std::collections::BTreeSet<SourcePartition>,
) -> Selected {
    let mut floor: HashMap<SourcePartition, i64> = HashMap::new();
    let mut skipped = 0;
    let mut records = Vec::with_capacity(batch.len());
    for r in batch {
        let p = r.source_partition();
        let min = *floor.entry(p.clone()).or_insert_with(|| {
            if !owned.contains(&p) {
                return i64::MAX;
            }
            sinks
                .iter()
                .filter(|s| s.feeds_from(&p.topic))
                .map(|s| s.durable.get(&p).copied().unwrap_or(-1))
                .min()
                .unwrap_or(i64::MAX)
        });
        if r.offset <= min {
            skipped += 1;
            continue;
        }
        floor.insert(p, r.offset);
        records.push(r);
    }
    Selected { records, skipped }
}

async fn process_batch(
    records: Vec<RawRecord>,
    sinks: &mut [Sink],
    iot: &mut IotSignals,
    decoders: &Arc<BTreeMap<EventKind, BronzeDecoder>>,
    opts: &PipelineOptions,
    source: &Source,
    stats: &mut RunStats,
) -> Result<()> {
    let started = Instant::now();
    let now_us = chrono::Utc::now().timestamp_micros();
    let records = Arc::new(records);
    let mut last: Offsets = Offsets::new();
    let mut by_kind: BTreeMap<EventKind, Vec<usize>> = BTreeMap::new();
    let mut bytes = 0u64;
    for (i, r) in records.iter().enumerate() {
        bytes += r.payload.as_ref().map_or(0, |p| p.len() as u64);
        last.insert(r.source_partition(), r.offset);
        if let Some(kind) = EventKind::from_topic(&r.topic) {
            by_kind.entry(kind).or_default().push(i);
        }
    }

    // Decode in parallel, in chunks, off the async threads.
    const CHUNK: usize = 16_384;
    let mut jobs = Vec::new();
    for (kind, indices) in &by_kind {
        for chunk in indices.chunks(CHUNK) {
            let (records, decoders, chunk, kind) =
                (records.clone(), decoders.clone(), chunk.to_vec(), *kind);
            jobs.push(tokio::task::spawn_blocking(move || {
                decoders[&kind]
                    .decode(&records, &chunk, now_us)
                    .map(|(b, r)| (kind, b, r))
            }));
        }
    }
    let mut rows: BTreeMap<&'static str, Vec<RecordBatch>> = BTreeMap::new();
    let mut rejected: Vec<Rejection> = Vec::new();
    for job in jobs {
        let (kind, batch, rej) = job
            .await
            .map_err(|e| Error::Internal(format!("decode task: {e}")))??;
        rows.entry(kind.bronze_table()).or_default().push(batch);
        rejected.extend(rej);
    }
    rejected.sort_by_key(|r| r.index);
    if !rejected.is_empty() {
        for r in &rejected {
            events::RecordRejected {
                topic: &records[r.index].topic,
                partition: records[r.index].partition,
                offset: records[r.index].offset,
                reason: &r.reason,
            }
            .emit();
        }
        rows.entry(DEAD_LETTERS)
            .or_default()
            .push(decode::dead_letters(
                &opts.name, &records, &rejected, now_us,
            )?);
    }

    let decoded = Instant::now();
    // Telemetry goes through the detector on a blocking thread while the bronze and dead-letter
    // tables commit; then the anomalies commit, and the detector state last (see `Role::all`).
    let telemetry: Vec<RecordBatch> = rows
        .get(EventKind::Telemetry.bronze_table())
        .cloned()
        .unwrap_or_default();
    let floor = |role: Role| -> HashMap<i32, i64> {
        sinks
            .iter()
            .find(|s| s.role == role)
            .map(|s| s.floors(EventKind::Telemetry.topic()))
            .unwrap_or_default()
    };
    let (state_floor, anomaly_floor) = (floor(Role::SensorState), floor(Role::Anomalies));
    let mut detector = std::mem::take(iot);
    let detect = tokio::task::spawn_blocking(move || -> Result<_> {
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
        Ok((detector, anomalies, state, touched))
    });

    let (mut data_sinks, mut signal_sinks): (Vec<&mut Sink>, Vec<&mut Sink>) = sinks
        .iter_mut()
        .partition(|s| !matches!(s.role, Role::Anomalies | Role::SensorState));
    let merge_inputs: BTreeMap<&'static str, Vec<RecordBatch>> = data_sinks
        .iter()
        .filter_map(|s| match s.role {
            Role::Merge(kind, table) => Some((
                table,
                rows.get(kind.bronze_table()).cloned().unwrap_or_default(),
            )),
            _ => None,
        })
        .collect();
    let mut data_commits = Vec::new();
    for sink in data_sinks.iter_mut() {
        let batches = match sink.role {
            Role::Merge(_, table) => merge_inputs[table].clone(),
            _ => rows.remove(sink.name()).unwrap_or_default(),
        };
        if let Some((batches, n)) = prepare(sink, &last, batches)? {
            data_commits.push(
                async move {
                    if sink.merge.is_some() {
                        merge_sink(sink, &opts.name, batches).await
                    } else {
                        commit_sink(sink, &opts.name, batches, opts.target_file_bytes, None).await
                    }
                    .map(|()| (sink.name(), n))
                }
                .boxed(),
            );
        }
    }
    let signals = async {
        let (detector, anomalies, state, touched) = detect
            .await
            .map_err(|e| Error::Internal(format!("detector task: {e}")))??;
        let mut done = Vec::new();
        for sink in signal_sinks.iter_mut() {
            let (batches, replace) = match sink.role {
                Role::Anomalies => (anomalies.clone(), None),
                _ => (state.clone(), Some(replace_partitions(&touched))),
            };
            if let Some((batches, n)) = prepare(sink, &last, batches)? {
                commit_sink(sink, &opts.name, batches, opts.target_file_bytes, replace).await?;
                done.push((sink.name(), n));
            }
        }
        Ok::<_, Error>((detector, done))
    };
    let (mut results, signals) = futures::join!(futures::future::join_all(data_commits), signals);
    let (detector, signal_results) = signals?;
    *iot = detector;
    results.extend(signal_results.into_iter().map(Ok));
    let mut written = 0u64;
    for r in results {
        let (name, n) = r?;
        events::TableCommitted {
            table: name,
            rows: n as u64,
        }
        .emit();
        if EventKind::ALL.iter().any(|k| k.bronze_table() == name) {
            written += n as u64;
        }
        stats.commits += 1;
    }

    source.commit_offsets(&last);
    let done = Instant::now();
    let done_ms = chrono::Utc::now().timestamp_millis();
    if let Some(f) = &opts.freshness {
        let mut f = f.lock().expect("poisoned");
        f.extend(
            records
                .iter()
                .filter_map(|r| r.timestamp_ms)
                .map(|t| (done_ms - t).max(0) as u32),
        );
    }
    let dead = rejected.len() as u64;
    stats.records += records.len() as u64;
    stats.bytes += bytes;
    stats.rows += written;
    stats.dead_letters += dead;
    stats.batches += 1;
    stats.last_commit = Some(done);
    events::BatchCommitted {
        records: records.len() as u64,
        bytes,
        dead_letters: dead,
        latency: done - started,
        decode: decoded - started,
        lag: source.lag(),
        by_topic: by_kind
            .iter()
            .map(|(k, v)| (k.topic(), v.len() as u64))
            .collect(),
    }
    .emit();
    Ok(())
}

/// Drops rows the sink already holds (only after a crash between two sinks' commits).
fn not_yet_durable(batch: RecordBatch, sink: &Sink) -> Result<RecordBatch> {
    if sink.durable.is_empty() || batch.num_rows() == 0 {
        return Ok(batch);
    }
    let (pcol, ocol) = match sink.role {
        Role::SensorState => return Ok(batch), // replaced per partition, not appended
        Role::DeadLetters => ("partition", "offset"),
        Role::Bronze(_) | Role::Anomalies | Role::Merge(..) => ("_partition", "_offset"),
    };
    let parts = batch
        .column_by_name(pcol)
        .and_then(|c| c.as_any().downcast_ref::<Int32Array>());
    let offs = batch
        .column_by_name(ocol)
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>());
    let (Some(parts), Some(offs)) = (parts, offs) else {
        return Err(Error::Internal(format!(
            "{} rows lack partition/offset",
            sink.name()
        )));
    };
    // Dead letters carry their topic per row; every other sink has one topic.
    let topics = match sink.role.topic() {
        Some(_) => None,
        None => Some(
            batch
                .column_by_name("topic")
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
                .ok_or_else(|| Error::Internal("dead letters lack topic".into()))?,
        ),
    };
    let fixed = sink.role.topic().unwrap_or_default();
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
    if n == 0 && sink.role != Role::Anomalies {
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

/// Commits `batches` (appended, or replacing the rows matching `replace`) with the sink's
/// pending offsets.
async fn commit_sink(
    sink: &mut Sink,
    pipeline: &str,
    batches: Vec<RecordBatch>,
    target_file_bytes: u64,
    replace: Option<String>,
) -> Result<()> {
    let offsets = std::mem::take(&mut sink.pending);
    let result = commit::write(
        sink.table.clone(),
        sink.name(),
        pipeline,
        batches,
        &offsets,
        target_file_bytes,
        replace,
    )
    .await;
    settle(sink, offsets, result)
}

/// After a commit attempt with `offsets`: on success they are durable (durable offsets only
/// grow); on failure they are pending again.
fn settle(sink: &mut Sink, offsets: Offsets, result: Result<DeltaTable>) -> Result<()> {
    match result {
        Ok(table) => {
            sink.table = table;
            for (p, o) in offsets {
                let d = sink.durable.entry(p).or_insert(o);
                *d = (*d).max(o);
            }
            sink.last_commit = Instant::now();
            Ok(())
        }
        Err(e) => {
            sink.pending = offsets;
            Err(e)
        }
    }
}

/// Runs the sink's `pipelines/` SQL over the batch's new rows (as `batch`) and merges the
/// result into the table with the sink's pending offsets.
async fn merge_sink(sink: &mut Sink, pipeline: &str, batches: Vec<RecordBatch>) -> Result<()> {
    let (def, lake) = sink.merge.clone().expect("a merge sink");
    let offsets = std::mem::take(&mut sink.pending);
    let result = async {
        let schema = batches
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| Error::Internal("merge without rows".into()))?;
        let ctx = super::session::lake(&lake, &Definitions::empty()).await?;
        let ctx = super::session::with_batch(&ctx, schema, batches)?;
        let source = ctx.sql(&def.sql).await?;
        commit::merge(
            sink.table.clone(),
            sink.role.table(),
            &def.sink,
            pipeline,
            source,
            &offsets,
        )
        .await
    }
    .await;
    settle(sink, offsets, result)
}

/// Txn-only commits for sinks that have had nothing to write for `idle_commit`.
async fn commit_idle(
    sinks: &mut [Sink],
    opts: &PipelineOptions,
    stats: &mut RunStats,
) -> Result<()> {
    for sink in sinks.iter_mut() {
        if !sink.pending.is_empty() && sink.last_commit.elapsed() >= opts.idle_commit {
            commit_sink(sink, &opts.name, Vec::new(), opts.target_file_bytes, None).await?;
            stats.commits += 1;
        }
    }
    Ok(())
}
