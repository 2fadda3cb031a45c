//! Shared test fixtures: a watchdog, a lakehouse in a temp dir, an embedded broker, a seeded
//! event generator, and an in-process pipeline runner.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use millstream::broker::{EmbeddedBroker, topics};
use millstream::config::Config;
use millstream::lakehouse::Lakehouse;
use millstream::pipeline::StopAfter;
use millstream::pipeline::{PipelineOptions, RunStats};
use millstream::sim::EventProducer;
use millstream::sim::stream::{Generator, SimEvent};
use millstream::supervise::Supervisor;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The MCP server of [`Env::serve_mcp`]: its base URL, running until dropped.
pub struct Served {
    pub base: String,
    pub sup: Supervisor,
}

/// Kills the test process if the guarded test runs longer than its budget. Each nextest test
/// is its own process, so this fails exactly the hung test.
pub struct Watchdog(Arc<AtomicBool>);

pub fn watchdog(name: &'static str, budget: Duration) -> Watchdog {
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < budget {
            if flag.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("WATCHDOG: {name} still running after {budget:?}; aborting (hang?)");
        std::process::exit(99);
    });
    Watchdog(done)
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub fn config() -> Config {
    let mut c = Config::defaults();
    c.pipeline.batch_max_ms = 100;
    // Servers in tests index documents only where a test asks for it (tests/it/knowledge.rs):
    // building an index embeds every document of the lakehouse.
    c.knowledge.enabled = false;
    c
}

pub fn init_logs() {
    millstream::telemetry::init_logging();
}

pub struct Env {
    pub config: Config,
    pub dir: tempfile::TempDir,
    pub lake: Lakehouse,
    pub broker: EmbeddedBroker,
}

impl Env {
    pub async fn new(partitions: i32) -> Env {
        init_logs();
        let config = config();
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lakehouse::new(dir.path().join("lakehouse")).expect("lakehouse");
        let broker = EmbeddedBroker::start(1, &topics::ALL, partitions).expect("embedded broker");
        Env {
            config,
            dir,
            lake,
            broker,
        }
    }

    pub fn brokers(&self) -> String {
        self.broker.bootstrap_servers().to_string()
    }

    pub fn options(&self, name: &str, group: &str) -> PipelineOptions {
        let mut o =
            millstream::pipeline::PipelineOptions::from_config(&self.config, &self.brokers());
        o.name = name.to_string();
        o.group_id = group.to_string();
        o
    }

    /// Produces `events`, flushing before returning.
    pub async fn produce(&self, events: &[SimEvent]) {
        let producer = EventProducer::new(&self.config.kafka, &self.brokers()).expect("producer");
        millstream::sim::produce_all(&producer, events, "test")
            .await
            .expect("produce");
        drop(producer);
    }

    /// The MCP server's catalog over this lakehouse, following it every `refresh_ms` and keeping
    /// `tail_rows` rows of each log in memory. It stops when the returned guard is dropped.
    pub async fn live_catalog(
        &self,
        refresh_ms: u64,
        tail_rows: usize,
    ) -> (millstream::mcp::LiveCatalog, DropGuard) {
        self.live_catalog_within(refresh_ms, tail_rows, usize::MAX)
            .await
    }

    /// Waits until `catalog` serves the version of `table` committed now, for at most `wait`.
    pub async fn until_served(
        &self,
        catalog: &millstream::mcp::LiveCatalog,
        table: &str,
        wait: Duration,
    ) {
        let committed = self.lake.open(table).await.unwrap().version().unwrap() as i64;
        let started = Instant::now();
        while catalog.version(table) != Some(committed) {
            assert!(started.elapsed() < wait, "{table} not served");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// [`Env::live_catalog`], with all the tails together holding at most `tail_bytes`.
    pub async fn live_catalog_within(
        &self,
        refresh_ms: u64,
        tail_rows: usize,
        tail_bytes: usize,
    ) -> (millstream::mcp::LiveCatalog, DropGuard) {
        let stop = CancellationToken::new();
        let catalog = millstream::mcp::LiveCatalog::start(
            self.lake.clone(),
            millstream::pipeline::definition::Definitions::built_in()
                .await
                .unwrap(),
            millstream::mcp::CatalogOptions {
                refresh: Duration::from_millis(refresh_ms),
                tail_rows,
                tail_bytes,
                answer_cache_bytes: 64 << 20,
                plan_cache_entries: 256,
                query_partitions: 1,
            },
            stop.clone(),
        )
        .await
        .unwrap();
        (catalog, stop.drop_guard())
    }

    /// The MCP server over this lakehouse (actions to this broker when `actions`), in-process
    /// and supervised as `serve` supervises it: stop it with the returned supervisor; the stage
    /// is where its HTTP server would run.
    pub async fn mcp_server(
        &self,
        actions: bool,
    ) -> (
        millstream::mcp::Millstream,
        Supervisor,
        millstream::supervise::Stage,
    ) {
        let mut sup = Supervisor::new();
        let serving = sup.stage("serve");
        let last = sup.stage("audit");
        let brokers = self.brokers();
        let server = millstream::mcp::start(
            &self.config,
            self.lake.clone(),
            actions.then_some(brokers.as_str()),
            &mut sup,
            millstream::mcp::Stages {
                serving: &serving,
                last: &last,
            },
        )
        .await
        .unwrap();
        (server, sup, serving)
    }

    /// The MCP server over this lakehouse (actions to this broker), at `/mcp` on a free port,
    /// as `self.config` sets it up (auth included), supervised as `serve` supervises it; runs
    /// until the returned [`Served`] is dropped.
    pub async fn serve_mcp(&self) -> Served {
        let (server, mut sup, serving) = self.mcp_server(true).await;
        let mcp = millstream::serve::Mcp::from_config(server, &self.config).unwrap();
        let (addr, http) = millstream::serve::bind("127.0.0.1:0", Some(mcp), sup.health())
            .await
            .unwrap();
        sup.spawn_once(
            "http",
            &serving,
            &tokio::runtime::Handle::current(),
            move |t| http.run(t),
        );
        sup.health().set_ready(true);
        Served {
            base: format!("http://{addr}"),
            sup,
        }
    }

    /// Runs the pipeline in-process until it has handled `records` source records.
    /// A pipeline worker (restarted after transient failures) as a task, and the token that
    /// stops it.
    pub fn spawn_pipeline(
        &self,
        opts: &PipelineOptions,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<millstream::Result<RunStats>>,
    ) {
        let stop = CancellationToken::new();
        let (kafka, lake, opts, token) = (
            self.config.kafka.clone(),
            self.lake.clone(),
            opts.clone(),
            stop.clone(),
        );
        let handle = tokio::spawn(async move {
            millstream::pipeline::run_with_restarts(&kafka, &lake, &opts, token, None).await
        });
        (stop, handle)
    }

    /// The simulator's history, then `live` live events with injected faults, produced and
    /// ingested by one pipeline run (group and name `name`); its options, to run it again.
    pub async fn ingest_history(&self, name: &str, live: usize) -> PipelineOptions {
        let history = millstream::sim::stream::history(&self.config.simulate, name);
        let live = events_with_faults(name, live, 0.0, 200.0);
        self.produce(&history).await;
        self.produce(&live).await;
        let opts = self.options(name, name);
        self.run_until(&opts, (history.len() + live.len()) as u64)
            .await;
        opts
    }

    pub async fn run_until(&self, opts: &PipelineOptions, records: u64) -> RunStats {
        millstream::pipeline::run(
            &self.config.kafka,
            &self.lake,
            opts,
            CancellationToken::new(),
            Some(Arc::new(StopAfter(records))),
        )
        .await
        .expect("pipeline run")
    }
}

/// `n` seeded events (all four streams), a share of them malformed.
pub fn events(run_id: &str, n: usize, malformed_ratio: f64) -> Vec<SimEvent> {
    let cfg = config();
    let mut g = Generator::new(&cfg.simulate, run_id, cfg.simulate.start, 1000)
        .with_malformed_ratio(malformed_ratio);
    (0..n).map(|_| g.next_event()).collect()
}

/// Like [`events`], with sensor faults injected (`per_device_day` faults per device and
/// simulated day), so the anomaly detector has work to do.
pub fn events_with_faults(
    run_id: &str,
    n: usize,
    malformed_ratio: f64,
    per_device_day: f64,
) -> Vec<SimEvent> {
    use millstream::sim::faults::{FaultPlan, FaultRates};
    let cfg = config();
    let rate = 1000;
    let horizon = chrono::Duration::milliseconds(
        (n as f64 * cfg.simulate.speed / rate as f64 * 1000.0) as i64 + 1,
    );
    let plan = FaultPlan::draw(
        cfg.simulate.seed,
        cfg.simulate.devices,
        cfg.simulate.start,
        horizon,
        &FaultRates { per_device_day },
    );
    let mut g = Generator::new(&cfg.simulate, run_id, cfg.simulate.start, rate)
        .with_malformed_ratio(malformed_ratio)
        .with_faults(plan);
    (0..n).map(|_| g.next_event()).collect()
}

/// One record batch of `schema` from JSON lines (missing nullable fields are NULL).
pub fn json_batch(schema: arrow::datatypes::SchemaRef, lines: &str) -> arrow::array::RecordBatch {
    arrow::json::ReaderBuilder::new(schema)
        .build(std::io::Cursor::new(lines.to_string()))
        .unwrap()
        .next()
        .expect("at least one line")
        .unwrap()
}

/// Commits `lines` (JSON objects, one per line) to `table`, creating it if needed.
pub async fn write_json(lake: &Lakehouse, table: &str, lines: &str) {
    let def = millstream::model::tables::get(table).unwrap();
    lake.ensure(table)
        .await
        .unwrap()
        .write(vec![json_batch(def.arrow_schema(), lines)])
        .await
        .unwrap();
}

/// The rows `sql` returns, each as its values joined by `|`, sorted: for comparing runs.
pub async fn rows(lake: &Lakehouse, sql: &str) -> Vec<String> {
    batch_rows(&lake.sql(sql).await.unwrap())
}

/// Rows of `batches` as in [`rows`].
pub fn batch_rows(batches: &[arrow::array::RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let cols: Vec<Vec<String>> = b
            .columns()
            .iter()
            .map(|c| {
                let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).unwrap();
                strings(&c)
            })
            .collect();
        for i in 0..b.num_rows() {
            out.push(
                cols.iter()
                    .map(|c| c[i].as_str())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out.sort();
    out
}

/// The signal rows of a lakehouse in a canonical order, for comparing runs: anomalies without
/// their processing time, and the detector state without its write time.
pub async fn signal_rows(lake: &Lakehouse) -> (Vec<String>, Vec<String>) {
    let anomalies = rows(lake, "SELECT event_id, device_id, rule, severity, score, expected, value, _partition, _offset FROM iot.anomalies").await;
    let state = rows(lake, "SELECT device_id, n, mean, var, slow_mean, last_normal, last_value, same_run, outlier_run, drifting, excursions, last_ts, _partition FROM iot.sensor_state").await;
    (anomalies, state)
}

/// Every message on `mfg.alerts`, read from the start: alert id → how often it appears. Also
/// checks each is keyed by its `signal_key` and stamped with its table version.
pub fn topic_alert_ids(env: &Env, partitions: usize) -> BTreeMap<String, usize> {
    topic_alert_ids_at(&env.config.kafka, &env.brokers(), partitions)
}

/// [`topic_alert_ids`] on any broker.
pub fn topic_alert_ids_at(
    kafka: &millstream::config::KafkaConfig,
    brokers: &str,
    partitions: usize,
) -> BTreeMap<String, usize> {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    let mut ids = BTreeMap::new();
    read_topic(kafka, brokers, topics::ALERTS, partitions, |m| {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let id = v["alert_id"].as_str().unwrap().to_string();
        assert_eq!(
            m.key().map(|k| String::from_utf8_lossy(k).to_string()),
            v["signal_key"].as_str().map(str::to_string),
            "keyed by signal_key"
        );
        assert!(
            m.headers().is_some_and(|h| h
                .iter()
                .any(|h| h.key == millstream::pipeline::publish::HEADER_VERSION)),
            "stamped with its table version"
        );
        *ids.entry(id).or_default() += 1;
    });
    ids
}

/// Every event on `topic`, read from the start: event id → how often the log holds it. What the
/// broker kept, to tell an event the broker lost from one the pipeline did.
pub fn topic_event_ids(
    kafka: &millstream::config::KafkaConfig,
    brokers: &str,
    topic: &str,
    partitions: usize,
) -> BTreeMap<String, usize> {
    use rdkafka::Message;
    let mut ids = BTreeMap::new();
    read_topic(kafka, brokers, topic, partitions, |m| {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{topic}: a record that is not JSON: {e}"));
        let id = v["event_id"].as_str().unwrap_or_else(|| {
            panic!("{topic}: a record without an event id: {v}");
        });
        *ids.entry(id.to_string()).or_default() += 1;
    });
    ids
}

/// Hands every record of `topic`'s `partitions` to `each`, from the start to the end of each
/// partition (or until the broker has sent nothing for 10 s). Assigned, not subscribed: reading
/// needs no group coordination (slow on some brokers).
fn read_topic(
    kafka: &millstream::config::KafkaConfig,
    brokers: &str,
    topic: &str,
    partitions: usize,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer<millstream::broker::QuietEof> =
        millstream::broker::client_config(kafka, brokers)
            .set("group.id", "test-topic-reader")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .create_with_context(millstream::broker::QuietEof)
            .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, i32::try_from(p).unwrap(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (mut eof, mut idle) = (0, 0);
    while eof < partitions && idle < 50 {
        match consumer.poll(Duration::from_millis(200)) {
            None => idle += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                idle = 0;
                each(&m);
            }
        }
    }
}

/// Waits until the bronze tables plus the dead letters hold the rows [`expected`] counts
/// (`per_table` and `bad`) in all, or fails naming `context` once no row has come in for
/// `stall`. A stall, not a deadline: on a machine shared with other work the drain may take
/// several times as long, and what these waits guard against is rows that stop coming (a
/// partition nobody consumes, a worker that died), not slowness (the watchdogs bound that).
pub async fn wait_for_rows(
    lake: &Lakehouse,
    per_table: &BTreeMap<&'static str, i64>,
    bad: i64,
    stall: Duration,
    context: &str,
) {
    let want = per_table.values().sum::<i64>() + bad;
    let mut progress = Progress::new(stall);
    loop {
        let mut n = lake
            .sql_i64("SELECT count(*) FROM ops.dead_letters")
            .await
            .unwrap_or(0);
        for t in per_table.keys() {
            n += lake
                .sql_i64(&format!("SELECT count(*) FROM {t}"))
                .await
                .unwrap_or(0);
        }
        if n >= want {
            return;
        }
        assert!(
            progress.moved(n),
            "stalled at {n}/{want} rows for {stall:?}; {context}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// When a wait last saw its measure move: [`Progress::moved`] is false once it has stood still
/// for the stall window.
struct Progress {
    stall: Duration,
    last: Option<i64>,
    since: Instant,
}

impl Progress {
    fn new(stall: Duration) -> Self {
        Self {
            stall,
            last: None,
            since: Instant::now(),
        }
    }

    /// Records `measure`; false when it has not changed for the stall window.
    fn moved(&mut self, measure: i64) -> bool {
        if self.last != Some(measure) {
            self.last = Some(measure);
            self.since = Instant::now();
        }
        self.since.elapsed() < self.stall
    }
}

/// Well-formed events per bronze table, and the malformed count.
pub fn expected(events: &[SimEvent]) -> (BTreeMap<&'static str, i64>, i64) {
    let mut per_table = BTreeMap::new();
    let mut bad = 0;
    for kind in millstream::model::EventKind::ALL {
        per_table.insert(kind.bronze_table(), 0);
    }
    for e in events {
        if e.malformed {
            bad += 1;
        } else {
            let kind = millstream::model::EventKind::from_topic(e.topic).expect("known topic");
            *per_table.get_mut(kind.bronze_table()).unwrap() += 1;
        }
    }
    (per_table, bad)
}

/// Asserts each bronze table holds exactly the expected rows, each event id once, and the
/// dead-letter table exactly `bad` rows, each source offset once.
pub async fn assert_exact(lake: &Lakehouse, per_table: &BTreeMap<&'static str, i64>, bad: i64) {
    for (table, want) in per_table {
        let rows = lake
            .sql_i64(&format!("SELECT count(*) FROM {table}"))
            .await
            .unwrap();
        let ids = lake
            .sql_i64(&format!("SELECT count(DISTINCT event_id) FROM {table}"))
            .await
            .unwrap();
        let offsets = lake
            .sql_i64(&format!(
                "SELECT count(*) FROM (SELECT DISTINCT _partition, _offset FROM {table})"
            ))
            .await
            .unwrap();
        assert_eq!(rows, *want, "{table}: rows");
        assert_eq!(ids, rows, "{table}: duplicate event ids");
        assert_eq!(offsets, rows, "{table}: duplicate source offsets");
    }
    let dead = lake
        .sql_i64("SELECT count(*) FROM ops.dead_letters")
        .await
        .unwrap();
    let dead_offsets = lake
        .sql_i64("SELECT count(*) FROM (SELECT DISTINCT topic, \"partition\", \"offset\" FROM ops.dead_letters)")
        .await
        .unwrap();
    assert_eq!(dead, bad, "dead letters");
    assert_eq!(dead_offsets, dead, "duplicate dead letters");
    assert_inventory_is_net_movements(lake).await;
}

/// The MERGE-kept inventory holds, per position, exactly the net of its movements (tests seed
/// no reference stock, so positions start at zero): a movement merged twice or never shows.
pub async fn assert_inventory_is_net_movements(lake: &Lakehouse) {
    let positions = lake
        .sql_i64("SELECT count(*) FROM supply_chain.inventory")
        .await
        .unwrap();
    let moved = lake
        .sql_i64(
            "SELECT count(*) FROM (SELECT DISTINCT part_id, warehouse_id \
             FROM supply_chain.inventory_movements)",
        )
        .await
        .unwrap();
    assert_eq!(positions, moved, "one inventory row per position moved");
    let wrong = lake
        .sql_i64(
            "SELECT count(*) FROM supply_chain.inventory i \
             JOIN (SELECT part_id, warehouse_id, sum(CASE movement_type \
                     WHEN 'consumption' THEN -quantity WHEN 'transfer_out' THEN -quantity \
                     ELSE quantity END) AS net \
                   FROM supply_chain.inventory_movements GROUP BY part_id, warehouse_id) m \
               ON m.part_id = i.part_id AND m.warehouse_id = i.warehouse_id \
             WHERE i.on_hand <> m.net",
        )
        .await
        .unwrap();
    assert_eq!(
        wrong, 0,
        "inventory positions that differ from their net movements"
    );
}

/// A string-like column (Utf8, LargeUtf8 or Utf8View) as owned strings.
pub fn strings(col: &arrow::array::ArrayRef) -> Vec<String> {
    let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8).expect("cast to Utf8");
    arrow::array::cast::as_string_array(&col)
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect()
}

/// A binary-like column as owned byte vectors.
pub fn bytes(col: &arrow::array::ArrayRef) -> Vec<Vec<u8>> {
    let col =
        arrow::compute::cast(col, &arrow::datatypes::DataType::Binary).expect("cast to Binary");
    col.as_any()
        .downcast_ref::<arrow::array::BinaryArray>()
        .expect("binary")
        .iter()
        .map(|v| v.unwrap_or_default().to_vec())
        .collect()
}

/// What a finished command printed; fails with its stderr if it did not succeed.
pub fn stdout(out: &std::process::Output) -> &[u8] {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    &out.stdout
}

pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs `tests/py/<script>` with `args`; what it printed, as JSON. Its stderr if it failed.
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = std::process::Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{} {args:?} failed (its Python packages come with `pip install -r \
         tests/requirements.txt`, or run scripts/test):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

/// Runs the official Python MCP SDK client (`tests/py/mcp_client.py`) with `args`; its JSON
/// report.
pub fn mcp_client(args: &[&str]) -> serde_json::Value {
    python_json("mcp_client.py", args)
}

/// Requests a [`switching_proxy`] forwarded: (backend, status), in order.
pub type Forwarded = Arc<std::sync::Mutex<Vec<(String, u16)>>>;

/// An HTTP reverse proxy on a free port that forwards every request to the backend in the
/// returned cell (change it to move clients to another server without their knowing), streaming
/// responses through. Returns its base URL, the cell, and the requests it forwarded.
pub async fn switching_proxy(backend: &str) -> (String, Arc<std::sync::Mutex<String>>, Forwarded) {
    use axum::body::Body;
    use axum::extract::{Request, State};
    use futures::TryStreamExt;
    type Shared = (Arc<std::sync::Mutex<String>>, reqwest::Client, Forwarded);
    async fn forward(
        State((backend, http, seen)): State<Shared>,
        request: Request,
    ) -> axum::response::Response {
        let base = backend.lock().unwrap().clone();
        let url = format!(
            "{base}{}",
            request.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
        let mut out = http.request(parts.method, url).body(body);
        for (k, v) in &parts.headers {
            if k != axum::http::header::HOST {
                out = out.header(k, v);
            }
        }
        let answer = out.send().await.unwrap();
        seen.lock().unwrap().push((base, answer.status().as_u16()));
        let mut response = axum::response::Response::builder().status(answer.status());
        for (k, v) in answer.headers() {
            response = response.header(k, v);
        }
        response
            .body(Body::from_stream(
                answer.bytes_stream().map_err(std::io::Error::other),
            ))
            .unwrap()
    }
    let cell = Arc::new(std::sync::Mutex::new(backend.to_string()));
    let seen = Forwarded::default();
    let app = axum::Router::new().fallback(forward).with_state((
        cell.clone(),
        reqwest::Client::new(),
        seen.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), cell, seen)
}

/// Reference tables the derived signals join with.
pub const DERIVE_REFERENCE: [&str; 3] = [
    "supply_chain.suppliers",
    "supply_chain.parts",
    "sales.customers",
];
/// The derived signal tables, each a function of its input tables alone.
pub const DERIVED: [&str; 3] = [
    "supply_chain.shortage_signals",
    "sales.churn_signals",
    "iot.maintenance_alerts",
];

/// Fails naming `what` and the first differing row unless the rows after the faults are the
/// uninterrupted run's.
pub fn assert_same_rows(what: &str, got: &[String], want: &[String]) {
    let first_difference = got
        .iter()
        .zip(want)
        .find(|(a, b)| a != b)
        .map(|(a, b)| format!("\n  after faults:  {a}\n  uninterrupted: {b}"));
    assert!(
        got == want,
        "{what} differs from the uninterrupted run ({} vs {} rows){}",
        got.len(),
        want.len(),
        first_difference.unwrap_or_default()
    );
}

/// Waits until every table fed from a bronze table's topic has caught up with it: for each of
/// the `partitions` partitions, `iot.anomalies` and `iot.sensor_state` record at least the last
/// offset `iot.telemetry` records, and the MERGE-kept `supply_chain.inventory` at least the last
/// offset `supply_chain.inventory_movements` records. A worker killed with merges queued left
/// the inventory behind its movements; the worker that takes the partition over replays them
/// for the inventory alone, so a check must wait for that, not only for the bronze rows.
/// Fails naming `context` once no table's offsets have moved for `stall` (as
/// [`wait_for_rows`], a stall window, not a deadline).
pub async fn signals_caught_up(lake: &Lakehouse, partitions: i32, stall: Duration, context: &str) {
    use millstream::lakehouse::commit::{Offsets, SourcePartition, txn_versions};
    // (bronze table, its topic, the tables fed from it, whether bronze must have offsets).
    let feeds = [
        (
            "iot.telemetry",
            topics::TELEMETRY,
            &["iot.anomalies", "iot.sensor_state"][..],
            true,
        ),
        (
            "supply_chain.inventory_movements",
            topics::INVENTORY,
            &["supply_chain.inventory"][..],
            false,
        ),
    ];
    let mut progress = Progress::new(stall);
    loop {
        let mut lagging = Vec::new();
        let mut offsets = 0;
        for (bronze, topic, fed, required) in feeds {
            let parts: Vec<SourcePartition> = (0..partitions)
                .map(|p| SourcePartition::new(topic, p))
                .collect();
            let versions = async |table: &str| -> Offsets {
                let t = lake.open(table).await.unwrap();
                txn_versions(&t, table, "bronze", parts.clone())
                    .await
                    .unwrap()
            };
            let head = versions(bronze).await;
            offsets += head.values().sum::<i64>();
            if head.is_empty() && required {
                lagging.push(format!("{bronze}: no offsets yet"));
                continue;
            }
            for table in fed {
                // At or past bronze: a dead-lettered tail moves the fed tables' offsets, not
                // bronze's.
                let got = versions(table).await;
                offsets += got.values().sum::<i64>();
                if !head.iter().all(|(p, o)| got.get(p).is_some_and(|x| x >= o)) {
                    lagging.push(format!("{table} {got:?} behind {bronze} {head:?}"));
                }
            }
        }
        if lagging.is_empty() {
            return;
        }
        assert!(
            progress.moved(offsets),
            "tables lag their bronze table, none moving for {stall:?}: {lagging:?}; {context}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One uninterrupted in-process run over the `events` already on `brokers` (a group of its
/// own), into a fresh local lakehouse under `dir`, with the reference data the derived signals
/// join with and one derive round: what a run disturbed by faults must end equal to.
pub async fn reference_run(
    config: &Config,
    brokers: &str,
    dir: &std::path::Path,
    events: usize,
) -> Lakehouse {
    let reference = Lakehouse::new(dir.join("reference")).unwrap();
    let mut opts = PipelineOptions::from_config(config, brokers);
    opts.name = "reference".into();
    opts.group_id = "reference".into();
    millstream::sim::write_reference_tables(&reference, &config.simulate, false, &DERIVE_REFERENCE)
        .await
        .expect("reference data");
    millstream::pipeline::run(
        &config.kafka,
        &reference,
        &opts,
        CancellationToken::new(),
        Some(Arc::new(StopAfter(events as u64))),
    )
    .await
    .expect("reference run");
    let defs = millstream::pipeline::definition::Definitions::built_in()
        .await
        .unwrap();
    millstream::pipeline::derive::Deriver::new(reference.clone(), defs)
        .round()
        .await
        .expect("reference derive round");
    reference
}

/// The signals of `lake` equal those of the uninterrupted `reference`: every derived table
/// (the last derive round ran over the same inputs), the anomalies and the detector state (saved
/// and restored exactly, however the faults fell).
pub async fn assert_signals_as_uninterrupted(lake: &Lakehouse, reference: &Lakehouse) {
    for table in DERIVED {
        let sql = format!("SELECT * FROM {table}");
        let (got, want) = (rows(lake, &sql).await, rows(reference, &sql).await);
        assert!(
            !want.is_empty(),
            "{table}: the reference run derived nothing"
        );
        eprintln!("{table}: {} rows, as uninterrupted", want.len());
        assert_same_rows(table, &got, &want);
    }
    let (anomalies, state) = signal_rows(lake).await;
    let (want_anomalies, want_state) = signal_rows(reference).await;
    assert!(
        want_anomalies.len() > 100,
        "the injected faults produced {} anomalies",
        want_anomalies.len()
    );
    assert_same_rows("anomalies", &anomalies, &want_anomalies);
    assert_same_rows("detector state", &state, &want_state);
}

/// Alerts are appended as derive rounds go (which depends on timing, so they are not compared
/// with a reference), but each is once in `ops.alerts` and once on `mfg.alerts`, whatever the
/// faults interrupted; returns how many.
pub async fn assert_alerts_once(
    lake: &Lakehouse,
    kafka: &millstream::config::KafkaConfig,
    brokers: &str,
    partitions: usize,
) -> usize {
    let alert_ids = rows(lake, "SELECT alert_id FROM ops.alerts").await;
    assert!(!alert_ids.is_empty(), "no alerts raised");
    let on_topic = topic_alert_ids_at(kafka, brokers, partitions);
    let want: BTreeMap<String, usize> = alert_ids.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(
        want.len(),
        alert_ids.len(),
        "an alert id twice in ops.alerts"
    );
    assert_eq!(on_topic, want, "mfg.alerts holds every alert exactly once");
    want.len()
}

/// The random generator of a test that kills at random moments: seeded from `CRASH_SEED` when
/// set, else at random, and the seed said on stderr (with `context`) so a failure can be rerun.
pub fn crash_rng(context: &str) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (rerun with CRASH_SEED={seed}); {context}");
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

/// Produces `events` to `brokers` in chunks of `chunk`, pausing `pause` after each, so they
/// keep flowing while a test disturbs the pipeline; the task ends flushed.
pub fn produce_slowly(
    kafka: &millstream::config::KafkaConfig,
    brokers: &str,
    events: Vec<SimEvent>,
    chunk: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let (kafka, brokers) = (kafka.clone(), brokers.to_string());
    tokio::spawn(async move {
        let p = EventProducer::new(&kafka, &brokers).expect("producer");
        for chunk in events.chunks(chunk) {
            for e in chunk {
                p.send(e).await.expect("send");
            }
            tokio::time::sleep(pause).await;
        }
        p.flush(Duration::from_secs(60)).expect("flush");
    })
}

/// The MCP URL a `millstream serve` child prints at start (its stdout piped); its stdout is then
/// drained in the background so the process never blocks on a full pipe.
pub fn serve_url(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("serve prints its address")
            .expect("serve's stdout");
        if let Some(url) = line.trim().strip_prefix("mcp       : ") {
            break url.to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    url
}
