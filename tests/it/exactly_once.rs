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
