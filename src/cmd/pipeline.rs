//! `millstream pipeline`: one worker of the ingestion pipeline against a broker, as a member of
//! a consumer group (run several to scale out), with the derived pipelines and the alerts
//! publisher unless `--no-derive`, and `/metrics`, `/healthz`, `/readyz`.
//!
//! Stages, stopped in this order: the worker (it finishes the batch in hand), the deriver (one
//! last round over everything committed), the HTTP server.

use std::time::Duration;

use clap::Args;

use crate::config::Config;
use crate::lakehouse::Lakehouse;
use crate::pipeline::PipelineOptions;
use crate::pipeline::publish::AlertPublisher;
use crate::supervise::{Policy, Supervisor, stop_token};

#[derive(Debug, Args)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub group: super::GroupArgs,
    /// Static group membership: this worker's stable id in the group (overrides
    /// kafka.instance_id); restarted with the same id, it takes its partitions back at once.
    #[arg(long)]
    pub instance: Option<String>,
    /// Do not run the derived pipelines (signals, alerts) nor the mfg.alerts publisher in this
    /// process: for extra workers of a scaled-out group, where one per lakehouse is enough.
    #[arg(long)]
    pub no_derive: bool,
}

pub async fn run(mut config: Config, args: PipelineArgs) -> anyhow::Result<()> {
    let brokers = args.group.apply(&mut config, "pipeline")?;
    if let Some(i) = args.instance {
        config.kafka.instance_id = i;
    }
    super::revalidate(&config)?;
    let lake = Lakehouse::from_config(&config.lakehouse)?;
    super::check_dependencies(&config, Some(&brokers), Some(&lake)).await?;
    let definitions =
        crate::pipeline::definition::Definitions::from_config(&config.pipeline.definitions).await?;
    let publisher = if args.no_derive {
        None
    } else {
        Some(AlertPublisher::new(lake.clone(), &config.kafka, &brokers)?)
    };

    let mut sup = Supervisor::new();
    let stop = stop_token(None, sup.root());
    let ingest = sup.stage("ingest");
    let derive = sup.stage("derive");
    let http = sup.stage("http");
    let here = tokio::runtime::Handle::current();
    let (addr, server) = super::bind_metrics(&config.serve.addr, &sup).await?;
    sup.spawn_once("http", &http, &here, move |t| server.run(t));
    tracing::info!("metrics at http://{addr}/metrics");

    let opts = PipelineOptions::from_config(&config, &brokers);
    let stats = std::sync::Arc::new(std::sync::Mutex::new(None));
    {
        let (kafka, lake, opts, stats) = (config.kafka.clone(), lake.clone(), opts, stats.clone());
        sup.spawn("pipeline", &ingest, Policy::Critical, &here, move |t| {
            let (kafka, lake, opts, stats) =
                (kafka.clone(), lake.clone(), opts.clone(), stats.clone());
            async move {
                let run = crate::pipeline::run_with_restarts(&kafka, &lake, &opts, t, None).await?;
                *stats.lock().expect("poisoned") = Some(run);
                Ok(())
            }
        });
    }
    if let Some(publisher) = publisher {
        let every = Duration::from_millis(config.pipeline.derive_interval_ms);
        sup.spawn_once("deriver", &derive, &here, move |t| async move {
            crate::pipeline::derive::run(lake, definitions, every, Some(publisher), t).await;
            Ok(())
        });
    }
    sup.health().set_ready(true);
    sup.wait(stop).await?;
    if let Some(stats) = stats.lock().expect("poisoned").take() {
        println!("{}", serde_json::to_string(&stats)?);
    }
    Ok(())
}
