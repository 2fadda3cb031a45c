//! The MCP server object: whom it answers for, the catalog it reads, the tools of that
//! principal's persona (`tools/<family>.rs`), and how a tool runs a query under the query
//! timeout. The protocol side is [`super::handler`]; argument checks and errors are
//! [`super::args`]; the query builder is [`super::query`]. No tool panics the server.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::scalar::ScalarValue;
use rmcp::ErrorData;
use rmcp::handler::server::router::tool::ToolRouter;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::args::{failed, internal, invalid, text};
use super::catalog::{AsOf, LiveCatalog};
use super::query::{Query, rows_json};
use crate::actions::ActionProducer;

/// One MCP session's resource subscriptions, and whether its watcher runs
/// ([`super::resources`]).
#[derive(Default)]
pub struct Subscriptions {
    pub(crate) uris: Mutex<BTreeSet<String>>,
    pub(crate) watching: AtomicBool,
}

/// A query run from SQL planned just now: its rows, the tables it scans, and the tables its
/// rows depend on at their versions when its answer may be kept.
type Fresh = (
    Vec<arrow::array::RecordBatch>,
    Vec<String>,
    Option<Vec<(String, i64)>>,
);

/// How a query starts: from a kept plan, or from its SQL planned just now.
enum Planned {
    Kept(Arc<super::plans::Plan>),
    Fresh(datafusion::dataframe::DataFrame),
}

/// The millstream MCP server. Cheap to clone: one per MCP session.
#[derive(Clone)]
pub struct Millstream {
    pub(crate) catalog: LiveCatalog,
    pub(crate) actions: Option<Arc<ActionProducer>>,
    /// Knowledge search, or why this server has none (said to callers who ask for it).
    pub(crate) knowledge: Result<Arc<crate::knowledge::Knowledge>, Arc<str>>,
    pub(crate) query_timeout: Duration,
    /// How long a call may wait for this replica to load versions its caller has already seen
    /// elsewhere ([`super::consistency`]).
    pub(crate) catch_up_wait: Duration,
    /// Where `query_sql` runs callers' SQL, and its limits ([`crate::governed`]).
    pub(crate) sandbox: Arc<crate::governed::Sandbox>,
    /// Whom this server answers for by default (stdio, or HTTP with `auth.mode = "none"`):
    /// its tables, filters, masks and tools (`config/policies.toml`).
    pub(crate) access: Arc<crate::auth::Access>,
    /// The policies, for HTTP callers who authenticated as someone else.
    policies: Arc<crate::auth::Policies>,
    /// Where tool calls, actions and resource reads are recorded (`ops.audit`).
    auditor: Option<crate::auth::audit::Auditor>,
    /// One server per authenticated principal, built on its first request.
    scoped: Arc<std::sync::Mutex<std::collections::BTreeMap<String, Millstream>>>,
    /// This MCP session's resource subscriptions (fresh per session, see [`Self::for_session`]).
    pub(crate) subscriptions: Arc<Subscriptions>,
    /// The caller's tools. Shared, not copied: the server is cloned for every connection and
    /// session, and a router holds every tool's schemas.
    pub(crate) tool_router: Arc<ToolRouter<Self>>,
}

impl Millstream {
    pub fn new(
        catalog: LiveCatalog,
        actions: Option<Arc<ActionProducer>>,
        query_timeout: Duration,
        policies: Arc<crate::auth::Policies>,
        principal: &str,
    ) -> crate::Result<Self> {
        policies.check_tools(&Self::tool_names())?;
        let access = policies.access(principal)?;
        Ok(Millstream {
            catalog,
            actions,
            knowledge: Err("knowledge search is not configured on this server".into()),
            query_timeout,
            catch_up_wait: Duration::from_secs(3),
            sandbox: Arc::new(crate::governed::Sandbox::new(
                crate::governed::Limits::with_timeout(query_timeout),
            )),
            tool_router: Arc::new(Self::router_for(&access)),
            access: Arc::new(access),
            policies,
            auditor: None,
            scoped: Arc::default(),
            subscriptions: Arc::default(),
        })
    }

    /// Runs callers' SQL under `limits` (instead of the defaults with the query timeout).
    pub fn with_query_limits(mut self, limits: crate::governed::Limits) -> Self {
        self.query_timeout = limits.timeout;
        self.sandbox = Arc::new(crate::governed::Sandbox::new(limits));
        self
    }

    /// Lets a call wait up to `wait` for versions its caller has seen on another replica.
    pub fn with_catch_up(mut self, wait: Duration) -> Self {
        self.catch_up_wait = wait;
        self
    }

    /// Answers knowledge searches from `knowledge`, or says why there is none.
    pub fn with_knowledge(
        mut self,
        knowledge: Result<Arc<crate::knowledge::Knowledge>, Arc<str>>,
    ) -> Self {
        self.knowledge = knowledge;
        self
    }

    /// Records every tool call, action and resource read in `ops.audit` through `auditor`.
    pub fn with_auditor(mut self, auditor: crate::auth::audit::Auditor) -> Self {
        self.auditor = Some(auditor);
        self
    }

    pub(crate) fn audit(
        &self,
        kind: &'static str,
        name: &str,
        arguments: Option<String>,
        started: (chrono::DateTime<chrono::Utc>, std::time::Instant),
        outcome: Result<(), (&'static str, String)>,
    ) {
        let Some(auditor) = &self.auditor else {
            return;
        };
        let (outcome, error) = match outcome {
            Ok(()) => ("ok", None),
            Err((o, e)) => (o, Some(e)),
        };
        auditor.record(crate::auth::audit::AuditRecord {
            ts: started.0,
            principal: self.access.principal.clone(),
            persona: self.access.persona.clone(),
            kind,
            name: name.to_string(),
            arguments,
            outcome,
            error,
            duration: started.1.elapsed(),
        });
    }

    /// Refuses a call the audit log cannot take: it fails closed (see [`crate::auth::audit`]).
    pub(crate) fn audit_ready(&self) -> Result<(), ErrorData> {
        match &self.auditor {
            Some(a) if !a.accepting() => {
                metrics::counter!("millstream_audit_refused_total").increment(1);
                Err(ErrorData::internal_error(
                    "the audit log (ops.audit) is not keeping up, so calls are refused until it \
                     does; the server log says why",
                    None,
                ))
            }
            _ => Ok(()),
        }
    }

    /// A persona's tools are the only ones listed or callable.
    fn router_for(access: &crate::auth::Access) -> ToolRouter<Self> {
        let mut router = Self::routers();
        for name in Self::tool_names() {
            if !access.may_call(&name) {
                router.remove_route(&name);
            }
        }
        router
    }

    /// This server as the caller of `context` sees it: the authenticated principal of an HTTP
    /// request (see `auth::identity`), else the default principal.
    pub(crate) fn for_caller(
        &self,
        context: &rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<Millstream, ErrorData> {
        let caller = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<crate::auth::Caller>());
        let Some(caller) = caller else {
            return Ok(self.clone());
        };
        self.as_principal(&caller.principal)
            .map_err(|e| ErrorData::invalid_request(e.to_string(), None))
    }

    /// This server answering for `principal` (its persona's tools, its grants, filters and
    /// masks), sharing this session's subscriptions; built once per principal.
    pub fn as_principal(&self, principal: &str) -> crate::Result<Millstream> {
        if principal == self.access.principal {
            return Ok(self.clone());
        }
        let mut scoped = self.scoped.lock().expect("poisoned");
        if let Some(s) = scoped.get(principal) {
            return Ok(Millstream {
                subscriptions: self.subscriptions.clone(),
                ..s.clone()
            });
        }
        let access = self.policies.access(principal)?;
        let server = Millstream {
            tool_router: Arc::new(Self::router_for(&access)),
            access: Arc::new(access),
            ..self.clone()
        };
        scoped.insert(principal.to_string(), server.clone());
        Ok(server)
    }

    pub(crate) fn is_tool(name: &str) -> bool {
        static ALL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        ALL.get_or_init(Self::tool_names).iter().any(|t| t == name)
    }

    /// The policies callers are resolved against.
    pub fn policies(&self) -> Arc<crate::auth::Policies> {
        self.policies.clone()
    }

    /// Who this server answers for.
    pub fn principal(&self) -> &str {
        &self.access.principal
    }

    /// A server for a new MCP session: shares everything but the subscriptions.
    pub fn for_session(&self) -> Self {
        Millstream {
            subscriptions: Arc::default(),
            ..self.clone()
        }
    }

    /// The names of every tool (for checking the policies' tool grants).
    pub fn tool_names() -> Vec<String> {
        Self::routers()
            .list_all()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect()
    }

    fn routers() -> ToolRouter<Self> {
        Self::supply_router()
            + Self::sales_router()
            + Self::iot_router()
            + Self::tickets_router()
            + Self::analytics_router()
            + Self::knowledge_router()
    }

    /// Every tool, as listed to clients.
    pub fn tools(&self) -> Vec<rmcp::model::Tool> {
        self.tool_router.list_all()
    }

    /// Runs `q` on the current snapshot and deserializes each row into `T`.
    pub(crate) async fn fetch<T: DeserializeOwned>(
        &self,
        q: Query,
    ) -> Result<(Vec<T>, AsOf), ErrorData> {
        let (batches, as_of) = self.run(&q.sql, q.params).await?;
        let rows = rows_json(&batches)?;
        let rows = serde_json::from_value(rows)
            .map_err(|e| internal(format!("decoding rows of {}: {e}", q.sql)))?;
        Ok((rows, as_of))
    }

    /// A session over the current snapshot as this server's principal may see it.
    pub(crate) async fn session(&self) -> Result<super::catalog::RequestSession, ErrorData> {
        self.catalog.session(&self.access).await.map_err(internal)
    }

    /// Runs one query with bound parameters under the query timeout, or answers it from the
    /// answer kept for the same caller, SQL and parameters while none of the tables it depends
    /// on has moved ([`super::answers`]). A query that must run starts from the plan kept for
    /// the same caller and SQL under the same rule ([`super::plans`]), when there is one.
    pub(crate) async fn run(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<(Vec<arrow::array::RecordBatch>, AsOf), ErrorData> {
        let session = self.session().await?;
        let answers = self.catalog.answers();
        let key = super::answers::Key::new(self.access.key(), sql, &params);
        if let Some(kept) = answers.get(&key, |t| session.version(t)) {
            let as_of = session.as_of_tables(kept.read.iter().map(String::as_str));
            return Ok((kept.batches.clone(), as_of));
        }
        let work = async {
            let (batches, read, inputs) = match self.planned(&session, sql).await? {
                Planned::Kept(plan) => match plan.bind(&params) {
                    Some(bound) => {
                        let state = session.ctx.state();
                        let physical = state
                            .query_planner()
                            .create_physical_plan(&bound, &state)
                            .await?;
                        let batches =
                            datafusion::physical_plan::collect(physical, state.task_ctx()).await?;
                        (batches, plan.read.clone(), Some(plan.inputs.clone()))
                    }
                    None => {
                        let df = session.ctx.sql(sql).await?;
                        self.run_fresh(&session, df, params).await?
                    }
                },
                Planned::Fresh(df) => self.run_fresh(&session, df, params).await?,
            };
            let as_of = session.as_of_tables(read.iter().map(String::as_str));
            if answers.keeps()
                && let Some(inputs) = inputs
            {
                answers.put(
                    key,
                    super::answers::Answer::new(inputs, read, batches.clone()),
                );
            }
            Ok::<_, datafusion::error::DataFusionError>((batches, as_of))
        };
        let restricted = self.access.restricted();
        let span =
            tracing::info_span!("datafusion.query", db.system = "datafusion", db.query.text = %sql);
        self.within_timeout(tracing::Instrument::instrument(work, span))
            .await?
            .map_err(|e| {
                tracing::warn!(error = %e, principal = %self.access.principal, "tool query failed");
                failed(&crate::governed::describe(
                    &e,
                    self.sandbox.limits(),
                    restricted,
                ))
            })
    }

    /// Runs `df` (just planned from SQL) with `params` bound: its rows, the tables it scans, and
    /// the tables its rows depend on at their versions when its answer may be kept.
    async fn run_fresh(
        &self,
        session: &super::catalog::RequestSession,
        mut df: datafusion::dataframe::DataFrame,
        params: Vec<ScalarValue>,
    ) -> Result<Fresh, datafusion::error::DataFusionError> {
        if !params.is_empty() {
            df = df.with_param_values(params)?;
        }
        let read = super::catalog::RequestSession::scans(df.logical_plan());
        let keep =
            self.catalog.answers().keeps() && super::answers::deterministic(df.logical_plan());
        let batches = df.collect().await?;
        let inputs = keep.then(|| self.inputs(session, &read)).flatten();
        Ok((batches, read.into_iter().collect(), inputs))
    }

    /// The plan for `sql` as this caller: the one kept while its tables stay at their versions
    /// ([`super::plans`]), else planned now, and kept optimised, placeholders unbound, when the
    /// query is fixed by its inputs. A plan the optimiser cannot take with its placeholders
    /// unbound is planned per call, as before.
    async fn planned(
        &self,
        session: &super::catalog::RequestSession,
        sql: &str,
    ) -> Result<Planned, datafusion::error::DataFusionError> {
        let plans = self.catalog.plans();
        let principal = self.access.key();
        if let Some(plan) = plans.get(principal, sql, |t| session.version(t)) {
            return Ok(Planned::Kept(plan));
        }
        let df = session.ctx.sql(sql).await?;
        if !plans.keeps() || !super::answers::deterministic(df.logical_plan()) {
            return Ok(Planned::Fresh(df));
        }
        let read = super::catalog::RequestSession::scans(df.logical_plan());
        let Some(inputs) = self.inputs(session, &read) else {
            return Ok(Planned::Fresh(df));
        };
        let (state, plan) = df.into_parts();
        let kept = state.optimize(&plan).ok().and_then(|optimized| {
            super::plans::Plan::new(inputs, read.into_iter().collect(), optimized)
        });
        match kept {
            Some(kept) => {
                let kept = Arc::new(kept);
                plans.put(principal, sql, kept.clone(), |t| session.version(t));
                Ok(Planned::Kept(kept))
            }
            None => {
                tracing::debug!(%sql, "plan not kept: it needs its parameters bound to be planned");
                Ok(Planned::Fresh(datafusion::dataframe::DataFrame::new(
                    state, plan,
                )))
            }
        }
    }

    /// Every table whose rows an answer that scanned `read` depends on
    /// ([`crate::auth::Access::depends_on`]), at the version `session` reads; `None` when one
    /// of them does not exist yet.
    fn inputs(
        &self,
        session: &super::catalog::RequestSession,
        read: &BTreeSet<String>,
    ) -> Option<Vec<(String, i64)>> {
        self.access
            .depends_on(read)
            .ok()?
            .into_iter()
            .map(|t| session.version(&t).map(|v| (t, v)))
            .collect()
    }

    /// Runs a query's `work` under the query timeout (dropping it cancels the query).
    pub(crate) async fn within_timeout<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, ErrorData> {
        tokio::time::timeout(self.query_timeout, work)
            .await
            .map_err(|_| {
                let ms = self.query_timeout.as_millis() as u64;
                ErrorData::internal_error(
                    format!(
                        "query did not finish within {ms} ms (serve.query_timeout_ms); narrow it"
                    ),
                    Some(json!({ "timeout_ms": ms })),
                )
            })
    }

    /// Where a trailing time window over `table` ends: its event-time watermark (so windows
    /// mean the same on the simulated clock), or now before it has any data.
    pub(crate) fn window_end(&self, table: &str) -> chrono::DateTime<chrono::Utc> {
        self.catalog
            .watermark(table)
            .unwrap_or_else(chrono::Utc::now)
    }

    /// Fails with `invalid params` on `field` unless `sql` (one `$1` parameter) finds a row;
    /// else says which versions it looked at.
    pub(crate) async fn must_exist(
        &self,
        field: &str,
        value: &str,
        sql: &str,
    ) -> Result<AsOf, ErrorData> {
        let (batches, as_of) = self.run(sql, vec![text(value)]).await?;
        if batches.iter().any(|b| b.num_rows() > 0) {
            Ok(as_of)
        } else {
            Err(invalid(field, format!("unknown {field} {value:?}")))
        }
    }
}
