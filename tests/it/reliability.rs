//! Reliability under zombies and misconfiguration (issue 21): workers that both believe they own
//! a partition, a log that is behind Delta, brokers and lakehouses that are not there, bad flags
//! and values, events produced twice.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::support::{self, Env};

/// Two consumer groups on one lakehouse — the same pipeline started twice with different group
/// ids — both read every partition and race to write every sink, MERGE-kept tables included,
/// for 90 s of low-rate traffic (a few records per partition per batch, so commits interleave
/// constantly). Every append, MERGE and replace refuses records at or below the offsets of the
/// version it commits on, whatever path the conflict takes: the bronze tables hold each event
/// once and the inventory equals its movements, position by position.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_groups_on_one_lakehouse_keep_every_sink_exact() {
    let _w = support::watchdog("two groups", Duration::from_secs(300));
    let env = Env::new(2).await;
    env.lake.ensure_all().await.unwrap();
    let events = support::events("zombies", 5_400, 0.002);
    let (per_table, bad) = support::expected(&events);
    let worker = |group: &'static str| {
        let mut opts = env.options("bronze", group);
        opts.batch_max_wait = Duration::from_millis(50);
        env.spawn_pipeline(&opts)
    };
    let (stop_a, a) = worker("group-a");
    let (stop_b, b) = worker("group-b");
    // 90 s at 60 events/s.
    let producer = millstream::sim::EventProducer::new(&env.config.kafka, &env.brokers()).unwrap();
    let started = Instant::now();
    for (i, e) in events.iter().enumerate() {
        producer.send(e).await.unwrap();
        let due = Duration::from_secs_f64(i as f64 / 60.0);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    drop(producer);
    support::wait_for_rows(
        &env.lake,
        &per_table,
        bad,
        Duration::from_secs(60),
        "two groups",
    )
    .await;
    // Let both catch up with everything the other wrote, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (stop, handle) in [(stop_a, a), (stop_b, b)] {
        stop.cancel();
        handle.await.unwrap().expect("worker");
    }
    support::assert_exact(&env.lake, &per_table, bad).await;
}

/// After a broker restart without its data (here: a second, empty broker under the same
/// lakehouse), Delta's offsets are ahead of the log (as long as the new log is shorter: a new
/// log that has already grown past them cannot be told apart by offsets alone). By default the worker stops at once with an
/// error naming the partition and both offsets — it never skips new records silently; with
/// `reset-to-earliest` it ingests the new log from its start, every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_behind_delta_stops_or_is_ingested_again_never_skipped() {
    let _w = support::watchdog("log behind delta", Duration::from_secs(240));
    let env = Env::new(1).await;
    env.lake.ensure_all().await.unwrap();
    let old = support::events("old-log", 5_000, 0.0);
    env.produce(&old).await;
    let opts = env.options("bronze", "restarted");
    env.run_until(&opts, old.len() as u64).await;

    // The broker comes back empty; 3,000 new events arrive (fewer than the old log held, so
    // every partition's log now ends before Delta's next offset).
    let fresh =
        millstream::broker::EmbeddedBroker::start(1, &millstream::broker::topics::ALL, 1).unwrap();
    let brokers = fresh.bootstrap_servers().to_string();
    // Telemetry and stock movements only: the old log held far more of both, so each of their
    // partitions ends before Delta's next offset.
    let new: Vec<_> = support::events("new-log", 3_200, 0.0)
        .into_iter()
        .filter(|e| {
            e.topic == millstream::broker::topics::TELEMETRY
                || e.topic == millstream::broker::topics::INVENTORY
        })
        .take(3_000)
        .collect();
    assert_eq!(new.len(), 3_000);
    let producer = millstream::sim::EventProducer::new(&env.config.kafka, &brokers).unwrap();
    millstream::sim::produce_all(&producer, &new, "test")
        .await
        .unwrap();
    drop(producer);
    let count = || async {
        env.lake
            .sql_i64("SELECT count(*) FROM iot.telemetry")
            .await
            .unwrap()
    };
    let before = count().await;

    let mut stopping = opts.clone();
    stopping.brokers = brokers.clone();
    let started = Instant::now();
    let e = millstream::pipeline::run(
        &env.config.kafka,
        &env.lake,
        &stopping,
        CancellationToken::new(),
        None,
    )
    .await
    .expect_err("a log behind Delta must stop the worker");
    let message = e.to_string();
    assert!(
        message.contains("Delta says the next record is at offset")
            && message.contains("the log is behind the lakehouse"),
        "{message}"
    );
    assert!(!e.retryable(), "retrying cannot fix a lost log");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(count().await, before, "nothing was written");

    let mut resetting = stopping.clone();
    resetting.out_of_range = millstream::source::OutOfRange::ResetToEarliest;
    millstream::pipeline::run(
        &env.config.kafka,
        &env.lake,
        &resetting,
        CancellationToken::new(),
        Some(std::sync::Arc::new(millstream::pipeline::StopAfter(
            new.len() as u64,
        ))),
    )
    .await
    .unwrap();
    let (mut per_table, _) = support::expected(&old);
    for (table, n) in support::expected(&new).0 {
        *per_table.get_mut(table).unwrap() += n;
    }
    for (table, want) in &per_table {
        let ids = env
            .lake
            .sql_i64(&format!("SELECT count(DISTINCT event_id) FROM {table}"))
            .await
            .unwrap();
        let rows = env
            .lake
            .sql_i64(&format!("SELECT count(*) FROM {table}"))
            .await
            .unwrap();
        assert_eq!((rows, ids), (*want, *want), "{table}");
    }
    drop(fresh);
}

/// `millstream` with `args` (and `MILLSTREAM__*` from `env`): exit code, stderr, and how long
/// it took.
fn millstream(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_millstream"));
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("millstream runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        started.elapsed(),
    )
}

/// What cannot work fails at start, non-zero, within the broker check's 10 s, saying what is
/// wrong and which setting to fix — instead of retrying forever: an unreachable or empty broker
/// address, flags the config rules forbid, a lakehouse that takes no writes, and a config with
/// both a type error and a range error (both named, each with its key).
#[test]
fn permanent_failures_fail_at_start_with_a_clear_error() {
    let _w = support::watchdog("permanent failures", Duration::from_secs(180));
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lakehouse");
    let lake = lake.to_str().unwrap();
    for (args, env, want) in [
        (
            vec!["--lakehouse", lake, "pipeline", "--brokers", "127.0.0.1:1"],
            vec![],
            vec!["cannot reach Kafka at 127.0.0.1:1"],
        ),
        (
            vec!["--lakehouse", lake, "pipeline", "--brokers", ""],
            vec![],
            vec!["kafka.brokers is empty"],
        ),
        (
            vec![
                "--lakehouse",
                lake,
                "pipeline",
                "--brokers",
                "127.0.0.1:1",
                "--group",
                "",
            ],
            vec![],
            vec!["kafka.group_id must not be empty"],
        ),
        (
            vec![
                "--lakehouse",
                lake,
                "pipeline",
                "--brokers",
                "127.0.0.1:1",
                "--name",
                "a/b",
            ],
            vec![],
            vec!["pipeline.name must be non-empty [A-Za-z0-9_-]"],
        ),
        (
            vec![
                "--lakehouse",
                "/proc",
                "pipeline",
                "--brokers",
                "127.0.0.1:1",
            ],
            vec![],
            vec!["lakehouse /proc is not writable"],
        ),
        (
            vec!["--lakehouse", lake, "tables", "list"],
            vec![
                ("MILLSTREAM__PIPELINE__BATCH_MAX_MS", "soon"),
                ("MILLSTREAM__KAFKA__PARTITIONS", "0"),
            ],
            vec![
                "pipeline.batch_max_ms: invalid type",
                "kafka.partitions must be in 1..=1000",
            ],
        ),
    ] {
        let (code, stderr, took) = millstream(&args, &env);
        assert!(code.is_some_and(|c| c != 0), "{args:?} exited {code:?}");
        assert!(took < Duration::from_secs(20), "{args:?} took {took:?}");
        for w in want {
            assert!(stderr.contains(w), "{args:?}: {w:?} not in {stderr}");
        }
    }
}

/// SIGTERM after the broker went away: the worker finishes what it holds and exits 0 within a
/// few seconds, not after librdkafka's 30-second request timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_gone_exits_promptly() {
    let _w = support::watchdog("sigterm without broker", Duration::from_secs(180));
    let env = Env::new(1).await;
    let events = support::events("gone", 500, 0.0);
    env.produce(&events).await;
    let dir = env.dir.path().to_path_buf();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_millstream"))
        .arg("--lakehouse")
        .arg(env.lake.uri())
        .args(["pipeline", "--brokers", &env.brokers(), "--no-derive"])
        .env("MILLSTREAM__SERVE__ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(dir.join("child.log")).unwrap())
        .spawn()
        .unwrap();
    // Running: the events are in.
    let started = Instant::now();
    while env
        .lake
        .sql_i64("SELECT count(*) FROM iot.telemetry")
        .await
        .unwrap_or(0)
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the worker never wrote"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Env { broker, .. } = env;
    drop(broker);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopping = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(30),
            "still running 30 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = stopping.elapsed();
    let log = std::fs::read_to_string(dir.join("child.log")).unwrap_or_default();
    assert!(status.success(), "exit {status:?}: {log}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} after SIGTERM: {log}"
    );
}

/// The same events produced twice (a producer retrying without idempotence) land once: copies
/// within a run and copies arriving after a restart (the window is restored from the bronze
/// tables) are dropped and counted; the MERGE-kept inventory sees each movement once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_produced_twice_land_once() {
    let _w = support::watchdog("duplicates", Duration::from_secs(180));
    let env = Env::new(2).await;
    env.lake.ensure_all().await.unwrap();
    let events = support::events("twice", 3_000, 0.0);
    let opts = env.options("bronze", "twice");
    // 0..2000, then a restart, then 1500..3000 (500 copies of ingested events) and 2900..3000
    // once more (100 copies within the run).
    env.produce(&events[..2_000]).await;
    let first = env.run_until(&opts, 2_000).await;
    assert_eq!(first.duplicates, 0);
    env.produce(&events[1_500..]).await;
    env.produce(&events[2_900..]).await;
    let second = env.run_until(&opts, 1_600).await;
    assert_eq!(second.duplicates, 600, "{second:?}");
    let (per_table, bad) = support::expected(&events);
    support::assert_exact(&env.lake, &per_table, bad).await;
}

/// A child process killed (-9) when the test lets go of it, so a failed assertion leaves no
/// worker behind.
struct Worker(std::process::Child);

impl Drop for Worker {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Worker {
    /// SIGTERM, then wait for the exit.
    fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// A `pipeline` child process against the test's broker and `lake`, logging to `log`.
fn spawn_worker(
    env: &Env,
    lake: &std::path::Path,
    log: &std::path::Path,
    extra: &[&str],
) -> Worker {
    let mut args = vec!["pipeline", "--brokers"];
    let brokers = env.brokers();
    args.push(&brokers);
    args.extend(extra);
    std::process::Command::new(env!("CARGO_BIN_EXE_millstream"))
        .arg("--lakehouse")
        .arg(lake)
        .args(&args)
        .env("MILLSTREAM__SERVE__ADDR", "127.0.0.1:19464")
        .env("MILLSTREAM__PIPELINE__BATCH_MAX_MS", "50")
        .env("RUST_LOG", "warn,millstream=info")
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .map(Worker)
        .unwrap()
}

async fn telemetry_rows(env: &Env) -> i64 {
    env.lake
        .sql_i64("SELECT count(*) FROM iot.telemetry")
        .await
        .unwrap_or(0)
}

/// A static member (`--instance`) killed with -9 and restarted takes its partitions back and
/// lands everything exactly once, beside a second worker on the same host that does not die on
/// the metrics port the first one holds.
///
/// The embedded broker (librdkafka's mock cluster) does not let a restarted static member
/// replace its dead predecessor (`rd_kafka_mock_cgrp_classic_member_add` looks members up by
/// member id only), so here the restart waits out the 6 s session timeout; a real broker hands
/// the partitions back at once. The bound below is the session timeout plus margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_static_member_restarts_beside_another_worker_and_lands_everything_once() {
    let _w = support::watchdog("static membership", Duration::from_secs(240));
    let env = Env::new(2).await;
    env.lake.ensure_all().await.unwrap();
    let log = env.dir.path().join("workers.log");
    let events = support::events("static", 3_000, 0.0);
    env.produce(&events[..1_500]).await;
    let lake = env.lake.local_root().unwrap().to_path_buf();
    let other_lake = env.dir.path().join("other-lakehouse");
    let static_member = ["--group", "static", "--instance", "w1", "--no-derive"];
    let mut first = spawn_worker(&env, &lake, &log, &static_member);
    let started = Instant::now();
    while telemetry_rows(&env).await == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "never wrote");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A second worker (of another lakehouse) on the same host and metrics port: it starts (on a
    // free port) instead of dying.
    let mut second = spawn_worker(
        &env,
        &other_lake,
        &log,
        &["--group", "other", "--no-derive"],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        second.0.try_wait().unwrap().is_none(),
        "the second worker died"
    );

    first.0.kill().unwrap();
    first.0.wait().unwrap();
    env.produce(&events[1_500..]).await;
    let (per_table, bad) = support::expected(&events);
    let all_telemetry = per_table["iot.telemetry"];
    let restarted = Instant::now();
    let mut again = spawn_worker(&env, &lake, &log, &static_member);
    while telemetry_rows(&env).await < all_telemetry {
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "the restarted member did not resume within 30 s: {} of {all_telemetry} rows: {}",
            telemetry_rows(&env).await,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("resumed after {:?}", restarted.elapsed());
    again.stop();
    second.stop();
    support::assert_exact(&env.lake, &per_table, bad).await;
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("/metrics is on a free port instead"), "{log}");
}
