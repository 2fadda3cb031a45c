//! The pipeline as a child process, SIGKILLed at random moments while events flow and
//! restarted each time, ends with exact tables: nothing lost, nothing duplicated.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::support::{self, Env};

const KILLS: usize = 6;
/// Reference tables the derived signals join with.
const DERIVE_REFERENCE: [&str; 3] = [
    "supply_chain.suppliers",
    "supply_chain.parts",
    "sales.customers",
];
/// The derived signal tables, each a function of its input tables alone.
const DERIVED: [&str; 3] = [
    "supply_chain.shortage_signals",
    "sales.churn_signals",
    "iot.maintenance_alerts",
];

fn spawn_pipeline(env: &Env, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_millstream"))
        .arg("--lakehouse")
        .arg(env.lake.root())
        .args([
            "pipeline",
            "--brokers",
            &env.brokers(),
            "--name",
            "bronze",
            "--group",
            "crash",
        ])
        // Small batches make many commits, so kills land before, during and after them.
        .env("MILLSTREAM__PIPELINE__BATCH_MAX_EVENTS", "1500")
        .env("MILLSTREAM__PIPELINE__BATCH_MAX_MS", "40")
        // A killed member is evicted after its session times out; keep that short.
        .env("MILLSTREAM__KAFKA__PROPERTIES__SESSION.TIMEOUT.MS", "3000")
        .env(
            "MILLSTREAM__KAFKA__PROPERTIES__HEARTBEAT.INTERVAL.MS",
            "500",
        )
        .env("RUST_LOG", "warn,millstream=info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn millstream pipeline")
}

/// Fails naming `what` and the first differing row unless the rows after the kills are the
/// uninterrupted run's.
fn assert_same_rows(what: &str, got: &[String], want: &[String]) {
    let first_difference = got
        .iter()
        .zip(want)
        .find(|(a, b)| a != b)
        .map(|(a, b)| format!("\n  after kills:   {a}\n  uninterrupted: {b}"));
    assert!(
        got == want,
        "{what} differs from the uninterrupted run ({} vs {} rows){}",
        got.len(),
        want.len(),
        first_difference.unwrap_or_default()
    );
}

fn commits(lake_root: &Path) -> usize {
    std::fs::read_dir(lake_root.join("iot/telemetry/_delta_log"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// Waits until `iot.anomalies` and `iot.sensor_state` record, for every telemetry partition,
/// at least the last offset `iot.telemetry` records.
async fn signals_caught_up(env: &Env, budget: Duration, context: &str) {
    use millstream::lakehouse::commit::{SourcePartition, txn_versions};
    let parts: Vec<SourcePartition> = (0..4)
        .map(|p| SourcePartition::new(millstream::broker::topics::TELEMETRY, p))
        .collect();
    let started = Instant::now();
    loop {
        let mut versions = Vec::new();
        for table in ["iot.telemetry", "iot.anomalies", "iot.sensor_state"] {
            let t = env.lake.open(table).await.unwrap();
            versions.push(
                txn_versions(&t, table, "bronze", parts.clone())
                    .await
                    .unwrap(),
            );
        }
        // At or past bronze: a dead-lettered tail moves the signal tables' offsets, not bronze's.
        let caught_up = |v: &millstream::lakehouse::commit::Offsets| {
            versions[0]
                .iter()
                .all(|(p, o)| v.get(p).is_some_and(|x| x >= o))
        };
        if !versions[0].is_empty() && caught_up(&versions[1]) && caught_up(&versions[2]) {
            return;
        }
        assert!(
            started.elapsed() < budget,
            "signal tables lag the bronze table: {versions:?}; {context}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let _w = support::watchdog("crash", Duration::from_secs(300));
    let env = Env::new(4).await;
    let log = env.dir.path().join("pipeline.log");
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!(
        "crash test seed {seed} (rerun with CRASH_SEED={seed}); child logs in {}",
        log.display()
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);

    // Few malformed records: the dead-letter table then lags the bronze tables, and replays
    // for one sink must not move another sink's offsets back.
    let events = support::events_with_faults("crash", 80_000, 0.001, 12.0);
    let (per_table, bad) = support::expected(&events);

    // Events keep flowing for the whole kill phase.
    let producer = {
        let (kafka, brokers, events) = (env.config.kafka.clone(), env.brokers(), events.clone());
        tokio::spawn(async move {
            let p = millstream::sim::EventProducer::new(&kafka, &brokers).expect("producer");
            for chunk in events.chunks(1_000) {
                for e in chunk {
                    p.send(e).await.expect("send");
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            p.flush(Duration::from_secs(30)).expect("flush");
        })
    };

    // Create the tables first, so a commit counted below is always a data commit. The parts,
    // suppliers and customers give the derived shortage and churn signals something to say
    // (no reference stock: inventory must stay the net of the movements).
    env.lake.ensure_all().await.expect("tables");
    millstream::sim::write_reference_tables(
        &env.lake,
        &env.config.simulate,
        false,
        &DERIVE_REFERENCE,
    )
    .await
    .expect("reference data");
    let mut killed_after_progress = 0;
    for round in 0..KILLS {
        let before = commits(env.lake.root());
        let mut child = spawn_pipeline(&env, &log);
        // Wait for this incarnation to commit (or give up after a while), then kill it at a
        // random point of its work.
        let started = Instant::now();
        while commits(env.lake.root()) == before && started.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if commits(env.lake.root()) > before {
            killed_after_progress += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1_500))).await;
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        eprintln!(
            "round {round}: killed ({status}) after {:?}",
            started.elapsed()
        );
    }
    assert!(
        killed_after_progress >= 5,
        "only {killed_after_progress} kills landed while the pipeline was committing"
    );
    producer.await.expect("producer task");

    // A last incarnation drains the rest; then it is stopped gracefully.
    let mut child = spawn_pipeline(&env, &log);
    let context = format!("see {}", log.display());
    support::wait_for_rows(
        &env.lake,
        &per_table,
        bad,
        Duration::from_secs(120),
        &context,
    )
    .await;
    // Bronze may be complete from a killed incarnation's last commit while the signal tables,
    // committed after it, still lag: wait until they have caught up too.
    signals_caught_up(&env, Duration::from_secs(60), &context).await;
    // Graceful stop: SIGTERM finishes the batch in hand and exits 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "pipeline exited with {exit} on SIGTERM");

    if std::env::var("KEEP_LAKE").is_ok() {
        let keep = std::path::PathBuf::from("/tmp/crash-lake");
        let _ = std::fs::remove_dir_all(&keep);
        std::process::Command::new("cp")
            .arg("-r")
            .arg(env.lake.root())
            .arg(&keep)
            .status()
            .unwrap();
    }
    support::assert_exact(&env.lake, &per_table, bad).await;

    // The signals equal those of one uninterrupted run over the same log: the detector state
    // was saved and restored exactly, however the kills fell.
    let reference =
        millstream::lakehouse::Lakehouse::new(env.dir.path().join("reference")).unwrap();
    let opts = env.options("reference", "reference");
    millstream::sim::write_reference_tables(
        &reference,
        &env.config.simulate,
        false,
        &DERIVE_REFERENCE,
    )
    .await
    .expect("reference data");
    millstream::pipeline::run(
        &env.config.kafka,
        &reference,
        &opts,
        tokio_util::sync::CancellationToken::new(),
        Some(std::sync::Arc::new(millstream::pipeline::StopAfter(
            events.len() as u64,
        ))),
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

    // Derived signals: the last incarnation's final round ran over the same inputs, so every
    // derived table equals one derive round over the uninterrupted run.
    for table in DERIVED {
        let sql = format!("SELECT * FROM {table}");
        let (got, want) = (
            support::rows(&env.lake, &sql).await,
            support::rows(&reference, &sql).await,
        );
        assert!(
            !want.is_empty(),
            "{table}: the reference run derived nothing"
        );
        eprintln!("{table}: {} rows, as uninterrupted", want.len());
        assert_same_rows(table, &got, &want);
    }
    // Alerts are appended as rounds go (which depends on timing, so they are not compared with
    // the reference), but each once in the table and once on mfg.alerts, whatever the kills
    // interrupted.
    let alert_ids = support::rows(&env.lake, "SELECT alert_id FROM ops.alerts").await;
    assert!(!alert_ids.is_empty(), "no alerts raised");
    let on_topic = support::topic_alert_ids(&env, 4);
    let want: std::collections::BTreeMap<String, usize> =
        alert_ids.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(
        want.len(),
        alert_ids.len(),
        "an alert id twice in ops.alerts"
    );
    assert_eq!(on_topic, want, "mfg.alerts holds every alert exactly once");
    eprintln!(
        "{} alerts, each once in ops.alerts and on mfg.alerts",
        want.len()
    );
    let (anomalies, state) = support::signal_rows(&env.lake).await;
    let (want_anomalies, want_state) = support::signal_rows(&reference).await;
    assert!(
        want_anomalies.len() > 100,
        "the injected faults produced {} anomalies",
        want_anomalies.len()
    );
    assert_eq!(
        anomalies.len(),
        want_anomalies.len(),
        "anomaly count after kills vs uninterrupted"
    );
    assert!(
        anomalies == want_anomalies,
        "anomalies differ from the uninterrupted run"
    );
    assert_same_rows("detector state", &state, &want_state);
}
