//! The HTTP side: the MCP endpoint at `/mcp` (streamable HTTP), `/metrics` (Prometheus) and
//! `/healthz`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Json, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, Refusal};
use crate::error::Result;
use crate::mcp::Millstream;

/// What `/mcp` serves, which Host headers it accepts, and how callers authenticate.
pub struct Mcp {
    pub server: Millstream,
    pub allowed_hosts: Vec<String>,
    /// `None`: every caller is the server's default principal (`auth.mode = "none"`).
    pub auth: Option<Authenticator>,
    /// The resource identifier in the protected-resource metadata ("" = derived per request).
    pub resource: String,
}

impl Mcp {
    /// `/mcp` for `server` as the config's `[serve]` and `[auth]` say.
    pub fn from_config(server: Millstream, config: &crate::config::Config) -> Result<Mcp> {
        Ok(Mcp {
            auth: Authenticator::new(&config.auth, server.policies())?,
            server,
            allowed_hosts: config.serve.allowed_hosts.clone(),
            resource: config.auth.resource.clone(),
        })
    }
}

#[derive(Clone)]
struct AuthState {
    auth: Authenticator,
    resource: String,
}

pub fn router(mcp: Option<Mcp>, cancel: CancellationToken) -> Router {
    let metrics = crate::telemetry::metrics();
    let router = Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    let Some(m) = mcp else {
        return router;
    };
    let service = crate::mcp::http_service(m.server, m.allowed_hosts, cancel);
    match m.auth {
        None => router.nest_service("/mcp", service),
        Some(auth) => {
            let state = AuthState {
                auth,
                resource: m.resource,
            };
            let mcp =
                Router::new()
                    .nest_service("/mcp", service)
                    .layer(middleware::from_fn_with_state(
                        state.clone(),
                        require_bearer,
                    ));
            let metadata = Router::new()
                .route(METADATA_PATH, get(metadata))
                .route(&format!("{METADATA_PATH}/mcp"), get(metadata))
                .with_state(state);
            router.merge(metadata).merge(mcp)
        }
    }
}

/// RFC 9728 protected-resource metadata.
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// `http://host` as the request reached us (the Host header; validated by rmcp's allowed-hosts
/// check before any MCP handling, and only echoed into URLs here).
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
            let metadata = format!("{}{METADATA_PATH}", origin(req.headers()));
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

/// Binds `addr` (port 0 picks one) and serves until `stop`. Returns the bound address.
pub async fn spawn(
    addr: &str,
    mut stop: watch::Receiver<bool>,
    mcp: Option<Mcp>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let app = router(mcp, cancel.clone());
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
            // Ends open MCP streams too, or graceful shutdown would wait on them forever.
            cancel.cancel();
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok((bound, task))
}
