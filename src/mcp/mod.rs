//! The MCP server (DESIGN §5): tools with typed inputs and schema-described outputs over the
//! live tables, resources with update notifications, persona prompts, and actions that go back
//! to Kafka. Served over streamable HTTP at `/mcp` (see [`crate::serve`]) and over stdio.
//!
//! - [`catalog`]: the tables at their latest versions, refreshed in the background; `as_of`.
//! - [`server`]: the server object: principal, persona's tools, queries under the timeout.
//! - [`handler`]: the MCP protocol: calls, listings, resources, prompts, per caller, audited.
//! - [`args`], [`query`]: argument checks and errors; the parameterized query builder.
//! - [`tools`]: one file per tool family.
//! - [`actions`]: the action tools (orders, tickets), checked and sent ([`crate::actions`]).
//! - [`resources`], [`prompts`].

pub mod actions;
pub mod answers;
pub mod args;
pub mod catalog;
pub mod consistency;
mod handler;
pub mod plans;
pub mod prompts;
pub mod query;
pub mod resources;
pub mod server;
mod tail;
pub mod tools;

/// The tools that are actions (they send events), as audited.
pub const ACTION_TOOLS: [&str; 3] = ["create_order", "create_ticket", "update_ticket_resolution"];

use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

pub use catalog::{AsOf, CatalogOptions, LiveCatalog};
pub use server::Millstream;

/// Browser origins `/mcp` accepts when `serve.allowed_origins` is empty: the loopback ones.
pub const LOOPBACK_ORIGINS: [&str; 3] =
    ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"];

/// Whether a browser `origin` may call: one of `allowed`, or of [`LOOPBACK_ORIGINS`] when
/// `allowed` is empty.
pub fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        LOOPBACK_ORIGINS.iter().any(|a| origin_matches(origin, a))
    } else {
        allowed.iter().any(|a| origin_matches(origin, a))
    }
}

/// Whether `origin` is `pattern` (`scheme://host[:port]`, or `scheme://host:*` for any port).
pub fn origin_matches(origin: &str, pattern: &str) -> bool {
    match pattern.strip_suffix(":*") {
        Some(base) => {
            origin == base
                || origin
                    .strip_prefix(base)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .is_some_and(|port| {
                        !port.is_empty() && port.chars().all(|c| c.is_ascii_digit())
                    })
        }
        None => origin == pattern,
    }
}

/// The streamable HTTP endpoint: one [`Millstream`] per MCP session, sharing the catalog, its
/// sessions kept by `sessions`. `allowed_hosts` guards against DNS rebinding (loopback names by
/// default); a request carrying an `Origin` header must name one of `allowed_origins` (the
/// MCP transport spec's MUST), or one of [`LOOPBACK_ORIGINS`] when that is empty.
pub fn http_service(
    server: Millstream,
    sessions: Arc<LocalSessionManager>,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    cancel: tokio_util::sync::CancellationToken,
) -> StreamableHttpService<Millstream, LocalSessionManager> {
    let origins = if allowed_origins.is_empty() {
        LOOPBACK_ORIGINS.iter().map(|o| o.to_string()).collect()
    } else {
        allowed_origins
    };
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(allowed_hosts)
        .with_allowed_origins(origins)
        .enforce_origin_validation()
        .with_cancellation_token(cancel);
    StreamableHttpService::new(move || Ok(server.for_session()), sessions, config)
}

/// `client` connected to a new session of `server` in this process, over an in-memory pipe: the
/// protocol, checks and audit of any MCP client, without a socket (the agent's in-process
/// server, the console's reads, tests).
pub async fn connect_in_process<C: rmcp::ClientHandler>(
    server: &Millstream,
    client: C,
) -> Result<rmcp::service::RunningService<rmcp::RoleClient, C>, rmcp::service::ClientInitializeError>
{
    use rmcp::ServiceExt;
    let (server_end, client_end) = tokio::io::duplex(1 << 20);
    let server = server.for_session();
    tokio::spawn(async move {
        if let Ok(running) = server.serve(server_end).await {
            let _ = running.waiting().await;
        }
    });
    client.serve(client_end).await
}

/// Serves one client on stdin/stdout until it disconnects.
pub async fn serve_stdio(server: Millstream) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let running = server.for_session().serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}

/// Where the MCP server's background tasks run: the catalog refresher stops with `serving`,
/// the audit writer with `last` (after the HTTP server, so its last calls are recorded).
pub struct Stages<'a> {
    pub serving: &'a crate::supervise::Stage,
    pub last: &'a crate::supervise::Stage,
}

/// The MCP server over `lake`: its catalog (every table loaded once, then followed), its audit
/// log and, with a broker, its action producer; the refresher and the audit writer run under
/// `sup` in `stages`.
pub async fn start(
    config: &crate::config::Config,
    lake: crate::lakehouse::Lakehouse,
    brokers: Option<&str>,
    sup: &mut crate::supervise::Supervisor,
    stages: Stages<'_>,
) -> crate::Result<Millstream> {
    let defs =
        crate::pipeline::definition::Definitions::from_config(&config.pipeline.definitions).await?;
    let mut policies = crate::auth::Policies::load(&config.serve.policies)?;
    if !config.auth.mask_key.expose().is_empty() {
        policies = policies.with_mask_key(config.auth.mask_key.expose().as_bytes());
    } else if policies.hashes() {
        tracing::warn!(
            "hash masks use a key made for this process: set auth.mask_key for digests that \
             stay the same across restarts and replicas"
        );
    }
    let policies = Arc::new(policies);
    let (auditor, writer) = crate::auth::audit::Auditor::new(
        lake.clone(),
        std::time::Duration::from_secs(1),
        crate::auth::audit::BACKLOG,
    );
    let here = tokio::runtime::Handle::current();
    sup.spawn_once("audit writer", stages.last, &here, move |stop| {
        writer.run(stop)
    });
    let catalog = LiveCatalog::open(
        lake,
        defs,
        catalog::CatalogOptions::from_config(&config.serve),
    )
    .await?;
    let follower = catalog.clone();
    sup.spawn(
        "catalog refresher",
        stages.serving,
        crate::supervise::Policy::Restart { max: 5 },
        &here,
        move |stop| {
            let follower = follower.clone();
            async move { follower.follow(stop).await }
        },
    );
    let knowledge = start_knowledge(config, &catalog, sup, stages.serving);
    let actions = match brokers {
        Some(b) => Some(Arc::new(crate::actions::ActionProducer::new(
            &config.kafka,
            b,
        )?)),
        None => None,
    };
    Ok(Millstream::new(
        catalog,
        actions,
        std::time::Duration::from_millis(config.serve.query_timeout_ms),
        policies,
        &config.serve.principal,
    )?
    .with_query_limits(crate::governed::Limits::from_config(&config.serve))
    .with_knowledge(knowledge)
    .with_catch_up(std::time::Duration::from_millis(config.serve.catch_up_ms))
    .with_auditor(auditor))
}

/// Knowledge search for the server (`knowledge.enabled`): the model, and the index followed under
/// `sup` on the serving runtime, like the catalog: a document edit is searchable within a second
/// even while stream processing keeps the cores busy. Bulk embedding (building the index, which
/// may embed a whole corpus once) runs on its own threads at the background priority. Without
/// the model the server still starts, and callers of the knowledge tools are told what to
/// install.
fn start_knowledge(
    config: &crate::config::Config,
    catalog: &LiveCatalog,
    sup: &mut crate::supervise::Supervisor,
    stage: &crate::supervise::Stage,
) -> Result<Arc<crate::knowledge::Knowledge>, Arc<str>> {
    if !config.knowledge.enabled {
        return Err(
            "knowledge search is turned off on this server (knowledge.enabled = false)".into(),
        );
    }
    let knowledge =
        match crate::knowledge::Knowledge::open(catalog.lake().clone(), &config.knowledge) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "knowledge search is not available");
                return Err(
                    format!("knowledge search is not available on this server: {e}").into(),
                );
            }
        };
    let every = std::time::Duration::from_millis(config.serve.refresh_ms);
    let follower = knowledge.clone();
    sup.spawn(
        "knowledge index",
        stage,
        crate::supervise::Policy::Restart { max: 5 },
        &tokio::runtime::Handle::current(),
        move |stop| follower.clone().follow(every, stop),
    );
    Ok(knowledge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_with_any_port() {
        let none: Vec<String> = Vec::new();
        assert!(origin_allowed("http://localhost:3000", &none));
        assert!(origin_allowed("http://127.0.0.1", &none));
        assert!(!origin_allowed("http://localhost.evil.com", &none));
        assert!(!origin_allowed("http://localhost:3000x", &none));
        assert!(!origin_allowed("https://evil.example", &none));
        let some = vec!["https://console.example".to_string()];
        assert!(origin_allowed("https://console.example", &some));
        assert!(!origin_allowed("https://console.example:8443", &some));
        assert!(!origin_allowed("http://localhost:3000", &some));
    }
}
