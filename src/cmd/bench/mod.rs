//! `millstream bench …`: measured, not asserted. Each prints one final JSON line.
//!
//! - `ingest`: preloads the embedded broker with N simulated events, then times the pipeline
//!   from its first fetch to its last commit.
//! - `freshness`: produces at a steady rate while the pipeline runs, and reports the latency
//!   from each record's Kafka timestamp to the end of the commit that made it durable.
//! - `mcp`: MCP clients (rmcp over streamable HTTP) calling the read tools while the pipeline
//!   ingests live events; latency per tool, and how long after a commit the server serves it.
//! - `console` ([`console`]): console clients as browsers (pages, one live stream each): page
//!   time on the server, live update latency after a commit, memory per open page.
//! - `search` ([`search`]): knowledge search latency at 1 and 16 callers, indexing throughput.
//! - `derive` ([`derive`]): a derive round after a small change, at a chosen size.

pub(crate) use crate::eval::percentiles;

mod agent;
mod cluster;
mod console;
mod derive;
mod search;
mod stack;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::broker::{EmbeddedBroker, topics};
use crate::config::Config;
use crate::lakehouse::Lakehouse;
use crate::lakehouse::maintain::MaintainOptions;
use crate::model::EventKind;
use crate::pipeline::definition::Definitions;
use crate::pipeline::publish::AlertPublisher;
use crate::pipeline::{Observer, PipelineOptions, StopAfter};
use crate::sim::stream::Generator;
use crate::sim::{EventProducer, produce_all};
use crate::source::RawRecord;
use stack::{Finished, LiveStack};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Preload the embedded broker, then time the pipeline from first fetch to last commit.
    /// With --brokers: preload that broker and time --workers pipeline processes ingesting into
    /// --lakehouse (an empty S3 prefix or folder) until every record is durable.
    Ingest {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// An external Kafka-protocol broker (host:port) instead of the embedded one.
        #[arg(long)]
        brokers: Option<String>,
        /// Pipeline worker processes in one consumer group (with --brokers).
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// Steady produce rate; measures produce time → committed latency.
    Freshness {
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Also run the MCP server's catalog in the process, following the pipeline's commits
        /// as under `up`, and measure produce time → served (the telemetry version holding the
        /// record is what the server answers from).
        #[arg(long)]
        serve: bool,
        /// Maintain the tables (compaction, checkpoint, vacuum) every this many seconds while
        /// ingesting, as `up` does every `maintain.interval_secs` (the default); 0: never.
        #[arg(long)]
        maintain_secs: Option<u64>,
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
    /// Console clients as browsers: each signs in (alternately as a supply-chain manager and a
    /// sales rep), keeps its main page's live stream open and loads its persona's pages;
    /// page time on the server and at the client, live update latency after a commit, server
    /// memory per open page. The pipeline ingests live events meanwhile.
    Console {
        /// Concurrent signed-in clients, each with one open page.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Page loads per second per client (Poisson arrivals; 0 = back to back).
        #[arg(long, default_value_t = 0.2)]
        rate: f64,
    },
    /// Agent sessions turning back to back against the scripted model: turns/s and the
    /// agent's overhead per turn and per tool call, the model's time excluded.
    Agent {
        /// Concurrent sessions.
        #[arg(long, default_value_t = 20)]
        sessions: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Milliseconds the scripted model takes per answer. 0 (default) saturates the CPU with
        /// turns (throughput); a hosted model's few hundred ms leaves it mostly idle, which is
        /// when the agent's own overhead per call shows without queueing.
        #[arg(long, default_value_t = 0)]
        think_ms: u64,
    },
    /// Derived signals at scale: seeds --positions stock positions and --customers customers of
    /// history, then times the derive round after each of --rounds changes of --change of them
    /// (incremental where a pipeline allows), and checks the result against a full recompute.
    Derive {
        #[arg(long, default_value_t = 100_000)]
        positions: usize,
        /// Default: a tenth of the positions.
        #[arg(long)]
        customers: Option<usize>,
        /// Share of positions and customers each change touches.
        #[arg(long, default_value_t = 0.01)]
        change: f64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Knowledge search: latency per query (embedding included) at 1 and 16 concurrent
    /// callers over an index of --docs documents, indexing throughput, peak RSS. Pass
    /// --lakehouse to keep the corpus's embeddings for the next run (embedding it takes minutes).
    Search {
        #[arg(long, default_value_t = 10_000)]
        docs: usize,
        /// Measured seconds per number of callers.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Documents per answer.
        #[arg(long, default_value_t = 10)]
        k: usize,
    },
}

pub async fn run(
    mut config: Config,
    config_file: Option<&std::path::Path>,
    command: BenchCommand,
) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ingest {
            events,
            brokers: None,
            workers,
        } => {
            anyhow::ensure!(
                workers == 1,
                "--workers needs --brokers: worker processes share an external broker"
            );
            ingest(config, events).await
        }
        BenchCommand::Ingest {
            events,
            brokers: Some(brokers),
            workers,
        } => {
            anyhow::ensure!((1..=64).contains(&workers), "--workers must be in 1..=64");
            cluster::run(config, config_file, &brokers, workers, events).await
        }
        BenchCommand::Freshness {
            rate,
            seconds,
            serve,
            maintain_secs,
        } => {
            let every = maintain_secs.unwrap_or(config.maintain.interval_secs);
            freshness(config, rate, seconds, serve, every).await
        }
        BenchCommand::Agent {
            sessions,
            seconds,
            think_ms,
        } => {
            anyhow::ensure!(
                (1..=1000).contains(&sessions),
                "--sessions must be in 1..=1000"
            );
            anyhow::ensure!(seconds >= 1, "--seconds must be at least 1");
            anyhow::ensure!(think_ms <= 60_000, "--think-ms must be at most 60000");
            agent::run(config, sessions, seconds, think_ms).await
        }
        BenchCommand::Console {
            clients,
            seconds,
            rate,
        } => {
            anyhow::ensure!(
                (1..=2000).contains(&clients),
                "--clients must be in 1..=2000"
            );
            anyhow::ensure!(seconds >= 1, "--seconds must be at least 1");
            anyhow::ensure!(rate.is_finite() && rate >= 0.0, "--rate must be >= 0");
            console::run(config, clients, seconds, rate).await
        }
        BenchCommand::Derive {
            positions,
            customers,
            change,
            rounds,
        } => {
            anyhow::ensure!(
                (1..=10_000_000).contains(&positions),
                "--positions must be in 1..=10000000"
            );
            let customers = customers.unwrap_or((positions / 10).max(1));
            anyhow::ensure!(
                (1..=10_000_000).contains(&customers),
                "--customers must be in 1..=10000000"
            );
            anyhow::ensure!(change > 0.0 && change <= 1.0, "--change must be in (0, 1]");
            anyhow::ensure!((1..=100).contains(&rounds), "--rounds must be in 1..=100");
            derive::run(config, positions, customers, change, rounds).await
        }
        BenchCommand::Search { docs, seconds, k } => {
            anyhow::ensure!(
                (1..=10_000_000).contains(&docs),
                "--docs must be in 1..=10000000"
            );
            anyhow::ensure!(seconds >= 1, "--seconds must be at least 1");
            anyhow::ensure!(
                (1..=crate::knowledge::MAX_K).contains(&k),
                "--k must be in 1..={}",
                crate::knowledge::MAX_K
            );
            search::run(config, docs, seconds, k).await
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
            mcp(config, clients, seconds, rate).await
        }
    }
}

/// What `bench freshness` records: each time the worker tells of records now held by every sink
/// fed from their topic, when that became true (ms since the epoch) and, per topic, their Kafka
/// timestamps (ms).
#[derive(Default)]
struct Freshness {
    releases: Mutex<Vec<Release>>,
}

/// When records became durable (ms since the epoch), their topic, their Kafka timestamps (ms).
type Release = (i64, Arc<str>, Vec<i64>);

impl Observer for Freshness {
    fn committed(&self, records: &[RawRecord], at: std::time::SystemTime) {
        let at = chrono::DateTime::<chrono::Utc>::from(at).timestamp_millis();
        let mut by_topic: BTreeMap<Arc<str>, Vec<i64>> = BTreeMap::new();
        for r in records {
            if let Some(t) = r.timestamp_ms {
                by_topic.entry(r.topic.clone()).or_default().push(t);
            }
        }
        let mut releases = self.releases.lock().expect("poisoned");
        releases.extend(by_topic.into_iter().map(|(topic, ts)| (at, topic, ts)));
    }
}

/// Produce → served, per record of the batches after the first `skip`: the time of the first
/// publish of the server whose telemetry version was committed after the previous batch was
/// done — commits are sequential, so that version holds the batch — minus the record's Kafka
/// timestamp. `published`: (when, commit time of the telemetry version served), both ms since
/// the epoch, in publish order. Also the records never served before the run ended.
fn served_latencies(
    batches: &[(i64, Vec<i64>)],
    skip: usize,
    published: &[(i64, i64)],
) -> (Vec<u32>, usize) {
    let (mut served, mut unseen) = (Vec::new(), 0);
    for i in skip.max(1)..batches.len() {
        let after = batches[i - 1].0;
        let records = &batches[i].1;
        match published.iter().find(|(_, committed)| *committed > after) {
            Some((at, _)) => served.extend(records.iter().map(|t| (at - t).max(0) as u32)),
            None => unseen += records.len(),
        }
    }
    (served, unseen)
}

struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Self> {
        let p = std::env::temp_dir().join(format!(
            "millstream-bench-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_millis()
        ));
        std::fs::create_dir_all(&p)?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A client's wait before its next request: Poisson arrivals at `rate` per second (none at 0).
/// Whether there is time for the request before `deadline`.
async fn pause(rng: &mut rand_chacha::ChaCha8Rng, rate: f64, deadline: Instant) -> bool {
    if rate > 0.0 {
        let gap: f64 = -rand::Rng::random::<f64>(rng).max(1e-9).ln() / rate;
        tokio::time::sleep(Duration::from_secs_f64(gap.min(10.0))).await;
    }
    Instant::now() < deadline
}

/// Peak resident set size of this process, MiB (VmHWM).
pub fn peak_rss_mb() -> f64 {
    proc_status_mb("self", "VmHWM:")
}

/// Starts this process's peak RSS over from its current RSS (Linux: `5` to
/// `/proc/self/clear_refs`), so a later [`peak_rss_mb`] is the peak of what ran since. False
/// where the kernel does not allow it; the peak then still counts from the process's start.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Current resident set size of this process, MiB (VmRSS).
pub fn rss_mb() -> f64 {
    proc_status_mb("self", "VmRSS:")
}

/// Peak resident set size of the child process `pid` so far, MiB (VmHWM).
fn child_peak_rss_mb(pid: u32) -> f64 {
    proc_status_mb(&pid.to_string(), "VmHWM:")
}

/// A `/proc/<process>/status` field in MiB; 0 where there is none (not Linux).
fn proc_status_mb(process: &str, field: &str) -> f64 {
    crate::telemetry::proc_status_kib(process, field).map_or(0.0, |kb| kb as f64 / 1024.0)
}

fn count_files(lake: &Lakehouse) -> usize {
    let mut n = 0;
    for k in crate::model::EventKind::ALL {
        if let Ok(Some(p)) = lake.table_path(k.bronze_table()) {
            n += walk(&p);
        }
    }
    n
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p)
                    } else {
                        p.extension().is_some_and(|x| x == "parquet") as usize
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A throwaway lakehouse and a fresh embedded broker with the event topics, partitioned by
/// `layout` (topic, partitions). Drop the broker only after every client is closed (DESIGN §9).
fn scratch_setup(
    config: &Config,
    layout: &[(&str, i32)],
) -> anyhow::Result<(Scratch, Lakehouse, EmbeddedBroker)> {
    let scratch = Scratch::new()?;
    let lake = Lakehouse::new(scratch.0.join("lakehouse"))?;
    let broker = EmbeddedBroker::start_with(config.kafka.embedded_brokers, layout)?;
    Ok((scratch, lake, broker))
}

async fn ingest(config: Config, events: u64) -> anyhow::Result<()> {
    // The whole preload must fit in the broker's log: `kafka.partitions` for every topic.
    let layout: Vec<_> = topics::ALL
        .iter()
        .map(|t| (*t, config.kafka.partitions))
        .collect();
    let (_scratch, lake, broker) = scratch_setup(&config, &layout)?;
    let brokers = broker.bootstrap_servers().to_string();
    // Reference data, so the inventory MERGE and the shortage and churn pipelines have their
    // parts, positions, suppliers and customers, as under `up`.
    crate::sim::write_reference(&lake, &config.simulate, false).await?;
    let (produced, preload_secs) = preload(&config, &brokers, events).await?;
    check_nothing_evicted(&config, &brokers)?;

    let mut opts = PipelineOptions::from_config(&config, &brokers);
    opts.group_id = "bench".into();
    let stop = CancellationToken::new();
    // The in-process broker holds the whole preloaded log in this process's memory too.
    let rss_before_pipeline = rss_mb();
    // Producing the preload peaks far above what the pipeline needs (10M events: 4 GB against
    // 1.4 GB), so the peak of record starts over here.
    let preload_peak = peak_rss_mb();
    let peak_scope = if reset_peak_rss() {
        "pipeline"
    } else {
        "process"
    };
    // Every signal on: the derived pipelines and the alerts publisher run beside ingest as
    // they do under `up`, competing for the same two cores.
    let definitions = Definitions::from_config(&config.pipeline.definitions).await?;
    let derive_stop = CancellationToken::new();
    let deriver = tokio::spawn(crate::pipeline::derive::run(
        lake.clone(),
        definitions,
        Duration::from_millis(config.pipeline.derive_interval_ms),
        Some(AlertPublisher::new(lake.clone(), &config.kafka, &brokers)?),
        derive_stop.clone(),
    ));
    eprintln!("bench ingest: running the pipeline with every signal pipeline on");
    let stats = crate::pipeline::run(
        &config.kafka,
        &lake,
        &opts,
        stop,
        Some(Arc::new(StopAfter(events))),
    )
    .await?;
    let secs = match (stats.first_fetch, stats.last_commit) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => anyhow::bail!("pipeline committed nothing"),
    };
    // The final derive round brings every signal up to the last commit: that is when the
    // signals are as fresh as the bronze tables, so it counts towards the end-to-end time.
    derive_stop.cancel();
    let derived = deriver.await?;
    let secs_with_signals = match stats.first_fetch {
        Some(a) => a.elapsed().as_secs_f64(),
        None => secs,
    };
    let files = count_files(&lake);
    drop(broker);
    println!(
        "{}",
        json!({
            "bench": "ingest",
            "events": stats.records,
            "dead_letters": stats.dead_letters,
            "malformed_produced": produced.malformed,
            "seconds": (secs * 1000.0).round() / 1000.0,
            "events_per_sec": (stats.records as f64 / secs).round(),
            "seconds_until_signals_current": (secs_with_signals * 1000.0).round() / 1000.0,
            "events_per_sec_until_signals_current": (stats.records as f64 / secs_with_signals).round(),
            "derived": derived,
            "mb_per_sec": ((stats.bytes as f64 / 1e6 / secs) * 10.0).round() / 10.0,
            "commits": stats.commits,
            "batches": stats.batches,
            "files": files,
            "preload_events_per_sec": (produced.events as f64 / preload_secs).round(),
            "peak_rss_mb": peak_rss_mb().round(),
            "peak_rss_scope": peak_scope,
            "preload_peak_rss_mb": preload_peak.round(),
            "rss_before_pipeline_mb": rss_before_pipeline.round(),
            "batch_max_events": config.pipeline.batch_max_events,
            "batch_max_ms": config.pipeline.batch_max_ms,
        })
    );
    Ok(())
}

/// Produces `events` simulated events (with the simulator's share of malformed ones) to
/// `brokers`, flushed; what was produced and how long it took (s).
async fn preload(
    config: &Config,
    brokers: &str,
    events: u64,
) -> anyhow::Result<(crate::sim::Produced, f64)> {
    eprintln!("bench ingest: producing {events} events to {brokers}");
    let mut generator = Generator::new(
        &config.simulate,
        "bench",
        config.simulate.start,
        config.simulate.rate,
    );
    let batch: Vec<_> = (0..events).map(|_| generator.next_event()).collect();
    let producer = EventProducer::new(&config.kafka, brokers)?;
    let started = Instant::now();
    let produced = produce_all(&producer, &batch, "preload").await?;
    Ok((produced, started.elapsed().as_secs_f64()))
}

/// The embedded broker (librdkafka's mock cluster) keeps at most 5 MB of record batches per
/// partition and silently drops the oldest beyond that. A preload that overflowed it would leave
/// the pipeline waiting for records that no longer exist, so say so instead.
fn check_nothing_evicted(config: &Config, brokers: &str) -> anyhow::Result<()> {
    let client = crate::broker::client_config(&config.kafka, brokers);
    // Events dropped, and the partition count at which every partition's share would have
    // fitted. Keys do not spread evenly (a few hundred sensors over many partitions), so the
    // fullest partition sets it: a topic-wide average under-counts by 2x at 10M events.
    let (evicted, needed) = tokio::task::block_in_place(|| -> anyhow::Result<(i64, f64)> {
        let (mut evicted, mut needed) = (0, 0.0_f64);
        for topic in topics::SOURCES {
            let marks = crate::broker::watermarks(&client, topic, Duration::from_secs(30))?;
            evicted += marks.iter().map(|m| m.1).sum::<i64>();
            let overflow = marks
                .iter()
                .filter(|m| m.2 > m.1)
                .map(|m| m.2 as f64 / (m.2 - m.1) as f64)
                .fold(1.0_f64, f64::max);
            needed = needed.max(marks.len() as f64 * overflow);
        }
        Ok((evicted, needed))
    })?;
    anyhow::ensure!(
        evicted == 0,
        "the embedded broker dropped {evicted} of the preloaded events: it keeps at most 5 MB per \
         partition. Spread them over more partitions (MILLSTREAM__KAFKA__PARTITIONS={}), send \
         fewer events, or point kafka.brokers at a real cluster",
        (needed * 1.5).ceil()
    );
    Ok(())
}

async fn freshness(
    config: Config,
    rate: u64,
    seconds: u64,
    serve: bool,
    maintain_secs: u64,
) -> anyhow::Result<()> {
    // Live events only, the broker laid out as under `up`.
    let layout = topics::embedded_layout(config.kafka.partitions);
    let (_scratch, lake, broker) = scratch_setup(&config, &layout)?;
    let brokers = broker.bootstrap_servers().to_string();
    lake.ensure_all().await?;

    let samples = Arc::new(Freshness::default());
    let mut opts = PipelineOptions::from_config(&config, &brokers);
    opts.group_id = "bench-freshness".into();
    let stop = CancellationToken::new();
    // The server's catalog, learning of new versions from the pipeline's commit announcements
    // as under `up`; a watcher notes what it serves at each publish.
    let watcher = if serve {
        let catalog = crate::mcp::LiveCatalog::start(
            lake.clone(),
            Definitions::built_in().await?,
            crate::mcp::CatalogOptions::from_config(&config.serve),
            stop.clone(),
        )
        .await?;
        let stop = stop.clone();
        Some(tokio::spawn(async move {
            let mut published = catalog.published();
            let mut seen = Vec::new();
            loop {
                tokio::select! {
                    changed = published.changed() => if changed.is_err() { break },
                    () = stop.cancelled() => break,
                }
                let at = chrono::Utc::now().timestamp_millis();
                if let Some(c) = catalog.committed_at("iot.telemetry") {
                    seen.push((at, c.timestamp_millis()));
                }
            }
            seen
        }))
    } else {
        None
    };
    let pipeline = {
        let (kafka, lake, opts, stop) = (
            config.kafka.clone(),
            lake.clone(),
            opts.clone(),
            stop.clone(),
        );
        let observer: Arc<dyn Observer> = samples.clone();
        tokio::spawn(async move {
            crate::pipeline::run(&kafka, &lake, &opts, stop, Some(observer)).await
        })
    };
    // Maintenance as under `up`: a round every `maintain_secs`.
    let maintenance = (maintain_secs > 0).then(|| {
        let (lake, stop) = (lake.clone(), stop.clone());
        let options = MaintainOptions::from_config(&config.maintain, true);
        tokio::spawn(async move {
            let every = Duration::from_secs(maintain_secs);
            crate::lakehouse::maintain::run_every(&lake, &options, every, stop).await
        })
    });
    // Let the consumer join before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warmup = samples.releases.lock().expect("poisoned").len();

    let producer = EventProducer::new(&config.kafka, &brokers)?;
    let mut generator = Generator::new(&config.simulate, "fresh", config.simulate.start, rate);
    eprintln!(
        "bench freshness: {rate} events/s for {seconds}s{}",
        if serve {
            ", served by an MCP catalog"
        } else {
            ""
        }
    );
    let produce_stop = CancellationToken::new();
    let timer = {
        let produce_stop = produce_stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            produce_stop.cancel();
        })
    };
    let produced =
        crate::sim::produce_live(&producer, &mut generator, rate, None, produce_stop).await?;
    timer.abort();
    // Give the pipeline time to commit the tail, and the server to load it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let stats = pipeline.await??;
    let maintenance_rounds = match maintenance {
        Some(m) => m.await?,
        None => 0,
    };
    let published = match watcher {
        Some(w) => Some(w.await?),
        None => None,
    };
    drop(producer);
    drop(broker);

    let releases = std::mem::take(&mut *samples.releases.lock().expect("poisoned"));
    let mut v: Vec<f64> = Vec::new();
    let mut by_topic: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (done, topic, produced) in &releases[warmup..] {
        let latencies = produced.iter().map(|t| (done - t).max(0) as f64);
        v.extend(latencies.clone());
        by_topic.entry(topic).or_default().extend(latencies);
    }
    v.sort_by(f64::total_cmp);
    let pct = |q: f64| crate::eval::percentile(&v, q) as u32;
    let mut out = json!({
        "bench": "freshness",
        "rate": rate,
        "seconds": seconds,
        "produced": produced.events,
        "committed": stats.records,
        "samples": v.len(),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "by_topic": by_topic
            .into_iter()
            .map(|(topic, v)| (topic.to_string(), percentiles(v)))
            .collect::<serde_json::Map<_, _>>(),
        "batch_max_ms": config.pipeline.batch_max_ms,
        "maintain_secs": maintain_secs,
        "maintenance_rounds": maintenance_rounds,
        "peak_rss_mb": peak_rss_mb().round(),
    });
    if let Some(published) = published {
        // Telemetry commits in the batch (no MERGE-kept sink reads it), so its releases come
        // one per batch, in commit order.
        let telemetry = EventKind::Telemetry.topic();
        let skip = releases[..warmup]
            .iter()
            .filter(|(_, t, _)| &**t == telemetry)
            .count();
        let batches: Vec<(i64, Vec<i64>)> = releases
            .into_iter()
            .filter(|(_, t, _)| &**t == telemetry)
            .map(|(at, _, ts)| (at, ts))
            .collect();
        let (served, unseen) = served_latencies(&batches, skip, &published);
        let mut figures = percentiles(served.into_iter().map(f64::from).collect());
        figures["never_served"] = json!(unseen);
        figures["publishes"] = json!(published.len());
        out["served"] = figures;
    }
    println!("{out}");
    Ok(())
}

/// The read tools `bench mcp` calls, with arguments built from ids found in the data. Signal
/// tools read the gold tables; the rest read bronze or silver.
const SIGNAL_TOOLS: [&str; 9] = [
    "get_inventory_status",
    "predict_shortage",
    "list_shortage_risks",
    "lookup_customer_info",
    "predict_churn",
    "list_churn_risks",
    "list_anomalies",
    "maintenance_alerts",
    "sensor_stats",
];

/// The ids a caller can see (empty where its persona cannot read the table). Each point lookup
/// draws its id afresh from these, so lookups are spread over the data instead of one hot row.
struct Ids {
    parts: Arc<[String]>,
    customers: Arc<[String]>,
    machines: Arc<[String]>,
}

struct Call {
    tool: &'static str,
    args: serde_json::Value,
    /// The argument that names what the call asks about, and the ids to draw it from.
    about: Option<(&'static str, Arc<[String]>)>,
}

impl Call {
    fn new(tool: &'static str, args: serde_json::Value) -> Self {
        Call {
            tool,
            args,
            about: None,
        }
    }

    /// A call about one id of `pool`, put in `field`; none when the pool is empty.
    fn about(
        tool: &'static str,
        field: &'static str,
        pool: &Arc<[String]>,
        args: serde_json::Value,
    ) -> Option<Self> {
        (!pool.is_empty()).then(|| Call {
            tool,
            args,
            about: Some((field, pool.clone())),
        })
    }

    /// The arguments for one call, with a random id where it asks about one.
    fn arguments(&self, rng: &mut impl rand::Rng) -> serde_json::Map<String, serde_json::Value> {
        let mut args = self.args.as_object().cloned().unwrap_or_default();
        if let Some((field, pool)) = &self.about {
            args.insert(
                field.to_string(),
                json!(pool[rng.random_range(0..pool.len())]),
            );
        }
        args
    }
}

/// The calls a bench client cycles through; those about ids the caller cannot see are left out.
fn tool_calls(ids: &Ids) -> Vec<Call> {
    let sql = |table: &str| json!({ "sql": format!("SELECT risk_level, count(*) AS n FROM {table} GROUP BY risk_level") });
    let mut calls = vec![
        Call::new("list_shortage_risks", json!({ "limit": 20 })),
        Call::new("list_churn_risks", json!({ "limit": 20 })),
        Call::new("list_anomalies", json!({ "hours": 1, "limit": 20 })),
        Call::new("maintenance_alerts", json!({ "limit": 20 })),
        Call::new("track_shipments", json!({ "open_only": true, "limit": 20 })),
        Call::new("sales_kpis", json!({ "days": 30, "group_by": "region" })),
        Call::new("search_tickets", json!({ "text": "delivery", "limit": 20 })),
        Call::new(
            "query_sql",
            sql(if ids.parts.is_empty() {
                "sales.churn_signals"
            } else {
                "supply_chain.shortage_signals"
            }),
        ),
    ];
    let (parts, customers, machines) = (&ids.parts, &ids.customers, &ids.machines);
    calls.extend(
        [
            Call::about("get_inventory_status", "part_id", parts, json!({})),
            Call::about("predict_shortage", "part_id", parts, json!({})),
            Call::about("lookup_customer_info", "customer_id", customers, json!({})),
            Call::about("predict_churn", "customer_id", customers, json!({})),
            Call::about(
                "sensor_stats",
                "machine_id",
                machines,
                json!({ "minutes": 60 }),
            ),
            Call::about(
                "query_sensor_data",
                "machine_id",
                machines,
                json!({ "minutes": 10, "limit": 50 }),
            ),
        ]
        .into_iter()
        .flatten(),
    );
    calls
}

async fn mcp(config: Config, clients: usize, seconds: u64, rate: f64) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::StreamableHttpClientTransport;

    let stack = LiveStack::start(&config, "mcp").await?;
    let peak_rss_scope = stack.peak_rss_scope;
    let catalog = stack.server.catalog.clone();
    let caller = stack.server.clone();
    let addr = stack.addr;
    let url = format!("http://{addr}/mcp");
    let measured = CancellationToken::new();

    // Visibility: for each new version of a table the pipeline commits, the time from its
    // commit timestamp to the server publishing it.
    let visibility = {
        let (catalog, stop) = (catalog.clone(), measured.clone());
        tokio::spawn(async move {
            let mut seen: std::collections::BTreeMap<&str, i64> = Default::default();
            let mut samples = Vec::new();
            let tables = [
                "iot.telemetry",
                "iot.anomalies",
                "supply_chain.shortage_signals",
            ];
            loop {
                if stop.is_cancelled() {
                    return samples;
                }
                for t in tables {
                    let Some(v) = catalog.version(t) else {
                        continue;
                    };
                    if seen.insert(t, v).is_some_and(|old| old != v)
                        && let Some(c) = catalog.committed_at(t)
                    {
                        let ms = (chrono::Utc::now() - c).num_microseconds().unwrap_or(0);
                        samples.push(ms as f64 / 1000.0);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                    _ = stop.cancelled() => {}
                }
            }
        })
    };

    // Ids the principal can see (a persona without the table gets none, and no calls need it).
    let session = caller.session().await?;
    let all = |sql: &'static str| {
        let ctx = session.ctx.clone();
        async move {
            let batches = async { ctx.sql(sql).await?.collect().await }.await;
            batches
                .unwrap_or_default()
                .iter()
                .flat_map(|b| {
                    (0..b.num_rows()).filter_map(|row| {
                        arrow::util::display::array_value_to_string(b.column(0), row).ok()
                    })
                })
                .collect::<Arc<[String]>>()
        }
    };
    let ids = Ids {
        parts: all("SELECT DISTINCT part_id FROM supply_chain.shortage_signals ORDER BY 1").await,
        customers: all("SELECT DISTINCT customer_id FROM sales.churn_signals ORDER BY 1").await,
        // The detector's state has a row per sensor: no scan of the telemetry log.
        machines: all("SELECT DISTINCT machine_id FROM iot.sensor_state ORDER BY 1").await,
    };
    let calls: Vec<_> = tool_calls(&ids)
        .into_iter()
        .filter(|c| caller.access.may_call(c.tool))
        .collect();
    anyhow::ensure!(
        !calls.is_empty(),
        "principal {} may call none of the benchmarked tools",
        caller.principal()
    );
    let calls = Arc::new(calls);

    eprintln!(
        "bench mcp: {clients} clients × {rate}/s for {seconds} s against {url}, as {} ({} tools; ids drawn from {} parts, {} customers, {} machines)",
        caller.principal(),
        calls.len(),
        ids.parts.len(),
        ids.customers.len(),
        ids.machines.len(),
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (url, calls) = (url.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            let client = ().serve(StreamableHttpClientTransport::from_uri(url)).await?;
            let mut out: Vec<(&'static str, f64, bool)> = Vec::new();
            let mut i = c;
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(c as u64);
            while pause(&mut rng, rate, deadline).await {
                let call = &calls[i % calls.len()];
                i += 1;
                let name = call.tool;
                let params =
                    CallToolRequestParams::new(name).with_arguments(call.arguments(&mut rng));
                let t0 = Instant::now();
                let r = client.peer().call_tool(params).await;
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                let ok = matches!(&r, Ok(res) if res.is_error != Some(true));
                out.push((name, ms, ok));
            }
            let _ = client.cancel().await;
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut per_tool: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    let (mut errors, mut total, mut failed_clients) = (0usize, 0usize, 0usize);
    for t in tasks {
        match t.await? {
            Ok(out) => {
                for (name, ms, ok) in out {
                    total += 1;
                    if ok {
                        per_tool.entry(name).or_default().push(ms);
                    } else {
                        errors += 1;
                    }
                }
            }
            Err(e) => {
                failed_clients += 1;
                eprintln!("bench mcp: a client failed: {e}");
            }
        }
    }
    measured.cancel();
    let (hits, misses) = catalog.answers().hits_and_misses();
    let (plan_hits, plan_misses) = catalog.plans().hits_and_misses();
    let vis = visibility.await?;
    let principal = caller.principal().to_string();
    drop(caller);
    drop(catalog);
    let Finished {
        pipeline: stats,
        produced,
    } = stack.finish().await?;

    let signal: Vec<f64> = SIGNAL_TOOLS
        .iter()
        .flat_map(|t| per_tool.get(t).cloned().unwrap_or_default())
        .collect();
    let tools: serde_json::Map<String, serde_json::Value> = per_tool
        .into_iter()
        .map(|(t, v)| (t.to_string(), percentiles(v)))
        .collect();
    println!(
        "{}",
        json!({
            "bench": "mcp",
            "clients": clients,
            "rate_per_client": rate,
            "principal": principal,
            "seconds": seconds,
            "calls": total,
            "errors": errors,
            "failed_clients": failed_clients,
            "throughput_per_s": (total as f64 / seconds as f64).round(),
            "ids": { "parts": ids.parts.len(), "customers": ids.customers.len(), "machines": ids.machines.len() },
            "signal_tools": percentiles(signal),
            "tools": tools,
            "version_visible_after_commit": percentiles(vis),
            "answer_cache": { "hits": hits, "misses": misses },
            "plan_cache": { "hits": plan_hits, "misses": plan_misses },
            "refresh_ms": config.serve.refresh_ms,
            "live_events": produced.events,
            "pipeline_records": stats.records,
            "peak_rss_mb": peak_rss_mb().round(),
            "peak_rss_scope": peak_rss_scope,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch is served by the first publish whose telemetry version was committed after the
    /// previous batch was done (so it is this batch's commit or a later one), and each record's
    /// figure runs from its produce time to that publish; a batch no publish covers is counted,
    /// not dropped.
    #[test]
    fn a_batch_is_served_at_the_first_publish_of_a_version_committed_after_its_predecessor() {
        let batches = [
            (1_000, vec![700]),
            (1_300, vec![1_000, 1_100]),
            (1_600, vec![1_350]),
            (1_900, vec![1_700]),
        ];
        // The version committed at 1_250 (batch 1's) is first served at 1_320; the publish at
        // 1_350 still serves it; batch 2's (committed 1_550) at 1_700; batch 3's never.
        let published = [(1_050, 950), (1_320, 1_250), (1_350, 1_250), (1_700, 1_550)];
        let (served, unseen) = served_latencies(&batches, 1, &published);
        assert_eq!(served, vec![320, 220, 350]);
        assert_eq!(unseen, 1);
        // Skipping the warm-up leaves out the batches before `skip`.
        let (served, unseen) = served_latencies(&batches, 2, &published);
        assert_eq!((served, unseen), (vec![350], 1));
    }
}
