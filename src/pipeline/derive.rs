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
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
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
}

pub struct Deriver {
    lake: Lakehouse,
    defs: Definitions,
    /// Input versions each pipeline last ran on.
    seen: BTreeMap<String, BTreeMap<String, i64>>,
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

    async fn run_if_changed(
        &mut self,
        def: &Definition,
        inputs: &[String],
    ) -> Result<Option<DeriveRun>> {
        // Refreshed per pipeline: a later one may read what an earlier one just wrote.
        self.refresh(inputs).await?;
        let versions = self.versions(inputs);
        if self.seen.get(&def.name) == Some(&versions) {
            return Ok(None);
        }
        let run = self.run(def, &versions).await?;
        self.seen.insert(def.name.clone(), versions);
        Ok(Some(run))
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

    async fn run(&self, def: &Definition, inputs: &BTreeMap<String, i64>) -> Result<DeriveRun> {
        let started = Instant::now();
        // Before planning: an append pipeline may read its own sink (alerts dedupe against it).
        let table = self.lake.ensure(&def.sink.table).await?;
        // Exactly the versions recorded below, and nothing else of the lake: the inputs as the
        // last refresh left them, and the sink as this run starts from.
        let mut read: BTreeMap<&str, std::sync::Arc<dyn datafusion::catalog::TableProvider>> =
            BTreeMap::new();
        for name in inputs.keys() {
            let input = self.inputs.get(name).ok_or_else(|| {
                Error::Internal(format!("{}: input {name} was not refreshed", def.name))
            })?;
            read.insert(name, input.clone().table_provider().await?);
        }
        if !read.contains_key(def.sink.table.as_str()) {
            read.insert(&def.sink.table, table.clone().table_provider().await?);
        }
        let ctx = super::session::with_tables(|t| Ok(read.get(t.name.as_str()).cloned()))?;
        let batches = ctx.sql(&def.sql).await?.collect().await?;
        let batches = conform(&batches, &def.sink.table)?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let props = crate::lakehouse::commit::streaming_commit_properties().with_metadata([
            (
                "millstream.pipeline".to_string(),
                serde_json::Value::from(def.name.clone()),
            ),
            (
                "millstream.inputs".to_string(),
                serde_json::to_value(inputs).expect("versions serialize"),
            ),
        ]);
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
        let run = DeriveRun {
            pipeline: def.name.clone(),
            rows,
            version,
            millis: started.elapsed().as_millis() as u64,
        };
        tracing::debug!(pipeline = %run.pipeline, rows, version = ?run.version, ms = run.millis, "derived");
        Ok(run)
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
        .map(|b| {
            let columns = schema
                .fields()
                .iter()
                .map(|f| {
                    let c = b.column_by_name(f.name()).ok_or_else(|| {
                        Error::Invalid(format!("{table}: the result lacks column {}", f.name()))
                    })?;
                    Ok(arrow::compute::cast(c, f.data_type())?)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        })
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
