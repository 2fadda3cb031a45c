//! Maintenance compacts without changing what readers and the pipeline see: same rows, same
//! Change Data Feed, same txn offsets, fewer files, a checkpoint — Z-ordering partitions under
//! its bound and bin-packing bigger ones.

use std::time::Duration;

use crate::support::{self, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintenance_compacts_and_preserves_rows_cdf_and_offsets() {
    let _w = support::watchdog("maintain", Duration::from_secs(180));
    let env = Env::new(2).await;
    let mut opts = env.options("bronze", "maint");
    opts.batch_max_events = 500; // many small commits, many small files
    let events = support::events("mt1", 6_000, 0.0);
    env.produce(&events).await;
    env.run_until(&opts, events.len() as u64).await;
    let (per_table, bad) = support::expected(&events);

    let files = |t: &'static str| {
        let lake = env.lake.clone();
        async move { lake.open(t).await.unwrap().get_file_uris().unwrap().count() }
    };
    let before = files("iot.telemetry").await;
    let cdf_before = env.lake.open("iot.telemetry").await.unwrap();
    let cdf_before = millstream::lakehouse::cdf::read_changes(cdf_before, "iot.telemetry", 0, None)
        .await
        .unwrap();
    let cdf_rows_before: usize = cdf_before.iter().map(|b| b.num_rows()).sum();

    let reports = millstream::lakehouse::maintain::run(
        &env.lake,
        &millstream::lakehouse::maintain::MaintainOptions::from_config(&env.config.maintain, true),
    )
    .await;
    let telemetry = reports
        .iter()
        .find(|r| r.table == "iot.telemetry")
        .expect("report");
    assert!(telemetry.error.is_none(), "{telemetry:?}");
    assert!(telemetry.checkpoint);
    let after = files("iot.telemetry").await;
    assert!(after < before, "compaction left {after} of {before} files");
    assert!(
        env.lake
            .table_path("iot.telemetry")
            .unwrap()
            .unwrap()
            .join("_delta_log/_last_checkpoint")
            .exists()
    );
    // A table read from a checkpoint at its own version still says when that version was
    // committed (every answer's `as_of` rests on it), and it is the compaction just made.
    let checkpointed = env.lake.open("iot.telemetry").await.unwrap();
    let version = checkpointed.version().unwrap() as i64;
    let committed = millstream::lakehouse::commit_time("iot.telemetry", &checkpointed, version)
        .await
        .unwrap();
    let age = committed.map(|at| chrono::Utc::now() - at);
    assert!(
        age.is_some_and(|a| a >= chrono::TimeDelta::zero() && a < chrono::TimeDelta::minutes(2)),
        "commit time of checkpointed version {version}: {committed:?}"
    );

    support::assert_exact(&env.lake, &per_table, bad).await;
    let table = env.lake.open("iot.telemetry").await.unwrap();
    let cdf_after = millstream::lakehouse::cdf::read_changes(table, "iot.telemetry", 0, None)
        .await
        .unwrap();
    let cdf_rows_after: usize = cdf_after.iter().map(|b| b.num_rows()).sum();
    assert_eq!(
        cdf_rows_after, cdf_rows_before,
        "compaction must not show up as changes"
    );

    // The txn offsets survive compaction: a new run reads only new records.
    let more = support::events("mt2", 1_000, 0.0);
    env.produce(&more).await;
    let s = env
        .run_until(&env.options("bronze", "maint-2"), more.len() as u64)
        .await;
    assert_eq!(s.skipped, 0);
    assert_eq!(s.records, more.len() as u64);

    // A partition over the Z-order bound is bin-packed instead (here every one: a bound of one
    // byte): the new run's small files are merged, and still every event is there once.
    let before = files("iot.telemetry").await;
    let mut options =
        millstream::lakehouse::maintain::MaintainOptions::from_config(&env.config.maintain, true);
    options.zorder_max_bytes = 1;
    let reports = millstream::lakehouse::maintain::run(&env.lake, &options).await;
    let telemetry = reports
        .iter()
        .find(|r| r.table == "iot.telemetry")
        .expect("report");
    assert!(telemetry.error.is_none(), "{telemetry:?}");
    assert!(telemetry.files_compacted > 0, "{telemetry:?}");
    let after = files("iot.telemetry").await;
    assert!(after < before, "bin-packing left {after} of {before} files");
    let all: Vec<_> = events.iter().chain(&more).cloned().collect();
    let (per_table, bad) = support::expected(&all);
    support::assert_exact(&env.lake, &per_table, bad).await;
}

/// `up`'s rounds do only what is due. The first maintains every table. After more events, the
/// next one compacts the append-only telemetry again at once but leaves the detector's state
/// (whose writer reads its files) until `read_tables_interval` has passed, leaves unchanged
/// tables alone, and vacuums nothing before `vacuum_interval`. Once both intervals are over, the
/// state is compacted and every table vacuumed (telemetry, unchanged since, is not rewritten).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rounds_maintain_only_what_changed_and_is_due() {
    use millstream::lakehouse::maintain::{MaintainOptions, Rounds, TableReport};
    let _w = support::watchdog("maintain rounds", Duration::from_secs(180));
    let env = Env::new(2).await;
    let mut opts = env.options("bronze", "rounds");
    opts.batch_max_events = 500;
    let first = support::events("rd1", 3_000, 0.0);
    env.produce(&first).await;
    env.run_until(&opts, first.len() as u64).await;

    let mut options = MaintainOptions::from_config(&env.config.maintain, true);
    // A vacuum, when it runs, deletes every file compaction removed: it shows in the report.
    options.vacuum_retention = Duration::ZERO;
    options.read_tables_interval = Duration::from_secs(3600);
    options.vacuum_interval = Duration::from_secs(3600);
    let find = |reports: &[TableReport], t: &str| reports.iter().find(|r| r.table == t).cloned();
    let mut rounds = Rounds::default();

    let r1 = rounds.run(&env.lake, &options).await;
    for t in ["iot.telemetry", "iot.sensor_state", "knowledge.incidents"] {
        let r = find(&r1, t).unwrap_or_else(|| panic!("first round skipped {t}: {r1:?}"));
        assert!(r.error.is_none() && r.checkpoint, "{r:?}");
    }

    let more = support::events("rd2", 3_000, 0.0);
    env.produce(&more).await;
    env.run_until(&env.options("bronze", "rounds"), more.len() as u64)
        .await;
    let r2 = rounds.run(&env.lake, &options).await;
    let telemetry = find(&r2, "iot.telemetry").expect("changed telemetry is maintained");
    assert!(
        telemetry.checkpoint && telemetry.files_compacted > 0,
        "{telemetry:?}"
    );
    assert!(
        find(&r2, "iot.sensor_state").is_none(),
        "state rewritten before read_tables_interval: {r2:?}"
    );
    assert!(
        find(&r2, "knowledge.incidents").is_none(),
        "an unchanged table was maintained: {r2:?}"
    );
    assert!(
        r2.iter().all(|r| r.files_vacuumed == 0),
        "vacuumed before vacuum_interval: {r2:?}"
    );

    options.read_tables_interval = Duration::ZERO;
    options.vacuum_interval = Duration::ZERO;
    let r3 = rounds.run(&env.lake, &options).await;
    let state = find(&r3, "iot.sensor_state").expect("state maintained once rested");
    assert!(state.checkpoint && state.error.is_none(), "{state:?}");
    let telemetry = find(&r3, "iot.telemetry").expect("telemetry vacuumed");
    assert!(
        !telemetry.checkpoint && telemetry.files_compacted == 0 && telemetry.files_vacuumed > 0,
        "telemetry, unchanged since round 2, is only vacuumed: {telemetry:?}"
    );

    let all: Vec<_> = first.iter().chain(&more).cloned().collect();
    let (per_table, bad) = support::expected(&all);
    support::assert_exact(&env.lake, &per_table, bad).await;
}
