//! The command line. Every command loads the layered config first (`--config`, then
//! `MILLSTREAM__*`), then applies its flags on top.

use crate::pipeline::publish::AlertPublisher;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;

use crate::config::Config;
use crate::lakehouse::Lakehouse;
use crate::model::{EventKind, tables};
use crate::pipeline::PipelineOptions;

#[derive(Debug, Parser)]
#[command(
    name = "millstream",
    version,
    about = "Factory event streams → exactly-once Delta tables → fresh signals"
)]
pub struct Cli {
    /// Config file layered over the embedded defaults (env MILLSTREAM__* wins over both).
    #[arg(long, global = true, env = "MILLSTREAM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Lakehouse root (overrides lakehouse.root).
    #[arg(long, global = true)]
    pub lakehouse: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything in one process: embedded broker (unless --brokers), simulator, pipeline,
    /// maintenance, /metrics. Runs until Ctrl-C or --duration.
    Up(UpArgs),
    /// Run the ingestion pipeline against a broker until SIGTERM/Ctrl-C.
    Pipeline(PipelineArgs),
    /// Write reference data to the lakehouse and produce history and live events to Kafka.
    Simulate(SimulateArgs),
    /// The MCP server (streamable HTTP at /mcp), /metrics and /healthz over the lakehouse.
    /// Actions (orders, tickets) need a broker: --brokers or kafka.brokers.
    Serve(ServeArgs),
    /// The MCP server for one client over stdin/stdout (logs go to stderr).
    Mcp(McpArgs),
    /// Run only the embedded broker and print its bootstrap address.
    Broker(BrokerArgs),
    /// Inspect and create tables.
    Tables {
        #[command(subcommand)]
        command: TablesCommand,
    },
    /// Compact (Z-order), checkpoint and vacuum every table once; prints a JSON report.
    Maintain {
        /// Plain bin-packing instead of Z-order.
        #[arg(long)]
        no_zorder: bool,
    },
    /// Measure signal quality against the simulator's injected faults (ground truth).
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// Benchmarks (release build recommended).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Write schemas/events/*.schema.json from the event types.
    Schemas {
        /// Output folder.
        #[arg(long, default_value = "schemas/events")]
        out: PathBuf,
    },
}

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

#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Kafka bootstrap servers, host:port[,host:port] (overrides kafka.brokers).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Consumer group (overrides kafka.group_id).
    #[arg(long)]
    pub group: Option<String>,
    /// Pipeline name, part of every txn appId (overrides pipeline.name).
    #[arg(long)]
    pub name: Option<String>,
    /// Do not run the derived pipelines (signals, alerts) nor the mfg.alerts publisher in this
    /// process: for extra workers of a scaled-out group, where one per lakehouse is enough.
    #[arg(long)]
    pub no_derive: bool,
}

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

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Kafka bootstrap servers for actions (overrides kafka.brokers; without one, action tools
    /// answer that actions are disabled).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Listen address (overrides serve.addr).
    #[arg(long)]
    pub addr: Option<String>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
}

#[derive(Debug, Args)]
pub struct McpArgs {
    /// Serve over stdin/stdout (the only transport of this command; `serve` is HTTP).
    #[arg(long, required = true)]
    pub stdio: bool,
    /// Kafka bootstrap servers for actions (overrides kafka.brokers).
    #[arg(long)]
    pub brokers: Option<String>,
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum TablesCommand {
    /// Create every table that does not exist yet.
    Create,
    /// List tables with version, files and rows.
    List,
    /// Show a table's definition.
    Describe { name: String },
    /// Rows in the Change Data Feed between two versions (inclusive).
    Cdf {
        name: String,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Simulated telemetry with injected faults through the anomaly detector, and a simulated
    /// world with supplier delays, demand surges and quiet customers through the shortage and
    /// churn pipelines (`pipeline.definitions`, so your own SQL can be scored); prints precision,
    /// recall and detection delay per signal type as JSON.
    Signals {
        /// Simulated hours to evaluate.
        #[arg(long, default_value_t = 24.0)]
        hours: f64,
        /// Seed (overrides simulate.seed).
        #[arg(long)]
        seed: Option<u64>,
        /// Simulated days for the shortage and churn evaluation (0 skips it).
        #[arg(long, default_value_t = 60.0)]
        days: f64,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Preload the embedded broker, then time the pipeline from first fetch to last commit.
    Ingest {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// Steady produce rate; measures produce time → committed latency.
    Freshness {
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// MCP clients over streamable HTTP calling the read tools against live tables (the
    /// pipeline ingesting meanwhile); latency per tool and how soon the server sees commits.
    Mcp {
        /// Concurrent MCP sessions.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Calls per second per client (Poisson arrivals; 0 = back to back).
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Call as this principal of the policies (its persona's tools, its tenant's rows);
        /// default `serve.principal`.
        #[arg(long = "as", value_name = "PRINCIPAL")]
        principal: Option<String>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(root) = &cli.lakehouse {
        config.lakehouse.root = root.clone();
    }
    match cli.command {
        Command::Up(args) => crate::up::run(config, args).await,
        Command::Pipeline(args) => pipeline(config, args).await,
        Command::Simulate(args) => simulate(config, args).await,
        Command::Serve(args) => serve(config, args).await,
        Command::Mcp(args) => mcp_stdio(config, args).await,
        Command::Broker(args) => broker(config, args).await,
        Command::Tables { command } => tables_cmd(config, command).await,
        Command::Maintain { no_zorder } => {
            let lake = Lakehouse::new(&config.lakehouse.root)?;
            let reports =
                crate::lakehouse::maintain::run(&lake, &maintain_options(&config, !no_zorder))
                    .await;
            for r in &reports {
                println!("{}", serde_json::to_string(r)?);
            }
            if reports.iter().any(|r| r.error.is_some()) {
                bail!("maintenance failed for some tables (see error fields)");
            }
            Ok(())
        }
        Command::Eval {
            command: EvalCommand::Signals { hours, seed, days },
        } => {
            anyhow::ensure!((0.0..=365.0).contains(&days), "--days must be in [0, 365]");
            anyhow::ensure!(
                hours > 0.0 && hours <= 24.0 * 90.0,
                "--hours must be in (0, 2160]"
            );
            let mut sim = config.simulate.clone();
            if let Some(seed) = seed {
                sim.seed = seed;
            }
            let anomaly_sim = sim.clone();
            let anomalies = tokio::task::spawn_blocking(move || {
                crate::signals::eval::anomalies(&anomaly_sim, hours, |h| {
                    eprintln!("eval anomalies: {h:.0}/{hours:.0} simulated hours")
                })
            })
            .await?;
            let mut report = serde_json::json!({ "anomalies": anomalies });
            if days > 0.0 {
                let defs = crate::pipeline::definition::Definitions::from_config(
                    &config.pipeline.definitions,
                )
                .await?;
                let (shortages, churn) =
                    crate::signals::eval_supply::supply_and_sales(&sim, &defs, days, |d| {
                        if d.fract() == 0.0 && (d as i64) % 5 == 0 {
                            eprintln!("eval shortages/churn: {d:.0}/{days:.0} simulated days")
                        }
                    })
                    .await?;
                report["shortages"] = serde_json::to_value(shortages)?;
                report["churn"] = serde_json::to_value(churn)?;
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Bench { command } => match command {
            BenchCommand::Ingest { events } => crate::bench::ingest(config, events).await,
            BenchCommand::Freshness { rate, seconds } => {
                crate::bench::freshness(config, rate, seconds).await
            }
            BenchCommand::Mcp {
                clients,
                seconds,
                rate,
                principal,
            } => {
                if let Some(p) = principal {
                    config.serve.principal = p;
                }
                anyhow::ensure!(
                    (1..=10_000).contains(&clients),
                    "--clients must be in 1..=10000"
                );
                anyhow::ensure!(seconds >= 1, "--seconds must be at least 1");
                anyhow::ensure!(rate.is_finite() && rate >= 0.0, "--rate must be >= 0");
                crate::bench::mcp(config, clients, seconds, rate).await
            }
        },
        Command::Schemas { out } => {
            std::fs::create_dir_all(&out)?;
            for kind in EventKind::ALL {
                let path = out.join(format!("{}.schema.json", kind.schema_name()));
                std::fs::write(&path, schema_text(kind))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

/// The exact text of `schemas/events/<name>.schema.json`.
pub fn schema_text(kind: EventKind) -> String {
    serde_json::to_string_pretty(&kind.json_schema()).expect("schema serializes") + "\n"
}

pub fn maintain_options(
    config: &Config,
    zorder: bool,
) -> crate::lakehouse::maintain::MaintainOptions {
    crate::lakehouse::maintain::MaintainOptions {
        target_file_bytes: config.maintain.target_file_mb * 1024 * 1024,
        vacuum_retention: Duration::from_secs(config.maintain.vacuum_retention_hours * 3600),
        zorder,
    }
}

pub fn pipeline_options(config: &Config, brokers: &str) -> PipelineOptions {
    PipelineOptions {
        name: config.pipeline.name.clone(),
        brokers: brokers.to_string(),
        group_id: config.kafka.group_id.clone(),
        batch_max_events: config.pipeline.batch_max_events,
        batch_max_wait: Duration::from_millis(config.pipeline.batch_max_ms),
        idle_commit: Duration::from_secs(config.pipeline.idle_commit_secs),
        target_file_bytes: config.pipeline.target_file_mb * 1024 * 1024,
        stop_after: None,
        freshness: None,
        definitions: config.pipeline.definitions.clone(),
    }
}

fn brokers_or_fail(flag: Option<String>, config: &Config, command: &str) -> anyhow::Result<String> {
    match optional_brokers(flag, config) {
        Some(b) => Ok(b),
        None => bail!(
            "`millstream {command}` needs a broker: pass --brokers host:port or set kafka.brokers (`millstream up` runs an embedded one)"
        ),
    }
}

/// A stop signal that turns true on Ctrl-C, SIGTERM or after `duration`.
pub fn stop_signal(duration: Option<Duration>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let sleep = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: finishing the batch in hand, then stopping"),
            _ = term.recv() => tracing::info!("SIGTERM: finishing the batch in hand, then stopping"),
            _ = sleep => tracing::info!("duration reached: stopping"),
        }
        let _ = tx.send(true);
    });
    rx
}

async fn pipeline(mut config: Config, args: PipelineArgs) -> anyhow::Result<()> {
    let brokers = brokers_or_fail(args.brokers, &config, "pipeline")?;
    if let Some(g) = args.group {
        config.kafka.group_id = g;
    }
    if let Some(n) = args.name {
        config.pipeline.name = n;
    }
    let lake = Lakehouse::new(&config.lakehouse.root)?;
    let stop = stop_signal(None);
    let (addr, _server) = crate::serve::spawn(&config.serve.addr, stop.clone(), None)
        .await
        .context("binding serve.addr")?;
    tracing::info!("metrics at http://{addr}/metrics");
    let opts = pipeline_options(&config, &brokers);
    let definitions =
        crate::pipeline::definition::Definitions::from_config(&config.pipeline.definitions).await?;
    let (derive_stop, derive_rx) = watch::channel(args.no_derive);
    let deriver = if args.no_derive {
        None
    } else {
        let publisher = AlertPublisher::new(lake.clone(), &config.kafka, &brokers)?;
        Some(tokio::spawn(crate::pipeline::derive::run(
            lake.clone(),
            definitions,
            Duration::from_millis(config.pipeline.derive_interval_ms),
            Some(publisher),
            derive_rx,
        )))
    };
    let stats = crate::pipeline::run_with_restarts(&config.kafka, &lake, &opts, stop).await;
    // One last derive round over everything the pipeline committed.
    let _ = derive_stop.send(true);
    if let Some(d) = deriver {
        d.await.context("deriver task")?;
    }
    println!("{}", serde_json::to_string(&stats?)?);
    Ok(())
}

async fn simulate(mut config: Config, args: SimulateArgs) -> anyhow::Result<()> {
    if let Some(s) = args.seed {
        config.simulate.seed = s;
    }
    if let Some(r) = args.malformed_ratio {
        config.simulate.malformed_ratio = r;
    }
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(crate::Error::Config(problems).into());
    }
    let rate = args.rate.unwrap_or(config.simulate.rate);
    let run_id = args
        .run_id
        .unwrap_or_else(|| format!("{:x}", chrono::Utc::now().timestamp_millis()));
    if args.reference {
        let lake = Lakehouse::new(&config.lakehouse.root)?;
        crate::sim::write_reference(&lake, &config.simulate, args.reseed).await?;
    }
    if !args.history && (rate == 0 || args.events == Some(0)) {
        return Ok(());
    }
    let brokers = brokers_or_fail(args.brokers, &config, "simulate")?;
    crate::broker::ensure_topics(&config.kafka, &brokers, &crate::broker::topics::ALL).await?;
    let producer = crate::sim::EventProducer::new(&config.kafka, &brokers)?;
    let mut summary = serde_json::Map::new();
    if args.history {
        let history = crate::sim::stream::history(&config.simulate, &run_id);
        let produced = crate::sim::produce_all(&producer, &history, "history").await?;
        summary.insert("history".into(), serde_json::to_value(produced)?);
    }
    if rate > 0 && args.events != Some(0) {
        let stop = stop_signal(args.duration.map(Duration::from_secs));
        let orders = crate::sim::order_feed(
            &config.kafka,
            &brokers,
            &format!("{}-sim-{run_id}", config.kafka.group_id),
        )?;
        let mut generator = crate::sim::stream::Generator::new(
            &config.simulate,
            &run_id,
            config.simulate.start,
            rate,
        )
        .with_order_feed(orders);
        let produced =
            crate::sim::produce_live(&producer, &mut generator, rate, args.events, stop).await?;
        summary.insert("live".into(), serde_json::to_value(produced)?);
    }
    println!("{}", serde_json::Value::Object(summary));
    Ok(())
}

/// `--brokers`, else `kafka.brokers` when set.
pub fn optional_brokers(flag: Option<String>, config: &Config) -> Option<String> {
    flag.or_else(|| Some(config.kafka.brokers.clone()).filter(|b| !b.is_empty()))
}

async fn serve(mut config: Config, args: ServeArgs) -> anyhow::Result<()> {
    if let Some(a) = args.addr {
        config.serve.addr = a;
    }
    // `--addr` came after the config was checked.
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(crate::Error::Config(problems).into());
    }
    let brokers = optional_brokers(args.brokers, &config);
    let lake = Lakehouse::new(&config.lakehouse.root)?;
    let stop = stop_signal(args.duration.map(Duration::from_secs));
    let server = crate::mcp::start(&config, lake.clone(), brokers.as_deref(), stop.clone())
        .await
        .context("starting the MCP server")?;
    let mcp = crate::serve::Mcp::from_config(server.clone(), &config)?;
    let (addr, task) = crate::serve::spawn(&config.serve.addr, stop, Some(mcp))
        .await
        .context("binding serve.addr")?;
    println!("millstream serve");
    println!("  mcp       : http://{addr}/mcp");
    println!("  metrics   : http://{addr}/metrics");
    println!("  lakehouse : {}", lake.root().display());
    match &brokers {
        Some(b) => println!("  actions   : to {b}"),
        None => println!("  actions   : disabled (no broker: pass --brokers or set kafka.brokers)"),
    }
    task.await?;
    server.audit_flushed(AUDIT_FLUSH).await;
    Ok(())
}

/// How long a stopping server waits for its last audit records to be committed.
pub(crate) const AUDIT_FLUSH: Duration = Duration::from_secs(10);

async fn mcp_stdio(config: Config, args: McpArgs) -> anyhow::Result<()> {
    let brokers = optional_brokers(args.brokers, &config);
    let lake = Lakehouse::new(&config.lakehouse.root)?;
    let (stop_tx, stop) = watch::channel(false);
    let server = crate::mcp::start(&config, lake, brokers.as_deref(), stop)
        .await
        .context("starting the MCP server")?;
    let served = crate::mcp::serve_stdio(server.clone()).await;
    let _ = stop_tx.send(true);
    server.audit_flushed(AUDIT_FLUSH).await;
    served
}

async fn broker(config: Config, args: BrokerArgs) -> anyhow::Result<()> {
    let broker = crate::broker::EmbeddedBroker::start(
        config.kafka.embedded_brokers,
        &crate::broker::topics::ALL,
        config.kafka.partitions,
    )?;
    println!("bootstrap: {}", broker.bootstrap_servers());
    let mut stop = stop_signal(args.duration.map(Duration::from_secs));
    let _ = stop.wait_for(|s| *s).await;
    drop(broker);
    Ok(())
}

async fn tables_cmd(config: Config, command: TablesCommand) -> anyhow::Result<()> {
    let lake = Lakehouse::new(&config.lakehouse.root)?;
    match command {
        TablesCommand::Create => {
            for t in lake.ensure_all().await? {
                println!("{} (version {})", t.table_url(), t.version().unwrap_or(0));
            }
        }
        TablesCommand::List => {
            println!(
                "{:<36} {:>8} {:>7} {:>12}",
                "table", "version", "files", "rows"
            );
            for def in tables::catalog() {
                match lake.open(&def.name).await {
                    Ok(t) => {
                        let files = t.get_file_uris().map(|f| f.count()).unwrap_or(0);
                        let rows = count_rows(&lake, &def.name).await.unwrap_or(-1);
                        println!(
                            "{:<36} {:>8} {:>7} {:>12}",
                            def.name,
                            t.version().unwrap_or(0),
                            files,
                            rows
                        );
                    }
                    Err(_) => println!("{:<36} {:>8}", def.name, "-"),
                }
            }
        }
        TablesCommand::Describe { name } => {
            let def = tables::get(&name)?;
            println!("{}: {}", def.name, def.comment);
            println!(
                "partitioned by {:?}; z-order by {:?}; change data feed on",
                def.partition_by, def.zorder_by
            );
            for c in &def.columns {
                println!(
                    "  {:<16} {:<10} {:<9} {}",
                    c.name,
                    format!("{:?}", c.ty).to_lowercase(),
                    if c.nullable { "null" } else { "not null" },
                    c.comment
                );
            }
        }
        TablesCommand::Cdf { name, from, to } => {
            let table = lake.open(&name).await?;
            let batches = crate::lakehouse::cdf::read_changes(table, &name, from, to).await?;
            println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
        }
    }
    Ok(())
}

/// Rows in a table at its latest version, via DataFusion.
pub async fn count_rows(lake: &Lakehouse, name: &str) -> crate::Result<i64> {
    lake.sql_i64(&format!("SELECT count(*) FROM {name}")).await
}
