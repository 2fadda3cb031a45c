//! The embedded broker: librdkafka's mock cluster (`rdkafka::mocking::MockCluster`), in process,
//! on loopback ports chosen by the OS. It speaks the Kafka protocol (produce, fetch, consumer
//! groups, offset commits), keeps everything in memory, and is meant for one-machine runs and
//! tests; production points `kafka.brokers` at a real cluster.
//!
//! Shutdown order matters (DESIGN §9): close every consumer and flush every producer that talks
//! to the cluster before dropping it, or `rd_kafka_destroy` can hang.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::error::Result;

pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
    bootstrap: String,
}

impl EmbeddedBroker {
    /// Starts a cluster of `brokers` brokers and creates `topics` with `partitions` each.
    pub fn start(brokers: i32, topics: &[&str], partitions: i32) -> Result<Self> {
        let layout: Vec<(&str, i32)> = topics.iter().map(|t| (*t, partitions)).collect();
        Self::start_with(brokers, &layout)
    }

    /// Starts a cluster of `brokers` brokers and creates each topic with its own partition
    /// count (e.g. [`super::topics::embedded_layout`]).
    pub fn start_with(brokers: i32, layout: &[(&str, i32)]) -> Result<Self> {
        let cluster = MockCluster::new(brokers)?;
        for (t, partitions) in layout {
            cluster.create_topic(t, *partitions, brokers.min(3))?;
        }
        let bootstrap = cluster.bootstrap_servers();
        Ok(EmbeddedBroker { cluster, bootstrap })
    }

    /// `host:port[,host:port…]` for any Kafka client.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        Ok(self.cluster.create_topic(name, partitions, 1)?)
    }
}
