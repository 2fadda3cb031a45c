//! The system's ingest, derive and serve paths as `up` runs them (one supervisor, stream
//! processing yielding the CPU to the server), on a scratch lakehouse and the embedded broker,
//! with live events flowing: what `bench mcp` and `bench console` measure against. Unlike `up`,
//! no alerts go to Kafka and no maintenance runs, and the simulated corpus's vectors are in
//! `knowledge.chunks` before anything starts ([`embed_corpus`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Scratch, scratch_setup};
use crate::broker::EmbeddedBroker;
use crate::config::Config;
use crate::mcp::Millstream;
use crate::pipeline::definition::Definitions;
use crate::pipeline::{PipelineOptions, RunStats};
use crate::sim::stream::Generator;
use crate::sim::{EventProducer, Produced, produce_all};
use crate::supervise::{Policy, Supervisor};

pub(super) struct LiveStack {
    /// The MCP server (as `serve.principal`), its catalog following the pipeline's commits.
    pub server: Millstream,
    /// Where `/mcp`, `/console` and `/metrics` answer.
    pub addr: SocketAddr,
    /// What the process's peak RSS covers: `"stack"` (from after the corpus's embedding on) or
    /// `"process"` where the kernel does not allow starting it over.
    pub peak_rss_scope: &'static str,
    sup: Supervisor,
    /// The simulator, the pipeline and the deriver: what writes.
    writers: [crate::supervise::Stage; 3],
    stats: Arc<Mutex<Option<RunStats>>>,
    produced: Arc<Mutex<Option<Produced>>>,
    // Dropped last, in this order: clients before the broker (DESIGN §9), then the folder.
    producer: EventProducer,
    broker: EmbeddedBroker,
    _scratch: Scratch,
}

/// What the pipeline and the simulator did while the stack ran.
pub(super) struct Finished {
    pub pipeline: RunStats,
    pub produced: Produced,
}

impl LiveStack {
    /// Reference data and history in, then (as under `up`: one supervisor, stream processing
    /// yielding the CPU to the server) the pipeline, the deriver and the simulator's live
    /// events; once the signal tables have rows, the MCP server and the HTTP app.
    pub async fn start(config: &Config, name: &str) -> anyhow::Result<LiveStack> {
        let layout = crate::broker::topics::embedded_layout(config.kafka.partitions);
        let (scratch, lake, broker) = scratch_setup(config, &layout)?;
        let brokers = broker.bootstrap_servers().to_string();
        lake.ensure_all().await?;
        crate::sim::write_reference(&lake, &config.simulate, false).await?;
        let peak_rss_scope = embed_corpus(config, &lake, name).await;
        let producer = EventProducer::new(&config.kafka, &brokers)?;
        let history = crate::sim::stream::history(&config.simulate, name);
        eprintln!("bench {name}: {} history events", history.len());
        produce_all(&producer, &history, "history").await?;
        // Nothing reads yet: the whole history must still be in the broker's log.
        super::check_nothing_evicted(config, &brokers)?;

        let mut sup = Supervisor::new();
        let simulate = sup.stage("simulate");
        let ingest = sup.stage("ingest");
        let derive = sup.stage("derive");
        let serving = sup.stage("serve");
        let last = sup.stage("audit");
        let background = crate::runtime::background().clone();
        let stats = Arc::new(Mutex::new(None));
        let produced = Arc::new(Mutex::new(None));
        {
            let mut opts = PipelineOptions::from_config(config, &brokers);
            opts.group_id = format!("bench-{name}");
            let (kafka, lake, stats) = (config.kafka.clone(), lake.clone(), stats.clone());
            sup.spawn(
                "pipeline",
                &ingest,
                Policy::Critical,
                &background,
                move |t| {
                    let (kafka, lake, opts, stats) =
                        (kafka.clone(), lake.clone(), opts.clone(), stats.clone());
                    async move {
                        let run = crate::pipeline::run(&kafka, &lake, &opts, t, None).await?;
                        *stats.lock().expect("poisoned") = Some(run);
                        Ok(())
                    }
                },
            );
        }
        {
            let (lake, defs) = (
                lake.clone(),
                Definitions::from_config(&config.pipeline.definitions).await?,
            );
            let every = Duration::from_millis(config.pipeline.derive_interval_ms);
            sup.spawn_once("deriver", &derive, &background, move |t| async move {
                crate::pipeline::derive::run(lake, defs, every, None, t).await;
                Ok(())
            });
        }
        // Live events all along: the server answers while tables change under it.
        {
            let (config, brokers, produced) = (config.clone(), brokers.clone(), produced.clone());
            let run_id = format!("bench-{name}");
            sup.spawn_once("simulator", &simulate, &background, move |t| async move {
                let producer = EventProducer::new(&config.kafka, &brokers)?;
                let rate = config.simulate.rate;
                let mut g = Generator::new(&config.simulate, &run_id, config.simulate.start, rate);
                let live = crate::sim::produce_live(&producer, &mut g, rate, None, t).await?;
                *produced.lock().expect("poisoned") = Some(live);
                Ok(())
            });
        }
        let started = Instant::now();
        loop {
            let n = |t: &'static str| {
                let lake = lake.clone();
                async move {
                    lake.sql_i64(&format!("SELECT count(*) FROM {t}"))
                        .await
                        .unwrap_or(0)
                }
            };
            if n("supply_chain.shortage_signals").await > 0
                && n("sales.churn_signals").await > 0
                && n("iot.telemetry").await >= config.simulate.seed_telemetry as i64
            {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "signals not ready after 600 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eprintln!(
            "bench {name}: tables ready after {:.0} s",
            started.elapsed().as_secs_f64()
        );

        let server = crate::mcp::start(
            config,
            lake.clone(),
            Some(&brokers),
            &mut sup,
            crate::mcp::Stages {
                serving: &serving,
                last: &last,
            },
        )
        .await?;
        let app = crate::serve::Mcp::from_config(server.clone(), config)?;
        let (addr, http) = crate::serve::bind("127.0.0.1:0", Some(app), sup.health()).await?;
        sup.spawn_once(
            "http",
            &serving,
            &tokio::runtime::Handle::current(),
            move |t| http.run(t),
        );
        Ok(LiveStack {
            server,
            addr,
            peak_rss_scope,
            sup,
            writers: [simulate, ingest, derive],
            stats,
            produced,
            producer,
            broker,
            _scratch: scratch,
        })
    }

    /// Stops the simulator, the pipeline (after the batch in hand) and the deriver, leaving
    /// the server alone in the process, serving what was committed.
    pub fn stop_writers(&self) {
        for s in &self.writers {
            s.token().cancel();
        }
    }

    /// Stops everything in order; what the pipeline and the simulator did.
    pub async fn finish(self) -> anyhow::Result<Finished> {
        let LiveStack {
            mut sup,
            stats,
            produced,
            server,
            producer,
            broker,
            ..
        } = self;
        sup.shutdown().await;
        let pipeline = stats
            .lock()
            .expect("poisoned")
            .take()
            .ok_or_else(|| anyhow::anyhow!("the pipeline did not finish"))?;
        let produced = produced
            .lock()
            .expect("poisoned")
            .take()
            .ok_or_else(|| anyhow::anyhow!("the simulator did not finish"))?;
        drop(server);
        drop(producer);
        drop(broker);
        Ok(Finished { pipeline, produced })
    }
}

/// Embeds the simulated corpus once, on every core, and stores its vectors in
/// `knowledge.chunks`, as a lakehouse that `up` has run on holds them; then starts the process's
/// peak RSS over. The server's index loads them instead of embedding the corpus beside the live
/// stack: that first embedding of a new lakehouse runs on low-priority threads for about 17
/// minutes there, took a fifth of the CPU through the measured minute, and is not what serving
/// costs once it is done. Without the model (or with `knowledge.enabled = false`) the server
/// answers the knowledge tools with what to install, and nothing is embedded here either.
async fn embed_corpus(
    config: &Config,
    lake: &crate::lakehouse::Lakehouse,
    name: &str,
) -> &'static str {
    if config.knowledge.enabled {
        let who = format!("bench {name}");
        if let Err(e) = crate::cmd::eval::indexed(lake.clone(), &config.knowledge, &who).await {
            eprintln!("{who}: the corpus is not embedded up front: {e:#}");
        }
    }
    if super::reset_peak_rss() {
        "stack"
    } else {
        "process"
    }
}
