//! Pipelines: the micro-batch runner ([`runner`]) that turns source partitions into exactly-once
//! commits on the sink tables.

pub mod definition;
pub mod derive;
pub mod publish;
pub mod runner;
pub mod session;
pub mod udf;

pub use runner::{PipelineOptions, RunStats, run, run_with_restarts};
