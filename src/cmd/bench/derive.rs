//! `bench derive`: what a small change costs the derived signal pipelines at a given size.
//!
//! Seeds a throwaway lakehouse with `--positions` stock positions and `--customers` customers
//! of history ([`crate::sim::bulk`]), runs one full derive round, then `--rounds` times changes
//! `--change` of the positions and customers (movements, stock levels, sales; event times in
//! the same quarter hour, so the pipelines' clock stays) and times the round that follows,
//! incremental where a pipeline has `[incremental]`. Last, a fresh deriver recomputes every
//! pipeline in full over the same input versions, and its tables are compared with the
//! incremental ones row for row (`identical`).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value, json};

use crate::config::Config;
use crate::lakehouse::Lakehouse;
use crate::pipeline::definition::Definitions;
use crate::pipeline::derive::{DeriveRun, Deriver};
use crate::sim::bulk::Bulk;

pub async fn run(
    config: Config,
    positions: usize,
    customers: usize,
    change: f64,
    rounds: usize,
) -> anyhow::Result<()> {
    let scratch = super::Scratch::new()?;
    let lake = Lakehouse::new(scratch.0.join("lakehouse"))?;
    let defs = Definitions::from_config(&config.pipeline.definitions).await?;

    let started = Instant::now();
    let (mut bulk, seeded) = Bulk::seed(&lake, &config.simulate, positions, customers, |t| {
        eprintln!("bench derive: writing {t}")
    })
    .await?;
    let seed_seconds = started.elapsed().as_secs_f64();

    eprintln!("bench derive: first round (every pipeline in full)");
    let mut deriver = Deriver::new(lake.clone(), defs.clone());
    let (first_ms, first) = timed_round(&mut deriver).await?;

    let mut changes = Vec::new();
    for round in 1..=rounds {
        eprintln!(
            "bench derive: change {round}/{rounds} ({:.2} %)",
            change * 100.0
        );
        let written = bulk.change(&lake, change).await?;
        let (ms, runs) = timed_round(&mut deriver).await?;
        changes.push(json!({"written": written, "round_ms": ms, "runs": runs_json(&runs)}));
    }

    eprintln!("bench derive: full recompute over the same versions, for comparison");
    let incremental: BTreeMap<String, Vec<arrow::array::RecordBatch>> =
        read_sinks(&lake, &defs).await?;
    let mut fresh = Deriver::new(lake.clone(), defs.clone());
    let (full_ms, full) = timed_round(&mut fresh).await?;
    let mut identical = serde_json::Map::new();
    for def in defs.pipelines.iter().filter(|d| d.incremental.is_some()) {
        let key = &def.incremental.as_ref().expect("filtered").key;
        let now = read_table(&lake, &def.sink.table).await?;
        let verdict =
            match crate::pipeline::incremental::same_rows(&incremental[&def.sink.table], &now, key)
            {
                Ok(()) => json!(true),
                Err(diff) => json!(diff),
            };
        identical.insert(def.name.clone(), verdict);
    }

    let medians: BTreeMap<String, Value> = per_pipeline_median(&changes);
    let report = json!({
        "bench": "derive",
        "positions": bulk.positions(),
        "customers": bulk.customers(),
        "seeded": seeded,
        "seed_seconds": round1(seed_seconds),
        "change_share": change,
        "first_round": {"round_ms": first_ms, "runs": runs_json(&first)},
        "changes": changes,
        "median_ms_after_change": medians,
        "full_recompute": {"round_ms": full_ms, "runs": runs_json(&full)},
        "identical_to_full_recompute": identical,
        "peak_rss_mb": super::peak_rss_mb(),
    });
    println!("{report}");
    Ok(())
}

async fn timed_round(deriver: &mut Deriver) -> anyhow::Result<(u64, Vec<DeriveRun>)> {
    let t = Instant::now();
    let runs = deriver.round().await?;
    Ok((t.elapsed().as_millis() as u64, runs))
}

fn runs_json(runs: &[DeriveRun]) -> Value {
    runs.iter()
        .map(|r| {
            (
                r.pipeline.clone(),
                json!({"ms": r.millis, "mode": r.mode, "keys": r.keys, "rows": r.rows,
                       "full_because": r.full_because, "phases": r.phases}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Per pipeline, the median of its run times over the rounds after a change (and the round's).
fn per_pipeline_median(changes: &[Value]) -> BTreeMap<String, Value> {
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for c in changes {
        by.entry("round".into())
            .or_default()
            .push(c["round_ms"].as_u64().unwrap_or(0));
        if let Some(runs) = c["runs"].as_object() {
            for (p, r) in runs {
                by.entry(p.clone())
                    .or_default()
                    .push(r["ms"].as_u64().unwrap_or(0));
            }
        }
    }
    by.into_iter()
        .map(|(p, mut v)| {
            v.sort_unstable();
            (p, json!(v[v.len() / 2]))
        })
        .collect()
}

async fn read_sinks(
    lake: &Lakehouse,
    defs: &Definitions,
) -> anyhow::Result<BTreeMap<String, Vec<arrow::array::RecordBatch>>> {
    let mut out = BTreeMap::new();
    for def in defs.pipelines.iter().filter(|d| d.incremental.is_some()) {
        out.insert(
            def.sink.table.clone(),
            read_table(lake, &def.sink.table).await?,
        );
    }
    Ok(out)
}

async fn read_table(
    lake: &Lakehouse,
    name: &str,
) -> anyhow::Result<Vec<arrow::array::RecordBatch>> {
    let provider = lake.open(name).await?.table_provider().await?;
    let ctx = datafusion::prelude::SessionContext::new();
    Ok(ctx.read_table(provider)?.collect().await?)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
