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
    for (k, v) in &kafka.properties {
        c.set(k, v.expose());
    }
    c
}

/// `(partition, low, high)` watermarks of every partition of `topic`: the first offset the log
/// still holds and the next offset to be written. Blocking; call from a blocking context.
pub fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64, i64)>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut out = Vec::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            out.push((p.id(), low, high));
        }
    }
    Ok(out)
}

/// Settings for the producers millstream runs (simulator, actions): idempotent, so a retried
/// send never duplicates an event in the log.
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

pub fn producer_config(kafka: &KafkaConfig, brokers: &str) -> ClientConfig {
    let mut c = client_config(kafka, brokers);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "zstd");
    c
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
