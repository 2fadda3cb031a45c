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

/// The MERGE-kept inventory's Change Data Feed shows each update as a pre-image and a
/// post-image: seeded positions moved by the pipeline appear once as they were and once as
/// they became, and the post-images minus the pre-images add up to the net movements.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inventory_merges_show_update_pre_and_post_images() {
    let _w = support::watchdog("cdf_inventory", Duration::from_secs(180));
    let env = Env::new(2).await;
    millstream::sim::write_reference_tables(
        &env.lake,
        &env.config.simulate,
        false,
        &["supply_chain.inventory"],
    )
    .await
    .unwrap();
    let seeded = env
        .lake
        .open("supply_chain.inventory")
        .await
        .unwrap()
        .version()
        .unwrap();
    let mut opts = env.options("bronze", "cdf_inventory");
    // Small batches: several merge commits, some moving a position again.
    opts.batch_max_events = 500;
    let events = support::events("cdfinv", 20_000, 0.0);
    env.produce(&events).await;
    env.run_until(&opts, events.len() as u64).await;

    let table = env.lake.open("supply_chain.inventory").await.unwrap();
    let latest = table.version().unwrap();
    assert!(latest > seeded + 1, "several merge commits");
    let changes = millstream::lakehouse::cdf::read_changes(
        table,
        "supply_chain.inventory",
        (seeded + 1) as u64,
        Some(latest as u64),
    )
    .await
    .unwrap();
    // (version, part, warehouse) → on_hand before and after.
    type Key = (i64, String, String);
    let mut images: std::collections::BTreeMap<Key, (Option<i64>, Option<i64>)> =
        Default::default();
    for b in &changes {
        let schema = b.schema();
        let col = |n: &str| b.column(schema.index_of(n).unwrap());
        let change = support::strings(col("_change_type"));
        let version =
            arrow::compute::cast(col("_commit_version"), &arrow::datatypes::DataType::Int64)
                .unwrap();
        let on_hand =
            arrow::compute::cast(col("on_hand"), &arrow::datatypes::DataType::Int64).unwrap();
        let (version, on_hand) = (
            version.as_primitive::<Int64Type>(),
            on_hand.as_primitive::<Int64Type>(),
        );
        let (part, wh) = (
            support::strings(col("part_id")),
            support::strings(col("warehouse_id")),
        );
        for i in 0..b.num_rows() {
            let entry = images
                .entry((version.value(i), part[i].clone(), wh[i].clone()))
                .or_default();
            match change[i].as_str() {
                "update_preimage" => entry.0 = Some(on_hand.value(i)),
                "update_postimage" => entry.1 = Some(on_hand.value(i)),
                other => panic!("a seeded position changed by {other}, not an update"),
            }
        }
    }
    assert!(images.len() > 100, "only {} position updates", images.len());
    let mut delta = 0;
    for (key, (pre, post)) in &images {
        let (Some(pre), Some(post)) = (pre, post) else {
            panic!("{key:?}: pre-image {pre:?} and post-image {post:?} must come in pairs");
        };
        delta += post - pre;
    }
    let net = env
        .lake
        .sql_i64(
            "SELECT sum(CASE movement_type WHEN 'consumption' THEN -quantity \
             WHEN 'transfer_out' THEN -quantity ELSE quantity END) \
             FROM supply_chain.inventory_movements",
        )
        .await
        .unwrap();
    assert_eq!(delta, net, "post-images minus pre-images = net movements");
}
