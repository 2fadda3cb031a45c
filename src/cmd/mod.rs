//! The commands, one module each: its arguments, what it starts and in which order it stops.
//! Long-running commands run their tasks under one [`crate::supervise::Supervisor`] per
//! process, so every exit — Ctrl-C, `--duration`, a failed task, a failed start — stops them in
//! the same order.

pub mod agent;
pub mod bench;
pub mod broker;
pub mod eval;
pub mod pipeline;
pub mod search;
pub mod serve;
pub mod simulate;
pub mod status;
pub mod tables;
pub mod up;

use anyhow::{Context, bail};

use crate::config::Config;

/// `--brokers`, else `kafka.brokers`, or a clear error for a command that needs a broker.
fn brokers_or_fail(flag: Option<String>, config: &Config, command: &str) -> anyhow::Result<String> {
    match config.kafka.brokers_or(flag) {
        Some(b) => Ok(b),
        None => bail!(
            "`millstream {command}` needs a broker: pass --brokers host:port or set kafka.brokers (`millstream up` runs an embedded one)"
        ),
    }
}

/// Which consumer group a command works in, as `pipeline` and `status` take it.
#[derive(Debug, clap::Args)]
pub struct GroupArgs {
    /// Kafka bootstrap servers, host:port[,host:port] (overrides kafka.brokers).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Consumer group of the workers (overrides kafka.group_id).
    #[arg(long)]
    pub group: Option<String>,
    /// Pipeline name, part of every txn appId in the Delta commits (overrides pipeline.name).
    #[arg(long)]
    pub name: Option<String>,
}

impl GroupArgs {
    /// The brokers (or a clear error naming `command`), with the group and pipeline name
    /// applied to `config`.
    fn apply(self, config: &mut Config, command: &str) -> anyhow::Result<String> {
        let brokers = brokers_or_fail(self.brokers, config, command)?;
        if let Some(g) = self.group {
            config.kafka.group_id = g;
        }
        if let Some(n) = self.name {
            config.pipeline.name = n;
        }
        Ok(brokers)
    }
}

/// How long a command waits at start for the broker to answer.
const BROKER_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// The broker answers and the lakehouse takes writes — checked at start, so a wrong address or
/// a read-only lakehouse is a clear error now, not a retry loop later.
async fn check_dependencies(
    config: &Config,
    brokers: Option<&str>,
    lake: Option<&crate::lakehouse::Lakehouse>,
) -> anyhow::Result<()> {
    if let Some(lake) = lake {
        lake.check_writable().await?;
    }
    if let Some(b) = brokers {
        crate::broker::check_reachable(&config.kafka, b, BROKER_CHECK).await?;
    }
    Ok(())
}

/// `/metrics` and the health endpoints on `addr`; when another worker on this host holds that
/// port, on a free one of the same address instead (said at WARN), so a second worker (or a
/// simulator beside it) starts.
pub(super) async fn bind_metrics(
    addr: &str,
    sup: &crate::supervise::Supervisor,
) -> anyhow::Result<(std::net::SocketAddr, crate::serve::Server)> {
    match crate::serve::bind(addr, None, sup.health()).await {
        Err(crate::Error::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip);
            let any = format!("{ip}:0");
            let bound = crate::serve::bind(&any, None, sup.health())
                .await
                .context("binding a free port for /metrics")?;
            tracing::warn!(
                configured = addr,
                using = %bound.0,
                "serve.addr is in use (another worker on this host?); /metrics is on a free port \
                 instead: set serve.addr per worker to choose it"
            );
            Ok(bound)
        }
        other => other.context("binding serve.addr"),
    }
}

/// Checks the config again after flags changed it.
fn revalidate(config: &Config) -> anyhow::Result<()> {
    let problems = config.validate();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::Config(problems).into())
    }
}
