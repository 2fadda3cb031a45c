//! `millstream up`: the whole system in one process: embedded broker (or `--brokers`), reference
//! data, seed history and live simulator, the pipeline, the derived pipelines and the alerts
//! publisher, background maintenance, and the MCP server with `/metrics`, `/healthz`, `/readyz`.
//!
//! Every task runs under one supervisor, in stages stopped in this order (on Ctrl-C, at the end
//! of `--duration`, when a task fails for good, or when starting fails half-way): the simulator
//! (its producer flushed), the pipeline (the batch in hand committed, its consumer closed), the
//! deriver (one last round) and maintenance, the HTTP server and the catalog refresher, the
//! audit writer — and only then is the embedded broker dropped (DESIGN §9).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::broker::{EmbeddedBroker, topics};
use crate::config::Config;
use crate::lakehouse::Lakehouse;
use crate::lakehouse::maintain::MaintainOptions;
use crate::model::tables::Role;
use crate::pipeline::publish::AlertPublisher;
use crate::pipeline::{PipelineOptions, RunStats};
use crate::supervise::{Policy, Stage, Supervisor, stop_token};

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Use this Kafka instead of the embedded broker.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Live events per second (overrides simulate.rate).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Skip producing the seed history (30 days of shipments, sales and telemetry).
    #[arg(long)]
    pub no_history: bool,
}

/// The stages of `up`, in the order they stop.
struct Stages {
    simulate: Stage,
    ingest: Stage,
    derive: Stage,
    serve: Stage,
    audit: Stage,
}

/// What the tasks report at the end.
#[derive(Default)]
struct Outcome {
    live: Mutex<Option<crate::sim::Produced>>,
    pipeline: Mutex<Option<RunStats>>,
}

pub async fn run(mut config: Config, args: UpArgs) -> anyhow::Result<()> {
    if let Some(rate) = args.rate {
        config.simulate.rate = rate;
    }
    super::revalidate(&config)?;
    let lake = Lakehouse::from_config(&config.lakehouse)?;
    let external = config.kafka.brokers_or(args.brokers.clone());
    super::check_dependencies(&config, external.as_deref(), Some(&lake)).await?;
    lake.ensure_all().await.context("creating tables")?;
    let embedded = match &external {
        Some(_) => None,
        None => Some(EmbeddedBroker::start_with(
            config.kafka.embedded_brokers,
            &topics::embedded_layout(config.kafka.partitions),
        )?),
    };
    let brokers = match (&external, &embedded) {
        (Some(b), _) => b.clone(),
        (None, Some(e)) => e.bootstrap_servers().to_string(),
        (None, None) => unreachable!("either external or embedded"),
    };

    let mut sup = Supervisor::new();
    let stop = stop_token(args.duration.map(Duration::from_secs), sup.root());
    let stages = Stages {
        simulate: sup.stage("simulate"),
        ingest: sup.stage("ingest"),
        derive: sup.stage("derive"),
        serve: sup.stage("serve"),
        audit: sup.stage("audit"),
    };
    let outcome = Arc::new(Outcome::default());
    let ran = match start(
        &config,
        &args,
        &lake,
        &brokers,
        embedded.is_some(),
        &mut sup,
        &stages,
        outcome.clone(),
    )
    .await
    {
        Ok(()) => sup.wait(stop).await,
        Err(e) => {
            // Half-started: stop what runs, in order, before the broker goes.
            sup.shutdown().await;
            Err(e)
        }
    };
    drop(embedded);
    ran?;

    if let Some(live) = outcome.live.lock().expect("poisoned").take() {
        println!(
            "stopped: produced {} live events ({} malformed)",
            live.events, live.malformed
        );
    }
    if let Some(stats) = outcome.pipeline.lock().expect("poisoned").take() {
        println!("{}", serde_json::to_string(&stats)?);
    }
    for def in crate::model::tables::catalog()
        .iter()
        .filter(|t| t.role != Role::Reference)
    {
        if let Ok(n) = lake.count_rows(&def.name).await {
            println!("  {:<34} {n:>10} rows", def.name);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn start(
    config: &Config,
    args: &UpArgs,
    lake: &Lakehouse,
    brokers: &str,
    embedded: bool,
    sup: &mut Supervisor,
    stages: &Stages,
    outcome: Arc<Outcome>,
) -> anyhow::Result<()> {
    if !embedded {
        crate::broker::ensure_topics(&config.kafka, brokers, &topics::ALL).await?;
    }
    // An embedded broker's log starts empty every run, so Delta positions from an earlier run
    // do not describe it: a fresh pipeline identity per run keeps exactly-once honest.
    let run_id = format!("{:x}", chrono::Utc::now().timestamp_millis());
    let mut opts = PipelineOptions::from_config(config, brokers);
    if embedded {
        opts.name = format!("{}-{run_id}", config.pipeline.name);
        opts.group_id = format!("{}-{run_id}", config.kafka.group_id);
    }
    let here = tokio::runtime::Handle::current();
    let mcp = crate::mcp::start(
        config,
        lake.clone(),
        Some(brokers),
        sup,
        crate::mcp::Stages {
            serving: &stages.serve,
            last: &stages.audit,
        },
    )
    .await
    .context("starting the MCP server")?;
    let mcp = crate::serve::Mcp::from_config(mcp, config)?;
    let (addr, http) = crate::serve::bind(&config.serve.addr, Some(mcp), sup.health())
        .await
        .context("binding serve.addr")?;
    sup.spawn_once("http", &stages.serve, &here, move |t| http.run(t));
    println!("millstream up");
    println!(
        "  kafka bootstrap : {brokers}{}",
        if embedded {
            " (embedded; any Kafka client can connect)"
        } else {
            ""
        }
    );
    println!("  lakehouse       : {}", lake.uri());
    println!("  mcp             : http://{addr}/mcp (streamable HTTP)");
    if config.console.enabled {
        println!("  console         : http://{addr}/console");
    }
    println!("  metrics         : http://{addr}/metrics");
    println!("  health          : http://{addr}/healthz, http://{addr}/readyz");
    println!(
        "  pipeline        : {} (group {})",
        opts.name, opts.group_id
    );

    let written = crate::sim::write_reference(lake, &config.simulate, false).await?;
    for (t, n) in &written {
        println!("  seeded {t}: {n} rows");
    }

    // Stream processing yields the CPU to answers (crate::runtime).
    let background = crate::runtime::background().clone();
    {
        let (kafka, lake, outcome) = (config.kafka.clone(), lake.clone(), outcome.clone());
        sup.spawn(
            "pipeline",
            &stages.ingest,
            Policy::Critical,
            &background,
            move |t| {
                let (kafka, lake, opts, outcome) =
                    (kafka.clone(), lake.clone(), opts.clone(), outcome.clone());
                async move {
                    let stats =
                        crate::pipeline::run_with_restarts(&kafka, &lake, &opts, t, None).await?;
                    *outcome.pipeline.lock().expect("poisoned") = Some(stats);
                    Ok(())
                }
            },
        );
    }
    let definitions =
        crate::pipeline::definition::Definitions::from_config(&config.pipeline.definitions).await?;
    let publisher = AlertPublisher::new(lake.clone(), &config.kafka, brokers)?;
    let every = Duration::from_millis(config.pipeline.derive_interval_ms);
    let deriving = lake.clone();
    sup.spawn_once(
        "deriver",
        &stages.derive,
        &background,
        move |t| async move {
            crate::pipeline::derive::run(deriving, definitions, every, Some(publisher), t).await;
            Ok(())
        },
    );
    {
        let (lake, maintain) = (lake.clone(), config.maintain.clone());
        sup.spawn(
            "maintenance",
            &stages.derive,
            Policy::Restart { max: 3 },
            &background,
            move |t| {
                let lake = lake.clone();
                let options = MaintainOptions::from_config(&maintain, true);
                let every = Duration::from_secs(maintain.interval_secs);
                async move {
                    crate::lakehouse::maintain::run_every(&lake, &options, every, t).await;
                    Ok(())
                }
            },
        );
    }
    {
        let (config, args, brokers) = (config.clone(), args.clone(), brokers.to_string());
        sup.spawn_once(
            "simulator",
            &stages.simulate,
            &background,
            move |t| async move {
                let live = simulate(&config, &args, &brokers, &run_id, t).await?;
                *outcome.live.lock().expect("poisoned") = Some(live);
                Ok(())
            },
        );
    }
    sup.health().set_ready(true);
    Ok(())
}

/// Seed history, then live events until `stop`.
async fn simulate(
    config: &Config,
    args: &UpArgs,
    brokers: &str,
    run_id: &str,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<crate::sim::Produced> {
    let producer = crate::sim::EventProducer::new(&config.kafka, brokers)?;
    if !args.no_history {
        let history = crate::sim::stream::history(&config.simulate, run_id);
        crate::sim::produce_all(&producer, &history, "history").await?;
    }
    let rate = config.simulate.rate;
    let mut generator = crate::sim::live_generator(config, brokers, run_id, rate)?;
    Ok(crate::sim::produce_live(&producer, &mut generator, rate, None, stop).await?)
}
