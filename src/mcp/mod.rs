//! The MCP server (DESIGN §5): tools with typed inputs and schema-described outputs over the
//! live tables, resources with update notifications, persona prompts, and actions that go back
//! to Kafka. Served over streamable HTTP at `/mcp` (see [`crate::serve`]) and over stdio.
//!
//! - [`catalog`]: the tables at their latest versions, refreshed in the background; `as_of`.
//! - [`server`]: the server object, the query helper, errors.
//! - [`tools`]: one file per tool family.
//! - [`actions`]: orders and tickets → `mfg.actions.*`, idempotent.
//! - [`resources`], [`prompts`].

pub mod actions;
pub mod catalog;
pub mod prompts;
pub mod resources;
pub mod server;
mod tail;
pub mod tools;

use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

pub use catalog::{AsOf, CatalogOptions, LiveCatalog};
pub use server::Millstream;

/// The streamable HTTP endpoint: one [`Millstream`] per MCP session, sharing the catalog.
/// `allowed_hosts` guards against DNS rebinding (loopback names by default).
pub fn http_service(
    server: Millstream,
    allowed_hosts: Vec<String>,
    cancel: tokio_util::sync::CancellationToken,
) -> StreamableHttpService<Millstream, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default();
    config.allowed_hosts = allowed_hosts;
    config.cancellation_token = cancel;
    StreamableHttpService::new(
        move || Ok(server.for_session()),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// Serves one client on stdin/stdout until it disconnects.
pub async fn serve_stdio(server: Millstream) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let running = server.for_session().serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}

/// Starts the server's catalog (loading every table once) and, with a broker, its action
/// producer. Runs until `stop`.
pub async fn start(
    config: &crate::config::Config,
    lake: crate::lakehouse::Lakehouse,
    brokers: Option<&str>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> crate::Result<Millstream> {
    let defs =
        crate::pipeline::definition::Definitions::from_config(&config.pipeline.definitions).await?;
    let policies = Arc::new(crate::auth::Policies::load(&config.serve.policies)?);
    let auditor = crate::auth::audit::Auditor::start(
        lake.clone(),
        std::time::Duration::from_secs(1),
        crate::auth::audit::BACKLOG,
        stop.clone(),
    );
    let catalog = LiveCatalog::start(
        lake,
        defs,
        catalog::CatalogOptions::from_config(&config.serve),
        stop,
    )
    .await?;
    let actions = match brokers {
        Some(b) => Some(Arc::new(actions::ActionProducer::new(&config.kafka, b)?)),
        None => None,
    };
    Ok(Millstream::new(
        catalog,
        actions,
        std::time::Duration::from_millis(config.serve.query_timeout_ms),
        policies,
        &config.serve.principal,
    )?
    .with_auditor(auditor))
}
