//! `millstream simulate`: reference data into Delta (skipped if present unless `--reseed`),
//! seed history and live events into Kafka, the simulated suppliers fulfilling agents' orders.

use std::time::Duration;

use clap::Args;

use crate::config::Config;
use crate::lakehouse::Lakehouse;

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Kafka bootstrap servers, host:port[,host:port] (overrides kafka.brokers).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Write reference data to the lakehouse (skipped when present unless --reseed).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub reference: bool,
    #[arg(long)]
    pub reseed: bool,
    /// Produce the seed history to Kafka.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub history: bool,
    /// Live events per second (0: no live stream).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Stop the live stream after this many events.
    #[arg(long)]
    pub events: Option<u64>,
    /// Stop the live stream after this many seconds.
    #[arg(long)]
    pub duration: Option<u64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fixed run id for reproducible event ids (default: derived from the clock).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Share of malformed live events (overrides simulate.malformed_ratio).
    #[arg(long)]
    pub malformed_ratio: Option<f64>,
}

pub async fn run(mut config: Config, args: SimulateArgs) -> anyhow::Result<()> {
    if let Some(s) = args.seed {
        config.simulate.seed = s;
    }
    if let Some(r) = args.malformed_ratio {
        config.simulate.malformed_ratio = r;
    }
    super::revalidate(&config)?;
    let rate = args.rate.unwrap_or(config.simulate.rate);
    let run_id = args
        .run_id
        .unwrap_or_else(|| format!("{:x}", chrono::Utc::now().timestamp_millis()));
    if args.reference {
        let lake = Lakehouse::from_config(&config.lakehouse)?;
        super::check_dependencies(&config, None, Some(&lake)).await?;
        crate::sim::write_reference(&lake, &config.simulate, args.reseed).await?;
    }
    if !args.history && (rate == 0 || args.events == Some(0)) {
        return Ok(());
    }
    let brokers = super::brokers_or_fail(args.brokers, &config, "simulate")?;
    super::check_dependencies(&config, Some(&brokers), None).await?;
    crate::broker::ensure_topics(&config.kafka, &brokers, &crate::broker::topics::ALL).await?;
    let producer = crate::sim::EventProducer::new(&config.kafka, &brokers)?;
    let mut summary = serde_json::Map::new();
    if args.history {
        let history = crate::sim::stream::history(&config.simulate, &run_id);
        let produced = crate::sim::produce_all(&producer, &history, "history").await?;
        summary.insert("history".into(), serde_json::to_value(produced)?);
    }
    if rate > 0 && args.events != Some(0) {
        // While it streams, `/metrics` (events produced per topic) and the health endpoints,
        // for Prometheus and orchestrators like every other millstream process.
        let mut sup = crate::supervise::Supervisor::new();
        let http = sup.stage("http");
        let (addr, server) = super::bind_metrics(&config.serve.addr, &sup).await?;
        sup.spawn_once(
            "http",
            &http,
            &tokio::runtime::Handle::current(),
            move |t| server.run(t),
        );
        sup.health().set_ready(true);
        tracing::info!("metrics at http://{addr}/metrics");
        let root = sup.root();
        let _stop_http = root.clone().drop_guard();
        let stop = crate::supervise::stop_token(args.duration.map(Duration::from_secs), root);
        let mut generator = crate::sim::live_generator(&config, &brokers, &run_id, rate)?;
        let produced =
            crate::sim::produce_live(&producer, &mut generator, rate, args.events, stop).await?;
        summary.insert("live".into(), serde_json::to_value(produced)?);
    }
    println!("{}", serde_json::Value::Object(summary));
    Ok(())
}
