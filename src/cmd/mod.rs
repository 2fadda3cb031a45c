//! The commands, one module each: its arguments, what it starts and in which order it stops.
//! Long-running commands run their tasks under one [`crate::supervise::Supervisor`] per
//! process, so every exit — Ctrl-C, `--duration`, a failed task, a failed start — stops them in
//! the same order.

pub mod bench;
pub mod broker;
pub mod eval;
pub mod pipeline;
pub mod serve;
pub mod simulate;
pub mod tables;
pub mod up;

use anyhow::bail;

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

/// Checks the config again after flags changed it.
fn revalidate(config: &Config) -> anyhow::Result<()> {
    let problems = config.validate();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::Config(problems).into())
    }
}
