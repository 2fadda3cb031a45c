//! millstream turns a factory's event streams into fresh, governed signals.
//!
//! Module map (DESIGN §7), in the order data flows:
//! - [`config`]: layered configuration, validated all at once.
//! - [`model`]: event types (JSON Schemas) and table definitions (Delta and Arrow schemas,
//!   roles, event time, source topics).
//! - [`broker`]: Kafka client settings, topics, the embedded broker.
//! - [`source`]: Kafka consumer → micro-batches; positions come from Delta.
//! - [`decode`]: bytes → Arrow, validation, dead letters.
//! - [`signals`]: the anomaly detector the micro-batch worker runs.
//! - [`lakehouse`]: tables, exactly-once commits with `txn`, Change Data Feed, maintenance.
//! - [`pipeline`]: the micro-batch worker, `pipelines/` definitions, derived signals, the alerts
//!   publisher, DataFusion sessions and functions.
//! - [`sim`]: reference data and live streams on a simulated clock, with injected faults.
//! - [`actions`]: agent actions → events, idempotency.
//! - [`auth`]: identity, policies, and their enforcement inside the query engine.
//! - [`governed`]: callers' SQL as hostile code: checks, sandbox, limits.
//! - [`knowledge`]: document search: chunks, embeddings (candle), hybrid keyword + vector index.
//! - [`mcp`]: the MCP server: tools, resources, prompts, actions over the live tables.
//! - [`agent`]: the MCP-client orchestrator a language model drives for a user: tools of
//!   several servers, confirmations, memory in Delta, a scripted model for tests.
//! - [`web`]: the console: both personas' pages, live over server-sent events, through an
//!   in-process MCP client per principal.
//! - [`serve`]: HTTP: `/mcp`, `/console`, `/agent/turn`, `/metrics`, `/healthz`, `/readyz`.
//! - [`eval`]: signal quality against the simulator's ground truth.
//! - [`supervise`]: one supervision tree per process; [`runtime`]: where work runs.
//! - [`telemetry`]: logging and named internal events (metrics).
//! - [`cli`], [`cmd`]: the command line and one module per command.
//!
//! Dependencies point down this list, never back up: `tests/it/modules.rs` fails on a cycle.

pub mod actions;
pub mod agent;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod decode;
pub mod error;
pub mod eval;
pub mod governed;
pub mod knowledge;
pub mod lakehouse;
pub mod mcp;
pub mod model;
pub mod pipeline;
pub mod runtime;
pub mod serve;
pub mod signals;
pub mod sim;
pub mod source;
pub mod supervise;
pub mod telemetry;
pub mod web;

pub use error::{Error, Result};
