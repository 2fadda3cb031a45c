//! Known faults injected into the telemetry stream, and the ground truth that records them, so
//! anomaly detection is measured against what really happened instead of guessed.
//!
//! A [`FaultPlan`] is drawn up front for a simulated time horizon from its own seeded RNG (the
//! plan never shifts the main event stream: the same seed gives the same events with faults on
//! or off, apart from the faulty values). Each fault hits one device for a window:
//! - **spike**: a few isolated readings far off the baseline (6–12 noise scales);
//! - **drift**: an offset growing linearly to 6–10 noise scales over the window, then a reset;
//! - **stuck**: the sensor repeats its last value for the whole window;
//! - **out_of_range**: readings 10–50 % beyond the sensor's operating limit (a broken probe).

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Spike,
    Drift,
    Stuck,
    OutOfRange,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Spike,
        FaultKind::Drift,
        FaultKind::Stuck,
        FaultKind::OutOfRange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Spike => "spike",
            FaultKind::Drift => "drift",
            FaultKind::Stuck => "stuck",
            FaultKind::OutOfRange => "out_of_range",
        }
    }
}

/// One injected fault: the ground truth for evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub id: String,
    pub kind: FaultKind,
    pub device: usize,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Size in noise scales (the generator's `sd` per sensor type; the noise's standard
    /// deviation is ≈ 0.59 of it): spike height, final drift offset; for
    /// out_of_range the factor over the upper operating limit; 0 for stuck.
    pub magnitude_sd: f64,
}

impl Fault {
    pub fn covers(&self, ts: DateTime<Utc>) -> bool {
        ts >= self.start && ts < self.end
    }
}

/// Faults per device and simulated day, and how long each kind lasts.
#[derive(Debug, Clone)]
pub struct FaultRates {
    pub per_device_day: f64,
}

impl Default for FaultRates {
    fn default() -> Self {
        FaultRates {
            per_device_day: 0.5,
        }
    }
}

/// All faults of a run, sorted by start, with a per-device index.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    faults: Vec<Fault>,
    by_device: Vec<Vec<usize>>,
}

impl FaultPlan {
    /// Draws faults for `devices` over `[start, start + horizon)`. Faults on one device never
    /// overlap, so every anomalous reading has exactly one cause.
    pub fn draw(
        seed: u64,
        devices: usize,
        start: DateTime<Utc>,
        horizon: Duration,
        rates: &FaultRates,
    ) -> FaultPlan {
        // A stream of its own: the plan does not move the event generator's RNG.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6661_756c_7473);
        let days = horizon.num_seconds() as f64 / 86_400.0;
        let mut faults = Vec::new();
        let mut by_device = vec![Vec::new(); devices];
        for (device, own) in by_device.iter_mut().enumerate() {
            let expected = rates.per_device_day * days;
            // Whole faults plus one more with the fractional probability.
            let mut n = expected.floor() as usize;
            if rng.random_bool(expected.fract().clamp(0.0, 1.0)) {
                n += 1;
            }
            // Spread the faults over equal slots so they never overlap on one device.
            let slot = horizon / (n.max(1) as i32);
            for k in 0..n {
                let kind = FaultKind::ALL[rng.random_range(0..FaultKind::ALL.len())];
                let length = match kind {
                    FaultKind::Spike => Duration::minutes(rng.random_range(2..6)),
                    FaultKind::Drift => Duration::minutes(rng.random_range(90..240)),
                    FaultKind::Stuck => Duration::minutes(rng.random_range(30..120)),
                    FaultKind::OutOfRange => Duration::minutes(rng.random_range(10..40)),
                }
                .min(slot / 2);
                let latest = (slot - length).num_seconds().max(1);
                let offset = Duration::seconds(rng.random_range(0..latest));
                let begin = start + slot * (k as i32) + offset;
                let magnitude_sd = match kind {
                    FaultKind::Spike => rng.random_range(6.0..12.0),
                    FaultKind::Drift => rng.random_range(6.0..10.0),
                    FaultKind::Stuck => 0.0,
                    FaultKind::OutOfRange => rng.random_range(1.1..1.5),
                };
                own.push(faults.len());
                faults.push(Fault {
                    id: format!("F-{device:04}-{k}"),
                    kind,
                    device,
                    start: begin,
                    end: begin + length,
                    magnitude_sd,
                });
            }
        }
        FaultPlan { faults, by_device }
    }

    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    fn of_device(&self, device: usize) -> impl Iterator<Item = &Fault> {
        self.by_device
            .get(device)
            .into_iter()
            .flatten()
            .map(|&i| &self.faults[i])
    }

    /// The fault active on `device` at `ts`, if any.
    pub fn active(&self, device: usize, ts: DateTime<Utc>) -> Option<&Fault> {
        self.of_device(device).find(|f| f.covers(ts))
    }

    /// The fault of `device` active at `ts` or ended less than `grace` before it.
    pub fn near(&self, device: usize, ts: DateTime<Utc>, grace: Duration) -> Option<&Fault> {
        self.of_device(device)
            .find(|f| ts >= f.start && ts < f.end + grace)
    }

    /// Whether a fault of `device` ended less than `grace` before `ts` (the sensor returning to
    /// normal).
    pub fn just_ended(&self, device: usize, ts: DateTime<Utc>, grace: Duration) -> bool {
        self.of_device(device)
            .any(|f| ts >= f.end && ts < f.end + grace)
    }
}

/// How a sensor behaves when healthy.
#[derive(Debug, Clone, Copy)]
pub struct Normal {
    pub baseline: f64,
    pub sd: f64,
    pub upper_limit: f64,
}

/// Per-device memory the injector needs (the value a stuck sensor repeats).
#[derive(Debug, Clone, Default)]
pub struct InjectorState {
    stuck_at: Vec<Option<(String, f64)>>,
}

impl InjectorState {
    pub fn new(devices: usize) -> Self {
        InjectorState {
            stuck_at: vec![None; devices],
        }
    }

    /// The reading a faulty sensor reports instead of `clean`; `normal` describes the
    /// sensor's normal behaviour. `draw` is a uniform sample in [0, 1) used for spike sparsity.
    pub fn apply(
        &mut self,
        plan: &FaultPlan,
        device: usize,
        ts: DateTime<Utc>,
        clean: f64,
        normal: &Normal,
        draw: f64,
    ) -> f64 {
        let Normal {
            baseline,
            sd,
            upper_limit,
        } = *normal;
        let Some(fault) = plan.active(device, ts) else {
            self.stuck_at[device] = None;
            return clean;
        };
        match fault.kind {
            // Roughly every third reading in the window spikes, up or down.
            FaultKind::Spike if draw < 0.35 => {
                let sign = if draw < 0.175 { 1.0 } else { -1.0 };
                baseline + sign * fault.magnitude_sd * sd
            }
            FaultKind::Spike => clean,
            FaultKind::Drift => {
                let progress = (ts - fault.start).num_milliseconds() as f64
                    / (fault.end - fault.start).num_milliseconds().max(1) as f64;
                clean + progress * fault.magnitude_sd * sd
            }
            FaultKind::Stuck => match &self.stuck_at[device] {
                Some((id, v)) if *id == fault.id => *v,
                _ => {
                    self.stuck_at[device] = Some((fault.id.clone(), clean));
                    clean
                }
            },
            FaultKind::OutOfRange => upper_limit * fault.magnitude_sd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> FaultPlan {
        let start = "2026-11-01T00:00:00Z".parse().unwrap();
        FaultPlan::draw(7, 240, start, Duration::days(4), &FaultRates::default())
    }

    #[test]
    fn plans_are_deterministic_and_faults_never_overlap_on_a_device() {
        let (a, b) = (plan(), plan());
        assert_eq!(a.faults().len(), b.faults().len());
        assert!(
            a.faults().len() > 300,
            "0.5/device/day × 240 × 4 days ≈ 480"
        );
        for (x, y) in a.faults().iter().zip(b.faults()) {
            assert_eq!(
                (x.kind, x.device, x.start, x.end),
                (y.kind, y.device, y.start, y.end)
            );
        }
        for d in 0..240 {
            let mut mine: Vec<&Fault> = a.faults().iter().filter(|f| f.device == d).collect();
            mine.sort_by_key(|f| f.start);
            for w in mine.windows(2) {
                assert!(w[0].end <= w[1].start, "overlap on device {d}");
            }
        }
        for kind in FaultKind::ALL {
            assert!(a.faults().iter().any(|f| f.kind == kind), "no {kind:?}");
        }
    }

    #[test]
    fn stuck_sensors_repeat_the_value_from_the_fault_start() {
        let p = plan();
        let f = p
            .faults()
            .iter()
            .find(|f| f.kind == FaultKind::Stuck)
            .unwrap()
            .clone();
        let mut st = InjectorState::new(240);
        let n = Normal {
            baseline: 10.0,
            sd: 1.0,
            upper_limit: 20.0,
        };
        let first = st.apply(&p, f.device, f.start, 10.0, &n, 0.5);
        let later = st.apply(&p, f.device, f.start + Duration::seconds(60), 12.3, &n, 0.5);
        assert_eq!(first, 10.0);
        assert_eq!(later, 10.0);
        let after = st.apply(&p, f.device, f.end, 12.3, &n, 0.5);
        assert_eq!(after, 12.3);
    }
}
