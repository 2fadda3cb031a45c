//! Per-sensor anomaly detection on a stream of readings.
//!
//! Each sensor keeps a small state ([`SensorState`]): a fast EWMA of the mean and a slower one
//! of the variance, each deviation counted up to `var_clip` σ (the sensor's recent normal: a
//! benign transient under the thresholds must not widen σ and hide the next weak spike), a slow
//! EWMA of the mean (its long-run baseline), the last normal
//! value and the length of the current run of identical values. A reading is checked against
//! four rules, and the strongest finding wins:
//! - **out_of_range**: outside the sensor type's operating range (always critical);
//! - **z_score**: |value − mean| / σ above `z_threshold`;
//! - **rate_of_change**: |value − last normal value| / σ above `roc_threshold`;
//!   both only when the excursion repeats (`confirm` of the last `window` readings) or is
//!   extreme (`z_hard`): real sensors have isolated benign transients of a few σ;
//! - **stuck**: the same value `stuck_run` times in a row (real sensors always jitter);
//! - **drift**: the fast mean has moved `drift_threshold` σ away from the slow baseline.
//!
//! Outliers do not feed the statistics (one spike must not widen the band), but a level shift
//! is accepted after `shift_after` consecutive outliers, so a recalibrated sensor is not flagged
//! forever. Repeated values do not feed them either: a stuck sensor must not shrink σ.
//!
//! The state is plain data, so it can be saved with the batch that produced it and restored on
//! start; the same readings in the same order then give the same findings.

use serde::{Deserialize, Serialize};

use crate::model::events::SensorType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    OutOfRange,
    ZScore,
    RateOfChange,
    Stuck,
    Drift,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::OutOfRange => "out_of_range",
            Rule::ZScore => "z_score",
            Rule::RateOfChange => "rate_of_change",
            Rule::Stuck => "stuck",
            Rule::Drift => "drift",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }
}

/// Detector thresholds: `[signals.anomaly]` of the configuration.
pub use crate::config::AnomalyParams as Params;

/// What the detector remembers about one sensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SensorState {
    pub n: u64,
    pub mean: f64,
    pub var: f64,
    pub slow_mean: f64,
    pub last_normal: f64,
    pub last_value: f64,
    pub same_run: u32,
    pub outlier_run: u32,
    /// The last reading was flagged as drift.
    pub drifting: bool,
    /// Bit i: the reading i steps back was a z-score or rate-of-change excursion.
    pub excursions: u32,
}

/// One anomalous reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub rule: Rule,
    /// Rule-specific strength: σ for z-score, rate of change and drift; run length for stuck;
    /// distance beyond the range in σ for out of range (σ = 1 before warm-up).
    pub score: f64,
    /// What the sensor's recent normal predicted.
    pub expected: f64,
    pub severity: Severity,
}

impl SensorState {
    /// Feeds one reading; returns a finding when it is anomalous.
    pub fn observe(&mut self, value: f64, sensor: SensorType, p: &Params) -> Option<Finding> {
        if self.n == 0 {
            *self = SensorState {
                n: 1,
                mean: value,
                var: 0.0,
                slow_mean: value,
                last_normal: value,
                last_value: value,
                same_run: 1,
                outlier_run: 0,
                drifting: false,
                excursions: 0,
            };
            return range_finding(value, sensor, value, 1.0);
        }
        let sd = self.var.sqrt().max(1e-9);
        let warm = self.n >= p.warmup;
        let expected = self.mean;

        self.same_run = if value == self.last_value {
            self.same_run + 1
        } else {
            1
        };
        self.last_value = value;

        let mut findings: Vec<Finding> = Vec::new();
        if let Some(f) = range_finding(value, sensor, expected, if warm { sd } else { 1.0 }) {
            findings.push(f);
        }
        if self.same_run >= p.stuck_run {
            findings.push(Finding {
                rule: Rule::Stuck,
                score: self.same_run as f64,
                expected,
                severity: Severity::High,
            });
        }
        let z = (value - self.mean) / sd;
        let roc = (value - self.last_normal) / sd;
        let z_hit = warm && z.abs() > p.z_threshold;
        let roc_hit = warm && roc.abs() > p.roc_threshold;
        let excursion = z_hit || roc_hit;
        self.excursions = (self.excursions << 1) | excursion as u32;
        let window_mask = if p.window >= 32 {
            u32::MAX
        } else {
            (1u32 << p.window) - 1
        };
        let confirmed = (self.excursions & window_mask).count_ones() >= p.confirm;
        let extreme = z.abs() >= p.z_hard || roc.abs() >= p.z_hard;
        if confirmed || extreme {
            for (rule, hit, sigmas) in [
                (Rule::ZScore, z_hit, z.abs()),
                (Rule::RateOfChange, roc_hit, roc.abs()),
            ] {
                if hit {
                    findings.push(Finding {
                        rule,
                        score: sigmas,
                        expected,
                        severity: sigma_severity(sigmas),
                    });
                }
            }
        }
        // Unconfirmed excursions are not findings, but they do not feed the statistics either.
        let outlier = !findings.is_empty() || excursion;

        // Update the statistics with informative, normal readings only.
        if outlier {
            self.outlier_run += 1;
            if self.outlier_run >= p.shift_after && self.same_run < p.stuck_run {
                // A level shift: accept the new level as the sensor's normal, short and long run.
                self.mean = value;
                self.slow_mean = value;
                self.last_normal = value;
                self.outlier_run = 0;
            }
        } else {
            self.outlier_run = 0;
            if self.same_run == 1 {
                let d = value - self.mean;
                self.mean += p.alpha_fast * d;
                // The variance: a plain running mean at first (an EWMA from 0 would read σ low
                // for its first 1/α readings), then the EWMA, with each deviation winsorized at
                // `var_clip` σ once warm.
                let a = p.alpha_var.max(1.0 / (self.n + 1) as f64);
                let d = if warm {
                    d.clamp(-p.var_clip * sd, p.var_clip * sd)
                } else {
                    d
                };
                self.var = (1.0 - a) * (self.var + a * d * d);
                // While drifting, the baseline holds still, so it does not follow the drift and
                // the sensor is judged against its old normal when it comes back.
                if !self.drifting {
                    self.slow_mean += p.alpha_slow * (value - self.slow_mean);
                }
                self.last_normal = value;
                self.n += 1;
            }
        }

        self.drifting = false;
        if !outlier && self.n >= p.warmup_drift {
            let drift = (self.mean - self.slow_mean) / sd;
            if drift.abs() > p.drift_threshold {
                self.drifting = true;
                findings.push(Finding {
                    rule: Rule::Drift,
                    score: drift.abs(),
                    expected: self.slow_mean,
                    severity: if drift.abs() > 5.0 {
                        Severity::High
                    } else {
                        Severity::Medium
                    },
                });
            }
        }
        findings.into_iter().max_by(|a, b| {
            (a.severity, a.score)
                .partial_cmp(&(b.severity, b.score))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
    }
}

fn sigma_severity(sigmas: f64) -> Severity {
    if sigmas >= 10.0 {
        Severity::Critical
    } else if sigmas >= 7.0 {
        Severity::High
    } else {
        Severity::Medium
    }
}

fn range_finding(value: f64, sensor: SensorType, expected: f64, sd: f64) -> Option<Finding> {
    let (lo, hi) = sensor.operating_range();
    let beyond = if value > hi {
        value - hi
    } else if value < lo {
        lo - value
    } else {
        return None;
    };
    Some(Finding {
        rule: Rule::OutOfRange,
        score: beyond / sd,
        expected,
        severity: Severity::Critical,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(
        state: &mut SensorState,
        values: impl IntoIterator<Item = f64>,
    ) -> Vec<Option<Finding>> {
        values
            .into_iter()
            .map(|v| state.observe(v, SensorType::Pressure, &Params::default()))
            .collect()
    }

    /// A deterministic jittery signal around `base` with amplitude ~`sd`.
    fn normal(base: f64, sd: f64, n: usize, phase: usize) -> Vec<f64> {
        (0..n)
            .map(|i| base + sd * (((i + phase) * 7919 % 1000) as f64 / 500.0 - 1.0))
            .collect()
    }

    #[test]
    fn clean_signal_raises_nothing() {
        let mut s = SensorState::default();
        let out = feed(&mut s, normal(6.0, 0.15, 2000, 0));
        assert!(
            out.iter().all(Option::is_none),
            "{:?}",
            out.iter().flatten().next()
        );
    }

    #[test]
    fn a_spike_is_flagged_and_does_not_widen_the_band() {
        let mut s = SensorState::default();
        feed(&mut s, normal(6.0, 0.15, 500, 0));
        let var_before = s.var;
        let f = s
            .observe(7.5, SensorType::Pressure, &Params::default())
            .expect("spike");
        assert!(matches!(f.rule, Rule::ZScore | Rule::RateOfChange));
        assert!(f.severity >= Severity::High);
        assert_eq!(s.var, var_before);
        assert!(
            feed(&mut s, normal(6.0, 0.15, 200, 3))
                .iter()
                .all(Option::is_none)
        );
    }

    /// A benign transient just under the z-score threshold feeds the statistics, but counts in
    /// σ only up to `var_clip` σ: the weak spikes that follow (8.5 σ, twice within the window)
    /// are still flagged. Counted in full, the transient widened σ enough to hide them.
    #[test]
    fn a_transient_under_the_threshold_does_not_hide_the_weak_spikes_after_it() {
        let p = Params::default();
        let mut s = SensorState::default();
        feed(&mut s, normal(6.0, 0.15, 500, 0));
        let sigma = s.var.sqrt();
        assert!(
            s.observe(s.mean + 6.0 * sigma, SensorType::Pressure, &p)
                .is_none(),
            "a single 6 σ transient is no finding"
        );
        feed(&mut s, normal(6.0, 0.15, 6, 11));
        let spike = s.mean + 8.5 * sigma;
        let first = s.observe(spike, SensorType::Pressure, &p);
        s.observe(6.0, SensorType::Pressure, &p);
        let second = s.observe(spike, SensorType::Pressure, &p);
        assert!(
            first.is_none(),
            "one excursion alone waits for confirmation"
        );
        assert_eq!(
            second.map(|f| f.rule),
            Some(Rule::ZScore),
            "σ {} → {}",
            sigma,
            s.var.sqrt()
        );
    }

    #[test]
    fn stuck_values_are_flagged_after_the_run_length() {
        let mut s = SensorState::default();
        feed(&mut s, normal(6.0, 0.15, 500, 0));
        let out = feed(&mut s, std::iter::repeat_n(6.02, 8));
        assert!(out[..5].iter().all(Option::is_none));
        assert_eq!(out[5].as_ref().map(|f| f.rule), Some(Rule::Stuck));
    }

    #[test]
    fn out_of_range_is_critical_even_before_warm_up() {
        let mut s = SensorState::default();
        let f = s
            .observe(12.0, SensorType::Pressure, &Params::default())
            .expect("out of range");
        assert_eq!((f.rule, f.severity), (Rule::OutOfRange, Severity::Critical));
    }

    #[test]
    fn a_slow_drift_is_flagged_and_a_level_shift_is_accepted() {
        let mut s = SensorState::default();
        feed(&mut s, normal(6.0, 0.15, 1000, 0));
        let ramp: Vec<f64> = normal(6.0, 0.15, 800, 1)
            .into_iter()
            .enumerate()
            .map(|(i, v)| v + i as f64 * 0.0015)
            .collect();
        let out = feed(&mut s, ramp);
        assert!(
            out.iter().flatten().any(|f| f.rule == Rule::Drift),
            "drift of 8σ went unnoticed"
        );
        // After a shift back, the detector settles instead of flagging every reading.
        let out = feed(&mut s, normal(6.0, 0.15, 400, 5));
        assert!(out[0].is_some(), "the jump back is itself flagged");
        assert!(
            out[100..].iter().all(Option::is_none),
            "{:?}",
            out[100..].iter().flatten().next()
        );
    }
}
