//! Kafka source: a consumer-group member that yields micro-batches of raw records.
//!
//! Positions come from Delta, not from Kafka (DESIGN §3). On every assignment the consumer asks
//! its [`PositionResolver`] (which reads the sink tables' txn versions) where each new partition
//! must start, and assigns the partitions at those offsets, inside the rebalance callback, so
//! not a single stale record is fetched. Kafka's committed offsets are written after each Delta
//! commit for lag monitoring only; when they are missing or wrong nothing changes.
//!
//! Revocations are recorded so the runner drops records of partitions it no longer owns from
//! the batch it is building; because the runner never commits while polling, no commit is in
//! flight when a revocation arrives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
}

pub struct SourceContext {
    resolver: PositionResolver,
    changes: Mutex<Vec<AssignmentChange>>,
    /// Per-partition consumer lag from librdkafka's periodic statistics.
    lag: Mutex<BTreeMap<SourcePartition, i64>>,
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

impl SourceContext {
    fn record(&self, change: AssignmentChange) {
        self.changes.lock().expect("poisoned").push(change);
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
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts = partitions_of(tpl);
                if let Some(positions) = self.resolve(parts.clone()) {
                    for (p, next) in &positions {
                        let offset = match next {
                            Some(o) => Offset::Offset(*o),
                            None => Offset::Beginning,
                        };
                        let _ = tpl.set_partition_offset(&p.topic, p.partition, offset);
                    }
                    tracing::info!(partitions = %describe(positions.keys()), "assigned at positions from Delta");
                }
                self.record(AssignmentChange::Assigned(parts));
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
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
}

impl Source {
    pub fn new(
        kafka: &KafkaConfig,
        brokers: &str,
        group_id: &str,
        topics: &[&str],
        resolver: PositionResolver,
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
        // User properties last: they may tune anything above.
        for (k, v) in &kafka.properties {
            cfg.set(k, v.expose());
        }
        let ctx = SourceContext {
            resolver,
            changes: Mutex::new(Vec::new()),
            lag: Mutex::new(BTreeMap::new()),
        };
        let consumer: StreamConsumer<SourceContext> = cfg.create_with_context(ctx)?;
        consumer.subscribe(topics)?;
        Ok(Source { consumer })
    }

    /// Assignment changes since the last call, in order.
    pub fn take_changes(&self) -> Vec<AssignmentChange> {
        std::mem::take(&mut *self.consumer.context().changes.lock().expect("poisoned"))
    }

    /// Reads until `max_events` records or `max_wait` has passed since the first record (an
    /// empty poll waits at most `max_wait` too), or `stop` resolves. Also returns when the
    /// first record arrived.
    pub async fn next_batch(
        &self,
        max_events: usize,
        max_wait: Duration,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<(Vec<RawRecord>, Option<Instant>)> {
        let mut out = Vec::with_capacity(max_events.min(65_536));
        let mut first_at = None;
        let mut deadline = Instant::now() + max_wait;
        let mut topics: BTreeMap<String, Arc<str>> = BTreeMap::new();
        while out.len() < max_events {
            let now = Instant::now();
            if now >= deadline || stop.is_cancelled() {
                break;
            }
            let msg = tokio::select! {
                m = self.consumer.recv() => m,
                _ = tokio::time::sleep(deadline - now) => break,
                _ = stop.cancelled() => break,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consume error");
                    continue;
                }
            };
            if out.is_empty() {
                // The batch window starts at the first record, so an idle stream does not make
                // tiny batches.
                let now = Instant::now();
                first_at = Some(now);
                deadline = now + max_wait;
            }
            let topic = topics
                .entry(msg.topic().to_string())
                .or_insert_with(|| Arc::from(msg.topic()))
                .clone();
            out.push(RawRecord {
                topic,
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key().map(<[u8]>::to_vec),
                payload: msg.payload().map(<[u8]>::to_vec),
                timestamp_ms: msg.timestamp().to_millis(),
            });
        }
        Ok((out, first_at))
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

    /// Leaves the group cleanly. Call before dropping, and before any embedded broker is dropped.
    pub fn close(self) -> KafkaResult<()> {
        self.consumer.unsubscribe();
        drop(self.consumer);
        Ok(())
    }
}
