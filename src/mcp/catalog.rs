//! The server's read side: every table of the lakehouse, kept at its latest Delta version by a
//! background refresher, and a fresh DataFusion session per request over one consistent set of
//! those versions.
//!
//! Freshness: the refresher loads new versions as soon as a pipeline in the same process
//! announces a commit (`up`, [`crate::lakehouse::announce_commit`]), and otherwise asks each
//! table for its latest version every `refresh` (100 ms by default); it loads only the new
//! commits, so an answer sees a commit within about one refresh plus the time to load it
//! (`tests/it/mcp.rs` holds it to 250 ms), or just the load time in the same process. Requests
//! never wait on storage for table state: they read the snapshot the refresher last published.
//!
//! Every answer says how fresh it is ([`AsOf`]): the versions it read, when they were committed,
//! the event-time watermark they reached (from the Delta file statistics, not a scan) and how long
//! ago the newest of them landed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, TimestampMicrosecondType};
use chrono::{DateTime, Utc};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use deltalake::DeltaTable;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::Access;
use crate::error::{Error, Result};
use crate::lakehouse::Lakehouse;
use crate::model::tables;
use crate::pipeline::definition::Definitions;

use super::tail::{Holds, Tail};

/// One table as the server currently sees it.
#[derive(Debug, Clone)]
struct Loaded {
    version: i64,
    committed_at: Option<DateTime<Utc>>,
    watermark: Option<DateTime<Utc>>,
    provider: Arc<dyn TableProvider>,
}

/// The versions every request of a moment reads.
#[derive(Default)]
struct Snapshot {
    tables: BTreeMap<String, Loaded>,
    /// One session per principal over these versions, built by its first request and shared
    /// by the rest: a request cannot change it (tools run fixed queries; `query_sql` refuses
    /// DDL, DML and statements such as SET), and views are planned once per snapshot.
    sessions: std::sync::Mutex<BTreeMap<String, SessionContext>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("tables", &self.tables)
            .field("sessions", &self.sessions.lock().expect("poisoned").len())
            .finish()
    }
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

impl AsOf {
    /// Freshness of an answer built from two reads: every table of both (the newer version of
    /// one read twice), the newest commit, the earliest watermark, the smaller lag.
    pub fn merge(mut self, other: AsOf) -> AsOf {
        for t in other.tables {
            match self.tables.iter_mut().find(|s| s.table == t.table) {
                Some(s) if s.version >= t.version => {}
                Some(s) => *s = t,
                None => self.tables.push(t),
            }
        }
        self.tables.sort_by(|a, b| a.table.cmp(&b.table));
        // RFC 3339 in UTC with fixed precision: text order is time order.
        self.committed_at = self.committed_at.max(other.committed_at);
        self.watermark = match (self.watermark, other.watermark) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.lag_ms = match (self.lag_ms, other.lag_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self
    }
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

/// The lakehouse as the server sees it, refreshed in the background ([`LiveCatalog::follow`]).
#[derive(Clone)]
pub struct LiveCatalog {
    lake: Lakehouse,
    /// Shared, not copied: every clone of the server (one per connection and per session)
    /// clones the catalog.
    defs: Arc<Definitions>,
    options: CatalogOptions,
    current: Arc<RwLock<Arc<Snapshot>>>,
    /// The tables the refresher follows (one refresher at a time holds them).
    followed: Arc<tokio::sync::Mutex<BTreeMap<String, Followed>>>,
    /// Counts published snapshots: whoever shows live data ([`LiveCatalog::published`]) wakes
    /// when new versions are served instead of polling.
    published: Arc<tokio::sync::watch::Sender<u64>>,
    /// Asks the refresher to look for new versions now ([`LiveCatalog::catch_up`]).
    wake: Arc<tokio::sync::Notify>,
    /// Tool answers, reused while the tables they depend on stay at their versions.
    answers: Arc<super::answers::Answers>,
    /// Tool query plans, likewise ([`super::plans`]).
    plans: Arc<super::plans::Plans>,
}

impl std::fmt::Debug for LiveCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCatalog")
            .field("lake", &self.lake)
            .field("options", &self.options)
            .finish()
    }
}

/// How the catalog follows the lakehouse.
#[derive(Debug, Clone, Copy)]
pub struct CatalogOptions {
    /// How often to look for new versions.
    pub refresh: Duration,
    /// Newest rows of each log to keep in memory ([`super::tail`]); 0 keeps none.
    pub tail_rows: usize,
    /// Memory the tails of all logs together may hold, whatever their rows
    /// ([`tail_shares`] splits it).
    pub tail_bytes: usize,
    /// Bytes of tool answers kept for reuse while their tables do not move
    /// ([`super::answers`]); 0 keeps none.
    pub answer_cache_bytes: usize,
    /// Tool query plans kept for reuse while their tables do not move ([`super::plans`]);
    /// 0 keeps none.
    pub plan_cache_entries: usize,
    /// Partitions a tool query is planned for (DataFusion's `target_partitions`; `query_sql`
    /// keeps one per core).
    pub query_partitions: usize,
}

impl CatalogOptions {
    pub fn from_config(serve: &crate::config::ServeConfig) -> CatalogOptions {
        CatalogOptions {
            refresh: Duration::from_millis(serve.refresh_ms),
            tail_rows: serve.tail_rows,
            tail_bytes: (serve.tail_mb as usize) << 20,
            answer_cache_bytes: (serve.answer_cache_mb as usize) << 20,
            plan_cache_entries: serve.plan_cache_entries,
            query_partitions: serve.query_partitions,
        }
    }
}

/// A table the refresher follows: its Delta state, the in-memory tail of a log, and the
/// watermark so far (kept up to date from the tail's new rows instead of re-reading statistics).
struct Followed {
    table: DeltaTable,
    tail: Option<Tail>,
    watermark: Option<DateTime<Utc>>,
}

/// A request's view: a session over one snapshot, and what it read.
pub struct RequestSession {
    pub ctx: SessionContext,
    snapshot: Arc<Snapshot>,
}

impl LiveCatalog {
    /// Loads every existing table once. [`LiveCatalog::follow`] keeps them current.
    pub async fn open(
        lake: Lakehouse,
        defs: Definitions,
        options: CatalogOptions,
    ) -> Result<LiveCatalog> {
        let catalog = LiveCatalog {
            lake,
            defs: Arc::new(defs),
            options,
            current: Arc::new(RwLock::new(Arc::new(Snapshot::default()))),
            followed: Arc::default(),
            published: Arc::new(tokio::sync::watch::Sender::new(0)),
            wake: Arc::default(),
            answers: Arc::new(super::answers::Answers::new(options.answer_cache_bytes)),
            plans: Arc::new(super::plans::Plans::new(options.plan_cache_entries)),
        };
        catalog.refresh(&mut *catalog.followed.lock().await).await;
        Ok(catalog)
    }

    /// The refresher: loads new versions as soon as this process commits (a pipeline in the
    /// same process, [`crate::lakehouse::announce_commit`]), and every `options.refresh` for
    /// the commits of other processes, until `stop`. Run it as a supervised task; restarted, it
    /// goes on from the tables it already follows.
    pub async fn follow(&self, stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
        let mut followed = self.followed.lock().await;
        // `open` has just loaded every table: the first look is one period from now.
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + self.options.refresh,
            self.options.refresh,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commits = crate::lakehouse::commits();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Ok(()) = commits.changed() => {}
                () = self.wake.notified() => {}
                _ = stop.cancelled() => return Ok(()),
            }
            self.refresh(&mut followed).await;
        }
    }

    /// [`LiveCatalog::open`], with its refresher spawned on the current runtime until `stop`
    /// (for tests and tools outside a supervised process).
    pub async fn start(
        lake: Lakehouse,
        defs: Definitions,
        options: CatalogOptions,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<LiveCatalog> {
        let catalog = Self::open(lake, defs, options).await?;
        let follower = catalog.clone();
        tokio::spawn(async move { follower.follow(stop).await });
        Ok(catalog)
    }

    pub fn lake(&self) -> &Lakehouse {
        &self.lake
    }

    /// The pipeline definitions (for the views).
    pub fn definitions(&self) -> &Definitions {
        &self.defs
    }

    /// Tool answers kept for reuse ([`super::answers`]).
    pub fn answers(&self) -> &super::answers::Answers {
        &self.answers
    }

    /// Tool query plans kept for reuse ([`super::plans`]).
    pub fn plans(&self) -> &super::plans::Plans {
        &self.plans
    }

    /// One pass: open tables that appeared, load new versions of the others (all tables at
    /// once, so one slow load does not hold up the rest), publish.
    async fn refresh(&self, open: &mut BTreeMap<String, Followed>) {
        let missing = tables::catalog()
            .iter()
            .map(|def| def.name.clone())
            .filter(|name| !open.contains_key(name));
        let opened = futures::future::join_all(missing.map(|name| async move {
            let table = match self.lake.exists(&name).await {
                Ok(true) => self.lake.open(&name).await.map(Some),
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            };
            (name, table)
        }))
        .await;
        let mut fresh = BTreeSet::new();
        for (name, table) in opened {
            match table {
                Ok(Some(table)) => {
                    let followed = Followed {
                        table,
                        tail: None,
                        watermark: None,
                    };
                    open.insert(name.clone(), followed);
                    fresh.insert(name);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(table = %name, error = %e, "opening table"),
            }
        }
        let held: Vec<usize> = open
            .values()
            .map(|f| f.tail.as_ref().map_or(0, Tail::bytes))
            .collect();
        let shares = tail_shares(self.options.tail_bytes, &held);
        let changed = futures::future::join_all(open.iter_mut().zip(shares).map(
            |((name, followed), bytes)| {
                let budget = TailBudget {
                    rows: self.options.tail_rows,
                    bytes,
                };
                load_version(name, followed, fresh.contains(name), budget)
            },
        ))
        .await;
        let changed: Vec<(String, Loaded)> = changed.into_iter().flatten().collect();
        if changed.is_empty() {
            return;
        }
        let mut next = Snapshot {
            tables: self.current.read().expect("poisoned").tables.clone(),
            sessions: Default::default(),
        };
        for (name, loaded) in changed {
            next.tables.insert(name, loaded);
        }
        self.answers
            .forget_stale(|t| next.tables.get(t).map(|l| l.version));
        *self.current.write().expect("poisoned") = Arc::new(next);
        self.published.send_modify(|n| *n += 1);
    }

    /// Changes each time the server starts serving new table versions (after they are
    /// published, so a reader woken by it sees them).
    pub fn published(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Waits until this server serves at least the versions in `seen` (table → version), asking
    /// the refresher to look now instead of at its next tick, for at most `wait`. A client
    /// whose calls land on several replicas sends the versions it has seen, so no answer goes
    /// back in time ([`super::consistency`]). The tables still behind when `wait` is over, with
    /// the version served (`None`: not yet opened) are the error.
    pub async fn catch_up(
        &self,
        seen: &BTreeMap<String, i64>,
        wait: Duration,
    ) -> std::result::Result<(), Vec<(String, i64, Option<i64>)>> {
        let behind = || -> Vec<(String, i64, Option<i64>)> {
            seen.iter()
                .filter_map(|(table, &want)| {
                    let have = self.version(table);
                    (have.is_none_or(|v| v < want)).then(|| (table.clone(), want, have))
                })
                .collect()
        };
        let mut published = self.published();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            published.borrow_and_update();
            let lagging = behind();
            if lagging.is_empty() {
                return Ok(());
            }
            self.wake.notify_one();
            // The sender lives as long as the catalog: only the deadline ends the wait.
            if tokio::time::timeout_at(deadline, published.changed())
                .await
                .is_err()
            {
                let lagging = behind();
                return if lagging.is_empty() {
                    Ok(())
                } else {
                    Err(lagging)
                };
            }
        }
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
        tables::TableDef::with_role(&[tables::Role::Bronze])
            .filter_map(|t| self.watermark(&t.name))
            .max()
            .unwrap_or_else(Utc::now)
    }

    /// A session over the current snapshot as `access` may see it: the tables it may read as
    /// `schema.table`, each with its row filters and masks ([`crate::auth::enforce`]), the
    /// millstream functions, and the views it may read as `views.<name>` (planned over those
    /// restricted tables).
    pub async fn session(&self, access: &Access) -> Result<RequestSession> {
        let snapshot = self.current.read().expect("poisoned").clone();
        if let Some(ctx) = snapshot
            .sessions
            .lock()
            .expect("poisoned")
            .get(access.key())
        {
            return Ok(RequestSession {
                ctx: ctx.clone(),
                snapshot: snapshot.clone(),
            });
        }
        let ctx = self.build_session(&snapshot, access)?;
        // Two first requests may race to build it; either session is the same.
        let ctx = snapshot
            .sessions
            .lock()
            .expect("poisoned")
            .entry(access.key().to_string())
            .or_insert(ctx)
            .clone();
        Ok(RequestSession { ctx, snapshot })
    }

    /// A session built anew, not kept for the snapshot's other requests (for measuring what
    /// building one costs; requests use [`LiveCatalog::session`]).
    pub async fn session_uncached(&self, access: &Access) -> Result<RequestSession> {
        let snapshot = self.current.read().expect("poisoned").clone();
        let ctx = self.build_session(&snapshot, access)?;
        Ok(RequestSession { ctx, snapshot })
    }

    fn build_session(&self, snapshot: &Snapshot, access: &Access) -> Result<SessionContext> {
        // A table with no Delta log yet reads as empty, so tools answer "nothing yet" instead
        // of failing before the pipeline's first commit.
        let source = |def: &tables::TableDef| -> Arc<dyn TableProvider> {
            match snapshot.tables.get(&def.name) {
                Some(l) => l.provider.clone(),
                None => Arc::new(datafusion::datasource::empty::EmptyTable::new(
                    def.arrow_schema(),
                )),
            }
        };
        // Tables other filters read (`visible_in`) first, then the rest. Each behind its
        // barrier twice: as the caller's SQL sees it, and as views (trusted SQL) read it.
        let readable: Vec<&tables::TableDef> = tables::catalog()
            .iter()
            .filter(|d| access.may_read(&d.name))
            .collect();
        let mut caller: BTreeMap<String, Arc<dyn TableProvider>> = BTreeMap::new();
        let mut trusted: BTreeMap<String, Arc<dyn TableProvider>> = BTreeMap::new();
        for pass in [false, true] {
            for def in &readable {
                let reads_others = access
                    .filters(&def.name)?
                    .iter()
                    .any(|(_, f)| matches!(f, crate::auth::policy::ColumnFilter::VisibleIn(_)));
                if reads_others == pass {
                    let both = crate::auth::enforce::restrict_both(
                        &def.name,
                        source(def),
                        access,
                        &trusted,
                    )?;
                    caller.insert(def.name.clone(), both.caller);
                    trusted.insert(def.name.clone(), both.trusted);
                }
            }
        }
        let ctx = crate::pipeline::session::with_tables(|def| Ok(caller.get(&def.name).cloned()))?;
        // Many small queries at once on few cores: each planned for `query_partitions`
        // (1 by default) instead of one per core, which plans faster and spawns less.
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .execution
            .target_partitions = self.options.query_partitions.max(1);
        let view_tables =
            crate::pipeline::session::tables_catalog(|def| Ok(trusted.get(&def.name).cloned()))?;
        let mut views = self.defs.views.clone();
        views.retain(|name, _| {
            access.may_read(&format!("{}.{name}", crate::pipeline::session::VIEWS))
        });
        crate::pipeline::session::with_functions_and_views_over(&ctx, &views, view_tables);
        Ok(ctx)
    }
}

impl RequestSession {
    /// Freshness of an answer computed from `plan` (the tables its scans read).
    pub fn as_of(&self, plan: &LogicalPlan) -> AsOf {
        self.as_of_tables(Self::scans(plan).iter().map(String::as_str))
    }

    /// The base tables `plan` scans, through views and subqueries.
    pub fn scans(plan: &LogicalPlan) -> BTreeSet<String> {
        let mut read = BTreeSet::new();
        collect_scans(plan, &mut read);
        read
    }

    /// The version of `table` this session reads, if it exists yet.
    pub fn version(&self, table: &str) -> Option<i64> {
        self.snapshot.tables.get(table).map(|l| l.version)
    }

    /// Freshness of an answer that read `names`.
    pub fn as_of_tables<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> AsOf {
        AsOf::of_versions(names.into_iter().filter_map(|name| {
            let l = self.snapshot.tables.get(name)?;
            Some((name.to_string(), l.version, l.committed_at, l.watermark))
        }))
    }
}

impl AsOf {
    /// Freshness of an answer that read these tables: (name, version, commit time, event-time
    /// watermark).
    pub fn of_versions(
        read: impl IntoIterator<Item = (String, i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>)>,
    ) -> AsOf {
        let mut tables = Vec::new();
        let mut committed: Option<DateTime<Utc>> = None;
        let mut watermark: Option<DateTime<Utc>> = None;
        for (table, version, committed_at, mark) in read {
            committed = committed.max(committed_at);
            if let Some(w) = mark {
                watermark = Some(watermark.map_or(w, |m| m.min(w)));
            }
            tables.push(TableVersion {
                table,
                version,
                committed_at: committed_at.map(rfc3339),
                watermark: mark.map(rfc3339),
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

/// Tables of at most this many rows are held in memory, one copy per version, unless they are
/// logs the pipeline appends to every micro-batch (re-reading a growing log whole at each of its
/// versions would cost more than it saves). Signal, state and reference tables qualify: the
/// tools that read them then never touch Parquet, which keeps their answers fast under load.
const CACHE_MAX_ROWS: i64 = 250_000;

/// Whether a table only ever grows at its end (its definition's role says so): then the server
/// follows its tail instead of reloading it.
fn is_log(name: &str) -> bool {
    tables::get(name).is_ok_and(|d| d.role.append_only())
}

/// The event-time column of a table, as its definition names it.
fn event_time_column(name: &str) -> Result<Option<&'static str>> {
    Ok(tables::get(name)?.event_time.as_deref())
}

/// Brings one followed table to its latest version (loading it whole when `is_new`), with
/// `budget` for its tail; the loaded version if it moved.
async fn load_version(
    name: &String,
    followed: &mut Followed,
    is_new: bool,
    budget: TailBudget,
) -> Option<(String, Loaded)> {
    let started = std::time::Instant::now();
    let before = followed.table.version();
    let moved = if is_new {
        Ok(true)
    } else {
        crate::lakehouse::advance(&mut followed.table).await
    };
    let load = async {
        match (before, is_new) {
            (Some(before), false) => load_appended(name, followed, before + 1, budget).await,
            _ => load_full(name, followed, budget).await,
        }
    };
    match moved {
        Ok(true) => match load.await {
            Ok(l) => {
                crate::telemetry::events::TableServed {
                    table: name,
                    version: l.version,
                    load: started.elapsed(),
                    // A table just opened (at start) was committed before
                    // anyone followed it: its age is not a visibility delay.
                    since_commit: l
                        .committed_at
                        .filter(|_| !is_new)
                        .and_then(|c| (Utc::now() - c).to_std().ok()),
                    tail: followed.tail.as_ref().map(|t| (t.rows(), t.bytes())),
                }
                .emit();
                Some((name.clone(), l))
            }
            Err(e) => {
                tracing::warn!(table = %name, error = %e, "loading table version");
                None
            }
        },
        Ok(false) => None,
        Err(e) => {
            tracing::warn!(table = %name, error = %e, "refreshing table");
            None
        }
    }
}

/// What one log's tail may hold.
#[derive(Debug, Clone, Copy)]
struct TailBudget {
    rows: usize,
    bytes: usize,
}

/// The memory each log's tail may hold this round, out of `total` for all of them, given what
/// each holds now (`held`, one entry per followed table; 0 for a table without a tail).
///
/// While the tails hold less than `total`, each may grow into the room left free (a quiet one as
/// far as the biggest one may). Beyond it, every tail is held to one level, the highest at which the tails together fit
/// (max-min fairness): a quiet log below it keeps every row it has, and the busy ones share the
/// rest equally. A tail gives memory back when it next grows (the busy ones grow every commit),
/// so the tails together hold `total`, and at most one commit's rows per log more.
fn tail_shares(total: usize, held: &[usize]) -> Vec<usize> {
    let sum = held.iter().fold(0usize, |a, &b| a.saturating_add(b));
    let level = if sum <= total {
        // Room to spare: every tail may grow as far as the biggest may.
        total - sum + held.iter().copied().max().unwrap_or(0)
    } else {
        let mut sorted = held.to_vec();
        sorted.sort_unstable();
        let mut left = total;
        let mut level = 0;
        for (i, &h) in sorted.iter().enumerate() {
            let sharing = sorted.len() - i;
            if h.saturating_mul(sharing) > left {
                level = left / sharing;
                break;
            }
            left -= h;
        }
        level
    };
    held.iter()
        .map(|&mine| level.max(total.saturating_sub(sum - mine)))
        .collect()
}

/// Arrow's memory per byte of (zstd-compressed) Parquet, to pick the files whose rows fit a
/// tail's memory before reading them; the tail then trims to its budget exactly.
const PARQUET_EXPANSION: i64 = 4;

/// Loads the current version from scratch: statistics for the watermark, then the table in
/// memory (a small table whole; the newest rows of a log that fit its budget as its tail) or
/// as a Delta scan.
async fn load_full(name: &str, followed: &mut Followed, budget: TailBudget) -> Result<Loaded> {
    let table = &followed.table;
    let version = table.version().unwrap_or(0) as i64;
    let committed_at = crate::lakehouse::commit_time(name, table, version).await?;
    let files = table
        .snapshot()
        .map_err(|e| Error::delta(name, e))?
        .add_actions_table(true)
        .map_err(|e| Error::delta(name, e))?;
    let ts = event_time_column(name)?;
    let watermark = ts.and_then(|col| max_timestamp(&files, &format!("max.{col}")));
    let records = files
        .column_by_name("num_records")
        .and_then(|c| arrow::compute::cast(c, &DataType::Int64).ok());
    let rows = records
        .as_ref()
        .and_then(|c| arrow::compute::sum(c.as_primitive::<arrow::datatypes::Int64Type>()));
    let sizes = files
        .column_by_name("size_bytes")
        .and_then(|c| arrow::compute::cast(c, &DataType::Int64).ok());
    let size = |i: usize| {
        sizes
            .as_ref()
            .map_or(0, |c| {
                c.as_primitive::<arrow::datatypes::Int64Type>().value(i)
            })
            .saturating_mul(PARQUET_EXPANSION)
    };
    // Saturating: a budget of usize::MAX means "no bound", not -1.
    let (tail_rows, tail_bytes) = (
        i64::try_from(budget.rows).unwrap_or(i64::MAX),
        i64::try_from(budget.bytes).unwrap_or(i64::MAX),
    );
    let memory: i64 = (0..files.num_rows()).map(size).sum();
    let delta: Arc<dyn TableProvider> = table.clone().table_provider().await?;
    followed.watermark = watermark;
    followed.tail = None;
    let provider = if is_log(name) && tail_rows > 0 && tail_bytes > 0 {
        // The newest files whose rows fit the tail: every row after the newest event time of
        // the first file that does not fit is in them.
        let after = match (rows, ts, &records) {
            (Some(n), _, _) if n <= tail_rows && memory <= tail_bytes => None,
            (_, Some(col), Some(records)) => {
                let max = max_column(&files, &format!("max.{col}"));
                let mut by_newest: Vec<(i64, i64, i64)> = (0..files.num_rows())
                    .map(|i| {
                        let r = records.as_primitive::<arrow::datatypes::Int64Type>();
                        (
                            max.get(i).copied().flatten().unwrap_or(i64::MAX),
                            r.value(i),
                            size(i),
                        )
                    })
                    .collect();
                by_newest.sort_unstable_by(|a, b| b.cmp(a));
                let (mut kept_rows, mut kept_bytes) = (0, 0);
                by_newest
                    .into_iter()
                    .find(|(_, n, bytes)| {
                        kept_rows += n;
                        kept_bytes += bytes;
                        kept_rows > tail_rows || kept_bytes > tail_bytes
                    })
                    .map(|(t, _, _)| t)
            }
            _ => Some(i64::MAX),
        };
        match (after, ts) {
            (Some(i64::MAX), _) | (Some(_), None) => delta,
            (after, _) => {
                let mut df = SessionContext::new().read_table(delta.clone())?;
                if let (Some(t), Some(col)) = (after, ts) {
                    let bound = ScalarValue::TimestampMicrosecond(Some(t), Some("UTC".into()));
                    df = df.filter(
                        datafusion::prelude::col(col).gt(datafusion::prelude::lit(bound)),
                    )?;
                }
                let holds = after.map_or(Holds::All, Holds::After);
                let mut tail = Tail::new(delta.schema(), ts, budget.rows, budget.bytes, holds);
                if tail.append(&df.collect().await?)? {
                    let provider = tail.provider(delta)?;
                    followed.tail = Some(tail);
                    provider
                } else {
                    delta
                }
            }
        }
    } else if rows.is_some_and(|n| n <= CACHE_MAX_ROWS) && !is_log(name) {
        let batches = SessionContext::new()
            .read_table(delta.clone())?
            .collect()
            .await?;
        Arc::new(datafusion::datasource::MemTable::try_new(
            delta.schema(),
            vec![batches],
        )?)
    } else {
        delta
    };
    Ok(Loaded {
        version,
        committed_at,
        watermark,
        provider,
    })
}

/// Loads versions `from..` of a table that was loaded before: a log's tail grows by the rows
/// the new commits inserted (read from the Change Data Feed). Anything else, or commits that
/// updated or deleted rows, loads the version from scratch.
async fn load_appended(
    name: &str,
    followed: &mut Followed,
    from: u64,
    budget: TailBudget,
) -> Result<Loaded> {
    let Some(tail) = followed.tail.as_mut() else {
        return load_full(name, followed, budget).await;
    };
    let table = &followed.table;
    let version = table.version().unwrap_or(0) as i64;
    let changes =
        crate::lakehouse::cdf::read_changes(table.clone(), name, from, Some(version as u64))
            .await?;
    let inserts_only = changes.iter().all(|b| {
        b.column_by_name("_change_type").is_some_and(|c| {
            let c = arrow::compute::cast(c, &DataType::Utf8).expect("change type is text");
            c.as_string::<i32>().iter().all(|t| t == Some("insert"))
        })
    });
    tail.set_max_bytes(budget.bytes);
    if !inserts_only || !tail.append(&changes)? {
        return load_full(name, followed, budget).await;
    }
    if let Some(ts) = tail.ts_column() {
        let newest = changes
            .iter()
            .filter_map(|b| super::tail::max_micros(b, ts))
            .max()
            .and_then(DateTime::<Utc>::from_timestamp_micros);
        followed.watermark = followed.watermark.max(newest);
    }
    let delta: Arc<dyn TableProvider> = if tail.holds_all() {
        // Not read: a tail holding every row answers every scan.
        Arc::new(datafusion::datasource::empty::EmptyTable::new(
            tail.schema(),
        ))
    } else {
        table.clone().table_provider().await?
    };
    Ok(Loaded {
        version,
        committed_at: crate::lakehouse::commit_time(name, table, version).await?,
        watermark: followed.watermark,
        provider: tail.provider(delta)?,
    })
}

/// A statistics column of the add-actions table as optional microseconds, one per file.
fn max_column(files: &arrow::array::RecordBatch, column: &str) -> Vec<Option<i64>> {
    let Some(col) = files.column_by_name(column).and_then(|c| {
        arrow::compute::cast(
            c,
            &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
        )
        .ok()
    }) else {
        return vec![None; files.num_rows()];
    };
    col.as_primitive::<TimestampMicrosecondType>()
        .iter()
        .collect()
}

/// The largest value of a timestamp statistics column of the add-actions table.
fn max_timestamp(files: &arrow::array::RecordBatch, column: &str) -> Option<DateTime<Utc>> {
    max_column(files, column)
        .into_iter()
        .flatten()
        .max()
        .and_then(DateTime::<Utc>::from_timestamp_micros)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::tail_shares;

    /// Logs appending at very different rates under one budget, each round trimmed as a
    /// [`super::Tail`] trims (oldest first, never its newest batch) to the share it was given.
    /// The tails together stay within the budget (plus at most one commit per log), a quiet log
    /// keeps every row it has, and the busy ones end up with equal shares of the rest.
    #[test]
    fn one_budget_is_shared_by_all_tails() {
        let total = 1000;
        let rates = [1, 2, 40, 100, 0];
        let slack: usize = rates.iter().sum();
        let mut tails: Vec<VecDeque<usize>> = vec![VecDeque::new(); rates.len()];
        for round in 1..=200usize {
            let held: Vec<usize> = tails.iter().map(|t| t.iter().sum()).collect();
            let caps = tail_shares(total, &held);
            for ((tail, &rate), cap) in tails.iter_mut().zip(&rates).zip(caps) {
                if rate == 0 {
                    continue;
                }
                tail.push_back(rate);
                while tail.iter().sum::<usize>() > cap && tail.len() > 1 {
                    tail.pop_front();
                }
            }
            let held: Vec<usize> = tails.iter().map(|t| t.iter().sum()).collect();
            assert!(
                held.iter().sum::<usize>() <= total + slack,
                "round {round}: {held:?}"
            );
            // The quietest log never reaches the others' level: it keeps everything.
            assert_eq!(held[0], round, "round {round}: {held:?}");
        }
        // Max-min fair: log 0 keeps its 200, and the other three share 800 (266 each), less
        // at most one commit, whatever their rates.
        let held: Vec<usize> = tails.iter().map(|t| t.iter().sum()).collect();
        for (i, &rate) in rates.iter().enumerate().skip(1).take(3) {
            assert!(
                (266 - rate..=266 + rate).contains(&held[i]),
                "log {i}: {held:?}"
            );
        }
        // With room to spare, each tail may grow as far as the biggest may; 0 keeps nothing.
        assert_eq!(tail_shares(total, &[100, 0, 50]), vec![950; 3]);
        assert_eq!(tail_shares(0, &[5, 0, 0]), vec![0; 3]);
        // Over budget: one level for all, the highest at which they fit.
        assert_eq!(tail_shares(100, &[10, 80, 80]), vec![45; 3]);
        assert_eq!(tail_shares(usize::MAX, &[5, 7]), vec![usize::MAX - 5; 2]);
    }
}
