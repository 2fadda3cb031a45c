//! An independent reader, the Python `deltalake` package (delta-rs' Python binding, its own
//! build and its own kernel), reads the bronze tables and their Change Data Feed with the same
//! counts DataFusion sees.

use std::process::Command;
use std::time::Duration;

use crate::support::{self, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_deltalake_reads_the_same_rows_and_changes() {
    let _w = support::watchdog("python reader", Duration::from_secs(180));
    let env = Env::new(3).await;
    let opts = env.options("bronze", "py");
    let first = support::events("py1", 4_000, 0.01);
    env.produce(&first).await;
    env.run_until(&opts, first.len() as u64).await;
    let second = support::events("py2", 4_000, 0.01);
    env.produce(&second).await;
    env.run_until(&opts, second.len() as u64).await;

    let all: Vec<_> = first.iter().chain(second.iter()).cloned().collect();
    let (per_table, bad) = support::expected(&all);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/read_delta.py");
    let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(&script)
        .arg(env.lake.uri())
        .args(per_table.keys().chain([&"ops.dead_letters"]))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{} failed (install the test dependencies: `pip install -r tests/requirements.txt`, or run scripts/test):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("reader prints JSON");

    for (table, want) in per_table
        .iter()
        .map(|(t, n)| (*t, *n))
        .chain([("ops.dead_letters", bad)])
    {
        let r = &report[table];
        let ours = env
            .lake
            .sql_i64(&format!("SELECT count(*) FROM {table}"))
            .await
            .unwrap();
        assert_eq!(ours, want, "{table}: DataFusion rows");
        assert_eq!(
            r["rows"].as_i64(),
            Some(want),
            "{table}: rows read by python deltalake: {r}"
        );
        assert_eq!(
            r["cdf_inserts"].as_i64(),
            Some(want),
            "{table}: CDF inserts read by python deltalake: {r}"
        );
        assert_eq!(
            r["cdf_other"].as_i64(),
            Some(0),
            "{table}: only inserts in an append-only table: {r}"
        );
        let table_version = env.lake.open(table).await.unwrap().version().unwrap();
        assert_eq!(
            r["version"].as_i64(),
            Some(table_version as i64),
            "{table}: version"
        );
        assert_eq!(
            r["cdf_enabled"].as_bool(),
            Some(true),
            "{table}: delta.enableChangeDataFeed"
        );
    }
    for table in per_table.keys() {
        assert_eq!(
            report[table]["distinct_event_ids"], report[table]["rows"],
            "{table}: duplicates seen by python"
        );
    }
}
