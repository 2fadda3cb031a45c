//! Pipelines: the micro-batch runner ([`runner`]) that turns source partitions into exactly-once
//! commits on the sink tables.

pub mod runner;

pub use runner::{PipelineOptions, RunStats, run, run_with_restarts};
