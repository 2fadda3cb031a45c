//! Several workers of one consumer group write the same tables: as members join and leave,
//! partitions move between them, and the tables still end exact.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

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

    let spawn = |name: &'static str| {
        let tx = CancellationToken::new();
        let (kafka, lake, opts, rx) = (
            env.config.kafka.clone(),
            env.lake.clone(),
            opts.clone(),
            tx.clone(),
        );
        let handle = tokio::spawn(async move {
            let stats =
                millstream::pipeline::run_with_restarts(&kafka, &lake, &opts, rx, None).await;
            (name, stats)
        });
        (tx, handle)
    };
    let producer = millstream::sim::EventProducer::new(&env.config.kafka, &env.brokers()).unwrap();
    let mut chunks = events.chunks(4_000);
    let send_chunk = async |chunks: &mut std::slice::Chunks<'_, _>| {
        if let Some(chunk) = chunks.next() {
            for e in chunk {
                producer.send(e).await.unwrap();
            }
        }
    };

    let (stop_a, a) = spawn("a");
    for _ in 0..3 {
        send_chunk(&mut chunks).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let (stop_b, b) = spawn("b"); // rebalance: a gives partitions to b
    for _ in 0..3 {
        send_chunk(&mut chunks).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let (stop_c, c) = spawn("c"); // another rebalance
    for _ in 0..2 {
        send_chunk(&mut chunks).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop_a.cancel(); // a leaves cleanly; its partitions move
    let (_, ra) = a.await.unwrap();
    ra.expect("worker a");
    while chunks.len() > 0 {
        send_chunk(&mut chunks).await;
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    drop(producer);

    let want: i64 = per_table.values().sum::<i64>() + bad;
    support::wait_for_rows(
        &env.lake,
        &per_table,
        want,
        Duration::from_secs(90),
        "scale-out drain",
    )
    .await;
    for (tx, h) in [(stop_b, b), (stop_c, c)] {
        tx.cancel();
        let (name, r) = h.await.unwrap();
        r.unwrap_or_else(|e| panic!("worker {name}: {e}"));
    }
    support::assert_exact(&env.lake, &per_table, bad).await;
}
