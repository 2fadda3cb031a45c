//! Signals computed from the event streams inside the micro-batch worker: anomalies on machine
//! sensors ([`anomaly`]: the detector; [`iot`]: its pipeline stage, state and tables). Signals
//! written as SQL are `pipelines/` definitions ([`crate::pipeline`]); their quality is measured
//! in [`crate::eval`].

pub mod anomaly;
pub mod iot;
