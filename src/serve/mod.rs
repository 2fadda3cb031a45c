//! The HTTP side: the MCP endpoint at `/mcp` (streamable HTTP), `/metrics` (Prometheus),
//! `/healthz` (liveness: every supervised task alive; 503 with the failing tasks otherwise) and
//! `/readyz` (readiness: data is being served), and `/agent/turn` (an agent turn for the
//! caller, streamed as server-sent events; see [`agent`]).
//!
//! In front of `/mcp`, in this order: the `Host` must be one of `serve.allowed_hosts` (before
//! anything echoes it into a URL); the bearer token names the caller; an `Mcp-Session-Id` must
//! be one the caller's own principal created (anyone else's is answered 404, as an unknown
//! session), so a stolen session id yields neither its notifications nor its deletion; then
//! rmcp checks `Origin` and serves the session.

pub mod agent;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Json, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, Refusal};
use crate::error::Result;
use crate::mcp::Millstream;
use crate::supervise::Health;

/// What `/mcp` serves, which Host headers it accepts, and how callers authenticate.
pub struct Mcp {
    pub server: Millstream,
    pub allowed_hosts: Vec<String>,
    /// Browser origins `/mcp` accepts (empty: the loopback ones).
    pub allowed_origins: Vec<String>,
    /// `None`: every caller is the server's default principal (`auth.mode = "none"`).
    pub auth: Option<Authenticator>,
    /// The resource identifier in the protected-resource metadata ("" = derived per request).
    pub resource: String,
    /// `/metrics` needs an operator's bearer token (`serve.metrics_auth = "bearer"`).
    pub metrics_auth: bool,
    /// `/agent/turn`: the agent for the caller (it says when no model is configured).
    pub agent: agent::AgentEndpoint,
    /// `/console` (`console.enabled`).
    pub console: Option<crate::web::Console>,
}

impl Mcp {
    /// `/mcp` for `server` as the config's `[serve]` and `[auth]` say.
    pub fn from_config(server: Millstream, config: &crate::config::Config) -> Result<Mcp> {
        let auth = Authenticator::new(&config.auth, server.policies())?;
        Ok(Mcp {
            console: config
                .console
                .enabled
                .then(|| crate::web::Console::new(server.clone(), auth.clone(), config)),
            auth,
            agent: agent::AgentEndpoint::new(&config.agent, server.clone()),
            server,
            allowed_hosts: config.serve.allowed_hosts.clone(),
            allowed_origins: config.serve.allowed_origins.clone(),
            resource: config.auth.resource.clone(),
            metrics_auth: config.serve.metrics_auth == "bearer",
        })
    }
}

#[derive(Clone)]
struct AuthState {
    auth: Authenticator,
    resource: String,
    policies: Arc<crate::auth::Policies>,
}

pub fn router(mcp: Option<Mcp>, health: Health, cancel: CancellationToken) -> Router {
    let metrics = Router::new().route(
        "/metrics",
        get(|| std::future::ready(crate::telemetry::render())),
    );
    let healthz = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    let Some(m) = mcp else {
        return healthz.merge(metrics);
    };
    let sessions = Arc::new(LocalSessionManager::default());
    let hosts = Arc::new(m.allowed_hosts.clone());
    let agent = Router::new()
        .route("/agent/turn", axum::routing::post(agent::turn))
        .with_state(m.agent.clone())
        .layer(middleware::from_fn_with_state(
            Arc::new(m.allowed_origins.clone()),
            require_allowed_origin,
        ));
    let policies = m.server.policies();
    let console = m.console.map(|c| {
        let chat = axum::routing::post(agent::turn).with_state(m.agent.clone());
        crate::web::router(c, chat).layer(middleware::from_fn_with_state(
            hosts.clone(),
            require_allowed_host,
        ))
    });
    let service = crate::mcp::http_service(
        m.server,
        sessions.clone(),
        m.allowed_hosts,
        m.allowed_origins,
        cancel,
    );
    let console = console.unwrap_or_default();
    match m.auth {
        None => healthz
            .merge(console)
            .merge(metrics)
            .nest_service("/mcp", service)
            .merge(agent.layer(middleware::from_fn_with_state(hosts, require_allowed_host))),
        Some(auth) => {
            let state = AuthState {
                auth,
                resource: m.resource,
                policies,
            };
            let owners = SessionOwners {
                owners: Arc::default(),
                sessions,
            };
            let mcp = Router::new()
                .nest_service("/mcp", service)
                .layer(middleware::from_fn_with_state(owners, bind_sessions))
                .merge(agent)
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    require_bearer,
                ));
            let metadata = Router::new()
                .route(METADATA_PATH, get(metadata))
                .route(&format!("{METADATA_PATH}/mcp"), get(metadata))
                .with_state(state.clone());
            let metrics = if m.metrics_auth {
                metrics.layer(middleware::from_fn_with_state(state, require_operator))
            } else {
                metrics
            };
            healthz.merge(console).merge(metrics).merge(
                metadata
                    .merge(mcp)
                    .layer(middleware::from_fn_with_state(hosts, require_allowed_host)),
            )
        }
    }
}

/// Liveness: 200 when every supervised task is alive, 503 when one failed or is restarting;
/// the body says which.
async fn healthz(State(health): State<Health>) -> Response {
    let report = health.report();
    let status = if report.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// Readiness: 200 once data is served, 503 before and while stopping.
async fn readyz(State(health): State<Health>) -> Response {
    if health.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Refuses a browser request from an origin not in `serve.allowed_origins` (403); requests
/// without an `Origin` header (non-browser clients) pass.
async fn require_allowed_origin(
    State(origins): State<Arc<Vec<String>>>,
    req: Request,
    next: Next,
) -> Response {
    match req
        .headers()
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or(""))
    {
        Some(o) if !crate::mcp::origin_allowed(o, &origins) => (
            StatusCode::FORBIDDEN,
            "Forbidden: Origin is not allowed (serve.allowed_origins)",
        )
            .into_response(),
        _ => next.run(req).await,
    }
}

/// Refuses a request whose `Host` is not one of `serve.allowed_hosts` (403), before anything
/// could echo it back (the protected-resource metadata, a 401 challenge).
async fn require_allowed_host(
    State(hosts): State<Arc<Vec<String>>>,
    req: Request,
    next: Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if host_allowed(host, &hosts) {
        next.run(req).await
    } else {
        (
            StatusCode::FORBIDDEN,
            "Forbidden: Host header is not allowed (serve.allowed_hosts)",
        )
            .into_response()
    }
}

/// Whether `host` (a Host header: `name`, `name:port`, `[v6]:port`) is allowed: its whole
/// authority or its name alone is in `allowed`.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    !host.is_empty()
        && allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(name))
}

/// Which principal created each live MCP session.
#[derive(Clone)]
struct SessionOwners {
    owners: Arc<Mutex<HashMap<String, String>>>,
    sessions: Arc<LocalSessionManager>,
}

/// Sessions created between two sweeps of ended sessions out of [`SessionOwners`].
const SWEEP_EVERY: usize = 256;

/// A session belongs to the principal that created it: a request naming another principal's
/// session is answered as if the session did not exist (404, what the MCP spec says for an
/// unknown session), so it can neither read that session's notifications nor end it.
async fn bind_sessions(State(s): State<SessionOwners>, req: Request, next: Next) -> Response {
    let caller = req
        .extensions()
        .get::<crate::auth::Caller>()
        .map(|c| c.principal.clone());
    let session = req
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (Some(caller), method) = (caller, req.method().clone()) else {
        return next.run(req).await;
    };
    if let Some(id) = &session {
        let owner = s.owners.lock().expect("poisoned").get(id).cloned();
        if owner.as_ref().is_some_and(|o| *o != caller) {
            crate::telemetry::events::SessionRefused { principal: &caller }.emit();
            return (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response();
        }
    }
    let response = next.run(req).await;
    match &session {
        None => {
            if let Some(new) = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
            {
                let swept = {
                    let mut owners = s.owners.lock().expect("poisoned");
                    owners.insert(new.to_string(), caller);
                    owners.len().is_multiple_of(SWEEP_EVERY)
                };
                if swept {
                    sweep(&s).await;
                }
            }
        }
        Some(id) if method == axum::http::Method::DELETE && response.status().is_success() => {
            s.owners.lock().expect("poisoned").remove(id);
        }
        Some(_) => {}
    }
    response
}

/// Forgets the owners of sessions that ended (idle timeout, transport closed).
async fn sweep(s: &SessionOwners) {
    let ids: Vec<String> = s.owners.lock().expect("poisoned").keys().cloned().collect();
    for id in ids {
        let live = s
            .sessions
            .has_session(&id.as_str().into())
            .await
            .unwrap_or(true);
        if !live {
            s.owners.lock().expect("poisoned").remove(&id);
        }
    }
}

/// `/metrics` for operators only: a bearer token (as for `/mcp`) of a principal whose persona
/// may read every table.
async fn require_operator(State(s): State<AuthState>, req: Request, next: Next) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match s.auth.authenticate(authorization.as_deref()).await {
        Ok(caller)
            if s.policies
                .access(&caller.principal)
                .is_ok_and(|a| a.reads_everything()) =>
        {
            next.run(req).await
        }
        Ok(_) => (
            StatusCode::FORBIDDEN,
            "Forbidden: /metrics is for principals who may read every table",
        )
            .into_response(),
        Err(_) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "Unauthorized: /metrics needs a bearer token (serve.metrics_auth)",
        )
            .into_response(),
    }
}

/// RFC 9728 protected-resource metadata.
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// `http://host` as the request reached us (the Host header, already checked against
/// `serve.allowed_hosts` by [`require_allowed_host`]).
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

async fn metadata(State(s): State<AuthState>, headers: HeaderMap) -> Response {
    let resource = if s.resource.is_empty() {
        format!("{}/mcp", origin(&headers))
    } else {
        s.resource.clone()
    };
    let mut body = serde_json::json!({
        "resource": resource,
        "bearer_methods_supported": ["header"],
        "resource_name": "millstream",
    });
    if !s.auth.issuer().is_empty() {
        body["authorization_servers"] = serde_json::json!([s.auth.issuer()]);
    }
    if !s.auth.scope().is_empty() {
        body["scopes_supported"] = serde_json::json!([s.auth.scope()]);
    }
    Json(body).into_response()
}

async fn require_bearer(State(s): State<AuthState>, mut req: Request, next: Next) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match s.auth.authenticate(authorization.as_deref()).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(refusal) => {
            let metadata = if s.resource.is_empty() {
                format!("{}{METADATA_PATH}", origin(req.headers()))
            } else {
                metadata_url(&s.resource)
            };
            let (status, challenge, error, description) = match &refusal {
                Refusal::Missing => (
                    StatusCode::UNAUTHORIZED,
                    format!("Bearer resource_metadata=\"{metadata}\""),
                    "invalid_request",
                    "a bearer token is required".to_string(),
                ),
                Refusal::Invalid(why) => (
                    StatusCode::UNAUTHORIZED,
                    format!("Bearer error=\"invalid_token\", resource_metadata=\"{metadata}\""),
                    "invalid_token",
                    why.clone(),
                ),
                Refusal::InsufficientScope(why) => (
                    StatusCode::FORBIDDEN,
                    format!(
                        "Bearer error=\"insufficient_scope\", scope=\"{}\", resource_metadata=\"{metadata}\"",
                        s.auth.scope()
                    ),
                    "insufficient_scope",
                    why.clone(),
                ),
            };
            tracing::info!(status = status.as_u16(), reason = %description, "request refused");
            let mut resp = (
                status,
                Json(serde_json::json!({ "error": error, "error_description": description })),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            resp
        }
    }
}

/// The metadata URL of a configured resource identifier (`https://host/mcp` →
/// `https://host/.well-known/oauth-protected-resource/mcp`, RFC 9728 §3.1).
fn metadata_url(resource: &str) -> String {
    match url::Url::parse(resource) {
        Ok(u) => {
            let path = u.path().trim_end_matches('/');
            format!(
                "{}://{}{METADATA_PATH}{path}",
                u.scheme(),
                &u[url::Position::BeforeHost..url::Position::AfterPort]
            )
        }
        Err(_) => format!("{resource}{METADATA_PATH}"),
    }
}

/// The HTTP server, bound; [`Server::run`] serves until its token is cancelled.
pub struct Server {
    listener: TcpListener,
    app: Router,
    /// Ends open MCP streams when the server stops, or graceful shutdown would wait on them.
    streams: CancellationToken,
}

/// Binds `addr` (port 0 picks one) for `mcp` (if any), `/metrics`, `/healthz` and `/readyz`.
pub async fn bind(addr: &str, mcp: Option<Mcp>, health: Health) -> Result<(SocketAddr, Server)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let streams = CancellationToken::new();
    let app = router(mcp, health, streams.clone());
    Ok((
        bound,
        Server {
            listener,
            app,
            streams,
        },
    ))
}

impl Server {
    /// Serves until `stop`, then lets requests in flight finish.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let streams = self.streams;
        let shutdown = async move {
            stop.cancelled().await;
            streams.cancel();
        };
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}
