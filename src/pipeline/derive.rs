//! Derived pipelines: the `pipelines/` definitions with a `tables` input (signals, alerts).
//!
//! Each round, a pipeline whose input tables have a new version since its last run is
//! recomputed: its SQL runs over exactly the input versions it records — the deriver's own open
//! tables, not "latest" looked up again — plus its sink as the run starts from, and nothing else
//! of the lake; the result replaces (or is appended to) the sink table. The SQL only uses event
//! time, so a result depends on the input versions alone: a restart recomputes the same rows,
//! and a replaced table never holds a mix of two runs. The input versions a run saw go into the
//! commit's metadata (`millstream.inputs`), so anyone can tell what a signal was computed from.
//!
//! One deriver per lakehouse is enough (they are cheap); with several, replace-mode runs are
//! idempotent and delta-rs serialises the commits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use datafusion::catalog::TableProvider;
use deltalake::DeltaTable;
use deltalake::protocol::SaveMode;
use serde::Serialize;

use super::definition::{Definition, Definitions, Kind, SinkMode};
use super::publish::AlertPublisher;
use crate::error::{Error, Result};
use crate::lakehouse::Lakehouse;
use crate::model::tables;

/// What one run of a derived pipeline did.
#[derive(Debug, Clone, Serialize)]
pub struct DeriveRun {
    pub pipeline: String,
    pub rows: usize,
    pub version: Option<i64>,
    pub millis: u64,
    /// `full`, or `incremental` (only the keys the inputs' changes touched).
    pub mode: &'static str,
    /// Incremental runs: the keys recomputed.
    pub keys: Option<usize>,
    /// Full runs of an incremental pipeline: why not incremental.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_because: Option<String>,
    /// Where the time went.
    pub phases: Phases,
}

/// Milliseconds per phase of a run: deciding what to recompute (the clock, the change feed,
/// the touched keys), computing the rows, writing the sink.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Phases {
    pub plan_ms: u64,
    pub compute_ms: u64,
    pub write_ms: u64,
}

/// What a pipeline's last run saw and left.
#[derive(Debug, Clone)]
struct Seen {
    /// Input versions it ran on.
    versions: BTreeMap<String, i64>,
    /// Incremental pipelines: the clock CTE's rows it ran at, and the sink version it wrote.
    clock: Option<Vec<RecordBatch>>,
    sink_version: Option<i64>,
}

/// How this round computes a pipeline.
enum Plan {
    /// Every key: why (empty for a pipeline without `[incremental]`), and the clock row if the
    /// plan already ran the clock query.
    Full(String, Option<Vec<RecordBatch>>),
    /// Only these keys (with the clock row all runs since the last full one shared).
    Keys(Vec<RecordBatch>, Vec<RecordBatch>),
    /// The inputs' new versions change no row (maintenance, or no rows added).
    Nothing,
}

pub struct Deriver {
    lake: Lakehouse,
    defs: Definitions,
    /// What each pipeline last ran on.
    seen: BTreeMap<String, Seen>,
    /// Open input tables, brought up to date each round by reading only the new log entries.
    inputs: BTreeMap<String, DeltaTable>,
}

impl Deriver {
    pub fn new(lake: Lakehouse, defs: Definitions) -> Self {
        Deriver {
            lake,
            defs,
            seen: BTreeMap::new(),
            inputs: BTreeMap::new(),
        }
    }

    /// Runs every derived pipeline whose inputs changed, in definition order. One that fails
    /// does not hold up the others: each is tried, and the round's error is the first failure
    /// (the failed ones run again next round, their inputs unchanged or not).
    pub async fn round(&mut self) -> Result<Vec<DeriveRun>> {
        let mut runs = Vec::new();
        let mut failed = None;
        for def in self.defs.pipelines.clone() {
            let Kind::Derived(inputs) = &def.kind else {
                continue;
            };
            match self.run_if_changed(&def, inputs).await {
                Ok(Some(run)) => runs.push(run),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(pipeline = %def.name, error = %e, "derived pipeline failed");
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(runs),
        }
    }

    /// Forgets what every pipeline last ran on: the next round recomputes each in full.
    pub fn forget(&mut self) {
        self.seen.clear();
    }

    async fn run_if_changed(
        &mut self,
        def: &Definition,
        inputs: &[String],
    ) -> Result<Option<DeriveRun>> {
        // Refreshed per pipeline: a later one may read what an earlier one just wrote.
        self.refresh(inputs).await?;
        let versions = self.versions(inputs);
        let last = self.seen.get(&def.name);
        if last.map(|s| &s.versions) == Some(&versions) {
            return Ok(None);
        }
        let started = Instant::now();
        // Opened once per run, before planning: an append pipeline may read its own sink
        // (alerts dedupe against it), and an incremental one checks nobody else wrote it.
        let sink = self.lake.ensure(&def.sink.table).await?;
        let plan = match (&def.incremental, last) {
            (Some(inc), Some(last)) => self.plan(def, inc, last, &versions, &sink).await?,
            (Some(_), None) => Plan::Full("first run of this process".into(), None),
            (None, _) => Plan::Full(String::new(), None),
        };
        if let Plan::Nothing = plan {
            if let Some(s) = self.seen.get_mut(&def.name) {
                s.versions = versions;
            }
            return Ok(None);
        }
        let (run, seen) = self.run(def, &versions, sink, plan, started).await?;
        self.seen.insert(def.name.clone(), seen);
        Ok(Some(run))
    }

    /// Whether `def` can run for the changed keys only, and which: not when its clock ticked,
    /// its sink was written by someone else, an input went back or lost its change history, or
    /// an input without a key mapping changed.
    async fn plan(
        &self,
        def: &Definition,
        inc: &super::incremental::Incremental,
        last: &Seen,
        versions: &BTreeMap<String, i64>,
        sink: &DeltaTable,
    ) -> Result<Plan> {
        let full = |why: &str| Ok(Plan::Full(why.into(), None));
        let (Some(last_clock), Some(last_sink)) = (&last.clock, last.sink_version) else {
            return full("the last run left no clock");
        };
        if sink.version().map(|v| v as i64) != Some(last_sink) {
            return full("the sink was written by another run");
        }
        let ctx = self.whole_inputs(versions).await?;
        let clock = super::incremental::clock(&ctx, &def.sql, &inc.clock).await?;
        if &clock != last_clock {
            return Ok(Plan::Full("the clock ticked".into(), Some(clock)));
        }
        let key_schema = super::incremental::key_schema(&def.sink.table, &inc.key)?;
        let mut due = Vec::new();
        for (name, &version) in versions {
            let before = last.versions.get(name).copied().unwrap_or(-1);
            if version == before {
                continue;
            }
            if version < before || before < 0 {
                return full(&format!("{name} went from version {before} to {version}"));
            }
            let table = self.inputs.get(name).ok_or_else(|| {
                Error::Internal(format!("{}: input {name} was not refreshed", def.name))
            })?;
            let changes = match crate::lakehouse::cdf::read_changes(
                table.clone(),
                name,
                before as u64 + 1,
                Some(version as u64),
            )
            .await
            {
                Ok(c) => c,
                Err(e) => return full(&format!("{name}: no change feed ({e})")),
            };
            if changes.iter().all(|b| b.num_rows() == 0) {
                continue;
            }
            let Some(touches) = inc.touches_sql(name) else {
                return full(&format!("{name} changed"));
            };
            due.extend(super::incremental::touched(&ctx, &touches, changes, &key_schema).await?);
        }
        if due.iter().all(|b| b.num_rows() == 0) {
            return Ok(Plan::Nothing);
        }
        Ok(Plan::Keys(clock, due))
    }

    /// Opens each input table once and afterwards only reads its new commits. An input nobody
    /// has written yet (purchase orders before the first order) is created empty from its
    /// catalog definition, so the pipeline runs on what exists instead of failing to plan. An
    /// input whose update failed (the store dropped a request half-way) is opened afresh next
    /// time rather than trusted.
    async fn refresh(&mut self, inputs: &[String]) -> Result<()> {
        for t in inputs {
            match self.inputs.get_mut(t) {
                Some(table) => {
                    if let Err(e) = table.update_state().await {
                        self.inputs.remove(t);
                        return Err(Error::delta(t.as_str(), e));
                    }
                }
                None => {
                    self.inputs.insert(t.clone(), self.lake.ensure(t).await?);
                }
            }
        }
        Ok(())
    }

    /// Current version of each input, as of the last refresh.
    fn versions(&self, inputs: &[String]) -> BTreeMap<String, i64> {
        inputs
            .iter()
            .map(|t| {
                let v = self
                    .inputs
                    .get(t)
                    .and_then(|table| table.version())
                    .map_or(-1, |v| v as i64);
                (t.clone(), v)
            })
            .collect()
    }

    /// A session over the inputs at `versions` (the last refresh), whole.
    async fn whole_inputs(
        &self,
        versions: &BTreeMap<String, i64>,
    ) -> Result<datafusion::prelude::SessionContext> {
        let read = self.providers(versions.keys()).await?;
        super::session::with_tables(|t| Ok(read.get(t.name.as_str()).cloned()))
    }

    async fn providers<'a>(
        &self,
        names: impl Iterator<Item = &'a String>,
    ) -> Result<BTreeMap<String, Arc<dyn TableProvider>>> {
        let mut read = BTreeMap::new();
        for name in names {
            let input = self
                .inputs
                .get(name)
                .ok_or_else(|| Error::Internal(format!("input {name} was not refreshed")))?;
            read.insert(name.clone(), input.clone().table_provider().await?);
        }
        Ok(read)
    }

    async fn run(
        &self,
        def: &Definition,
        inputs: &BTreeMap<String, i64>,
        table: DeltaTable,
        plan: Plan,
        started: Instant,
    ) -> Result<(DeriveRun, Seen)> {
        let mut phases = Phases {
            plan_ms: started.elapsed().as_millis() as u64,
            ..Phases::default()
        };
        let computing = Instant::now();
        // Exactly the versions recorded below, and nothing else of the lake: the inputs as the
        // last refresh left them, and the sink as this run starts from.
        let mut read = self.providers(inputs.keys()).await?;
        if !read.contains_key(def.sink.table.as_str()) {
            read.insert(
                def.sink.table.clone(),
                table.clone().table_provider().await?,
            );
        }
        let ctx = super::session::with_tables(|t| Ok(read.get(t.name.as_str()).cloned()))?;
        let (batches, keys, full_because, clock) = match (plan, &def.incremental) {
            (Plan::Keys(clock, due), Some(inc)) => {
                let tables: BTreeMap<&str, Arc<dyn TableProvider>> =
                    read.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                let out = super::incremental::recompute(
                    &def.sql,
                    inc,
                    &tables,
                    &def.sink.table,
                    clock.clone(),
                    due,
                )
                .await?;
                (out.batches, Some(out.keys), None, Some(clock))
            }
            (plan, inc) => {
                let (because, known) = match plan {
                    Plan::Full(r, clock) => (inc.is_some().then_some(r), clock),
                    _ => (None, None),
                };
                let clock = match (inc, known) {
                    (Some(_), Some(clock)) => Some(clock),
                    (Some(inc), None) => {
                        Some(super::incremental::clock(&ctx, &def.sql, &inc.clock).await?)
                    }
                    (None, _) => None,
                };
                let batches = ctx.sql(&def.sql).await?.collect().await?;
                (batches, None, because, clock)
            }
        };
        let batches = conform(&batches, &def.sink.table)?;
        phases.compute_ms = computing.elapsed().as_millis() as u64;
        let writing = Instant::now();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let mut metadata = vec![
            (
                "millstream.pipeline".to_string(),
                serde_json::Value::from(def.name.clone()),
            ),
            (
                "millstream.inputs".to_string(),
                serde_json::to_value(inputs).expect("versions serialize"),
            ),
        ];
        if let Some(k) = keys {
            metadata.push((
                "millstream.recomputed_keys".to_string(),
                serde_json::Value::from(k),
            ));
        }
        let props = crate::lakehouse::commit::streaming_commit_properties().with_metadata(metadata);
        let version = match def.sink.mode {
            SinkMode::Append if rows == 0 => None,
            SinkMode::Append | SinkMode::Replace => {
                let mode = if def.sink.mode == SinkMode::Append {
                    SaveMode::Append
                } else {
                    SaveMode::Overwrite
                };
                let t = table
                    .write(batches)
                    .with_save_mode(mode)
                    .with_commit_properties(props)
                    .await
                    .map_err(|e| Error::delta(&def.sink.table, e))?;
                crate::lakehouse::announce_commit();
                t.version().map(|v| v as i64)
            }
            SinkMode::Merge => {
                return Err(Error::Internal(format!(
                    "{}: merge sinks run inside the micro-batch runner",
                    def.name
                )));
            }
        };
        phases.write_ms = writing.elapsed().as_millis() as u64;
        let run = DeriveRun {
            pipeline: def.name.clone(),
            rows,
            version,
            millis: started.elapsed().as_millis() as u64,
            mode: if keys.is_some() {
                "incremental"
            } else {
                "full"
            },
            keys,
            full_because,
            phases,
        };
        tracing::debug!(pipeline = %run.pipeline, rows, version = ?run.version, ms = run.millis, mode = run.mode, keys = ?run.keys, full_because = ?run.full_because, phases = ?run.phases, "derived");
        let seen = Seen {
            versions: inputs.clone(),
            clock,
            sink_version: version,
        };
        Ok((run, seen))
    }
}

/// The query result in the sink table's column order and types; an empty result becomes one
/// empty batch, so a replace still replaces.
pub fn conform(batches: &[RecordBatch], table: &str) -> Result<Vec<RecordBatch>> {
    let schema = tables::get(table)?.arrow_schema();
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(vec![RecordBatch::new_empty(schema)]);
    }
    batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| super::incremental::columns_as(b, &schema, table))
        .collect()
}

/// What [`run`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeriveSummary {
    pub rounds: u64,
    pub failed_rounds: u64,
    /// Pipeline runs (a pipeline runs only when an input table has a new version).
    pub runs: BTreeMap<String, u64>,
    /// Milliseconds spent per pipeline, summed over its runs.
    pub millis: BTreeMap<String, u64>,
    pub alerts_published: u64,
}

/// How often the last round (after the stop) is tried before the deriver gives up.
const FINAL_ROUND_TRIES: u32 = 3;

/// Runs rounds every `interval` until `stop`, then one last round so the signals reflect
/// everything committed (tried up to [`FINAL_ROUND_TRIES`] times). After each round `publisher` (if any) produces the new alerts. A
/// failed round is logged and retried next time; it never stops ingest.
pub async fn run(
    lake: Lakehouse,
    defs: Definitions,
    interval: Duration,
    mut publisher: Option<AlertPublisher>,
    stop: tokio_util::sync::CancellationToken,
) -> DeriveSummary {
    let mut deriver = Deriver::new(lake, defs);
    let mut summary = DeriveSummary::default();
    // The last round is what the signals are left at: it is tried again a few times.
    let mut last_tries = FINAL_ROUND_TRIES;
    loop {
        let stopping = stop.is_cancelled();
        summary.rounds += 1;
        let failed = summary.failed_rounds;
        match deriver.round().await {
            Ok(runs) => {
                for r in runs {
                    crate::telemetry::events::PipelineDerived {
                        pipeline: &r.pipeline,
                        rows: r.rows as u64,
                        millis: r.millis,
                    }
                    .emit();
                    *summary.runs.entry(r.pipeline.clone()).or_default() += 1;
                    *summary.millis.entry(r.pipeline).or_default() += r.millis;
                }
            }
            Err(e) => {
                summary.failed_rounds += 1;
                tracing::warn!(error = %e, "derived pipelines failed; retrying next round")
            }
        }
        if let Some(p) = publisher.as_mut() {
            match p.publish_new().await {
                Ok(0) => {}
                Ok(n) => {
                    summary.alerts_published += n as u64;
                    crate::telemetry::events::AlertsPublished { messages: n as u64 }.emit()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "publishing alerts failed; retrying next round")
                }
            }
        }
        if stopping {
            last_tries -= 1;
            if summary.failed_rounds == failed || last_tries == 0 {
                return summary;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::bulk::Bulk;

    async fn content(lake: &Lakehouse, name: &str) -> Vec<RecordBatch> {
        let provider = lake
            .open(name)
            .await
            .unwrap()
            .table_provider()
            .await
            .unwrap();
        datafusion::prelude::SessionContext::new()
            .read_table(provider)
            .unwrap()
            .collect()
            .await
            .unwrap()
    }

    fn run_of<'a>(runs: &'a [DeriveRun], pipeline: &str) -> &'a DeriveRun {
        runs.iter()
            .find(|r| r.pipeline == pipeline)
            .unwrap_or_else(|| panic!("{pipeline} did not run: {runs:?}"))
    }

    /// After appends, a MERGE, deletes and a late delivery (which fans out to every position of
    /// its supplier), the incremental rounds recompute only the touched keys, and the signal
    /// tables they leave equal, row for row, what a full recompute over the same versions gives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn incremental_rounds_equal_a_full_recompute() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lakehouse::new(dir.path().join("lake")).unwrap();
        let cfg = crate::config::Config::defaults().simulate;
        let (mut bulk, _) = Bulk::seed(&lake, &cfg, 200, 40, |_| {}).await.unwrap();
        let defs = Definitions::built_in().await.unwrap();
        let incremental = ["shortage_signals", "churn_signals", "lead_scores"];
        for p in incremental {
            assert!(
                defs.get(p).unwrap().incremental.is_some(),
                "{p} is incremental"
            );
        }
        let mut deriver = Deriver::new(lake.clone(), defs.clone());
        let first = deriver.round().await.unwrap();
        for p in incremental {
            assert_eq!(run_of(&first, p).mode, "full", "a first run is full");
        }
        let before = content(&lake, "supply_chain.shortage_signals").await;

        // Round 2: movements, stock levels (MERGE) and sales of 5 %.
        bulk.change(&lake, 0.05).await.unwrap();
        let second = deriver.round().await.unwrap();
        for (p, total) in [
            ("shortage_signals", 200),
            ("churn_signals", 40),
            ("lead_scores", 40),
        ] {
            let r = run_of(&second, p);
            assert_eq!(r.mode, "incremental", "{p}: {r:?}");
            let keys = r.keys.unwrap();
            assert!(
                keys > 0 && keys < total,
                "{p} recomputed {keys} of {total} keys"
            );
        }
        assert_eq!(run_of(&second, "shortage_signals").keys, Some(10));
        let after = content(&lake, "supply_chain.shortage_signals").await;
        assert!(
            crate::pipeline::incremental::same_rows(
                &before,
                &after,
                &["part_id".into(), "warehouse_id".into()]
            )
            .is_err(),
            "the changed positions' signals changed"
        );

        // Round 3: a late delivery, a position and a customer deleted.
        let parts = content(&lake, "supply_chain.parts").await;
        let supplier = arrow::compute::cast(
            parts[0].column_by_name("supplier_id").unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let supplier = arrow::array::AsArray::as_string::<i32>(&supplier)
            .value(0)
            .to_string();
        bulk.deliver_late(&lake, 0, &supplier).await.unwrap();
        lake.open("supply_chain.inventory")
            .await
            .unwrap()
            .delete()
            .with_predicate("part_id = 'P-00002' AND warehouse_id = 'WH-03'")
            .await
            .unwrap();
        lake.open("sales.customers")
            .await
            .unwrap()
            .delete()
            .with_predicate("customer_id = 'C-0007'")
            .await
            .unwrap();
        let third = deriver.round().await.unwrap();
        for p in incremental {
            assert_eq!(
                run_of(&third, p).mode,
                "incremental",
                "{:?}",
                run_of(&third, p)
            );
        }
        let fanned = run_of(&third, "shortage_signals").keys.unwrap();
        assert!(
            fanned > 1,
            "the delivery reached the supplier's other positions: {fanned}"
        );

        // A fresh deriver recomputes in full over the same versions: the same rows.
        let mut mine = BTreeMap::new();
        for p in incremental {
            let t = &defs.get(p).unwrap().sink.table;
            mine.insert(p, content(&lake, t).await);
        }
        let full = Deriver::new(lake.clone(), defs.clone())
            .round()
            .await
            .unwrap();
        for p in incremental {
            assert_eq!(run_of(&full, p).mode, "full");
            let def = defs.get(p).unwrap();
            let theirs = content(&lake, &def.sink.table).await;
            let key = &def.incremental.as_ref().unwrap().key;
            if let Err(diff) = crate::pipeline::incremental::same_rows(&mine[p], &theirs, key) {
                panic!("{p}: the incremental result differs from a full recompute: {diff}");
            }
        }
        let rows = |b: &[RecordBatch]| b.iter().map(|b| b.num_rows()).sum::<usize>();
        assert_eq!(
            rows(&mine["shortage_signals"]),
            199,
            "the deleted position is gone"
        );
        assert_eq!(
            rows(&mine["churn_signals"]),
            39,
            "the deleted customer is gone"
        );
    }
}
