//! millstream turns a factory's event streams into fresh, governed signals.
//!
//! Module map (DESIGN §7):
//! - [`config`]: layered configuration, validated all at once.
//! - [`model`]: event types (JSON Schemas) and table definitions (Delta and Arrow schemas).
//! - [`broker`]: Kafka client settings, topics, the embedded broker.
//! - [`source`]: Kafka consumer → micro-batches; positions come from Delta.
//! - [`decode`]: bytes → Arrow, validation, dead letters.
//! - [`lakehouse`]: tables, exactly-once commits with `txn`, Change Data Feed, maintenance.
//! - [`pipeline`]: the micro-batch runner.
//! - [`sim`]: reference data and live streams on a simulated clock.
//! - [`mcp`]: the MCP server: tools, resources, prompts, actions over the live tables.
//! - [`auth`]: identity, policies, and their enforcement inside the query engine.
//! - [`governed`]: callers' SQL as hostile code: checks, sandbox, limits.
//! - [`serve`]: HTTP: `/mcp`, `/metrics`, `/healthz`.
//! - [`telemetry`]: logging and named internal events (metrics).
//! - [`cli`], [`up`], [`bench`]: commands.

pub mod auth;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod decode;
pub mod error;
pub mod governed;
pub mod lakehouse;
pub mod mcp;
pub mod model;
pub mod pipeline;
pub mod runtime;
pub mod serve;
pub mod signals;
pub mod sim;
pub mod source;
pub mod telemetry;
pub mod up;

pub use error::{Error, Result};
