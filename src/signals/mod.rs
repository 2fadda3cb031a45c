//! Signals computed from the event streams: anomalies on machine sensors ([`anomaly`]), and the
//! measurement of their quality against the simulator's injected faults ([`eval`]).

pub mod anomaly;
pub mod eval;
pub mod eval_supply;
pub mod iot;
