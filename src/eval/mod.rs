//! `millstream eval`: signal quality measured against the simulator's ground truth — the anomaly
//! detector against injected sensor faults ([`anomalies`]), and the shortage and churn pipelines
//! of `pipelines/` against a simulated world's stockouts and quiet customers ([`supply`]), and
//! knowledge search against the questions each document answers ([`search`]), and the agent
//! against labelled conversations ([`agent`]).

pub mod agent;
pub mod anomalies;
pub mod search;
pub mod supply;
