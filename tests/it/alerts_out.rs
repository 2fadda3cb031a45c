//! `ops.alerts` → `mfg.alerts`: every alert reaches the topic exactly once, also when the
//! publisher stops in the middle of a version and a new one takes over.

use std::collections::BTreeMap;
use std::time::Duration;

use millstream::broker::topics;
use millstream::lakehouse::commit::{self, Offsets};
use millstream::model::tables;
use millstream::pipeline::publish::{self, AlertPublisher};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::support::{self, Env};

/// Appends one version of `n` alerts numbered from `first` to `ops.alerts`.
async fn append_alerts(env: &Env, first: usize, n: usize) {
    let table = env.lake.ensure(publish::ALERTS_TABLE).await.unwrap();
    let lines: String = (first..first + n)
        .map(|i| {
            format!(
                r#"{{"alert_id":"A-{i:04}","source":"sales.churn_signals","signal_key":"C-{k}","severity":"HIGH","title":"churn risk {i}","detail":"test","signal_ts":"2026-11-24T10:00:00Z","alert_date":"2026-11-24"}}"#,
                k = i % 7
            ) + "\n"
        })
        .collect();
    let schema = tables::get(publish::ALERTS_TABLE).unwrap().arrow_schema();
    let batch = arrow::json::ReaderBuilder::new(schema)
        .build(std::io::Cursor::new(lines))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    commit::append(
        table,
        publish::ALERTS_TABLE,
        "test",
        vec![batch],
        &Offsets::new(),
        1 << 20,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_alert_is_published_once_across_restarts() {
    let _w = support::watchdog("alerts_out", Duration::from_secs(180));
    let env = Env::new(3).await;

    // Nothing to publish before the table exists.
    let mut publisher =
        AlertPublisher::new(env.lake.clone(), &env.config.kafka, &env.brokers()).unwrap();
    assert_eq!(publisher.publish_new().await.unwrap(), 0);

    append_alerts(&env, 0, 5).await;
    append_alerts(&env, 5, 4).await;
    assert_eq!(publisher.publish_new().await.unwrap(), 9);
    assert_eq!(
        publisher.publish_new().await.unwrap(),
        0,
        "nothing new, nothing sent"
    );
    drop(publisher);

    // A new version, of which a crashed publisher got three of six messages out (sent here
    // with the publisher's own encoding, as it would have).
    append_alerts(&env, 9, 6).await;
    let table = env.lake.open(publish::ALERTS_TABLE).await.unwrap();
    let v = table.version().unwrap() as u64;
    let changes =
        millstream::lakehouse::cdf::read_changes(table, publish::ALERTS_TABLE, v, Some(v))
            .await
            .unwrap();
    let messages = publish::alert_messages(&changes).unwrap();
    assert_eq!(messages.len(), 6);
    assert!(messages.iter().all(|m| m.version == v && m.count == 6));
    let producer: FutureProducer =
        millstream::broker::producer_config(&env.config.kafka, &env.brokers())
            .create()
            .unwrap();
    for m in messages.iter().filter(|m| [0, 2, 5].contains(&m.index)) {
        producer
            .send(
                FutureRecord::to(topics::ALERTS)
                    .key(&m.key)
                    .payload(&m.payload)
                    .headers(m.headers()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    drop(producer);

    // A fresh publisher reads where things stand from the topic and sends only the rest.
    let mut publisher =
        AlertPublisher::new(env.lake.clone(), &env.config.kafka, &env.brokers()).unwrap();
    let resume = publisher.read_resume().await.unwrap();
    assert_eq!(resume.version, Some(v));
    assert_eq!(
        resume.delivered.iter().copied().collect::<Vec<_>>(),
        [0, 2, 5]
    );
    assert_eq!(publisher.publish_new().await.unwrap(), 3);
    append_alerts(&env, 15, 2).await;
    assert_eq!(publisher.publish_new().await.unwrap(), 2);
    drop(publisher);

    // And a restart after a clean stop sends nothing.
    let mut publisher =
        AlertPublisher::new(env.lake.clone(), &env.config.kafka, &env.brokers()).unwrap();
    assert_eq!(publisher.publish_new().await.unwrap(), 0);
    drop(publisher);

    let ids = support::topic_alert_ids(&env, 3);
    let want: BTreeMap<String, usize> = (0..17).map(|i| (format!("A-{i:04}"), 1)).collect();
    assert_eq!(ids, want, "each alert exactly once");
}
