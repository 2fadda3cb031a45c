//! Exactly-once ingestion in-process: malformed records become dead letters and the rest land
//! once; a restart resumes from the offsets stored in Delta even when Kafka has none.

use std::time::Duration;

use crate::support::{self, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn n_events_with_m_malformed_give_n_minus_m_rows_and_m_dead_letters() {
    let _w = support::watchdog("malformed", Duration::from_secs(180));
    let env = Env::new(4).await;
    let events = support::events("eo1", 20_000, 0.01);
    let (per_table, bad) = support::expected(&events);
    assert!(bad > 100, "the generator made {bad} malformed events");
    env.produce(&events).await;

    let stats = env
        .run_until(&env.options("bronze", "g1"), events.len() as u64)
        .await;
    assert_eq!(stats.records, events.len() as u64);
    assert_eq!(stats.dead_letters, bad as u64);
    support::assert_exact(&env.lake, &per_table, bad).await;

    // Every dead letter keeps the raw bytes that were produced, its source and a reason.
    let produced_bad: std::collections::BTreeSet<(String, Vec<u8>)> = events
        .iter()
        .filter(|e| e.malformed)
        .map(|e| (e.topic.to_string(), e.payload.clone()))
        .collect();
    let batches = env
        .lake
        .sql("SELECT topic, payload, reason, \"partition\", \"offset\" FROM ops.dead_letters")
        .await
        .unwrap();
    let mut seen = 0;
    for b in &batches {
        let (topic, payload, reason) = (
            support::strings(b.column(0)),
            support::bytes(b.column(1)),
            support::strings(b.column(2)),
        );
        for i in 0..b.num_rows() {
            assert!(
                produced_bad.contains(&(topic[i].clone(), payload[i].clone())),
                "dead letter {i} carries bytes that were not produced as malformed"
            );
            assert!(!reason[i].is_empty(), "dead letter without a reason");
            seen += 1;
        }
    }
    assert_eq!(seen, bad);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_resumes_from_delta_offsets_when_kafka_has_none() {
    let _w = support::watchdog("resume", Duration::from_secs(180));
    let env = Env::new(3).await;
    let first = support::events("eo2a", 6_000, 0.01);
    env.produce(&first).await;
    let s1 = env
        .run_until(&env.options("bronze", "group-a"), first.len() as u64)
        .await;
    assert_eq!(s1.records, first.len() as u64);

    let second = support::events("eo2b", 4_000, 0.01);
    env.produce(&second).await;
    // A new consumer group has no committed offsets in Kafka and `auto.offset.reset` is
    // earliest, so any position not taken from Delta would re-read the first batch.
    let s2 = env
        .run_until(&env.options("bronze", "group-b"), second.len() as u64)
        .await;
    assert_eq!(
        s2.skipped, 0,
        "the consumer fetched records Delta already holds"
    );
    assert_eq!(s2.records, second.len() as u64);

    let all: Vec<_> = first.iter().chain(second.iter()).cloned().collect();
    let (per_table, bad) = support::expected(&all);
    support::assert_exact(&env.lake, &per_table, bad).await;
}

/// A sink that lags (its last commits lost in a crash) makes the pipeline replay records other
/// sinks already hold. Those sinks must skip them without moving their offsets back; otherwise
/// the next restart duplicates rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_sink_never_moves_another_sinks_offsets_back() {
    use millstream::lakehouse::commit::{self, Offsets, SourcePartition};
    let _w = support::watchdog("lagging sink", Duration::from_secs(240));
    let env = Env::new(2).await;
    let mut opts = env.options("bronze", "lag");
    opts.batch_max_events = 400; // the replay spans many batches
    env.lake.ensure_all().await.unwrap();
    let mut all = Vec::new();
    let rewind_dead_letters = async |env: &Env| {
        // As if the dead-letter table's last commits had never happened.
        let table = env.lake.open("ops.dead_letters").await.unwrap();
        let back: Offsets = millstream::broker::topics::SOURCES
            .iter()
            .flat_map(|t| (0..2).map(move |p| (SourcePartition::new(*t, p), 5)))
            .collect();
        commit::append(table, "ops.dead_letters", "bronze", vec![], &back, 1 << 27)
            .await
            .unwrap();
    };
    let bronze_offsets = async |env: &Env| -> Offsets {
        let t = env.lake.open("iot.telemetry").await.unwrap();
        let parts = (0..2).map(|p| SourcePartition::new(millstream::broker::topics::TELEMETRY, p));
        commit::txn_versions(&t, "iot.telemetry", "bronze", parts)
            .await
            .unwrap()
    };
    for round in 0..3 {
        let events = support::events(&format!("lag{round}"), 3_000, 0.0);
        env.produce(&events).await;
        all.extend(events.iter().cloned());
        let before = bronze_offsets(&env).await;
        // Everything from offset 6 on is read again for the dead letters' sake.
        let replay: i64 = if round == 0 {
            0
        } else {
            (all.len() - events.len()) as i64 - 6 * 8
        };
        env.run_until(&opts, events.len() as u64 + replay as u64)
            .await;
        let after = bronze_offsets(&env).await;
        for (p, v) in &before {
            assert!(
                after[p] >= *v,
                "round {round}: {p:?} went back from {v} to {}",
                after[p]
            );
        }
        let (per_table, bad) = support::expected(&all);
        support::assert_exact(&env.lake, &per_table, bad).await;
        rewind_dead_letters(&env).await;
    }
}

/// What the pipeline told its observer: each time, when and which (topic, partition, offset).
/// A record by its place in Kafka: topic, partition, offset.
type Place = (String, i32, i64);

#[derive(Default)]
struct Told {
    releases: std::sync::Mutex<Vec<(std::time::SystemTime, Vec<Place>)>>,
    records: u64,
}

impl millstream::pipeline::Observer for Told {
    fn committed(&self, records: &[millstream::source::RawRecord], at: std::time::SystemTime) {
        let r = records
            .iter()
            .map(|r| (r.topic.to_string(), r.partition, r.offset))
            .collect();
        self.releases.lock().unwrap().push((at, r));
    }

    fn polled(&self, stats: &millstream::pipeline::RunStats) -> bool {
        stats.records < self.records
    }
}

/// The MERGE-kept tables (inventory from the movements) commit off the batch's path, behind the
/// tables appended in the batch. A record must still count as committed — for the observer, the
/// Kafka acknowledgement and the stats — only once every table fed from its topic holds it: each
/// such table, loaded as of the moment the observer was told, already holds the record's offset.
/// And each record is told exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_counts_as_committed_once_every_table_fed_from_its_topic_holds_it() {
    use millstream::broker::topics;
    use millstream::lakehouse::commit::{self, SourcePartition};
    use std::collections::{BTreeMap, BTreeSet};
    let _w = support::watchdog("told when durable", Duration::from_secs(300));
    let env = Env::new(2).await;
    let mut opts = env.options("bronze", "told");
    // Many small batches, so merges run behind the batches and take several at once.
    opts.batch_max_events = 250;
    let events = support::events("told", 5_000, 0.0);
    env.produce(&events).await;
    let told = std::sync::Arc::new(Told {
        records: events.len() as u64,
        ..Told::default()
    });
    let stats = millstream::pipeline::run(
        &env.config.kafka,
        &env.lake,
        &opts,
        tokio_util::sync::CancellationToken::new(),
        Some(told.clone()),
    )
    .await
    .expect("pipeline run");
    assert_eq!(stats.records, events.len() as u64);
    let releases = std::mem::take(&mut *told.releases.lock().unwrap());
    let all: Vec<_> = releases.iter().flat_map(|(_, r)| r.iter()).collect();
    assert_eq!(
        all.len(),
        events.len(),
        "records told more or less than once"
    );
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), events.len());

    let tables: BTreeMap<&str, [&str; 2]> = BTreeMap::from([
        (
            topics::INVENTORY,
            ["supply_chain.inventory_movements", "supply_chain.inventory"],
        ),
        (topics::TELEMETRY, ["iot.telemetry", "iot.sensor_state"]),
    ]);
    let mut checked = BTreeMap::<&str, usize>::new();
    for (at, records) in &releases {
        let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for (topic, p, o) in records {
            let e = last.entry((topic.as_str(), *p)).or_insert(*o);
            *e = (*e).max(*o);
        }
        for ((topic, p), offset) in last {
            let Some(names) = tables.get(topic) else {
                continue;
            };
            for name in names {
                let mut table = env.lake.open(name).await.unwrap();
                table
                    .load_with_datetime(chrono::DateTime::<chrono::Utc>::from(*at))
                    .await
                    .unwrap();
                let part = SourcePartition::new(topic, p);
                let held = commit::txn_versions(&table, name, "bronze", [part.clone()])
                    .await
                    .unwrap();
                assert!(
                    held.get(&part).is_some_and(|v| *v >= offset),
                    "told that {topic}/{p} up to {offset} was committed while {name} held {:?}",
                    held.get(&part)
                );
                *checked.entry(name).or_default() += 1;
            }
        }
    }
    assert!(
        checked
            .get("supply_chain.inventory")
            .is_some_and(|n| *n > 1),
        "checked {checked:?}"
    );
}
