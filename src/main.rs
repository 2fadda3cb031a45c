use clap::Parser;

/// mimalloc instead of glibc malloc: Arrow and DataFusion allocate and free many short-lived
/// buffers across threads, and under glibc a fifth of `bench mcp`'s CPU went to malloc/free
/// (`perf record` on `millstream bench mcp --clients 100`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = millstream::cli::Cli::parse();
    let config = match millstream::config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Every SQL session of this process judges signals by the configured thresholds.
    millstream::pipeline::udf::install(&config.signals);
    let _traces = match millstream::telemetry::init(&config.tracing) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(millstream::cli::run(cli, config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
