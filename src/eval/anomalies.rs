//! Detection quality against ground truth. The simulator's [`FaultPlan`] says which readings
//! were faulty; the detector's findings are scored against it:
//! - a finding inside a fault window of its device is a true positive;
//! - a finding within `grace` after a window ends (the sensor returning to normal) is neither
//!   counted for nor against;
//! - any other finding is a false positive;
//! - a fault is detected when at least one finding falls inside its window; the detection delay
//!   is the time from the fault's start to the first such finding.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::broker::topics;
use crate::config::SimulateConfig;
use crate::model::events::TelemetryReading;
use crate::signals::anomaly::{Params, Rule, SensorState};
use crate::sim::faults::{FaultKind, FaultPlan, FaultRates};
use crate::sim::stream::Generator;

#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    pub injected: usize,
    pub detected: usize,
    pub recall: f64,
    pub delay_p50_s: Option<i64>,
    pub delay_p90_s: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    pub findings: usize,
    pub true_positives: usize,
    pub false_positives: usize,
    pub precision: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnomalyReport {
    pub signal: &'static str,
    pub simulated_hours: f64,
    pub readings: u64,
    pub faults: usize,
    pub findings: usize,
    pub true_positives: usize,
    pub false_positives: usize,
    pub in_grace: usize,
    pub precision: f64,
    pub recall: f64,
    pub by_fault: BTreeMap<&'static str, KindReport>,
    pub by_rule: BTreeMap<&'static str, RuleReport>,
}

/// Streams `hours` of simulated telemetry with faults through the detector and scores it.
pub fn anomalies(
    cfg: &SimulateConfig,
    params: &Params,
    hours: f64,
    progress: impl Fn(f64),
) -> AnomalyReport {
    let start = cfg.start;
    let horizon = Duration::seconds((hours * 3600.0) as i64);
    let plan = FaultPlan::draw(
        cfg.seed,
        cfg.devices,
        start,
        horizon,
        &FaultRates::default(),
    );
    let mut generator = Generator::new(cfg, "eval", start, cfg.rate)
        .with_malformed_ratio(0.0)
        .with_faults(plan.clone());
    let mut states = vec![SensorState::default(); cfg.devices];
    let mut findings: Vec<(usize, DateTime<Utc>, Rule)> = Vec::new();
    let mut readings = 0u64;
    let end = start + horizon;
    let mut next_progress = start + Duration::hours(1);
    while generator.now() < end {
        let e = generator.next_event();
        if e.topic != topics::TELEMETRY {
            continue;
        }
        let r: TelemetryReading =
            serde_json::from_slice(&e.payload).expect("generator emits valid telemetry");
        let d = device_index(&r.device_id);
        readings += 1;
        if let Some(f) = states[d].observe(r.value, r.sensor_type, params) {
            findings.push((d, r.ts, f.rule));
        }
        if r.ts >= next_progress {
            progress((r.ts - start).num_seconds() as f64 / 3600.0);
            next_progress += Duration::hours(1);
        }
    }
    score(&plan, &findings, readings, hours, Duration::minutes(30))
}

fn device_index(id: &str) -> usize {
    id.trim_start_matches("DEV-")
        .parse::<usize>()
        .expect("DEV-nnnn")
        - 1
}

/// Scores findings `(device, time, rule)` against the plan.
pub fn score(
    plan: &FaultPlan,
    findings: &[(usize, DateTime<Utc>, Rule)],
    readings: u64,
    hours: f64,
    grace: Duration,
) -> AnomalyReport {
    let (mut tp, mut fp, mut grace_n) = (0, 0, 0);
    let mut by_rule: BTreeMap<&'static str, (usize, usize, usize)> = BTreeMap::new();
    let mut first_hit: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    for &(device, ts, rule) in findings {
        let entry = by_rule.entry(rule.as_str()).or_default();
        entry.0 += 1;
        if let Some(f) = plan.active(device, ts) {
            tp += 1;
            entry.1 += 1;
            first_hit
                .entry(f.id.as_str())
                .and_modify(|t| *t = (*t).min(ts))
                .or_insert(ts);
        } else if plan.just_ended(device, ts, grace) {
            grace_n += 1;
        } else {
            fp += 1;
            entry.2 += 1;
        }
    }
    let mut by_fault = BTreeMap::new();
    for kind in FaultKind::ALL {
        let faults: Vec<_> = plan.faults().iter().filter(|f| f.kind == kind).collect();
        let mut delays: Vec<i64> = faults
            .iter()
            .filter_map(|f| {
                first_hit
                    .get(f.id.as_str())
                    .map(|t| (*t - f.start).num_seconds())
            })
            .collect();
        delays.sort_unstable();
        let pct = |q: f64| {
            delays
                .get(((delays.len() as f64 * q) as usize).min(delays.len().saturating_sub(1)))
                .copied()
        };
        by_fault.insert(
            kind.as_str(),
            KindReport {
                injected: faults.len(),
                detected: delays.len(),
                recall: ratio(delays.len(), faults.len()),
                delay_p50_s: pct(0.5),
                delay_p90_s: pct(0.9),
            },
        );
    }
    let detected: usize = by_fault.values().map(|k| k.detected).sum();
    AnomalyReport {
        signal: "anomalies",
        simulated_hours: hours,
        readings,
        faults: plan.faults().len(),
        findings: findings.len(),
        true_positives: tp,
        false_positives: fp,
        in_grace: grace_n,
        precision: ratio(tp, tp + fp),
        recall: ratio(detected, plan.faults().len()),
        by_fault,
        by_rule: by_rule
            .into_iter()
            .map(|(k, (n, t, f))| {
                (
                    k,
                    RuleReport {
                        findings: n,
                        true_positives: t,
                        false_positives: f,
                        precision: ratio(t, t + f),
                    },
                )
            })
            .collect(),
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        ((a as f64 / b as f64) * 10_000.0).round() / 10_000.0
    }
}
