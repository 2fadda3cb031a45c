//! Several workers of one consumer group write the same tables: as members join and leave,
//! partitions move between them, and the tables still end exact.

use std::time::Duration;

use crate::support::{self, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_joining_and_leaving_a_group_keep_the_tables_exact() {
    let _w = support::watchdog("scale out", Duration::from_secs(240));
    let env = Env::new(4).await;
    env.lake.ensure_all().await.unwrap();
    let events = support::events("scale", 40_000, 0.005);
    let (per_table, bad) = support::expected(&events);
    let mut opts = env.options("bronze", "scale");
    opts.batch_max_events = 2_000;

    let producer = millstream::sim::EventProducer::new(&env.config.kafka, &env.brokers()).unwrap();
    let mut chunks = events.chunks(4_000);
    let send_chunk = async |chunks: &mut std::slice::Chunks<'_, _>| {
        if let Some(chunk) = chunks.next() {
            for e in chunk {
                producer.send(e).await.unwrap();
            }
        }
    };

    let (stop_a, a) = env.spawn_pipeline(&opts);
    for _ in 0..3 {
        send_chunk(&mut chunks).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let (stop_b, b) = env.spawn_pipeline(&opts); // rebalance: a gives partitions to b
    for _ in 0..3 {
        send_chunk(&mut chunks).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let (stop_c, c) = env.spawn_pipeline(&opts); // another rebalance
    for _ in 0..2 {
        send_chunk(&mut chunks).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop_a.cancel(); // a leaves cleanly; its partitions move
    a.await.unwrap().expect("worker a");
    while chunks.len() > 0 {
        send_chunk(&mut chunks).await;
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    drop(producer);

    support::wait_for_rows(
        &env.lake,
        &per_table,
        bad,
        Duration::from_secs(90),
        "scale-out drain",
    )
    .await;
    for (name, tx, h) in [("b", stop_b, b), ("c", stop_c, c)] {
        tx.cancel();
        h.await
            .unwrap()
            .unwrap_or_else(|e| panic!("worker {name}: {e}"));
    }
    support::assert_exact(&env.lake, &per_table, bad).await;
}
