//! The HTTP side: the MCP endpoint at `/mcp` (streamable HTTP), `/metrics` (Prometheus) and
//! `/healthz`.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::mcp::Millstream;

/// What `/mcp` serves and which Host headers it accepts.
pub struct Mcp {
    pub server: Millstream,
    pub allowed_hosts: Vec<String>,
}

pub fn router(mcp: Option<Mcp>, cancel: CancellationToken) -> Router {
    let metrics = crate::telemetry::metrics();
    let router = Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    match mcp {
        Some(m) => router.nest_service(
            "/mcp",
            crate::mcp::http_service(m.server, m.allowed_hosts, cancel),
        ),
        None => router,
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
