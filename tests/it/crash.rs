//! The pipeline as a child process, SIGKILLed at random moments while events flow and
//! restarted each time, ends with exact tables: nothing lost, nothing duplicated.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::support::{self, Env};

const KILLS: usize = 6;
fn spawn_pipeline(env: &Env, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_millstream"))
        .arg("--lakehouse")
        .arg(env.lake.uri())
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

fn commits(lake_root: &Path) -> usize {
    std::fs::read_dir(lake_root.join("iot/telemetry/_delta_log"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let _w = support::watchdog("crash", Duration::from_secs(300));
    let env = Env::new(4).await;
    let log = env.dir.path().join("pipeline.log");
    let mut rng = support::crash_rng(&format!("child logs in {}", log.display()));

    // Few malformed records: the dead-letter table then lags the bronze tables, and replays
    // for one sink must not move another sink's offsets back.
    let events = support::events_with_faults("crash", 80_000, 0.001, 12.0);
    let (per_table, bad) = support::expected(&events);

    // Events keep flowing for the whole kill phase.
    let producer = support::produce_slowly(
        &env.config.kafka,
        &env.brokers(),
        events.clone(),
        1_000,
        Duration::from_millis(400),
    );

    // Create the tables first, so a commit counted below is always a data commit. The parts,
    // suppliers and customers give the derived shortage and churn signals something to say
    // (no reference stock: inventory must stay the net of the movements).
    env.lake.ensure_all().await.expect("tables");
    millstream::sim::write_reference_tables(
        &env.lake,
        &env.config.simulate,
        false,
        &support::DERIVE_REFERENCE,
    )
    .await
    .expect("reference data");
    let mut killed_after_progress = 0;
    for round in 0..KILLS {
        let before = commits(env.lake.local_root().unwrap());
        let mut child = spawn_pipeline(&env, &log);
        // Wait for this incarnation to commit (or give up after a while), then kill it at a
        // random point of its work.
        let started = Instant::now();
        while commits(env.lake.local_root().unwrap()) == before
            && started.elapsed() < Duration::from_secs(20)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if commits(env.lake.local_root().unwrap()) > before {
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
    support::signals_caught_up(&env.lake, 4, Duration::from_secs(60), &context).await;
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
            .arg(env.lake.uri())
            .arg(&keep)
            .status()
            .unwrap();
    }
    support::assert_exact(&env.lake, &per_table, bad).await;

    // The signals equal those of one uninterrupted run over the same log.
    let reference =
        support::reference_run(&env.config, &env.brokers(), env.dir.path(), events.len()).await;
    support::assert_signals_as_uninterrupted(&env.lake, &reference).await;
    let alerts = support::assert_alerts_once(&env.lake, &env.config.kafka, &env.brokers(), 4).await;
    eprintln!("{alerts} alerts, each once in ops.alerts and on mfg.alerts");
}
