//! The command line: what each command takes and where it runs. Every command loads the layered
//! config first (`--config`, then `MILLSTREAM__*`), then applies its flags on top; each command
//! lives in its own module of [`crate::cmd`], with its arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cmd;
use crate::config::Config;

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
    /// maintenance, the MCP server, /metrics. Runs until Ctrl-C or --duration.
    Up(cmd::up::UpArgs),
    /// Run the ingestion pipeline against a broker until SIGTERM/Ctrl-C.
    Pipeline(cmd::pipeline::PipelineArgs),
    /// Write reference data to the lakehouse and produce history and live events to Kafka.
    Simulate(cmd::simulate::SimulateArgs),
    /// The MCP server (streamable HTTP at /mcp), /metrics, /healthz and /readyz over the
    /// lakehouse. Actions (orders, tickets) need a broker: --brokers or kafka.brokers.
    Serve(cmd::serve::ServeArgs),
    /// The MCP server for one client over stdin/stdout (logs go to stderr).
    Mcp(cmd::serve::McpArgs),
    /// A scaled-out deployment at a glance, as JSON: per worker of the group, the partitions it
    /// owns and its lag behind what is durable in Delta; per table, the last committed version.
    Status(cmd::status::StatusArgs),
    /// Run only the embedded broker and print its bootstrap address.
    Broker(cmd::broker::BrokerArgs),
    /// Inspect and create tables.
    Tables {
        #[command(subcommand)]
        command: cmd::tables::TablesCommand,
    },
    /// Compact (Z-order), checkpoint and vacuum every table once; prints a JSON report.
    Maintain(cmd::tables::MaintainArgs),
    /// Measure signal quality against the simulator's injected faults (ground truth).
    Eval {
        #[command(subcommand)]
        command: cmd::eval::EvalCommand,
    },
    /// Search SOPs, incident reports, proposals and tickets (hybrid semantic + keyword), as a
    /// principal of the policies: `millstream search "pressure keeps dropping" --kind sop`.
    Search(cmd::search::SearchArgs),
    /// The agent: a language model using millstream's tools for you (`agent ask "…"`,
    /// `agent chat`), with your rights; needs agent.llm_base_url and agent.llm_model.
    Agent {
        #[command(subcommand)]
        command: cmd::agent::AgentCommand,
    },
    /// Benchmarks (release build recommended).
    Bench {
        #[command(subcommand)]
        command: cmd::bench::BenchCommand,
    },
    /// Write schemas/events/*.schema.json from the event types.
    Schemas(cmd::tables::SchemasArgs),
}

/// The `millstream` program: arguments, configuration, tracing, then the command on a tokio
/// runtime. It lives here rather than in `main.rs` so the program's async code (every future
/// [`run`] polls) is compiled once, in this library: driven from the binary crate, all of it
/// was compiled a second time there (147 s of a clean release build).
pub fn main() -> std::process::ExitCode {
    match start() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start() -> anyhow::Result<()> {
    fix_embedding_threads();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    // Every SQL session of this process judges signals by the configured thresholds.
    crate::pipeline::udf::install(&config.signals);
    let _traces = crate::telemetry::init(&config.tracing)?;
    let runtime = crate::runtime::builder().build()?;
    runtime.block_on(run(cli, config))
}

/// Pins the number of threads candle splits a matrix product over to the number it would pick
/// anyway. Unless `RAYON_NUM_THREADS` is set, candle works that number out again for every
/// product, reading `/proc/cpuinfo` and the CPU mask; that was 8 % of the CPU of embedding a
/// search query (`perf record` on `bench search`). An operator's own setting is kept.
fn fix_embedding_threads() {
    const VAR: &str = "RAYON_NUM_THREADS";
    if std::env::var_os(VAR).is_none() {
        let threads = candle_core::utils::get_num_threads();
        // SAFETY: called first thing in `start`, before the runtime, the tracing exporter or any
        // other thread exists, so no thread can read the environment while it changes.
        unsafe { std::env::set_var(VAR, threads.to_string()) };
    }
}

/// Runs `cli` with `config` (loaded from `cli.config` and the environment by `main`, before
/// logging starts, since the config says where traces go).
pub async fn run(cli: Cli, mut config: Config) -> anyhow::Result<()> {
    if let Some(root) = &cli.lakehouse {
        config.lakehouse.root = root.clone();
    }
    match cli.command {
        Command::Up(args) => cmd::up::run(config, args).await,
        Command::Pipeline(args) => cmd::pipeline::run(config, args).await,
        Command::Simulate(args) => cmd::simulate::run(config, args).await,
        Command::Serve(args) => cmd::serve::run(config, args).await,
        Command::Mcp(args) => cmd::serve::stdio(config, args).await,
        Command::Broker(args) => cmd::broker::run(config, args).await,
        Command::Status(args) => cmd::status::run(config, args).await,
        Command::Tables { command } => cmd::tables::run(config, command).await,
        Command::Maintain(args) => cmd::tables::maintain(config, args).await,
        Command::Eval { command } => cmd::eval::run(config, command).await,
        Command::Search(args) => cmd::search::run(config, args).await,
        Command::Agent { command } => cmd::agent::run(config, command).await,
        Command::Bench { command } => cmd::bench::run(config, cli.config.as_deref(), command).await,
        Command::Schemas(args) => cmd::tables::schemas(args),
    }
}
