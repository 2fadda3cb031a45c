//! The MCP server against real clients: the official Python SDK over streamable HTTP calls every
//! tool on live tables (the pipeline and the signal pipelines running), checks errors, reads
//! resources and prompts, and places actions that the pipeline must materialize exactly once;
//! then the same SDK drives `millstream mcp --stdio`, as the default principal and as one named
//! in the environment. See `tests/py/mcp_client.py`.

use std::time::{Duration, Instant};

use millstream::pipeline::definition::Definitions;
use tokio_util::sync::CancellationToken;

use crate::support::{self, Env};

type Task<T> = tokio::task::JoinHandle<T>;

/// The ingestion pipeline and the derived (signal) pipelines, running until `stop`.
async fn start_pipelines(
    env: &Env,
    name: &str,
    stop: CancellationToken,
) -> (
    Task<millstream::Result<millstream::pipeline::RunStats>>,
    Task<millstream::pipeline::derive::DeriveSummary>,
) {
    let opts = env.options(name, name);
    let pipeline = {
        let (kafka, lake, stop) = (env.config.kafka.clone(), env.lake.clone(), stop.clone());
        tokio::spawn(async move {
            millstream::pipeline::run_with_restarts(&kafka, &lake, &opts, stop, None).await
        })
    };
    let deriver = tokio::spawn(millstream::pipeline::derive::run(
        env.lake.clone(),
        Definitions::built_in().await.unwrap(),
        Duration::from_millis(200),
        None,
        stop,
    ));
    (pipeline, deriver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_sdk_calls_every_tool_and_actions_materialize_exactly_once() {
    let _w = support::watchdog("mcp", Duration::from_secs(300));
    let mut env = Env::new(2).await;
    // A month of history at a test-sized scale: sales for KPIs and churn, shipments, telemetry.
    env.config.simulate.seed_telemetry = 5_000;
    env.config.simulate.seed_shipments = 200;
    env.config.serve.refresh_ms = 50;
    env.lake.ensure_all().await.unwrap();
    millstream::sim::write_reference(&env.lake, &env.config.simulate, false)
        .await
        .unwrap();
    let history = millstream::sim::stream::history(&env.config.simulate, "mcp");
    env.produce(&history).await;
    // Then live events: stock movements give the shortage signals their event-time clock.
    env.produce(&support::events("mcp", 20_000, 0.0)).await;

    let stop = CancellationToken::new();
    let (pipeline, deriver) = start_pipelines(&env, "mcp", stop.clone()).await;
    // Tools answer from live tables: wait for the history and the first signals.
    let started = Instant::now();
    loop {
        let n = |t: &'static str| {
            let lake = env.lake.clone();
            async move {
                lake.sql_i64(&format!("SELECT count(*) FROM {t}"))
                    .await
                    .unwrap_or(0)
            }
        };
        let bronze = n("iot.telemetry").await + n("sales.transactions").await;
        if bronze >= (history.len() as i64) * 9 / 10
            && n("supply_chain.shortage_signals").await > 0
            && n("sales.churn_signals").await > 0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "history and signals not ready after 180 s ({bronze} bronze rows, {} shortage and {} \
             churn signals)",
            n("supply_chain.shortage_signals").await,
            n("sales.churn_signals").await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let served = env.serve_mcp().await;
    let base = &served.base;
    let url = format!("{base}/mcp");
    let report = tokio::task::spawn_blocking(move || support::mcp_client(&["http", &url]))
        .await
        .unwrap();
    assert_eq!(report["tools"], 21, "{report}");
    assert_eq!(report["order"]["orders"], 1, "{report}");
    assert_eq!(report["order"]["sends"], 2, "{report}");

    // The same server over stdio, as a separate process reading the same lakehouse.
    let bin = env!("CARGO_BIN_EXE_millstream");
    let root = env.lake.uri();
    let report = tokio::task::spawn_blocking(move || {
        support::mcp_client(&["stdio", bin, "--lakehouse", &root, "mcp", "--stdio"])
    })
    .await
    .unwrap();
    assert_eq!(report["tools"], 21, "{report}");

    // stdio runs as the principal its config or environment names: maria's tools and rows.
    let root = env.lake.uri();
    let report = tokio::task::spawn_blocking(move || {
        support::mcp_client(&[
            "stdio-as",
            "maria@emea",
            bin,
            "--lakehouse",
            &root,
            "mcp",
            "--stdio",
        ])
    })
    .await
    .unwrap();
    let tools: Vec<&str> = report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(
        tools.contains(&"create_order") && !tools.contains(&"lookup_customer_info"),
        "{report}"
    );
    assert_eq!(report["warehouses"], serde_json::json!(["WH-01", "WH-02"]));
    // The stdio process committed its audit records before it exited.
    let audited = support::rows(
        &env.lake,
        "SELECT DISTINCT kind, name, outcome FROM ops.audit WHERE principal = 'maria@emea'",
    )
    .await;
    assert_eq!(audited, vec!["tool|query_sql|ok".to_string()]);

    stop.cancel();
    pipeline.await.unwrap().unwrap();
    deriver.await.unwrap();
    let mut served = served;
    served.sup.shutdown().await;
}

/// The server follows new table versions without a restart: a table that did not exist when it
/// started, then every later commit to it. (How fast is measured by `millstream bench mcp`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_serves_new_versions_as_they_are_committed() {
    let _w = support::watchdog("mcp catalog", Duration::from_secs(60));
    let env = Env::new(1).await;
    let (catalog, _stop) = env.live_catalog(20, 1000).await;
    assert_eq!(catalog.version("sales.customers"), None);
    let count = |catalog: millstream::mcp::LiveCatalog| async move {
        let s = catalog.session(&admin()).await.unwrap();
        let b = s
            .ctx
            .sql("SELECT count(*) FROM sales.customers")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        arrow::compute::cast(b[0].column(0), &arrow::datatypes::DataType::Int64)
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0)
    };
    // Before the table exists, it reads as empty rather than failing.
    assert_eq!(count(catalog.clone()).await, 0);

    let committed = write_reference(&env).await;
    let wait_for = |want: i64| {
        let catalog = catalog.clone();
        async move {
            let started = Instant::now();
            while catalog.version("sales.customers") != Some(want) {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the catalog still serves {:?}, not version {want}",
                    catalog.version("sales.customers")
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(committed).await;
    assert_eq!(
        count(catalog.clone()).await,
        env.config.simulate.customers as i64
    );

    // A later commit (reseeding rewrites the table) is picked up too, and `as_of` reports it.
    millstream::sim::write_reference(&env.lake, &env.config.simulate, true)
        .await
        .unwrap();
    let next = env
        .lake
        .open("sales.customers")
        .await
        .unwrap()
        .version()
        .unwrap() as i64;
    assert!(next > committed);
    wait_for(next).await;
    let s = catalog.session(&admin()).await.unwrap();
    let as_of = s.as_of_tables(["sales.customers"]);
    assert_eq!(as_of.tables[0].version, next);
    assert!(as_of.committed_at.is_some() && as_of.lag_ms.is_some());
    // Reference tables have no event time, so no watermark.
    assert_eq!(as_of.watermark, None);
}

/// The server keeps the newest rows of each log in memory and extends them from each commit's
/// Change Data Feed. Whatever it holds, an answer equals the Delta table's: over several commits,
/// with the tail over its row budget (so it has dropped old rows), with rows arriving out of
/// event-time order, and for scans inside and outside the rows it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_tails_answer_like_the_delta_tables() {
    let _w = support::watchdog("mcp tails", Duration::from_secs(120));
    let env = Env::new(1).await;
    let (catalog, _stop) = env.live_catalog(20, 400).await;
    let opts = env.options("tails", "tails");
    for round in 0..4 {
        // Each round's generator starts at the same simulated time: later rounds bring rows
        // older than ones the tail has already dropped.
        env.produce(&support::events(&format!("tails-{round}"), 1500, 0.0))
            .await;
        env.run_until(&opts, 1500).await;
        for table in ["iot.telemetry", "supply_chain.inventory_movements"] {
            env.until_served(&catalog, table, Duration::from_secs(10))
                .await;
            let times = support::rows(&env.lake, &format!("SELECT ts FROM {table}")).await;
            if table == "iot.telemetry" {
                assert!(
                    times.len() > 400,
                    "telemetry fits the tail: nothing dropped"
                );
            }
            let mut queries = vec![format!(
                "SELECT count(*), min(ts), max(ts), count(DISTINCT event_id) FROM {table}"
            )];
            for q in [0.0, 0.25, 0.5, 0.75, 0.9, 0.99]
                .into_iter()
                .filter(|_| !times.is_empty())
            {
                let t = &times[((times.len() - 1) as f64 * q) as usize];
                for op in [">", ">="] {
                    queries.push(format!(
                        "SELECT count(*), min(ts), max(ts), count(DISTINCT event_id) \
                         FROM {table} WHERE ts {op} TIMESTAMP '{t}'"
                    ));
                }
            }
            let session = catalog.session(&admin()).await.unwrap();
            for sql in queries {
                let served = session
                    .ctx
                    .sql(&sql)
                    .await
                    .unwrap()
                    .collect()
                    .await
                    .unwrap();
                assert_eq!(
                    support::batch_rows(&served),
                    support::rows(&env.lake, &sql).await,
                    "round {round}: {sql}"
                );
            }
        }
    }
}

/// A scan bounded to the newest rows of a log is answered from the server's memory, not by
/// opening the log's Parquet files; one reaching further back reads Delta. Answers alone cannot
/// tell the two apart (they are the same by design), so this reads the physical plan: without
/// it, every other test passes with the tails turned off (stop 40 shipped that bug once). What
/// a tail holds is on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_inside_a_log_tail_reads_memory_and_one_beyond_it_reads_delta() {
    let _w = support::watchdog("mcp tail plans", Duration::from_secs(120));
    let metrics = millstream::telemetry::metrics();
    let env = Env::new(1).await;
    let (catalog, _stop) = env.live_catalog(20, 400).await;
    // One partition, several commits: the tail drops the oldest batches, which hold the oldest
    // event times, so the newest rows are the ones it keeps.
    let mut opts = env.options("tailplan", "tailplan");
    opts.batch_max_events = 300;
    env.produce(&support::events("tailplan", 3000, 0.0)).await;
    env.run_until(&opts, 3000).await;
    let table = "iot.telemetry";
    env.until_served(&catalog, table, Duration::from_secs(10))
        .await;
    let times = support::rows(&env.lake, &format!("SELECT ts FROM {table} ORDER BY ts")).await;
    assert!(
        times.len() > 800,
        "{} rows: the tail must overflow",
        times.len()
    );
    let session = catalog.session(&admin()).await.unwrap();
    let plan = async |sql: &str| {
        let df = session.ctx.sql(sql).await.unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string()
    };
    let newest = &times[times.len() - 50];
    let oldest = &times[10];
    let inside = plan(&format!(
        "SELECT count(*) FROM {table} WHERE ts >= TIMESTAMP '{newest}'"
    ))
    .await;
    assert!(
        !inside.contains("parquet") && inside.contains("partition_sizes"),
        "a scan of the newest 50 rows opened Delta:\n{inside}"
    );
    let beyond = plan(&format!(
        "SELECT count(*) FROM {table} WHERE ts >= TIMESTAMP '{oldest}'"
    ))
    .await;
    assert!(
        beyond.contains("parquet"),
        "a scan reaching past the tail did not read Delta:\n{beyond}"
    );
    // What the tail holds is on /metrics: within its 400-row budget, and not nothing.
    let rendered = metrics.render();
    let gauge = |name: &str| -> f64 {
        let prefix = format!("{name}{{table=\"{table}\"}} ");
        rendered
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in\n{rendered}"))
            .parse()
            .unwrap()
    };
    let rows = gauge("millstream_serve_tail_rows");
    assert!(rows > 0.0 && rows <= 400.0, "tail rows {rows}");
    assert!(gauge("millstream_serve_tail_bytes") > 0.0);
}

/// `serve.tail_mb` bounds the tails of all logs together, not each: a busy log (telemetry) gets
/// what the quiet ones leave, and the quiet ones (sales, shipments, movements, dead letters)
/// keep every row they have. With a budget per log, as before, the tails would hold that
/// budget for telemetry alone plus all the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_log_tails_together_hold_no_more_than_the_serve_budget() {
    let _w = support::watchdog("mcp tail budget", Duration::from_secs(180));
    let metrics = millstream::telemetry::metrics();
    let env = Env::new(1).await;
    let budget = 1 << 20;
    let (catalog, _stop) = env.live_catalog_within(20, usize::MAX, budget).await;
    let mut opts = env.options("tailbudget", "tailbudget");
    opts.batch_max_events = 250;
    let events = support::events("tailbudget", 30_000, 0.02);
    env.produce(&events).await;
    env.run_until(&opts, events.len() as u64).await;
    let logs = [
        "iot.telemetry",
        "sales.transactions",
        "supply_chain.shipments",
        "supply_chain.inventory_movements",
        "ops.dead_letters",
    ];
    for table in logs {
        env.until_served(&catalog, table, Duration::from_secs(20))
            .await;
    }
    let rendered = metrics.render();
    let gauge = |name: &str, table: &str| -> f64 {
        let prefix = format!("{name}{{table=\"{table}\"}} ");
        rendered
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0.0, |v| v.parse().unwrap())
    };
    let held: f64 = rendered
        .lines()
        .filter(|l| l.starts_with("millstream_serve_tail_bytes{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    let telemetry = gauge("millstream_serve_tail_bytes", "iot.telemetry");
    let quiet = held - telemetry;
    // The busiest log was trimmed: without a budget it would hold more than all of it.
    let count = async |table: &str| -> f64 {
        support::rows(&env.lake, &format!("SELECT count(*) FROM {table}")).await[0]
            .parse()
            .unwrap()
    };
    let telemetry_rows = count("iot.telemetry").await;
    assert!(
        gauge("millstream_serve_tail_rows", "iot.telemetry") < telemetry_rows,
        "telemetry was never trimmed: the test needs more rows"
    );
    // One commit of slack: a tail never drops its newest commit's rows (at most one batch).
    let one_commit = telemetry / gauge("millstream_serve_tail_rows", "iot.telemetry")
        * opts.batch_max_events as f64;
    assert!(
        held <= budget as f64 + one_commit,
        "tails hold {held} bytes (telemetry {telemetry}, the rest {quiet}) over a budget of {budget}"
    );
    assert!(
        quiet > one_commit,
        "the quiet logs hold {quiet} bytes, telemetry {telemetry}: too little to tell budgets apart"
    );
    // The quiet logs keep every row they have.
    for table in &logs[1..] {
        assert_eq!(
            gauge("millstream_serve_tail_rows", table),
            count(table).await,
            "{table}"
        );
    }
}

/// The loop closes on the simulated clock: a shortage signal → `create_order` → the order in
/// `supply_chain.purchase_orders` → the simulated supplier's shipments carrying its `po_id` →
/// the receipt at the warehouse → the position's shortage risk drops below HIGH.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_placed_on_a_shortage_arrives_and_clears_it() {
    use millstream::actions::OrderPriority;
    use millstream::mcp::actions::OrderRequest;
    use millstream::mcp::tools::Risk;
    use millstream::mcp::tools::supply::{OrderStatusArgs, PredictShortageArgs, ShortageRisksArgs};
    use rmcp::handler::server::wrapper::Parameters;

    let _w = support::watchdog("closed loop", Duration::from_secs(420));
    let mut env = Env::new(2).await;
    // A smaller world on a fast clock: twelve simulated hours per second.
    env.config.simulate.parts = 300;
    env.config.simulate.speed = 43_200.0;
    env.config.serve.refresh_ms = 50;
    let rate = 5_000;
    env.lake.ensure_all().await.unwrap();
    millstream::sim::write_reference(&env.lake, &env.config.simulate, false)
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let (pipeline, deriver) = start_pipelines(&env, "loop", stop.clone()).await;
    let simulator = {
        let (config, brokers, stop) = (env.config.clone(), env.brokers(), stop.clone());
        tokio::spawn(async move {
            let producer =
                millstream::sim::EventProducer::new(&config.kafka, &brokers).expect("producer");
            let orders =
                millstream::sim::order_feed(&config.kafka, &brokers, "loop-sim").expect("feed");
            let mut g = millstream::sim::stream::Generator::new(
                &config.simulate,
                "loop",
                config.simulate.start,
                rate,
            )
            .with_order_feed(orders);
            millstream::sim::produce_live(&producer, &mut g, rate, None, stop)
                .await
                .expect("simulator")
        })
    };
    let mut sup = millstream::supervise::Supervisor::new();
    let (serving, last) = (sup.stage("serve"), sup.stage("audit"));
    let server = millstream::mcp::start(
        &env.config,
        env.lake.clone(),
        Some(&env.brokers()),
        &mut sup,
        millstream::mcp::Stages {
            serving: &serving,
            last: &last,
        },
    )
    .await
    .unwrap();

    async fn until<T>(
        what: &str,
        budget: Duration,
        mut probe: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            assert!(started.elapsed() < budget, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // 1. A shortage appears.
    let signal = until(
        "a HIGH or CRITICAL shortage",
        Duration::from_secs(180),
        async || {
            let args = ShortageRisksArgs {
                min_risk: Some(Risk::High),
                warehouse_id: None,
                supplier_id: None,
                limit: Some(1),
            };
            let r = server.list_shortage_risks(Parameters(args)).await.ok()?;
            r.0.signals.into_iter().find(|s| s.suggested_order_qty > 0)
        },
    )
    .await;

    // 2. The agent orders what the signal suggests (twice it, to outrun demand meanwhile), rush.
    let receipt = server
        .create_order(Parameters(OrderRequest {
            part_id: signal.part_id.clone(),
            warehouse_id: signal.warehouse_id.clone(),
            quantity: signal.suggested_order_qty * 2,
            priority: Some(OrderPriority::Rush),
            supplier_id: None,
            idempotency_key: Some("closed-loop".into()),
        }))
        .await
        .expect("create_order")
        .0;
    assert_eq!(receipt.outcome, "accepted");

    // 3. The order is materialized, shipped and received.
    let status = |server: millstream::mcp::Millstream, po: String| async move {
        server
            .get_order_status(Parameters(OrderStatusArgs { po_id: po }))
            .await
            .ok()
            .map(|r| r.0)
    };
    until(
        "the order in purchase_orders",
        Duration::from_secs(60),
        async || status(server.clone(), receipt.po_id.clone()).await,
    )
    .await;
    let received = until("the order received", Duration::from_secs(240), async || {
        status(server.clone(), receipt.po_id.clone())
            .await
            .filter(|s| s.order.status == "received")
    })
    .await;
    assert!(!received.shipments.is_empty());
    assert!(
        received
            .shipments
            .iter()
            .all(|s| s.po_id.as_deref() == Some(receipt.po_id.as_str()))
    );
    // The receipt is a movement on another topic, right behind the delivery: it may land in a
    // later micro-batch than the delivery, but it must land, for exactly the ordered quantity.
    let shipment = &received.shipments[0].shipment_id;
    let receipt_sql = format!(
        "SELECT coalesce(sum(quantity), 0) FROM supply_chain.inventory_movements \
         WHERE movement_type = 'receipt' AND reference = '{shipment}'"
    );
    let receipts = until(
        "the receipt of the shipment",
        Duration::from_secs(60),
        async || {
            let n = env.lake.sql_i64(&receipt_sql).await.unwrap();
            (n != 0).then_some(n)
        },
    )
    .await;
    assert_eq!(receipts, receipt.quantity, "the receipt of {shipment}");

    // 4. The shortage clears.
    until(
        "the shortage to clear",
        Duration::from_secs(120),
        async || {
            let r = server
                .predict_shortage(Parameters(PredictShortageArgs {
                    part_id: signal.part_id.clone(),
                    warehouse_id: Some(signal.warehouse_id.clone()),
                }))
                .await
                .ok()?;
            r.0.signals
                .first()
                .filter(|s| s.risk_level < Risk::High)
                .map(|_| ())
        },
    )
    .await;

    stop.cancel();
    pipeline.await.unwrap().unwrap();
    deriver.await.unwrap();
    simulator.await.unwrap();
}

/// The built-in administrator: every table, unfiltered.
fn admin() -> millstream::auth::Access {
    millstream::auth::Policies::load("")
        .unwrap()
        .access("local-dev")
        .unwrap()
}

/// A server in the pipeline's process loads new versions when the pipeline announces a commit
/// (`lakehouse::announce_commit`), not at its next poll: with polling every 60 s, commits made
/// without an announcement stay unseen, and are served within seconds of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_commit_is_served_without_waiting_for_the_poll() {
    let _w = support::watchdog("announced commit", Duration::from_secs(60));
    let env = Env::new(1).await;
    env.lake.ensure_all().await.unwrap();
    let (catalog, _stop) = env.live_catalog(60_000, 0).await;
    let before = catalog
        .version("sales.customers")
        .expect("the table exists");
    let committed = Some(write_reference(&env).await);
    assert!(committed > Some(before));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        catalog.version("sales.customers"),
        Some(before),
        "no poll, no announcement: not seen yet"
    );
    millstream::lakehouse::announce_commit();
    let started = Instant::now();
    while catalog.version("sales.customers") < committed {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the announced commit was not served within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes the reference data; the version of `sales.customers` it committed.
async fn write_reference(env: &Env) -> i64 {
    millstream::sim::write_reference(&env.lake, &env.config.simulate, false)
        .await
        .unwrap();
    let table = env.lake.open("sales.customers").await.unwrap();
    table.version().expect("committed") as i64
}
