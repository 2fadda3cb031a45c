//! `millstream broker`: only the embedded Kafka-protocol broker, until Ctrl-C or `--duration`.

use std::time::Duration;

use clap::Args;

use crate::config::Config;

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
}

pub async fn run(config: Config, args: BrokerArgs) -> anyhow::Result<()> {
    let broker = crate::broker::EmbeddedBroker::start(
        config.kafka.embedded_brokers,
        &crate::broker::topics::ALL,
        config.kafka.partitions,
    )?;
    println!("bootstrap: {}", broker.bootstrap_servers());
    let root = tokio_util::sync::CancellationToken::new();
    crate::supervise::stop_token(args.duration.map(Duration::from_secs), root)
        .cancelled()
        .await;
    drop(broker);
    Ok(())
}
