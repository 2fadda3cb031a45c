//! `millstream up`: the whole system in one process: embedded broker (or `--brokers`), reference
//! data, seed history and live simulator, the pipeline, background maintenance, and the MCP
//! server with `/metrics`.
//!
//! Shutdown order (DESIGN §9): stop the simulator and flush its producer; let the pipeline finish
//! the batch in hand and close its consumer; stop maintenance; then drop the broker last.

use crate::pipeline::publish::AlertPublisher;
use std::time::Duration;

use anyhow::Context;

use crate::broker::{EmbeddedBroker, topics};
use crate::cli::{UpArgs, maintain_options, pipeline_options, stop_signal};
use crate::config::Config;
use crate::lakehouse::Lakehouse;

pub async fn run(config: Config, args: UpArgs) -> anyhow::Result<()> {
    let lake = Lakehouse::new(&config.lakehouse.root)?;
    lake.ensure_all().await.context("creating tables")?;
    // `halt` also stops everything when the simulator fails, so the shutdown order below holds
    // on the error path too.
    let (halt, stop) = tokio::sync::watch::channel(false);
    {
        let (halt, mut outer) = (
            halt.clone(),
            stop_signal(args.duration.map(Duration::from_secs)),
        );
        tokio::spawn(async move {
            let _ = outer.wait_for(|s| *s).await;
            let _ = halt.send(true);
        });
    }

    let external = crate::cli::optional_brokers(args.brokers.clone(), &config);
    let embedded = match &external {
        Some(_) => None,
        None => Some(EmbeddedBroker::start(
            config.kafka.embedded_brokers,
            &topics::ALL,
            config.kafka.partitions,
        )?),
    };
    let brokers = match (&external, &embedded) {
        (Some(b), _) => {
            crate::broker::ensure_topics(&config.kafka, b, &topics::ALL).await?;
            b.clone()
        }
        (None, Some(e)) => e.bootstrap_servers().to_string(),
        (None, None) => unreachable!("either external or embedded"),
    };
    // An embedded broker's log starts empty every run, so Delta positions from an earlier run
    // do not describe it: a fresh pipeline identity per run keeps exactly-once honest.
    let run_id = format!("{:x}", chrono::Utc::now().timestamp_millis());
    let mut opts = pipeline_options(&config, &brokers);
    if embedded.is_some() {
        opts.name = format!("{}-{run_id}", config.pipeline.name);
        opts.group_id = format!("{}-{run_id}", config.kafka.group_id);
    }
    let mcp = crate::mcp::start(&config, lake.clone(), Some(&brokers), stop.clone())
        .await
        .context("starting the MCP server")?;
    let audited = mcp.clone();
    let mcp = crate::serve::Mcp::from_config(mcp, &config)?;
    let (addr, server) = crate::serve::spawn(&config.serve.addr, stop.clone(), Some(mcp))
        .await
        .context("binding serve.addr")?;
    println!("millstream up");
    println!(
        "  kafka bootstrap : {brokers}{}",
        if embedded.is_some() {
            " (embedded; any Kafka client can connect)"
        } else {
            ""
        }
    );
    println!("  lakehouse       : {}", lake.root().display());
    println!("  mcp             : http://{addr}/mcp (streamable HTTP)");
    println!("  metrics         : http://{addr}/metrics");
    println!(
        "  pipeline        : {} (group {})",
        opts.name, opts.group_id
    );

    let written = crate::sim::write_reference(&lake, &config.simulate, false).await?;
    for (t, n) in &written {
        println!("  seeded {t}: {n} rows");
    }

    // Stream processing yields the CPU to answers (crate::runtime).
    let background = crate::runtime::background();
    let pipeline = {
        let (kafka, lake, opts, stop) = (
            config.kafka.clone(),
            lake.clone(),
            opts.clone(),
            stop.clone(),
        );
        background.spawn(async move {
            crate::pipeline::run_with_restarts(&kafka, &lake, &opts, stop).await
        })
    };
    let definitions =
        crate::pipeline::definition::Definitions::from_config(&config.pipeline.definitions).await?;
    let (derive_stop, derive_rx) = tokio::sync::watch::channel(false);
    let publisher = AlertPublisher::new(lake.clone(), &config.kafka, &brokers)?;
    let deriver = background.spawn(crate::pipeline::derive::run(
        lake.clone(),
        definitions,
        Duration::from_millis(config.pipeline.derive_interval_ms),
        Some(publisher),
        derive_rx,
    ));
    let maintenance = {
        let (lake, mopts, mut stop) = (lake.clone(), maintain_options(&config, true), stop.clone());
        let every = Duration::from_secs(config.maintain.interval_secs);
        background.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                crate::lakehouse::maintain::run(&lake, &mopts).await;
            }
        })
    };

    let simulated = {
        let (config, args, brokers, run_id, stop) = (
            config.clone(),
            args.clone(),
            brokers.clone(),
            run_id.clone(),
            stop.clone(),
        );
        background
            .spawn(async move { simulate(&config, &args, &brokers, &run_id, stop).await })
            .await
            .context("simulator task")?
    };
    if let Err(e) = &simulated {
        tracing::error!(error = %e, "simulator failed; stopping");
        let _ = halt.send(true);
    }

    let stats = pipeline.await.context("pipeline task")??;
    // One last derive round over everything the pipeline committed.
    let _ = derive_stop.send(true);
    deriver.await.context("deriver task")?;
    maintenance.abort();
    let _ = server.await;
    audited.audit_flushed(crate::cli::AUDIT_FLUSH).await;
    drop(embedded);

    let live = simulated?;
    println!(
        "stopped: produced {} live events ({} malformed)",
        live.events, live.malformed
    );
    println!("{}", serde_json::to_string(&stats)?);
    for name in [
        "iot.telemetry",
        "supply_chain.shipments",
        "supply_chain.inventory_movements",
        "sales.transactions",
        "ops.dead_letters",
        "iot.anomalies",
        "iot.sensor_state",
        "iot.maintenance_alerts",
        "supply_chain.inventory",
        "supply_chain.shortage_signals",
        "sales.churn_signals",
        "ops.alerts",
    ] {
        if let Ok(n) = crate::cli::count_rows(&lake, name).await {
            println!("  {name:<34} {n:>10} rows");
        }
    }
    Ok(())
}

/// Seed history, then live events until `stop`.
async fn simulate(
    config: &Config,
    args: &UpArgs,
    brokers: &str,
    run_id: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<crate::sim::Produced> {
    let producer = crate::sim::EventProducer::new(&config.kafka, brokers)?;
    if !args.no_history {
        let history = crate::sim::stream::history(&config.simulate, run_id);
        crate::sim::produce_all(&producer, &history, "history").await?;
    }
    let rate = args.rate.unwrap_or(config.simulate.rate);
    // Sensor faults over a year of simulated time; the world's supply and sales faults are
    // always on (see sim::world).
    let plan = crate::sim::faults::FaultPlan::draw(
        config.simulate.seed,
        config.simulate.devices,
        config.simulate.start,
        chrono::Duration::days(365),
        &crate::sim::faults::FaultRates::default(),
    );
    // The simulated suppliers fulfil agents' orders: order → shipments → receipt.
    let orders =
        crate::sim::order_feed(&config.kafka, brokers, &format!("millstream-sim-{run_id}"))?;
    let mut generator =
        crate::sim::stream::Generator::new(&config.simulate, run_id, config.simulate.start, rate)
            .with_faults(plan)
            .with_order_feed(orders);
    Ok(crate::sim::produce_live(&producer, &mut generator, rate, None, stop).await?)
}
