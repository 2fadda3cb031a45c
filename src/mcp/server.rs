//! The MCP server object: tools from every family (`tools/<family>.rs`), the query helper they
//! share, and the transports (streamable HTTP at `/mcp`, stdio).
//!
//! Tools never splice arguments into SQL: filters are `$n` parameters bound by DataFusion
//! ([`Query`]). Arguments are checked before anything runs, and a bad one is a JSON-RPC
//! `invalid params` error naming the field; anything else that fails is an `internal error`
//! whose message says what failed (never a secret). No tool panics the server.

use std::sync::Arc;
use std::time::Duration;

use datafusion::scalar::ScalarValue;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool_handler};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::actions::ActionProducer;
use super::catalog::{AsOf, LiveCatalog};

/// Rows returned by a tool when the caller gives no `limit`, and the most it may ask for.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 1000;

/// The millstream MCP server. Cheap to clone: one per MCP session.
#[derive(Clone)]
pub struct Millstream {
    pub(crate) catalog: LiveCatalog,
    pub(crate) actions: Option<Arc<ActionProducer>>,
    pub(crate) query_timeout: Duration,
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
    pub(crate) subscriptions: Arc<super::resources::Subscriptions>,
    tool_router: ToolRouter<Self>,
}

impl Millstream {
    pub fn new(
        catalog: LiveCatalog,
        actions: Option<Arc<ActionProducer>>,
        query_timeout: Duration,
        policies: Arc<crate::auth::Policies>,
        principal: &str,
    ) -> crate::Result<Self> {
        let access = policies.access(principal)?;
        Ok(Millstream {
            catalog,
            actions,
            query_timeout,
            sandbox: Arc::new(crate::governed::Sandbox::new(
                crate::governed::Limits::with_timeout(query_timeout),
            )),
            tool_router: Self::router_for(&access),
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

    /// Records every tool call, action and resource read in `ops.audit` through `auditor`.
    pub fn with_auditor(mut self, auditor: crate::auth::audit::Auditor) -> Self {
        self.auditor = Some(auditor);
        self
    }

    fn audit(
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

    /// After the stop signal: waits (at most `budget`) for the audit log to commit its last
    /// records, so a process that exits next loses none of them.
    pub async fn audit_flushed(&self, budget: Duration) {
        if let Some(a) = &self.auditor
            && tokio::time::timeout(budget, a.finished()).await.is_err()
        {
            tracing::warn!(
                ?budget,
                "ops.audit: the last records were not committed in time"
            );
        }
    }

    /// Refuses a call the audit log cannot take: it fails closed (see [`crate::auth::audit`]).
    fn audit_ready(&self) -> Result<(), ErrorData> {
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
        if caller.principal == self.access.principal {
            return Ok(self.clone());
        }
        let mut scoped = self.scoped.lock().expect("poisoned");
        if let Some(s) = scoped.get(&caller.principal) {
            return Ok(Millstream {
                subscriptions: self.subscriptions.clone(),
                ..s.clone()
            });
        }
        let access = self
            .policies
            .access(&caller.principal)
            .map_err(|e| ErrorData::invalid_request(e.to_string(), None))?;
        let server = Millstream {
            tool_router: Self::router_for(&access),
            access: Arc::new(access),
            ..self.clone()
        };
        scoped.insert(caller.principal.clone(), server.clone());
        Ok(server)
    }

    fn is_tool(name: &str) -> bool {
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

    /// Runs one query with bound parameters under the query timeout.
    pub(crate) async fn run(
        &self,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<(Vec<arrow::array::RecordBatch>, AsOf), ErrorData> {
        let session = self.session().await?;
        let work = async {
            let mut df = session.ctx.sql(sql).await?;
            if !params.is_empty() {
                df = df.with_param_values(params)?;
            }
            let as_of = session.as_of(df.logical_plan());
            let batches = df.collect().await?;
            Ok::<_, datafusion::error::DataFusionError>((batches, as_of))
        };
        let restricted = self.access.restricted();
        self.within_timeout(work).await?.map_err(|e| {
            tracing::warn!(error = %e, principal = %self.access.principal, "tool query failed");
            failed(&crate::governed::describe(
                &e,
                self.sandbox.limits(),
                restricted,
            ))
        })
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

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Millstream {
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, ErrorData> {
        let started = (chrono::Utc::now(), std::time::Instant::now());
        let me = self.for_caller(&context)?;
        me.audit_ready()?;
        let name = request.name.to_string();
        let kind = if super::actions::ACTIONS.contains(&name.as_str()) {
            "action"
        } else {
            "tool"
        };
        let arguments = request
            .arguments
            .as_ref()
            .map(|a| serde_json::Value::Object(a.clone()).to_string());
        if !me.tool_router.has_route(&name) && Self::is_tool(&name) {
            let message = format!(
                "tool {name} is not available to persona {}",
                me.access.persona
            );
            me.audit(
                kind,
                &name,
                arguments,
                started,
                Err(("refused", message.clone())),
            );
            return Err(ErrorData::invalid_params(
                message,
                Some(json!({ "field": "name" })),
            ));
        }
        let tcc = rmcp::handler::server::tool::ToolCallContext::new(&me, request, context);
        let result = me.tool_router.call(tcc).await;
        let outcome = match &result {
            Ok(rmcp::model::CallToolResponse::Complete(r)) if r.is_error == Some(true) => Err((
                "error",
                r.content
                    .iter()
                    .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                    .collect::<Vec<_>>()
                    .join(" "),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(("error", e.message.to_string())),
        };
        me.audit(kind, &name, arguments, started, outcome);
        result
    }

    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, ErrorData> {
        let me = self.for_caller(&context)?;
        Ok(rmcp::model::ListToolsResult::with_all_items(
            me.tool_router.list_all(),
        ))
    }

    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new("millstream", env!("CARGO_PKG_VERSION")));
        info = info.with_instructions(
            "Live factory signals from millstream's Delta tables. Supply chain: \
             get_inventory_status, list_shortage_risks, predict_shortage, track_shipments, \
             create_order, get_order_status. Sales: lookup_customer_info, list_churn_risks, \
             predict_churn, sales_kpis. IoT: list_anomalies, maintenance_alerts, sensor_stats, \
             query_sensor_data. Tickets: search_tickets, get_ticket_status, create_ticket, \
             update_ticket_resolution. Anything else: describe_tables, then query_sql. Every \
             answer carries `as_of` (table versions, commit time, event-time watermark, lag); \
             actions are events that the pipeline materializes within seconds.",
        );
        info
    }

    async fn list_resources(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, ErrorData> {
        let me = self.for_caller(&context)?;
        super::resources::list(&me, request, context).await
    }

    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, ErrorData> {
        let started = (chrono::Utc::now(), std::time::Instant::now());
        let me = self.for_caller(&context)?;
        me.audit_ready()?;
        let uri = request.uri.to_string();
        let result = super::resources::read(&me, request, context).await;
        let outcome = resource_outcome(&me, &uri, result.as_ref().err());
        me.audit("resource", &uri, None, started, outcome);
        result.map(Into::into)
    }

    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<(), ErrorData> {
        let started = (chrono::Utc::now(), std::time::Instant::now());
        let me = self.for_caller(&context)?;
        me.audit_ready()?;
        let uri = request.uri.to_string();
        let result = super::resources::subscribe(&me, request, context).await;
        let outcome = resource_outcome(&me, &uri, result.as_ref().err());
        me.audit("subscribe", &uri, None, started, outcome);
        result
    }

    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<(), ErrorData> {
        super::resources::unsubscribe(self, request, context).await
    }

    async fn list_prompts(
        &self,
        request: Option<rmcp::model::PaginatedRequestParams>,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListPromptsResult, ErrorData> {
        super::prompts::list(request, context).await
    }

    async fn get_prompt(
        &self,
        request: rmcp::model::GetPromptRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, ErrorData> {
        super::prompts::get(request, context).await.map(Into::into)
    }
}

/// A query with positional parameters, built from optional filters.
pub(crate) struct Query {
    sql: String,
    params: Vec<ScalarValue>,
    filters: Vec<String>,
}

impl Query {
    /// `select` is everything before the WHERE clause.
    pub fn new(select: &str) -> Query {
        Query {
            sql: select.to_string(),
            params: Vec::new(),
            filters: Vec::new(),
        }
    }

    /// Binds the next `$n` for SQL that names it itself (`$1` is the first `bind`).
    pub fn bind(mut self, value: ScalarValue) -> Query {
        self.params.push(value);
        self
    }

    /// Adds `condition` (with `?` standing for the value) when `value` is given.
    pub fn filter(mut self, condition: &str, value: Option<ScalarValue>) -> Query {
        if let Some(v) = value {
            self.params.push(v);
            self.filters
                .push(condition.replace('?', &format!("${}", self.params.len())));
        }
        self
    }

    /// Adds `column IN (…)` over `values`; nothing when there are none.
    pub fn any_of(mut self, column: &str, values: &[&str]) -> Query {
        if values.is_empty() {
            return self;
        }
        let mut marks = Vec::new();
        for v in values {
            self.params.push(text(v));
            marks.push(format!("${}", self.params.len()));
        }
        self.filters
            .push(format!("{column} IN ({})", marks.join(", ")));
        self
    }

    /// Closes the WHERE clause and appends `tail` (ORDER BY, LIMIT …).
    pub fn finish(mut self, tail: &str) -> Query {
        if !self.filters.is_empty() {
            self.sql.push_str(" WHERE ");
            self.sql.push_str(&self.filters.join(" AND "));
        }
        self.sql.push(' ');
        self.sql.push_str(tail);
        self
    }
}

/// How a resource read or subscription ended, for the audit: refused when the caller may not
/// read the resource's table.
fn resource_outcome(
    me: &Millstream,
    uri: &str,
    error: Option<&ErrorData>,
) -> Result<(), (&'static str, String)> {
    let Some(e) = error else { return Ok(()) };
    let refused = super::resources::FEEDS
        .iter()
        .any(|f| f.uri == uri && !me.access.may_read(f.table));
    Err((
        if refused { "refused" } else { "error" },
        e.message.to_string(),
    ))
}

/// A UTC timestamp parameter, typed like the tables' timestamp columns.
pub(crate) fn timestamp(t: chrono::DateTime<chrono::Utc>) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()))
}

pub(crate) fn text(v: &str) -> ScalarValue {
    ScalarValue::Utf8(Some(v.to_string()))
}

pub(crate) fn opt_text(v: &Option<String>) -> Option<ScalarValue> {
    v.as_deref().map(text)
}

/// A caller's `limit`, checked: default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`].
pub(crate) fn limit(requested: Option<u32>) -> Result<u32, ErrorData> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(invalid(
            "limit",
            format!("limit {n} is outside 1..={MAX_LIMIT}"),
        )),
    }
}

/// An id argument: non-empty, printable, at most 128 characters.
pub(crate) fn id(field: &str, v: &str) -> Result<(), ErrorData> {
    if v.trim().is_empty() {
        return Err(invalid(field, format!("{field} is empty")));
    }
    if v.len() > 128 || v.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("{field} must be at most 128 printable characters"),
        ));
    }
    Ok(())
}

pub(crate) fn opt_id(field: &str, v: &Option<String>) -> Result<(), ErrorData> {
    v.as_deref().map_or(Ok(()), |v| id(field, v))
}

/// The caller's fault, on `field`.
pub(crate) fn invalid(field: &str, message: impl Into<String>) -> ErrorData {
    ErrorData::invalid_params(message.into(), Some(json!({ "field": field })))
}

/// A query that did not answer, as an MCP error: the caller's fault (`invalid params` on the
/// SQL), too busy or out of time or memory (with what to do), or a failure whose text
/// [`crate::governed::describe`] made safe for the caller.
pub(crate) fn failed(f: &crate::governed::Failure) -> ErrorData {
    use crate::governed::Failure;
    let kind = match f {
        Failure::Refused(_) => return invalid("sql", f.to_string()),
        Failure::Busy(_) => "busy",
        Failure::Timeout(_) => "timeout",
        Failure::Memory(_) => "memory",
        Failure::Failed(_) => "failed",
    };
    ErrorData::internal_error(f.to_string(), Some(json!({ "reason": kind })))
}

/// Our fault or a dependency's; logged here with the full error.
pub(crate) fn internal(e: impl std::fmt::Display) -> ErrorData {
    tracing::warn!(error = %e, "tool failed");
    ErrorData::internal_error(e.to_string(), None)
}

/// Record batches as a JSON array of row objects (NULL columns left out).
pub(crate) fn rows_json(
    batches: &[arrow::array::RecordBatch],
) -> Result<serde_json::Value, ErrorData> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for b in batches {
        writer.write(b).map_err(internal)?;
    }
    writer.finish().map_err(internal)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(serde_json::Value::Array(vec![]));
    }
    serde_json::from_slice(&bytes).map_err(internal)
}
