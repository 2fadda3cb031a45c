//! Kafka source: a consumer-group member that yields micro-batches of raw records.
//!
//! Positions come from Delta, not from Kafka (DESIGN §3). On every assignment the consumer asks
//! its [`PositionResolver`] (which reads the sink tables' txn versions) where each new partition
//! must start, and assigns the partitions at those offsets, inside the rebalance callback, so
//! not a single stale record is fetched. Kafka's committed offsets are written after each Delta
//! commit for lag monitoring only; when they are missing or wrong nothing changes.
//!
//! Revocations are recorded so the runner drops records of partitions it no longer owns from
//! the batch it is building. The runner polls the next batch while it writes the last one, so
//! the rebalance callback first waits for the batch being written ([`Source::hold_writes`]):
//! no commit is in flight when a revocation or an assignment takes effect; a revocation also
//! waits for the merges the runner does off the batch's path ([`Source::merges`]). A partition
//! moves to another worker only after what this one took of it is durable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::config::KafkaConfig;
use crate::error::Result;
use crate::lakehouse::commit::{Offsets, SourcePartition};

/// One record as read from Kafka, owned.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Kafka message timestamp (producer create time), ms since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl RawRecord {
    pub fn source_partition(&self) -> SourcePartition {
        SourcePartition::new(&*self.topic, self.partition)
    }

    fn same_partition(&self, other: &RawRecord) -> bool {
        self.partition == other.partition
            && (Arc::ptr_eq(&self.topic, &other.topic) || self.topic == other.topic)
    }
}

/// `records` as runs of consecutive records of one source partition. The consumer hands records
/// over in such runs (one per fetched message set), so bookkeeping per partition done once per
/// run costs a few lookups per batch instead of an allocation per record.
pub fn partition_runs(records: &[RawRecord]) -> impl Iterator<Item = &[RawRecord]> {
    records.chunk_by(RawRecord::same_partition)
}

/// Where each newly assigned partition must resume: the next offset to read, or `None` for
/// "from the beginning of the log".
pub type PositionResolver = Arc<
    dyn Fn(
            Vec<SourcePartition>,
        ) -> BoxFuture<'static, Result<BTreeMap<SourcePartition, Option<i64>>>>
        + Send
        + Sync,
>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentChange {
    Assigned(Vec<SourcePartition>),
    Revoked(Vec<SourcePartition>),
    /// The log of this partition does not hold what Delta says comes next, and the policy says
    /// to ingest it from its earliest offset: what the sinks store for it no longer counts.
    ResetTo(SourcePartition, i64),
}

/// What to do when Delta's next offset for a partition is not in its Kafka log
/// (`pipeline.offsets_out_of_range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfRange {
    /// Stop the worker with an error naming the partition and the offsets.
    Stop,
    /// Ingest the partition's log from its earliest offset.
    ResetToEarliest,
}

impl OutOfRange {
    pub fn from_config(value: &str) -> OutOfRange {
        match value {
            "reset-to-earliest" => OutOfRange::ResetToEarliest,
            _ => OutOfRange::Stop,
        }
    }
}

pub struct SourceContext {
    resolver: PositionResolver,
    /// Client settings (no group) for reading a partition's watermarks on a consumer of its own.
    reader: rdkafka::ClientConfig,
    out_of_range: OutOfRange,
    /// A mismatch under [`OutOfRange::Stop`], reported by the next poll.
    fatal: Mutex<Option<crate::Error>>,
    changes: Mutex<Vec<AssignmentChange>>,
    /// Per-partition consumer lag from librdkafka's periodic statistics.
    lag: Mutex<BTreeMap<SourcePartition, i64>>,
    /// True while the runner writes a batch ([`Source::hold_writes`]): a rebalance, and the
    /// close of the batch polled beside it, wait for it to turn false.
    writing: tokio::sync::watch::Sender<bool>,
    /// Merges in flight off the batch's path ([`Source::merges`]): a revocation waits for none
    /// to be left.
    merging: tokio::sync::watch::Sender<usize>,
}

/// `topic[0,1,2] other[3]`: a compact rendering of a partition set for logs.
fn describe<'a>(parts: impl Iterator<Item = &'a SourcePartition>) -> String {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for p in parts {
        by_topic
            .entry(p.topic.as_str())
            .or_default()
            .push(p.partition);
    }
    by_topic
        .iter()
        .map(|(t, ps)| format!("{t}{ps:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<SourcePartition> {
    tpl.elements()
        .iter()
        .map(|e| SourcePartition::new(e.topic(), e.partition()))
        .collect()
}

/// Blocks the rebalance callback until `state` satisfies `done`; how long it waited, if it had
/// to. Like [`SourceContext::resolve`], the callback drives the wait with `block_in_place`;
/// where that is impossible (a current-thread runtime, a thread outside the runtime) nothing can
/// be in flight beside this poll, because the runner only overlaps on a multi-thread runtime.
fn block_until<T>(
    state: &tokio::sync::watch::Sender<T>,
    mut done: impl FnMut(&T) -> bool,
) -> Option<Duration> {
    if done(&state.borrow()) {
        return None;
    }
    let handle = tokio::runtime::Handle::try_current().ok()?;
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return None;
    }
    let waited = Instant::now();
    let mut state = state.subscribe();
    // The sender lives in the context, so the wait cannot fail.
    let _ = tokio::task::block_in_place(|| handle.block_on(state.wait_for(done)));
    Some(waited.elapsed())
}

impl SourceContext {
    fn record(&self, change: AssignmentChange) {
        self.changes.lock().expect("poisoned").push(change);
    }

    /// Waits until no batch is being written (see [`Source::hold_writes`]).
    fn wait_for_writes(&self) {
        if let Some(waited) = block_until(&self.writing, |w| !*w) {
            tracing::debug!(
                ms = waited.as_millis() as u64,
                "rebalance waited for the batch being written"
            );
        }
    }

    /// Waits until no merge is in flight (see [`Source::merges`]).
    fn wait_for_merges(&self) {
        if let Some(waited) = block_until(&self.merging, |n| *n == 0) {
            tracing::info!(
                ms = waited.as_millis() as u64,
                "revocation waited for the merges in flight"
            );
        }
    }

    /// Runs the resolver from inside librdkafka's callback. The callback is synchronous and runs
    /// on the thread polling the consumer (a tokio worker), so the async read is driven with
    /// `block_in_place`; on a current-thread runtime that is impossible and the partitions start
    /// from Kafka's committed offsets instead (correctness does not depend on it: the runner
    /// skips records the tables already hold).
    fn resolve(
        &self,
        parts: Vec<SourcePartition>,
    ) -> Option<BTreeMap<SourcePartition, Option<i64>>> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            tracing::warn!("current-thread runtime: resuming from Kafka's committed offsets");
            return None;
        }
        let fut = (self.resolver)(parts);
        match tokio::task::block_in_place(|| handle.block_on(fut)) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(error = %e, "reading positions from Delta failed; resuming from Kafka's committed offsets");
                None
            }
        }
    }
}

impl SourceContext {
    /// Checks that the log of `p` holds `next` (Delta's next offset) or ends just before it.
    /// On a mismatch: logged and counted; under [`OutOfRange::Stop`] the worker is told to stop,
    /// under [`OutOfRange::ResetToEarliest`] the log's earliest offset is returned.
    fn check_range(
        &self,
        consumer: &BaseConsumer<Self>,
        p: &SourcePartition,
        next: i64,
    ) -> std::result::Result<(), i64> {
        let timeout = Duration::from_secs(10);
        let (low, mut high) = match consumer.fetch_watermarks(&p.topic, p.partition, timeout) {
            Ok(marks) => marks,
            Err(e) => {
                tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "could not read the log's offsets to check Delta's position");
                return Ok(());
            }
        };
        if next > high {
            // Before calling the log short, confirm its end by a fetch (see
            // [`crate::broker::watermarks`]), on a consumer of its own: this one is mid-rebalance.
            match crate::broker::partition_watermarks(&self.reader, &p.topic, p.partition, timeout)
            {
                Ok((_, h)) => high = high.max(h),
                Err(e) => {
                    tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "could not confirm the log's end by a fetch");
                }
            }
        }
        let why = if next > high {
            "the log is behind the lakehouse (the broker lost its data or the topic was re-created)"
        } else if next < low {
            "records Delta has not ingested were deleted from the log (retention)"
        } else {
            return Ok(());
        };
        let mismatch = crate::Error::LogMismatch {
            topic: p.topic.clone(),
            partition: p.partition,
            next,
            low,
            high,
            why,
        };
        crate::telemetry::events::LogMismatch {
            topic: &p.topic,
            partition: p.partition,
            next,
            low,
            high,
            reset: self.out_of_range == OutOfRange::ResetToEarliest,
        }
        .emit();
        match self.out_of_range {
            OutOfRange::Stop => {
                self.fatal.lock().expect("poisoned").get_or_insert(mismatch);
                Ok(())
            }
            OutOfRange::ResetToEarliest => Err(low),
        }
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let mut lag = self.lag.lock().expect("poisoned");
        lag.clear();
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                // librdkafka reports -1 for unknown; partition -1 is its internal UA partition.
                if *id >= 0 && p.consumer_lag >= 0 {
                    lag.insert(SourcePartition::new(topic.as_str(), *id), p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        self.wait_for_writes();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts = partitions_of(tpl);
                let mut resets = Vec::new();
                let started = Instant::now();
                if let Some(positions) = self.resolve(parts.clone()) {
                    let resolved = started.elapsed();
                    for (p, next) in &positions {
                        let offset = match next {
                            Some(o) => match self.check_range(consumer, p, *o) {
                                Ok(()) => Offset::Offset(*o),
                                Err(low) => {
                                    resets.push(AssignmentChange::ResetTo(p.clone(), low));
                                    Offset::Beginning
                                }
                            },
                            None => Offset::Beginning,
                        };
                        let _ = tpl.set_partition_offset(&p.topic, p.partition, offset);
                    }
                    tracing::info!(
                        partitions = %describe(positions.keys()),
                        resolve_ms = resolved.as_millis() as u64,
                        check_ms = (started.elapsed() - resolved).as_millis() as u64,
                        "assigned at positions from Delta"
                    );
                }
                self.record(AssignmentChange::Assigned(parts));
                for reset in resets {
                    self.record(reset);
                }
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // What a merge holds must be durable before another member reads where these
                // partitions resume: it would start below it, and its first merge would find
                // its offsets moved (a restart, and another rebalance for the whole group).
                self.wait_for_merges();
                let parts = partitions_of(tpl);
                tracing::info!(partitions = %describe(parts.iter()), "revoked");
                self.record(AssignmentChange::Revoked(parts));
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::error!(%code, "rebalance error");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying assignment failed");
        }
    }
}

pub struct Source {
    consumer: StreamConsumer<SourceContext>,
    /// Since when every poll has failed, and how many failures (reset by a record).
    failing: Mutex<Option<(Instant, u64)>>,
    /// When the last batch closed: records already waiting at the next poll arrived after it.
    closed: Mutex<Option<Instant>>,
}

/// How long consume errors may go on without a single record before the source gives up
/// (the worker then restarts, a bounded number of times).
const FAILING_FOR: Duration = Duration::from_secs(60);
/// Polls [`Source::ready`] tries before it takes the queue for empty.
const READY_POLLS: usize = 8;
/// How long closing the consumer may take before the process stops waiting for it.
const CLOSE_BUDGET: Duration = Duration::from_secs(5);

/// A batch is being written while this lives ([`Source::hold_writes`]).
pub struct WritesHeld(tokio::sync::watch::Sender<bool>);

/// Counts merges in flight for a [`Source`] ([`Source::merges`]).
#[derive(Clone)]
pub struct MergeGauge(tokio::sync::watch::Sender<usize>);

impl MergeGauge {
    /// Counts one more merge in flight until the guard is dropped.
    pub fn hold(&self) -> MergeHeld {
        self.0.send_modify(|n| *n += 1);
        MergeHeld(self.0.clone())
    }
}

/// A merge is in flight while this lives ([`MergeGauge::hold`]).
pub struct MergeHeld(tokio::sync::watch::Sender<usize>);

impl Drop for MergeHeld {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Drop for WritesHeld {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

impl Source {
    pub fn new(
        kafka: &KafkaConfig,
        brokers: &str,
        group_id: &str,
        topics: &[&str],
        resolver: PositionResolver,
        out_of_range: OutOfRange,
    ) -> Result<Self> {
        let mut cfg = rdkafka::ClientConfig::new();
        cfg.set("bootstrap.servers", brokers)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("queued.min.messages", "200000")
            .set("fetch.max.bytes", "67108864")
            .set("max.partition.fetch.bytes", "8388608")
            .set("fetch.wait.max.ms", "50")
            // When the prefetch queue is full librdkafka postpones the next fetch by this much
            // (default 1 s), which stalls a consumer that drains the queue in large batches.
            .set("fetch.queue.backoff.ms", "10")
            .set("queued.max.messages.kbytes", "262144")
            .set("statistics.interval.ms", "1000");
        if !kafka.instance_id.is_empty() {
            cfg.set("group.instance.id", &kafka.instance_id);
        }
        let cfg = crate::broker::with_properties(cfg, kafka);
        let ctx = SourceContext {
            resolver,
            reader: crate::broker::client_config(kafka, brokers),
            out_of_range,
            fatal: Mutex::new(None),
            changes: Mutex::new(Vec::new()),
            lag: Mutex::new(BTreeMap::new()),
            writing: tokio::sync::watch::Sender::new(false),
            merging: tokio::sync::watch::Sender::new(0),
        };
        let consumer: StreamConsumer<SourceContext> = cfg.create_with_context(ctx)?;
        consumer.subscribe(topics)?;
        Ok(Source {
            consumer,
            failing: Mutex::new(None),
            closed: Mutex::new(None),
        })
    }

    /// Held while a batch is written. Until the guard is dropped, a rebalance (which runs
    /// inside a poll) waits, so a runner that polls while it writes never has a partition
    /// revoked, or assigned at a position read from Delta, under a commit in flight; and the
    /// batch being polled does not close (see [`Source::next_batch`]).
    pub fn hold_writes(&self) -> WritesHeld {
        let writing = self.consumer.context().writing.clone();
        writing.send_replace(true);
        WritesHeld(writing)
    }

    /// The count of merges in flight off the batch's path (a MERGE-kept sink's task): each
    /// holds a [`MergeGauge::hold`] while it runs, and a revocation waits until none does, so a
    /// partition moves to another member only after what its merges took of it is durable.
    pub fn merges(&self) -> MergeGauge {
        MergeGauge(self.consumer.context().merging.clone())
    }

    /// Assignment changes since the last call, in order.
    pub fn take_changes(&self) -> Vec<AssignmentChange> {
        std::mem::take(&mut *self.consumer.context().changes.lock().expect("poisoned"))
    }

    /// Reads until `max_events` records, or until the batch window of `max_wait` has closed and
    /// the records librdkafka already holds are taken, or `stop` resolves. Also returns when the
    /// first record arrived.
    ///
    /// The window opens when the batch's oldest record arrived: at its arrival when the poll
    /// had to wait for it (an idle stream makes no tiny batches), and at the previous batch's
    /// close when records were already waiting (they arrived while that batch was committed).
    /// So a batch closes `max_wait` after its oldest record came in, whatever the commit before
    /// it took, and a record waits at most about `max_wait` plus one commit. Record timestamps
    /// are not used: a producer's clock or an event-time timestamp must not size batches.
    ///
    /// A batch polled while the one before it is written ([`Source::hold_writes`]) does not
    /// close before that one is committed: what arrives during the commit joins this batch, as
    /// it does when the poll follows the commit. Closing at the window alone would cut a batch
    /// per `max_wait` while each commit takes longer than that, and the batches behind would
    /// queue (at 50k events/s: p50 from produce to committed 240 → 430 ms).
    pub async fn next_batch(
        &self,
        max_events: usize,
        max_wait: Duration,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<(Vec<RawRecord>, Option<Instant>)> {
        let mut writing = self.consumer.context().writing.subscribe();
        let mut out = Vec::with_capacity(max_events.min(65_536));
        let mut first_at = None;
        let previous_close = self.closed.lock().expect("poisoned").take();
        let mut deadline = Instant::now() + max_wait;
        let mut topics: BTreeMap<String, Arc<str>> = BTreeMap::new();
        let mut failed_before = self.failing.lock().expect("poisoned").is_some();
        while out.len() < max_events {
            if let Some(e) = self
                .consumer
                .context()
                .fatal
                .lock()
                .expect("poisoned")
                .take()
            {
                return Err(e);
            }
            let now = Instant::now();
            if stop.is_cancelled() {
                break;
            }
            let msg = if out.is_empty() {
                // The first record: one that is waiting already opened the window at the last
                // close; otherwise the window opens when one arrives.
                let ready = self.ready();
                let waited = ready.is_none();
                let msg = match ready {
                    Some(m) => m,
                    None if now >= deadline && !*writing.borrow() => break,
                    None if now >= deadline => tokio::select! {
                        m = self.consumer.recv() => m,
                        _ = writing.wait_for(|w| !*w) => continue,
                        _ = stop.cancelled() => break,
                    },
                    None => tokio::select! {
                        m = self.consumer.recv() => m,
                        _ = tokio::time::sleep(deadline - now) => continue,
                        _ = stop.cancelled() => break,
                    },
                };
                if msg.is_ok() {
                    let arrived = Instant::now();
                    first_at = Some(arrived);
                    let opened = match previous_close {
                        Some(closed) if !waited => closed,
                        _ => arrived,
                    };
                    deadline = opened + max_wait;
                }
                msg
            } else if now >= deadline && !*writing.borrow() {
                // The window has closed: take what is already fetched, without waiting.
                match self.ready() {
                    Some(m) => m,
                    None => break,
                }
            } else if let Some(m) = self.ready() {
                // Fetched already: no need to arm a timer to wait for it.
                m
            } else if now >= deadline {
                // The window has closed, the previous batch is still being written.
                tokio::select! {
                    m = self.consumer.recv() => m,
                    _ = writing.wait_for(|w| !*w) => continue,
                    _ = stop.cancelled() => break,
                }
            } else {
                tokio::select! {
                    m = self.consumer.recv() => m,
                    _ = tokio::time::sleep(deadline - now) => continue,
                    _ = stop.cancelled() => break,
                }
            };
            let msg = match msg {
                Ok(m) => {
                    if failed_before {
                        *self.failing.lock().expect("poisoned") = None;
                        failed_before = false;
                    }
                    m
                }
                Err(e) => {
                    self.consume_failed(e)?;
                    failed_before = true;
                    // Errors arrive as fast as they are polled: do not spin on them.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let topic = match topics.get(msg.topic()) {
                Some(t) => t.clone(),
                None => topics
                    .entry(msg.topic().to_string())
                    .or_insert_with(|| Arc::from(msg.topic()))
                    .clone(),
            };
            out.push(RawRecord {
                topic,
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec),
                timestamp_ms: msg.timestamp().to_millis(),
            });
        }
        *self.closed.lock().expect("poisoned") = Some(Instant::now());
        Ok((out, first_at))
    }

    /// The next record librdkafka already holds, without waiting. The queue also carries
    /// events that are not records (statistics, rebalances), which a poll consumes without
    /// yielding a record, so a few polls are tried before the queue counts as empty.
    fn ready(&self) -> Option<KafkaResult<rdkafka::message::BorrowedMessage<'_>>> {
        (0..READY_POLLS).find_map(|_| self.consumer.recv().now_or_never())
    }

    /// Records durable offsets in Kafka (next offset to read), for lag monitoring only.
    pub fn commit_offsets(&self, offsets: &Offsets) {
        let mut tpl = TopicPartitionList::new();
        for (p, last) in offsets {
            let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(last + 1));
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::debug!(error = %e, "kafka offset commit failed (monitoring only)");
        }
    }

    /// Consumer lag per assigned partition (records behind the high watermark), from
    /// librdkafka's statistics, refreshed every `statistics.interval.ms`.
    pub fn lag(&self) -> BTreeMap<SourcePartition, i64> {
        self.consumer
            .context()
            .lag
            .lock()
            .expect("poisoned")
            .clone()
    }

    /// Counts a consume error: warned about once every 10 s; past [`FAILING_FOR`] without a
    /// record, the error is returned.
    fn consume_failed(&self, e: rdkafka::error::KafkaError) -> Result<()> {
        let mut failing = self.failing.lock().expect("poisoned");
        let (since, n) = failing.get_or_insert((Instant::now(), 0));
        *n += 1;
        if *n == 1 || (*n).is_multiple_of(100) {
            tracing::warn!(error = %e, failures = *n, for_s = since.elapsed().as_secs(), "kafka consume error");
        }
        if since.elapsed() >= FAILING_FOR {
            tracing::error!(error = %e, failures = *n, "kafka has failed every poll for {} s; giving up", FAILING_FOR.as_secs());
            return Err(e.into());
        }
        Ok(())
    }

    /// Leaves the group cleanly. Call before dropping, and before any embedded broker is
    /// dropped. Waits at most a few seconds: with the broker gone, librdkafka would otherwise
    /// hold the process on its own request timeouts.
    pub fn close(self) -> KafkaResult<()> {
        self.consumer.unsubscribe();
        let (done, waited) = std::sync::mpsc::channel();
        let consumer = self.consumer;
        std::thread::spawn(move || {
            drop(consumer);
            let _ = done.send(());
        });
        if waited.recv_timeout(CLOSE_BUDGET).is_err() {
            tracing::warn!(
                "the Kafka consumer did not close within {} s (broker unreachable?); not waiting",
                CLOSE_BUDGET.as_secs()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Arc<SourceContext> {
        let resolver: PositionResolver = Arc::new(|_| Box::pin(async { Ok(BTreeMap::new()) }));
        Arc::new(SourceContext {
            resolver,
            reader: rdkafka::ClientConfig::new(),
            out_of_range: OutOfRange::Stop,
            fatal: Mutex::new(None),
            changes: Mutex::new(Vec::new()),
            lag: Mutex::new(BTreeMap::new()),
            writing: tokio::sync::watch::Sender::new(false),
            merging: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The rebalance callback runs inside the poll that overlaps a write: it must not go on
    /// (revoke, or read positions from Delta) until the batch being written is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebalance_waits_for_the_batch_being_written() {
        let ctx = context();
        // Nothing written: no wait.
        ctx.wait_for_writes();

        let writing = {
            ctx.writing.send_replace(true);
            WritesHeld(ctx.writing.clone())
        };
        let callback = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                ctx.wait_for_writes();
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!callback.is_finished(), "the callback went on mid-write");
        let committed = Instant::now();
        drop(writing);
        let went_on = callback.await.unwrap();
        assert!(
            went_on >= committed,
            "the callback went on before the commit"
        );
    }

    /// A revocation must not go on while a MERGE-kept sink's task still merges records of the
    /// partitions (they would move to a member that reads their offsets from before it): it
    /// waits until every merge held through the gauge is done, two here, ending one by one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_waits_for_every_merge_in_flight() {
        let ctx = context();
        let gauge = MergeGauge(ctx.merging.clone());
        // No merge: no wait.
        ctx.wait_for_merges();

        let (first, second) = (gauge.hold(), gauge.hold());
        let callback = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                ctx.wait_for_merges();
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(first);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !callback.is_finished(),
            "the revocation went on with a merge in flight"
        );
        let merged = Instant::now();
        drop(second);
        let went_on = callback.await.unwrap();
        assert!(
            went_on >= merged,
            "the revocation went on before the last merge"
        );
    }
}
