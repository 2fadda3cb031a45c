//! Micro-benchmarks of the hot paths, with divan: `cargo bench --bench hot_paths`.
//!
//! - `decode`: JSON events → a bronze Arrow batch (per stream), validation included;
//! - `detect`: a telemetry batch through the anomaly detector;
//! - `commit`: a bronze batch appended to a Delta table with its offsets (`txn`), on local disk,
//!   into a table of 0, 100 and 400 small files;
//! - `session`: a principal's session built over a snapshot (every table behind its row filters
//!   and masks, views registered), then a signal tool's query planned and run in it;
//! - `rows_json`: Arrow rows → the JSON a tool answers with.
//!
//! The whole-system figures (`millstream bench ingest|freshness|mcp`) are the ones the issues
//! track; these show which part of a path moved.

use std::sync::Arc;

use arrow::array::RecordBatch;
use divan::Bencher;
use millstream::decode::BronzeDecoder;
use millstream::model::EventKind;
use millstream::source::RawRecord;

fn main() {
    divan::main();
}

const ROWS: usize = 16_384;

/// `n` valid events of `kind` from the simulator, as the source hands them over.
fn records(kind: EventKind, n: usize) -> Vec<RawRecord> {
    let config = millstream::config::Config::defaults();
    let mut g = millstream::sim::stream::Generator::new(
        &config.simulate,
        "bench",
        config.simulate.start,
        1000,
    );
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let e = g.next_event();
        if e.topic == kind.topic() && !e.malformed {
            out.push(RawRecord {
                topic: Arc::from(e.topic),
                partition: 0,
                offset: out.len() as i64,
                key: Some(e.key.into_bytes()),
                payload: Some(e.payload),
                timestamp_ms: Some(0),
            });
        }
    }
    out
}

fn decoded(kind: EventKind, n: usize) -> RecordBatch {
    let records = records(kind, n);
    let indices: Vec<usize> = (0..records.len()).collect();
    BronzeDecoder::new(kind)
        .unwrap()
        .decode(&records, &indices, 0)
        .unwrap()
        .rows
}

#[divan::bench(args = [EventKind::Telemetry, EventKind::Sales, EventKind::Shipment])]
fn decode(bencher: Bencher, kind: EventKind) {
    let records = records(kind, ROWS);
    let indices: Vec<usize> = (0..records.len()).collect();
    let decoder = BronzeDecoder::new(kind).unwrap();
    bencher
        .counter(divan::counter::ItemsCount::new(ROWS))
        .bench(|| decoder.decode(&records, &indices, 0).unwrap());
}

#[divan::bench]
fn detect(bencher: Bencher) {
    let batch = decoded(EventKind::Telemetry, ROWS);
    bencher
        .counter(divan::counter::ItemsCount::new(ROWS))
        .with_inputs(|| millstream::signals::iot::IotSignals::new(Default::default()))
        .bench_local_values(|mut detector| {
            detector.observe(&batch, |_| -1, |_| -1, 0).unwrap();
            detector
        });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Appends `batch` with offset `offset` of partition 0 to the telemetry table.
fn append(
    rt: &tokio::runtime::Runtime,
    table: deltalake::DeltaTable,
    batch: &RecordBatch,
    offset: i64,
) -> deltalake::DeltaTable {
    let mut offsets = millstream::lakehouse::commit::Offsets::new();
    offsets.insert(
        millstream::lakehouse::commit::SourcePartition::new(EventKind::Telemetry.topic(), 0),
        offset,
    );
    rt.block_on(millstream::lakehouse::commit::write(
        table,
        EventKind::Telemetry.bronze_table(),
        "bench",
        vec![batch.clone()],
        &offsets,
        128 * 1024 * 1024,
        None,
    ))
    .unwrap()
}

/// One commit of a 16k-row telemetry batch into a table that already holds `files` small
/// files (each sample adds one more). A commit's cost grows with its table's file count:
/// delta-rs rebuilds the table's file list after each one, which is why maintenance folds small
/// files every few seconds (`maintain.interval_secs`).
#[divan::bench(args = [0, 100, 400], sample_count = 20)]
fn commit(bencher: Bencher, files: usize) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let lake = millstream::lakehouse::Lakehouse::new(dir.path()).unwrap();
    let mut table = rt
        .block_on(lake.ensure(EventKind::Telemetry.bronze_table()))
        .unwrap();
    let batch = decoded(EventKind::Telemetry, ROWS);
    let one_row = batch.slice(0, 1);
    let mut offset = 0i64;
    for _ in 0..files {
        offset += 1;
        table = append(&rt, table, &one_row, offset);
    }
    let table = std::sync::Mutex::new(table);
    bencher
        .counter(divan::counter::ItemsCount::new(ROWS))
        .bench_local(|| {
            offset += ROWS as i64;
            let current = table.lock().unwrap().clone();
            *table.lock().unwrap() = append(&rt, current, &batch, offset);
        });
}

/// A lakehouse with the simulator's reference data and a derive round (signals), served by a
/// catalog as the MCP server serves it.
fn served(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, millstream::mcp::LiveCatalog) {
    let dir = tempfile::tempdir().unwrap();
    let lake = millstream::lakehouse::Lakehouse::new(dir.path()).unwrap();
    let config = millstream::config::Config::defaults();
    let catalog = rt.block_on(async {
        lake.ensure_all().await.unwrap();
        millstream::sim::write_reference(&lake, &config.simulate, false)
            .await
            .unwrap();
        let defs = millstream::pipeline::definition::Definitions::built_in()
            .await
            .unwrap();
        millstream::pipeline::derive::Deriver::new(lake.clone(), defs.clone())
            .round()
            .await
            .unwrap();
        millstream::mcp::LiveCatalog::open(
            lake,
            defs,
            millstream::mcp::CatalogOptions {
                refresh: std::time::Duration::from_secs(3600),
                tail_rows: 0,
                tail_bytes: 0,
                // Measures building sessions and answering, never a kept answer.
                answer_cache_bytes: 0,
                plan_cache_entries: 0,
                query_partitions: 1,
            },
        )
        .await
        .unwrap()
    });
    (dir, catalog)
}

/// A principal's first request on a new snapshot: the session (its restricted tables and
/// views) is built, then a signal tool's query runs in it. `local-dev` reads everything
/// unfiltered; `maria@emea` and `alice@emea` through row filters and masks.
#[divan::bench(args = ["local-dev", "maria@emea", "alice@emea"], sample_count = 30)]
fn session(bencher: Bencher, principal: &str) {
    let rt = runtime();
    let (_dir, catalog) = served(&rt);
    let policies = millstream::auth::Policies::load("").unwrap();
    let access = policies.access(principal).unwrap();
    let sql = if access.may_read("supply_chain.shortage_signals") {
        "SELECT part_id, warehouse_id, risk_level FROM supply_chain.shortage_signals \
         WHERE risk_level IN ('HIGH', 'CRITICAL') LIMIT 50"
    } else {
        "SELECT customer_id, risk_level FROM sales.churn_signals \
         WHERE risk_level IN ('HIGH', 'CRITICAL') LIMIT 50"
    };
    bencher.bench_local(|| {
        rt.block_on(async {
            let session = catalog.session_uncached(&access).await.unwrap();
            session.ctx.sql(sql).await.unwrap().collect().await.unwrap()
        })
    });
}

#[divan::bench]
fn rows_json(bencher: Bencher) {
    let batch = decoded(EventKind::Shipment, 1000);
    let batches = vec![batch];
    bencher
        .counter(divan::counter::ItemsCount::new(1000usize))
        .bench(|| millstream::mcp::query::rows_json(&batches).unwrap());
}
