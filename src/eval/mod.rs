//! `millstream eval`: signal quality measured against the simulator's ground truth — the anomaly
//! detector against injected sensor faults ([`anomalies`]), and the shortage and churn pipelines
//! of `pipelines/` against a simulated world's stockouts and quiet customers ([`supply`]), and
//! knowledge search against the questions each document answers ([`search`]), and the agent
//! against labelled conversations ([`agent`]).

pub mod agent;
pub mod anomalies;
pub mod mlflow;
pub mod search;
pub mod supply;

/// The `q` quantile of ascending `sorted` by nearest rank (0 when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// Latency summary of `v` (ms): count, p50, p95, p99 and max, one decimal.
pub fn percentiles(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    let pct = |q: f64| percentile(&v, q);
    let r = |x: f64| (x * 10.0).round() / 10.0;
    serde_json::json!({
        "n": v.len(),
        "p50_ms": r(pct(0.50)),
        "p95_ms": r(pct(0.95)),
        "p99_ms": r(pct(0.99)),
        "max_ms": r(v.last().copied().unwrap_or(0.0)),
    })
}
