//! Kafka connectivity: topic names ([`topics`]), librdkafka client settings built from config,
//! topic creation for external clusters, and the embedded broker ([`embedded`]), which is
//! librdkafka's in-process mock cluster listening on real loopback ports, so any Kafka client can
//! connect to it.

pub mod embedded;
pub mod topics;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};

pub use embedded::EmbeddedBroker;

/// Base client settings: bootstrap servers plus the pass-through `kafka.properties`.
pub fn client_config(kafka: &KafkaConfig, brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    with_properties(c, kafka)
}

/// `c` with the pass-through `kafka.properties` set over it: applied last, they may tune any
/// setting millstream chose.
pub fn with_properties(mut c: ClientConfig, kafka: &KafkaConfig) -> ClientConfig {
    for (k, v) in &kafka.properties {
        c.set(k, v.expose());
    }
    c
}

/// `(partition, low, high)` watermarks of every partition of `topic`: the first offset the log
/// still holds and the next offset to be written, read by a consumer of its own made from
/// `client` (settings without a group). Blocking; call from a blocking context.
///
/// The log end is confirmed by reading from it to the partition's end: some brokers' ListOffsets
/// understate it (tansu 0.6 answers the last record batch's base offset + 1), which would make a
/// lakehouse that is exactly caught up look ahead of its log. On a broker that answers right,
/// that read is one empty fetch per partition.
pub fn watermarks(
    client: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64, i64)>> {
    let consumer = end_reader(client)?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut out = Vec::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            out.push((p.id(), low, high));
        }
    }
    confirm_ends(&consumer, topic, &mut out, timeout)?;
    Ok(out)
}

/// [`watermarks`] of one partition: `(low, high)`, the end confirmed the same way.
pub fn partition_watermarks(
    client: &ClientConfig,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64)> {
    let consumer = end_reader(client)?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    let mut marks = [(partition, low, high)];
    confirm_ends(&consumer, topic, &mut marks, timeout)?;
    Ok((marks[0].1, marks[0].2))
}

/// A consumer that reports partition ends, for [`confirm_ends`]. librdkafka assigns only with a
/// group id; this one never joins nor commits.
fn end_reader(client: &ClientConfig) -> Result<BaseConsumer<QuietEof>> {
    Ok(client
        .clone()
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("group.id", "millstream-watermarks")
        .create_with_context(QuietEof)?)
}

/// Raises each `(partition, low, high)`'s high to what reading from it to the partition's end
/// finds. A partition that does not reach its end within `timeout` keeps ListOffsets' answer.
fn confirm_ends(
    consumer: &BaseConsumer<QuietEof>,
    topic: &str,
    marks: &mut [(i32, i64, i64)],
    timeout: Duration,
) -> Result<()> {
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    if marks.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for &(p, _, high) in marks.iter() {
        tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + timeout;
    let mut open: std::collections::BTreeSet<i32> = marks.iter().map(|m| m.0).collect();
    while !open.is_empty() && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                use rdkafka::Message;
                if let Some(mark) = marks.iter_mut().find(|x| x.0 == m.partition()) {
                    mark.2 = mark.2.max(m.offset() + 1);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            // Out of range (the log was truncated meanwhile) or a transient error: keep
            // ListOffsets' answer for what is still open.
            Some(Err(_)) | None => {}
        }
    }
    Ok(())
}

/// A consumer context for readers that read to a partition's end ([`watermarks`], and tests
/// that read a topic whole): the end-of-partition events they ask for are answers, not errors
/// to log; other errors are logged as usual.
pub struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode;
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!(error = %error, reason, "librdkafka");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// Fails with a clear error unless the cluster at `brokers` answers a metadata request within
/// `timeout`: commands check at start instead of retrying a broker that is not there.
pub async fn check_reachable(kafka: &KafkaConfig, brokers: &str, timeout: Duration) -> Result<()> {
    if brokers.trim().is_empty() {
        return Err(crate::Error::Config(vec![
            "kafka.brokers is empty: pass --brokers host:port or set kafka.brokers".into(),
        ]));
    }
    let consumer: rdkafka::consumer::BaseConsumer = client_config(kafka, brokers)
        .create()
        .map_err(|e| crate::Error::Config(vec![format!("kafka {brokers}: {e}")]))?;
    let metadata = tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(None, timeout);
        (metadata.map(|m| m.brokers().len()), consumer)
    })
    .await
    .map_err(|e| crate::Error::Internal(format!("kafka check: {e}")))?;
    // Dropped here, after the answer: a consumer that never connected drops at once.
    let (metadata, _consumer) = metadata;
    match metadata {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err(crate::Error::Config(vec![format!(
            "kafka {brokers} answered with no brokers"
        )])),
        Err(e) => Err(crate::Error::Config(vec![format!(
            "cannot reach Kafka at {brokers} within {} s: {e} (check --brokers / kafka.brokers \
             and that the cluster is up)",
            timeout.as_secs()
        )])),
    }
}

/// Settings for the producers millstream runs (simulator, actions): idempotent, so a retried
/// send never duplicates an event in the log. `kafka.properties` come last and may tune any.
///
/// `linger.ms` is 25: a record waits at most that long for others to share its record batch.
/// Fewer, larger batches compress better and cost every broker less per record; librdkafka's
/// mock cluster (the embedded broker) answers a fetch with one record batch and finds it by a
/// scan of the partition's whole log, so at 5 ms it spent about 28 % of `bench freshness`'s
/// CPU on that scan.
pub fn producer_config(kafka: &KafkaConfig, brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "25")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "zstd");
    with_properties(c, kafka)
}

/// Creates the topics that do not exist yet; existing topics are left as they are.
pub async fn ensure_topics(kafka: &KafkaConfig, brokers: &str, names: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, brokers).create()?;
    // Ask for metadata first: most starts find every topic there, and not every broker (nor
    // librdkafka's mock cluster) serves CreateTopics.
    let existing: Vec<String> = {
        // A blocking call on the multi-threaded runtime millstream always runs on.
        tokio::task::block_in_place(|| admin.inner().fetch_metadata(None, Duration::from_secs(15)))?
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.name().to_string())
            .collect()
    };
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !existing.iter().any(|e| e == n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(topics = ?missing, partitions = kafka.partitions, "creating topics");
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|n| NewTopic::new(n, kafka.partitions, TopicReplication::Fixed(-1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Invalid(format!("creating topic {topic}: {code}")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn kafka_properties_override_the_producer_defaults() {
        let mut kafka = crate::config::Config::load_from(None, Vec::new())
            .expect("defaults")
            .kafka;
        let defaults = producer_config(&kafka, "localhost:9092");
        assert_eq!(defaults.get("linger.ms"), Some("25"));
        assert_eq!(defaults.get("enable.idempotence"), Some("true"));
        kafka
            .properties
            .insert("linger.ms".into(), Secret::new("100"));
        kafka
            .properties
            .insert("compression.type".into(), Secret::new("lz4"));
        let tuned = producer_config(&kafka, "localhost:9092");
        assert_eq!(tuned.get("linger.ms"), Some("100"));
        assert_eq!(tuned.get("compression.type"), Some("lz4"));
        assert_eq!(
            tuned.get("acks"),
            Some("all"),
            "what is not set keeps its default"
        );
        assert_eq!(tuned.get("bootstrap.servers"), Some("localhost:9092"));
    }
}
