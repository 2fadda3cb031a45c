//! How the source closes a micro-batch: `pipeline.batch_max_ms` after the batch's oldest record
//! came in. Records that arrived while the previous batch was being committed have waited since
//! that batch closed, so their batch must not make them wait a whole window more. A poll that
//! runs beside the previous batch's commit does not close before that commit ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use millstream::broker::EmbeddedBroker;
use millstream::source::{OutOfRange, PositionResolver, Source};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::support;

const TOPIC: &str = "batching";
const WINDOW: Duration = Duration::from_secs(2);

async fn produce(producer: &FutureProducer, from: u32, n: u32) {
    for i in from..from + n {
        let payload = format!("record {i}");
        producer
            .send(
                FutureRecord::to(TOPIC).key("k").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_closes_one_window_after_its_oldest_record_came_in() {
    let _w = support::watchdog("batching", Duration::from_secs(120));
    support::init_logs();
    let config = support::config();
    let broker = EmbeddedBroker::start(1, &[TOPIC], 1).expect("embedded broker");
    let brokers = broker.bootstrap_servers().to_string();
    // Every partition from its start: nothing is stored anywhere yet.
    let resolver: PositionResolver = Arc::new(|parts| {
        async move {
            Ok(parts
                .into_iter()
                .map(|p| (p, None))
                .collect::<BTreeMap<_, _>>())
        }
        .boxed()
    });
    let source = Source::new(
        &config.kafka,
        &brokers,
        "batching",
        &[TOPIC],
        resolver,
        OutOfRange::Stop,
    )
    .expect("source");
    let producer: FutureProducer = millstream::broker::producer_config(&config.kafka, &brokers)
        .create()
        .expect("producer");
    let stop = CancellationToken::new();

    // The first batch: joining the group takes a while, so read until all 5 are in.
    produce(&producer, 0, 5).await;
    let mut first = Vec::new();
    let joined = Instant::now();
    while first.len() < 5 {
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "the source never joined"
        );
        let (records, _) = source.next_batch(10_000, WINDOW, &stop).await.unwrap();
        first.extend(records);
    }

    // Records arrive while "the batch is committed" (1.5 s). They have waited since the last
    // batch closed, so their window closes 2 s after that close: about 0.5 s after the next
    // poll begins. A window opened at their arrival in the poll would last the full 2 s.
    produce(&producer, 5, 5).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let polled = Instant::now();
    let (records, _) = source.next_batch(10_000, WINDOW, &stop).await.unwrap();
    let took = polled.elapsed();
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        (5..10).collect::<Vec<_>>(),
        "every waiting record, once, in order"
    );
    assert!(
        took < Duration::from_millis(1400),
        "records that waited through the commit got a whole new window: the poll took {took:?}"
    );

    // An idle stream makes no tiny batch: a record that comes after the poll began opens its
    // window on arrival, and the batch takes what comes within it.
    let late = {
        let producer = producer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            produce(&producer, 10, 1).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            produce(&producer, 11, 1).await;
        })
    };
    let polled = Instant::now();
    let (records, _) = source.next_batch(10_000, WINDOW, &stop).await.unwrap();
    let took = polled.elapsed();
    late.await.unwrap();
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [10, 11], "both records of the window in one batch");
    assert!(
        took >= Duration::from_millis(2300),
        "the window opened before its first record arrived: the poll took {took:?}"
    );

    // A poll that runs while the batch before it is written stays open until that batch is
    // committed: what arrives during the commit joins this batch (as it does when the poll
    // follows the commit), however long the commit outlasts the window.
    let writing = source.hold_writes();
    let during = {
        let producer = producer.clone();
        tokio::spawn(async move {
            produce(&producer, 12, 1).await;
            tokio::time::sleep(WINDOW + Duration::from_millis(500)).await;
            produce(&producer, 13, 1).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(writing);
        })
    };
    let polled = Instant::now();
    let (records, _) = source.next_batch(10_000, WINDOW, &stop).await.unwrap();
    let took = polled.elapsed();
    during.await.unwrap();
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        [12, 13],
        "the record that came during the commit, after the window, is in the batch"
    );
    assert!(
        took >= WINDOW + Duration::from_millis(1000),
        "the batch closed before the commit beside it ended: the poll took {took:?}"
    );

    drop(producer);
    source.close().expect("close");
    drop(broker);
}
