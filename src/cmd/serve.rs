//! `millstream serve` (the MCP server over HTTP, with `/metrics`, `/healthz`, `/readyz`) and
//! `millstream mcp --stdio` (one client on stdin/stdout).
//!
//! Stages, stopped in this order: the HTTP server (requests in flight finish) and the catalog
//! refresher, then the audit writer (so the last calls are recorded).

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::config::Config;
use crate::lakehouse::Lakehouse;
use crate::supervise::{Supervisor, stop_token};

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

pub async fn run(mut config: Config, args: ServeArgs) -> anyhow::Result<()> {
    if let Some(a) = args.addr {
        config.serve.addr = a;
    }
    super::revalidate(&config)?;
    let brokers = config.kafka.brokers_or(args.brokers);
    let lake = Lakehouse::from_config(&config.lakehouse)?;
    // The audit log is written: the lakehouse must take writes.
    super::check_dependencies(&config, brokers.as_deref(), Some(&lake)).await?;
    let mut sup = Supervisor::new();
    let stop = stop_token(args.duration.map(Duration::from_secs), sup.root());
    let serving = sup.stage("serve");
    let last = sup.stage("audit");
    let started = start(
        &config,
        &lake,
        brokers.as_deref(),
        &mut sup,
        &serving,
        &last,
    )
    .await;
    let addr = match started {
        Ok(addr) => addr,
        Err(e) => {
            sup.shutdown().await;
            return Err(e);
        }
    };
    println!("millstream serve");
    println!("  mcp       : http://{addr}/mcp");
    if config.console.enabled {
        println!("  console   : http://{addr}/console");
    }
    println!("  metrics   : http://{addr}/metrics");
    println!("  health    : http://{addr}/healthz, http://{addr}/readyz");
    println!("  lakehouse : {}", lake.uri());
    match &brokers {
        Some(b) => println!("  actions   : to {b}"),
        None => println!("  actions   : disabled (no broker: pass --brokers or set kafka.brokers)"),
    }
    sup.wait(stop).await
}

async fn start(
    config: &Config,
    lake: &Lakehouse,
    brokers: Option<&str>,
    sup: &mut Supervisor,
    serving: &crate::supervise::Stage,
    last: &crate::supervise::Stage,
) -> anyhow::Result<std::net::SocketAddr> {
    let server = crate::mcp::start(
        config,
        lake.clone(),
        brokers,
        sup,
        crate::mcp::Stages { serving, last },
    )
    .await
    .context("starting the MCP server")?;
    let mcp = crate::serve::Mcp::from_config(server, config)?;
    let (addr, http) = crate::serve::bind(&config.serve.addr, Some(mcp), sup.health())
        .await
        .context("binding serve.addr")?;
    sup.spawn_once(
        "http",
        serving,
        &tokio::runtime::Handle::current(),
        move |t| http.run(t),
    );
    sup.health().set_ready(true);
    Ok(addr)
}

pub async fn stdio(config: Config, args: McpArgs) -> anyhow::Result<()> {
    let brokers = config.kafka.brokers_or(args.brokers);
    let lake = Lakehouse::from_config(&config.lakehouse)?;
    let mut sup = Supervisor::new();
    let serving = sup.stage("serve");
    let last = sup.stage("audit");
    let server = crate::mcp::start(
        &config,
        lake,
        brokers.as_deref(),
        &mut sup,
        crate::mcp::Stages {
            serving: &serving,
            last: &last,
        },
    )
    .await
    .context("starting the MCP server");
    let served = match server {
        Ok(server) => crate::mcp::serve_stdio(server).await,
        Err(e) => Err(e),
    };
    // The client went away: stop in order, the audit log last.
    sup.shutdown().await;
    served
}
