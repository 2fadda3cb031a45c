//! `bench ingest --brokers H:P --workers N`: ingest on the cluster path. The events are preloaded
//! into an external broker; then N `millstream pipeline` processes (one consumer group; the
//! first also derives the signals and publishes alerts, as `pipeline-lead` does in
//! docker-compose) ingest them into the lakehouse given with `--lakehouse` (an S3 prefix, or a
//! local folder). The run ends when every record of the topics is durable in Delta (the offsets
//! in the bronze tables' commits reach the log end), as `millstream status` measures it.
//!
//! Reported: events/s in total (from the first records durable to the last, and from the
//! workers' start, group join included) and per worker (its share of the records over the
//! same span), the time each batch spent writing (Parquet files and Delta commits: what the
//! object store sets) at p50/p95/p99 per worker, each worker's peak RSS (the pipeline's
//! memory without the broker's), and the data files the run added to the bronze tables.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::broker::topics;
use crate::config::Config;
use crate::lakehouse::Lakehouse;
use crate::model::EventKind;

/// Gives up when nothing more becomes durable for this long.
const STALL: Duration = Duration::from_secs(300);

/// One worker process: its stdout (the run's stats as JSON at exit) and its log file.
struct WorkerProcess {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(
    config: Config,
    config_file: Option<&Path>,
    brokers: &str,
    workers: usize,
    events: u64,
) -> anyhow::Result<()> {
    let lake = Lakehouse::from_config(&config.lakehouse)?;
    lake.check_writable().await?;
    for kind in EventKind::ALL {
        anyhow::ensure!(
            !lake.exists(kind.bronze_table()).await?,
            "bench ingest --brokers needs an empty lakehouse, and {} already has {}: pass a fresh \
             --lakehouse (a new S3 prefix or folder)",
            lake.uri(),
            kind.bronze_table()
        );
    }
    crate::broker::check_reachable(&config.kafka, brokers, Duration::from_secs(10)).await?;
    crate::broker::ensure_topics(&config.kafka, brokers, &topics::ALL).await?;
    crate::sim::write_reference(&lake, &config.simulate, false).await?;

    let (produced, preload_secs) = super::preload(&config, brokers, events).await?;

    let mut reader = super::super::status::ProgressReader::new(&config, brokers, lake.clone());
    let start = reader.read().await?;
    let in_topics: i64 = start.values().map(|p| p.high - p.low).sum();
    let partitions = start.len();

    // Reference data may have written to some bronze tables (tickets): not the run's files.
    let mut before = std::collections::BTreeMap::new();
    for kind in EventKind::ALL {
        let name = kind.bronze_table();
        if lake.exists(name).await? {
            let t = lake.open(name).await?;
            before.insert(name, t.snapshot()?.log_data().num_files());
        }
    }
    let group = format!("bench-{}", chrono::Utc::now().timestamp_millis());
    // The workers' logs, kept when the run fails.
    let logs = std::env::temp_dir().join(format!("millstream-{group}"));
    std::fs::create_dir_all(&logs)?;
    eprintln!(
        "bench ingest: {in_topics} records on {partitions} partitions; starting {workers} \
         worker(s) in group {group} (logs in {})",
        logs.display()
    );
    let started = Instant::now();
    let mut procs = (0..workers)
        .map(|i| spawn_worker(&lake, config_file, brokers, &group, &config, i, &logs))
        .collect::<anyhow::Result<Vec<_>>>()?;

    // When the first records were seen durable: the span is measured by polling (every 200 ms
    // plus the read), which on a run of a minute or more is within 1 %. The commits' own
    // timestamps are no better: S3 keeps object times to the second.
    let mut first_durable = None;
    let (mut last_done, mut last_change) = (0i64, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (i, p) in procs.iter_mut().enumerate() {
            if let Some(status) = p.child.try_wait()? {
                anyhow::bail!(
                    "worker {i} exited ({status}) before the run ended; its log: {}",
                    p.log.display()
                );
            }
        }
        let progress = reader.read().await?;
        let lag: i64 = progress.values().map(|p| p.lag()).sum();
        let done = in_topics - lag;
        if done > 0 && first_durable.is_none() {
            first_durable = Some((Instant::now(), done));
        }
        if done != last_done {
            eprintln!(
                "bench ingest: {done}/{in_topics} durable after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            (last_done, last_change) = (done, Instant::now());
        }
        if lag == 0 {
            break;
        }
        anyhow::ensure!(
            last_change.elapsed() < STALL,
            "nothing more became durable in {} s ({done}/{in_topics}); worker logs in {}",
            STALL.as_secs(),
            logs.display()
        );
    }
    let until_durable = started.elapsed().as_secs_f64();
    // The rate counts the records made durable after the first were seen, over the time since.
    let (first_durable, first_done) = first_durable.expect("records became durable");
    let span = first_durable.elapsed().as_secs_f64();
    let measured = (in_topics - first_done) as f64;
    if measured == 0.0 {
        eprintln!(
            "bench ingest: every record was durable at the first look, so there is no rate to \
             measure from it: send more events (--events) for events_per_sec"
        );
    }
    // No rate when nothing was measured (null in the JSON), rather than a made-up one.
    let rate = |records: f64| (measured > 0.0).then(|| (records / span).round());
    let startup = (first_durable - started).as_secs_f64();

    // The data files the run added to the bronze tables.
    let mut files = 0usize;
    for kind in EventKind::ALL {
        let name = kind.bronze_table();
        if lake.exists(name).await? {
            let had = before.get(name).copied().unwrap_or(0);
            let t = lake.open(name).await?;
            files += t.snapshot()?.log_data().num_files().saturating_sub(had);
        }
    }

    eprintln!("bench ingest: stopping the workers");
    let mut per_worker = Vec::new();
    for (i, p) in procs.iter_mut().enumerate() {
        // Read before the worker exits: its memory alone, the broker's log being elsewhere.
        let peak_rss = super::child_peak_rss_mb(p.child.id()).round();
        let stats = stop(p).await?;
        let records = stats["records"].as_f64().unwrap_or(0.0);
        per_worker.push(json!({
            "worker": i,
            "derives": i == 0,
            "records": stats["records"],
            "events_per_sec": rate(records / in_topics as f64 * measured),
            "batches": stats["batches"],
            "commits": stats["commits"],
            "write_ms": stats["write_ms"],
            "peak_rss_mb": peak_rss,
        }));
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&logs);
    let p95_max = per_worker
        .iter()
        .filter_map(|w| w["write_ms"]["p95"].as_f64())
        .fold(0.0, f64::max);
    println!(
        "{}",
        json!({
            "bench": "ingest",
            "brokers": brokers,
            "lakehouse": lake.uri(),
            "workers": workers,
            "partitions": partitions,
            "events": in_topics,
            "malformed_produced": produced.malformed,
            "preload_events_per_sec": (produced.events as f64 / preload_secs).round(),
            "seconds": (span * 1000.0).round() / 1000.0,
            "events_per_sec": rate(measured),
            "events_per_sec_per_worker": rate(measured / workers as f64),
            "seconds_to_first_durable": (startup * 10.0).round() / 10.0,
            "seconds_until_durable": (until_durable * 10.0).round() / 10.0,
            "events_per_sec_including_startup": (in_topics as f64 / until_durable).round(),
            "write_ms_p95_worst_worker": p95_max,
            "bronze_files_written": files,
            "per_worker": per_worker,
        })
    );
    Ok(())
}

fn spawn_worker(
    lake: &Lakehouse,
    config_file: Option<&Path>,
    brokers: &str,
    group: &str,
    config: &Config,
    i: usize,
    logs: &Path,
) -> anyhow::Result<WorkerProcess> {
    let log = logs.join(format!("worker-{i}.log"));
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--lakehouse")
        .arg(lake.uri())
        .args(["pipeline", "--brokers", brokers, "--group", group])
        .args(["--name", &config.pipeline.name])
        .args(["--instance", &format!("{group}-{i}")]);
    if i > 0 {
        cmd.arg("--no-derive");
    }
    if let Some(f) = config_file {
        cmd.env("MILLSTREAM_CONFIG", f);
    }
    // A worker ends with the bench, however the bench ends.
    // SAFETY: prctl in the forked child before exec touches nothing of the parent's state.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd
        // Its /metrics on a free port: the workers share this host.
        .env("MILLSTREAM__SERVE__ADDR", "127.0.0.1:0")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    Ok(WorkerProcess { child, log })
}

/// Stops a worker as an orchestrator would (SIGTERM: it finishes the batch in hand) and reads
/// the stats it prints as it exits.
async fn stop(p: &mut WorkerProcess) -> anyhow::Result<Value> {
    let pid = libc::pid_t::try_from(p.child.id())?;
    // SAFETY: signals a child process this bench started and has not yet reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stdout = p.child.stdout.take().expect("piped");
    let log = p.log.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Value> {
        let last = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.starts_with('{'))
            .last();
        let last = last.ok_or_else(|| {
            anyhow::anyhow!(
                "a worker printed no stats as it stopped; its log: {}",
                log.display()
            )
        })?;
        Ok(serde_json::from_str(&last)?)
    })
    .await?
}
