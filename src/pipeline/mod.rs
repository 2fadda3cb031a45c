//! Pipelines: the micro-batch [`worker`] that turns source partitions into exactly-once commits
//! on the sink tables; the [`definition`]s of `pipelines/` (micro-batch MERGEs and derived
//! signals); the [`derive`]r that recomputes derived signals when their inputs change; the
//! alerts [`publish`]er; the DataFusion [`session`]s and millstream functions ([`udf`]) their
//! SQL runs in.

pub mod dedup;
pub mod definition;
pub mod derive;
pub mod incremental;
pub mod publish;
pub mod session;
pub mod udf;
pub mod worker;

pub use worker::{Observer, PipelineOptions, RunStats, StopAfter, run, run_with_restarts};
