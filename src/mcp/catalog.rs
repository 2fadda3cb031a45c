//! The server's read side: every table of the lakehouse, kept at its latest Delta version by a
//! background refresher, and a fresh DataFusion session per request over one consistent set of
//! those versions.
//!
//! Freshness: the refresher asks each table for its latest version every `refresh` (100 ms by
//! default) and loads only the new commits, so an answer sees a commit within about one refresh
//! plus the time to load it (`tests/it/mcp.rs` holds it to 250 ms). Requests never wait on
//! storage for table state: they read the snapshot the refresher last published.
//!
//! Every answer says how fresh it is ([`AsOf`]): the versions it read, when they were committed,
//! the event-time watermark they reached (from the Delta file statistics, not a scan) and how long
//! ago the newest of them landed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimestampMicrosecondType};
use chrono::{DateTime, Utc};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::lakehouse::Lakehouse;
use crate::model::tables;
use crate::pipeline::definition::Definitions;

/// Columns holding a table's event time, in order of preference: the first one a table has is
/// its watermark column. Reference tables have none.
const WATERMARK_COLUMNS: [&str; 7] = [
    "as_of",
    "signal_ts",
    "ts",
    "last_ts",
    "window_end",
    "updated_at",
    "created_at",
];

/// One table as the server currently sees it.
#[derive(Debug, Clone)]
struct Loaded {
    version: i64,
    committed_at: Option<DateTime<Utc>>,
    watermark: Option<DateTime<Utc>>,
    provider: Arc<dyn TableProvider>,
}

/// The versions every request of a moment reads.
#[derive(Debug, Default)]
struct Snapshot {
    tables: BTreeMap<String, Loaded>,
}

/// Freshness of an answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct AsOf {
    /// Each table the answer read, at the Delta version it read.
    pub tables: Vec<TableVersion>,
    /// Commit time of the newest version read (RFC 3339).
    pub committed_at: Option<String>,
    /// Event-time watermark: the latest event time every table read has reached (the earliest
    /// of their latest event times; reference tables do not count). RFC 3339.
    pub watermark: Option<String>,
    /// Milliseconds from the newest commit read to this answer: how long the data had been
    /// waiting, not counting the Kafka-to-Delta delay of the pipeline.
    pub lag_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct TableVersion {
    pub table: String,
    pub version: i64,
    /// When this version was committed (RFC 3339).
    pub committed_at: Option<String>,
    /// Latest event time in the table at this version (RFC 3339), if it has an event-time column.
    pub watermark: Option<String>,
}

/// The lakehouse as the server sees it, refreshed in the background.
#[derive(Debug, Clone)]
pub struct LiveCatalog {
    lake: Lakehouse,
    defs: Definitions,
    current: Arc<RwLock<Arc<Snapshot>>>,
}

/// A request's view: a session over one snapshot, and what it read.
pub struct RequestSession {
    pub ctx: SessionContext,
    snapshot: Arc<Snapshot>,
}

impl LiveCatalog {
    /// Loads every existing table once, then keeps them current until `stop`.
    pub async fn start(
        lake: Lakehouse,
        defs: Definitions,
        refresh: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> Result<LiveCatalog> {
        let catalog = LiveCatalog {
            lake,
            defs,
            current: Arc::new(RwLock::new(Arc::new(Snapshot::default()))),
        };
        let mut open: BTreeMap<String, DeltaTable> = BTreeMap::new();
        catalog.refresh(&mut open).await;
        let worker = catalog.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stop.wait_for(|s| *s) => true,
                };
                if stopping {
                    return;
                }
                worker.refresh(&mut open).await;
            }
        });
        Ok(catalog)
    }

    pub fn lake(&self) -> &Lakehouse {
        &self.lake
    }

    /// The pipeline definitions (for the views).
    pub fn definitions(&self) -> &Definitions {
        &self.defs
    }

    /// One pass: open tables that appeared, load new versions of the others, publish.
    async fn refresh(&self, open: &mut BTreeMap<String, DeltaTable>) {
        let mut changed: Vec<(String, Loaded)> = Vec::new();
        for def in tables::catalog() {
            let name = &def.name;
            let result = match open.get_mut(name) {
                Some(table) => advance(table).await.map(|moved| moved.then_some(())),
                None => match self.lake.exists(name).await {
                    Ok(true) => match self.lake.open(name).await {
                        Ok(t) => {
                            open.insert(name.clone(), t);
                            Ok(Some(()))
                        }
                        Err(e) => Err(e),
                    },
                    Ok(false) => Ok(None),
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(Some(())) => match load(name, &open[name]).await {
                    Ok(l) => changed.push((name.clone(), l)),
                    Err(e) => tracing::warn!(table = %name, error = %e, "loading table version"),
                },
                Ok(None) => {}
                Err(e) => tracing::warn!(table = %name, error = %e, "refreshing table"),
            }
        }
        if changed.is_empty() {
            return;
        }
        let mut next = Snapshot {
            tables: self.current.read().expect("poisoned").tables.clone(),
        };
        for (name, loaded) in changed {
            next.tables.insert(name, loaded);
        }
        *self.current.write().expect("poisoned") = Arc::new(next);
    }

    /// The version of `table` the server currently serves, if it exists.
    pub fn version(&self, table: &str) -> Option<i64> {
        self.loaded(table, |l| l.version)
    }

    /// The event-time watermark of the version of `table` served now.
    pub fn watermark(&self, table: &str) -> Option<DateTime<Utc>> {
        self.loaded(table, |l| l.watermark).flatten()
    }

    /// The commit time of the version of `table` served now.
    pub fn committed_at(&self, table: &str) -> Option<DateTime<Utc>> {
        self.loaded(table, |l| l.committed_at).flatten()
    }

    fn loaded<T>(&self, table: &str, f: impl FnOnce(&Loaded) -> T) -> Option<T> {
        self.current
            .read()
            .expect("poisoned")
            .tables
            .get(table)
            .map(f)
    }

    /// The pipeline's event-time clock: the newest event time in the source tables (the
    /// simulated clock under the simulator), or the wall clock before any event arrived.
    pub fn event_clock(&self) -> DateTime<Utc> {
        crate::model::EventKind::FACTORY
            .iter()
            .filter_map(|k| self.watermark(k.bronze_table()))
            .max()
            .unwrap_or_else(Utc::now)
    }

    /// A session over the current snapshot: every table as `schema.table`, the millstream
    /// functions, and the views as `views.<name>`.
    pub async fn session(&self) -> Result<RequestSession> {
        let snapshot = self.current.read().expect("poisoned").clone();
        let ctx = crate::pipeline::session::with_tables(|def| {
            // A table with no Delta log yet reads as empty, so tools answer "nothing yet"
            // instead of failing before the pipeline's first commit.
            Ok(match snapshot.tables.get(&def.name) {
                Some(l) => l.provider.clone(),
                None => Arc::new(datafusion::datasource::empty::EmptyTable::new(
                    def.arrow_schema(),
                )),
            })
        })?;
        crate::pipeline::session::with_functions_and_views(&ctx, &self.defs);
        Ok(RequestSession { ctx, snapshot })
    }
}

impl RequestSession {
    /// Freshness of an answer computed from `plan` (the tables its scans read).
    pub fn as_of(&self, plan: &LogicalPlan) -> AsOf {
        let mut read = BTreeSet::new();
        collect_scans(plan, &mut read);
        self.as_of_tables(read.iter().map(String::as_str))
    }

    /// Freshness of an answer that read `names`.
    pub fn as_of_tables<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> AsOf {
        let mut tables = Vec::new();
        let mut committed: Option<DateTime<Utc>> = None;
        let mut watermark: Option<DateTime<Utc>> = None;
        for name in names {
            let Some(l) = self.snapshot.tables.get(name) else {
                continue;
            };
            committed = committed.max(l.committed_at);
            if let Some(w) = l.watermark {
                watermark = Some(watermark.map_or(w, |m| m.min(w)));
            }
            tables.push(TableVersion {
                table: name.to_string(),
                version: l.version,
                committed_at: l.committed_at.map(rfc3339),
                watermark: l.watermark.map(rfc3339),
            });
        }
        AsOf {
            tables,
            committed_at: committed.map(rfc3339),
            watermark: watermark.map(rfc3339),
            lag_ms: committed.map(|c| (Utc::now() - c).num_milliseconds().max(0)),
        }
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Base tables scanned by `plan`, subqueries included. The plan is not yet analyzed, so a
/// view is still a scan carrying the view's own plan: the tables under it count instead.
fn collect_scans(plan: &LogicalPlan, out: &mut BTreeSet<String>) {
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            match scan.source.get_logical_plan() {
                Some(view) => collect_scans(&view, out),
                None => {
                    if let Some(schema) = scan.table_name.schema() {
                        out.insert(format!("{schema}.{}", scan.table_name.table()));
                    }
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
}

/// Loads commits newer than the table's version; true when there were any.
async fn advance(table: &mut DeltaTable) -> Result<bool> {
    let before = table.version();
    let name = table.table_url().to_string();
    let latest = table
        .get_latest_version()
        .await
        .map_err(|e| Error::delta(&name, e))?;
    if Some(latest) == before {
        return Ok(false);
    }
    table
        .update_incremental(None)
        .await
        .map_err(|e| Error::delta(&name, e))?;
    Ok(table.version() != before)
}

/// Tables of at most this many rows are held in memory, one copy per version, unless they are
/// logs the pipeline appends to every micro-batch (re-reading a growing log whole at each of its
/// versions would cost more than it saves). Signal, state and reference tables qualify: the
/// tools that read them then never touch Parquet, which keeps their answers fast under load.
const CACHE_MAX_ROWS: i64 = 250_000;

fn is_log(name: &str) -> bool {
    crate::model::EventKind::ALL
        .iter()
        .any(|k| k.bronze_table() == name)
        || name == "ops.dead_letters"
        || name == "iot.anomalies"
}

/// What a request needs of one table version: its provider (in memory when small), commit time
/// and watermark.
async fn load(name: &str, table: &DeltaTable) -> Result<Loaded> {
    let version = table.version().unwrap_or(0) as i64;
    let state = table.snapshot().map_err(|e| Error::delta(name, e))?;
    let committed_at = state
        .version_timestamp(version as u64)
        .and_then(DateTime::<Utc>::from_timestamp_millis);
    let def = tables::get(name)?;
    let files = state
        .add_actions_table(true)
        .map_err(|e| Error::delta(name, e))?;
    let watermark = WATERMARK_COLUMNS
        .iter()
        .find(|c| def.column(c).is_some())
        .and_then(|col| max_timestamp(&files, &format!("max.{col}")));
    let rows = files
        .column_by_name("num_records")
        .and_then(|c| arrow::compute::cast(c, &DataType::Int64).ok())
        .and_then(|c| arrow::compute::sum(c.as_primitive::<arrow::datatypes::Int64Type>()));
    let provider: Arc<dyn TableProvider> = table.clone().table_provider().await?;
    let provider = match rows {
        Some(n) if n <= CACHE_MAX_ROWS && !is_log(name) => {
            let batches = SessionContext::new()
                .read_table(provider.clone())?
                .collect()
                .await?;
            Arc::new(datafusion::datasource::MemTable::try_new(
                provider.schema(),
                vec![batches],
            )?)
        }
        _ => provider,
    };
    Ok(Loaded {
        version,
        committed_at,
        watermark,
        provider,
    })
}

/// The largest value of a timestamp statistics column of the add-actions table.
fn max_timestamp(files: &arrow::array::RecordBatch, column: &str) -> Option<DateTime<Utc>> {
    let col = files.column_by_name(column)?;
    let col = arrow::compute::cast(
        col,
        &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
    )
    .ok()?;
    let micros = col.as_primitive::<TimestampMicrosecondType>();
    let max = (0..micros.len())
        .filter(|&i| micros.is_valid(i))
        .map(|i| micros.value(i))
        .max()?;
    DateTime::<Utc>::from_timestamp_micros(max)
}
