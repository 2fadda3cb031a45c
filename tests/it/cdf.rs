//! The Change Data Feed of a bronze table returns exactly the rows inserted between two
//! versions, with the CDF metadata columns.

use std::time::Duration;

use arrow::array::{Array, AsArray};

use arrow::datatypes::Int64Type;

use crate::support::{self, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cdf_between_two_versions_returns_the_inserted_rows() {
    let _w = support::watchdog("cdf", Duration::from_secs(180));
    let env = Env::new(2).await;
    let opts = env.options("bronze", "cdf");
    let first = support::events("cdf1", 3_000, 0.0);
    env.produce(&first).await;
    env.run_until(&opts, first.len() as u64).await;
    let before = env
        .lake
        .open("iot.telemetry")
        .await
        .unwrap()
        .version()
        .expect("version");

    let second = support::events("cdf2", 5_000, 0.0);
    env.produce(&second).await;
    env.run_until(&opts, second.len() as u64).await;
    let table = env.lake.open("iot.telemetry").await.unwrap();
    let after = table.version().expect("version");
    assert!(after > before);

    let (want, _) = support::expected(&second);
    let changes = millstream::lakehouse::cdf::read_changes(
        table,
        "iot.telemetry",
        (before + 1) as u64,
        Some(after as u64),
    )
    .await
    .unwrap();
    let mut rows = 0;
    let mut ids = std::collections::BTreeSet::new();
    for b in &changes {
        let schema = b.schema();
        let change = support::strings(b.column(schema.index_of("_change_type").unwrap()));
        let version = arrow::compute::cast(
            b.column(schema.index_of("_commit_version").unwrap()),
            &arrow::datatypes::DataType::Int64,
        )
        .unwrap();
        let version = version.as_primitive::<Int64Type>();
        let ts = b.column(schema.index_of("_commit_timestamp").unwrap());
        let id = support::strings(b.column(schema.index_of("event_id").unwrap()));
        for i in 0..b.num_rows() {
            assert_eq!(change[i], "insert");
            let v = version.value(i);
            assert!(
                v > before as i64 && v <= after as i64,
                "commit version {v} outside ({before}, {after}]"
            );
            assert!(!ts.is_null(i), "commit timestamp missing");
            ids.insert(id[i].clone());
            rows += 1;
        }
    }
    assert_eq!(rows, want["iot.telemetry"], "CDF rows");
    assert_eq!(ids.len() as i64, rows, "CDF rows are distinct events");
    // Exactly the second run's telemetry, none of the first.
    let second_ids: std::collections::BTreeSet<String> = second
        .iter()
        .filter(|e| e.topic == millstream::broker::topics::TELEMETRY)
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, second_ids);
}
