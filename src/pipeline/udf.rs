//! SQL functions for pipelines and queries: the brief's `predict_shortage` and `predict_churn`,
//! and `score_lead`, computed from the numbers the SQL hands them (which pipelines take from live
//! tables). Their thresholds are configuration (`[signals.shortage]`, `[signals.churn]`,
//! `[signals.lead]` of [`SignalsConfig`]); the values below are the shipped ones.
//!
//! - `predict_shortage(available, daily_usage, inbound_expected, lead_time_days)` →
//!   `{days_of_cover, risk_level}`. Cover is `(available + inbound_expected) / daily_usage` days
//!   (NULL when nothing is used). Risk against the lead time `L`: CRITICAL when out of stock or
//!   cover < L (an order placed now arrives too late); HIGH when cover < L + 3 days
//!   (`high_margin_days`: most of a week's safety margin gone with nothing inbound in time);
//!   MEDIUM when cover < L + 7 days (`medium_margin_days`: at the reorder point, order now);
//!   else LOW.
//! - `predict_churn(purchase_ages_days, spend_trend)` → `{churn_probability, risk_level,
//!   factors}`, from the ages in days of the customer's purchases (an array, e.g. from
//!   `array_agg`). A customer churning is one whose rhythm breaks: purchases as a Poisson process
//!   whose rate fell to a tenth (`rate_drop`) at some moment 30 to 90 days ago
//!   (`lookback_from_days`, `lookback_to_days`: gone quiet means a slowdown that has lasted a
//!   month; a shorter silence is too often chance), against one buying at a steady rate. The
//!   probability is the posterior of a break at even prior odds (the Bayes factor `B` as
//!   `B / (1 + B)`; see [`rhythm_break`]), so it is judged against the customer's own rhythm
//!   without guessing it: weekly buyers silent for a month break, monthly buyers do not, and a
//!   recent order does not hide orders thinning out. Risk: CRITICAL ≥ 0.9 (the data favour a
//!   break 9 : 1), HIGH ≥ 0.2 (odds of 1 : 4 for a break: few customers churn, and a missed one
//!   costs more than a call; the operating point of `eval signals`' churn sweep that keeps recall
//!   ≥ 0.9 at a false-positive rate ≤ 0.08 on every seed), MEDIUM ≥ 0.1, else LOW. Fewer than
//!   three purchases is no rhythm: MEDIUM when the last is over 60 days old, else LOW; no
//!   purchases at all is HIGH (each at its tier's threshold). A spend trend under 0.5 is reported
//!   as a factor.
//! - `score_lead(purchase_ages_days, spend_trend)` → `{lead_score, tier, drivers}`: the mirror
//!   image of churn, for the sales rep's lead list. A lead is a customer whose rhythm quickened:
//!   the rate rose 3-fold (`rate_rise`) 14 to 60 days ago (`lookback_from_days`,
//!   `lookback_to_days`: a few orders in quick succession are chance, not a new rhythm), against
//!   a steady rate, scored as the same posterior. Tier: HOT ≥ 0.9, WARM ≥ 0.7 (a lead is rarer
//!   than a steady customer, so the bar is above even odds), else COLD; fewer than three
//!   purchases is no rhythm (COLD). A spend trend of 1.5 or more is reported as a driver.

use std::sync::{Arc, RwLock};

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray, StructArray};
use arrow::datatypes::Float64Type;
use arrow::datatypes::{DataType, Field, Fields};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

use crate::config::{ChurnParams, LeadParams, ShortageParams, SignalsConfig};

/// The thresholds the functions judge by: `[signals]` of this process's configuration, once
/// [`install`]ed (the built-in defaults, which are the shipped configuration's, until then).
static INSTALLED: RwLock<Option<Arc<SignalsConfig>>> = RwLock::new(None);

/// Makes `signals`' thresholds the ones every session registered from now on judges by. The
/// command line installs the loaded configuration before it builds any session.
pub fn install(signals: &SignalsConfig) {
    *INSTALLED.write().expect("poisoned") = Some(Arc::new(signals.clone()));
}

pub(crate) fn installed() -> Arc<SignalsConfig> {
    INSTALLED
        .read()
        .expect("poisoned")
        .clone()
        .unwrap_or_default()
}

/// Registers every millstream SQL function on `ctx`, judging by the installed thresholds.
pub fn register(ctx: &SessionContext) {
    register_with(ctx, installed());
}

/// Registers every millstream SQL function on `ctx`, judging by `thresholds`.
pub fn register_with(ctx: &SessionContext, thresholds: Arc<SignalsConfig>) {
    ctx.register_udf(predict_shortage(thresholds.clone()));
    ctx.register_udf(predict_churn(thresholds.clone()));
    ctx.register_udf(score_lead(thresholds));
}

/// Risk of a shortage from cover and lead time (see the module docs).
pub fn shortage_risk(
    available: f64,
    cover: Option<f64>,
    lead_time_days: f64,
    t: &ShortageParams,
) -> &'static str {
    match cover {
        _ if available <= 0.0 => "CRITICAL",
        None => "LOW",
        Some(c) if c < lead_time_days => "CRITICAL",
        Some(c) if c < lead_time_days + t.high_margin_days => "HIGH",
        Some(c) if c < lead_time_days + t.medium_margin_days => "MEDIUM",
        Some(_) => "LOW",
    }
}

/// A judgement of a customer's purchase rhythm: probability, level, reasons.
pub type Judgement = (f64, &'static str, String);

/// Churn probability, risk and factors from the ages (days before now) of a customer's
/// purchases, and the spend trend (see the module docs).
pub fn churn(purchase_ages: &[f64], spend_trend: Option<f64>, t: &ChurnParams) -> Judgement {
    let ages = oldest_first(purchase_ages);
    let Some(&recency) = ages.last() else {
        return (t.high, "HIGH", "no purchases on record".into());
    };
    let mut factors = vec![format!("{recency:.0} days since the last order")];
    if let Some(t) = spend_trend.filter(|t| *t < 0.5) {
        factors.push(format!(
            "spend in the last 30 days at {:.0} % of normal",
            t * 100.0
        ));
    }
    if ages.len() < 3 {
        let orders = if ages.len() == 1 {
            "one order"
        } else {
            "two orders"
        };
        factors.push(format!("only {orders} on record: no rhythm yet"));
        // No rhythm to judge against: the tier's own threshold, so the probability still
        // orders customers as their tiers do.
        let (p, risk) = if recency > 60.0 {
            (t.medium, "MEDIUM")
        } else {
            (t.medium / 2.0, "LOW")
        };
        return (p, risk, factors.join("; "));
    }
    let brk = rhythm_break(&ages, t.rate_drop, t.lookback_from_days..t.lookback_to_days);
    let p = brk.bayes_factor / (1.0 + brk.bayes_factor);
    if p >= t.medium {
        // The usual rhythm: the rate before the break.
        let before = (ages.len() - 1 - brk.orders_since).max(1) as f64;
        let interval = (ages[0] - brk.since_days) / before;
        factors.insert(
            1,
            format!(
                "{} orders in the last {:.0} days where about {:.1} were usual (one every {interval:.1} days)",
                brk.orders_since,
                brk.since_days,
                brk.since_days / interval
            ),
        );
    } else {
        let interval = (ages[0] - recency) / (ages.len() - 1) as f64;
        factors.insert(
            1,
            format!("ordering in rhythm, about every {interval:.1} days"),
        );
    }
    let risk = match p {
        p if p >= t.critical => "CRITICAL",
        p if p >= t.high => "HIGH",
        p if p >= t.medium => "MEDIUM",
        _ => "LOW",
    };
    ((p * 1000.0).round() / 1000.0, risk, factors.join("; "))
}

/// Purchase ages (days before now), finite and not negative, oldest first.
fn oldest_first(purchase_ages: &[f64]) -> Vec<f64> {
    let mut ages: Vec<f64> = purchase_ages
        .iter()
        .copied()
        .filter(|a| a.is_finite())
        .map(|a| a.max(0.0))
        .collect();
    ages.sort_by(|a, b| b.total_cmp(a));
    ages
}

/// Lead score, tier and drivers from the ages (days before now) of a customer's purchases and
/// the spend trend (see the module docs).
pub fn lead(purchase_ages: &[f64], spend_trend: Option<f64>, t: &LeadParams) -> Judgement {
    let ages = oldest_first(purchase_ages);
    let Some(&recency) = ages.last() else {
        return (0.0, "COLD", "no purchases on record".into());
    };
    if ages.len() < 3 {
        return (
            0.0,
            "COLD",
            format!("{} orders on record: no rhythm yet", ages.len()),
        );
    }
    let brk = rhythm_break(&ages, t.rate_rise, t.lookback_from_days..t.lookback_to_days);
    let p = brk.bayes_factor / (1.0 + brk.bayes_factor);
    let mut drivers = Vec::new();
    if p >= 0.5 {
        let before = (ages.len() - 1 - brk.orders_since).max(1) as f64;
        let interval = (ages[0] - brk.since_days) / before;
        drivers.push(format!(
            "{} orders in the last {:.0} days where about {:.1} were usual (one every {interval:.1} days)",
            brk.orders_since,
            brk.since_days,
            brk.since_days / interval
        ));
    } else {
        let month = ages.iter().filter(|a| **a < 30.0).count();
        let usual = 30.0 * (ages.len() - 1) as f64 / ages[0].max(30.0);
        drivers.push(format!(
            "{month} orders in the last 30 days where about {usual:.1} are usual: no quickening"
        ));
    }
    if let Some(t) = spend_trend.filter(|t| *t >= 1.5) {
        drivers.push(format!(
            "spend in the last 30 days at {:.0} % of normal",
            t * 100.0
        ));
    }
    drivers.push(format!("{recency:.0} days since the last order"));
    let tier = match p {
        p if p >= t.hot => "HOT",
        p if p >= t.warm => "WARM",
        _ => "COLD",
    };
    ((p * 1000.0).round() / 1000.0, tier, drivers.join("; "))
}

/// The evidence that a customer's purchases broke rhythm.
struct RhythmBreak {
    /// Odds that the rate changed to `ratio` times its former value at some moment in the
    /// look-back window, against a steady rate.
    bayes_factor: f64,
    /// The likeliest moment of the break (days ago) and the orders since.
    since_days: f64,
    orders_since: usize,
}

/// Purchases as a Poisson process observed from the first purchase (`ages` sorted oldest
/// first, at least two): steady at rate λ, or at λ until a moment τ `lookback` days ago and
/// at ρλ after (ρ = `ratio`: below 1 a slowdown, above 1 a quickening). With λ at
/// its most likely value under each, the likelihood ratio for a break at τ is
/// `(S / E(τ))^m · ρ^k(τ)`, where `m` purchases follow the first over the span `S`, `k(τ)` of
/// them after τ, and `E(τ) = (S − (T − τ)) + ρ (T − τ)` is the exposure the break leaves. The
/// Bayes factor averages it over τ uniform on the look-back window (two points per day). The
/// rate itself never needs estimating, so a customer with little history is not judged by a
/// guess at their interval.
///
/// A history shorter than the window's start leaves no room for a break that long ago: the
/// Bayes factor is 0 (nothing favours a break), not the 1 of a window of zero width.
fn rhythm_break(ages: &[f64], ratio: f64, lookback: std::ops::Range<f64>) -> RhythmBreak {
    let span = ages[0];
    let m = (ages.len() - 1) as f64;
    if span <= lookback.start {
        return RhythmBreak {
            bayes_factor: 0.0,
            since_days: span,
            orders_since: 0,
        };
    }
    let from = lookback.start.min(span);
    let window = span.min(lookback.end) - from;
    let steps = ((window * 2.0).ceil() as usize).max(1);
    let (mut total, mut best) = (0.0, (f64::NEG_INFINITY, 0.0, 0));
    for i in 0..steps {
        let since = from + window * (i as f64 + 0.5) / steps as f64;
        // Purchases after the break (ages are sorted oldest first; the first is the origin).
        let k = ages.len() - 1 - ages[1..].partition_point(|a| *a >= since);
        let exposure = (span - since) + ratio * since;
        let log_lr = m * (span / exposure).ln() + k as f64 * ratio.ln();
        total += log_lr.min(700.0).exp();
        if log_lr > best.0 {
            best = (log_lr, since, k);
        }
    }
    RhythmBreak {
        bayes_factor: total / steps as f64,
        since_days: best.1,
        orders_since: best.2,
    }
}

/// A row-at-a-time SQL function returning a struct: the shape the functions share.
#[derive(Debug)]
struct StructUdf {
    name: &'static str,
    signature: Signature,
    fields: Fields,
    thresholds: Arc<SignalsConfig>,
    /// Columns of the result, computed from the argument columns by the thresholds.
    compute: fn(&SignalsConfig, &[ArrayRef]) -> Result<Vec<ArrayRef>>,
}

// A function is identified by its name and thresholds (function pointers have no meaningful
// identity). The thresholds are finite (the configuration checks them), so equality is total.
impl PartialEq for StructUdf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.thresholds == other.thresholds
    }
}

impl Eq for StructUdf {}

impl std::hash::Hash for StructUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl StructUdf {
    /// A ScalarUDF computing `fields` as one struct from `arity` arguments.
    fn udf(
        name: &'static str,
        arity: usize,
        fields: Vec<Field>,
        thresholds: Arc<SignalsConfig>,
        compute: fn(&SignalsConfig, &[ArrayRef]) -> Result<Vec<ArrayRef>>,
    ) -> ScalarUDF {
        ScalarUDF::from(StructUdf {
            name,
            signature: Signature::any(arity, Volatility::Immutable),
            fields: Fields::from(fields),
            thresholds,
            compute,
        })
    }
}

impl ScalarUDFImpl for StructUdf {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(self.fields.clone()))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let columns = (self.compute)(&self.thresholds, &arrays)?;
        Ok(ColumnarValue::Array(Arc::new(StructArray::try_new(
            self.fields.clone(),
            columns,
            None,
        )?)))
    }
}

/// A numeric argument as DOUBLE.
fn floats(a: &ArrayRef) -> Result<Float64Array> {
    let c = arrow::compute::cast(a, &DataType::Float64)?;
    Ok(c.as_primitive::<Float64Type>().clone())
}

fn get(a: &Float64Array, i: usize) -> Option<f64> {
    (!a.is_null(i)).then(|| a.value(i))
}

fn predict_shortage(thresholds: Arc<SignalsConfig>) -> ScalarUDF {
    StructUdf::udf(
        "predict_shortage",
        4,
        vec![
            Field::new("days_of_cover", DataType::Float64, true),
            Field::new("risk_level", DataType::Utf8, false),
        ],
        thresholds,
        |t, a| {
            let [avail, usage, inbound, lead] = [0, 1, 2, 3].map(|i| floats(&a[i]));
            let (avail, usage, inbound, lead) = (&avail?, &usage?, &inbound?, &lead?);
            let mut cover = Vec::with_capacity(avail.len());
            let mut risk = Vec::with_capacity(avail.len());
            for i in 0..avail.len() {
                let available = get(avail, i).unwrap_or(0.0);
                let u = get(usage, i).unwrap_or(0.0);
                let c = (u > 0.0).then(|| {
                    let days = (available.max(0.0) + get(inbound, i).unwrap_or(0.0)) / u;
                    (days * 100.0).round() / 100.0
                });
                risk.push(shortage_risk(
                    available,
                    c,
                    get(lead, i).unwrap_or(0.0),
                    &t.shortage,
                ));
                cover.push(c);
            }
            Ok(vec![
                Arc::new(Float64Array::from(cover)),
                Arc::new(StringArray::from(risk)),
            ])
        },
    )
}

fn predict_churn(thresholds: Arc<SignalsConfig>) -> ScalarUDF {
    StructUdf::udf(
        "predict_churn",
        2,
        rhythm_fields(["churn_probability", "risk_level", "factors"]),
        thresholds,
        |t, a| rhythm_columns(|ages, trend| churn(ages, trend, &t.churn), a),
    )
}

fn score_lead(thresholds: Arc<SignalsConfig>) -> ScalarUDF {
    StructUdf::udf(
        "score_lead",
        2,
        rhythm_fields(["lead_score", "tier", "drivers"]),
        thresholds,
        |t, a| rhythm_columns(|ages, trend| lead(ages, trend, &t.lead), a),
    )
}

/// The struct of a purchase-rhythm judgement: probability, level, reasons, named `names`.
fn rhythm_fields(names: [&'static str; 3]) -> Vec<Field> {
    vec![
        Field::new(names[0], DataType::Float64, false),
        Field::new(names[1], DataType::Utf8, false),
        Field::new(names[2], DataType::Utf8, false),
    ]
}

/// `judge` ([`churn`] or [`lead`]) over argument columns (purchase ages, spend trend).
fn rhythm_columns(
    judge: impl Fn(&[f64], Option<f64>) -> Judgement,
    a: &[ArrayRef],
) -> Result<Vec<ArrayRef>> {
    let ages = arrow::compute::cast(
        &a[0],
        &DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
    )?;
    let ages = ages.as_list::<i32>();
    let trend = floats(&a[1])?;
    let n = ages.len();
    let (mut p, mut level, mut reasons) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for i in 0..n {
        let row: Vec<f64> = if ages.is_null(i) {
            Vec::new()
        } else {
            let v = ages.value(i);
            v.as_primitive::<Float64Type>().iter().flatten().collect()
        };
        let (prob, l, r) = judge(&row, get(&trend, i));
        p.push(prob);
        level.push(l);
        reasons.push(r);
    }
    Ok(vec![
        Arc::new(Float64Array::from(p)),
        Arc::new(StringArray::from(level)),
        Arc::new(StringArray::from(reasons)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    // The functions at the shipped thresholds.
    fn shortage_risk(available: f64, cover: Option<f64>, lead_time_days: f64) -> &'static str {
        super::shortage_risk(available, cover, lead_time_days, &ShortageParams::default())
    }
    fn churn(ages: &[f64], trend: Option<f64>) -> Judgement {
        super::churn(ages, trend, &ChurnParams::default())
    }
    fn lead(ages: &[f64], trend: Option<f64>) -> Judgement {
        super::lead(ages, trend, &LeadParams::default())
    }

    #[test]
    fn shortage_risk_follows_cover_against_lead_time() {
        assert_eq!(shortage_risk(0.0, Some(30.0), 10.0), "CRITICAL");
        assert_eq!(shortage_risk(50.0, Some(9.9), 10.0), "CRITICAL");
        assert_eq!(shortage_risk(50.0, Some(12.9), 10.0), "HIGH");
        assert_eq!(shortage_risk(50.0, Some(16.9), 10.0), "MEDIUM");
        assert_eq!(shortage_risk(50.0, Some(17.0), 10.0), "LOW");
        assert_eq!(shortage_risk(50.0, None, 10.0), "LOW");
    }

    fn every(days: f64, from: f64, to: f64) -> Vec<f64> {
        (0..)
            .map(|i| from + i as f64 * days)
            .take_while(|a| *a <= to)
            .collect()
    }

    #[test]
    fn churn_judges_silence_against_the_customers_own_rhythm() {
        // Silent 10 days is normal for a customer who orders every 10 days...
        assert_eq!(churn(&every(10.0, 10.0, 120.0), Some(1.0)).1, "LOW");
        // ...and for a weekly customer who just ordered.
        assert_eq!(churn(&every(7.0, 3.0, 120.0), Some(1.0)).1, "LOW");
        // Silent 40 days after ordering weekly for months is a broken rhythm.
        let (p, risk, factors) = churn(&every(7.0, 40.0, 160.0), Some(1.0));
        assert!(risk == "HIGH" || risk == "CRITICAL", "{p} {factors}");
        assert!(
            factors.contains("40 days since the last order")
                && factors.contains(
                    "0 orders in the last 40 days where about 5.7 were usual (one every 7.0 days)"
                ),
            "{factors}"
        );
    }

    /// Gone quiet means a slowdown that has lasted `lookback_from_days` (30): a weekly buyer
    /// silent for 18 days is not flagged yet, the same buyer silent for 35 days is; and a
    /// customer whose whole history is shorter than that is not judged a break at all.
    #[test]
    fn a_slowdown_counts_once_it_has_lasted_a_month() {
        let (p, risk, factors) = churn(&every(7.0, 18.0, 160.0), Some(1.0));
        assert!(risk == "LOW" || risk == "MEDIUM", "{p} {factors}");
        let (p, risk, factors) = churn(&every(7.0, 35.0, 160.0), Some(1.0));
        assert!(risk == "HIGH" || risk == "CRITICAL", "{p} {factors}");
        // A customer known for 25 days cannot have slowed down a month ago.
        let (p, risk, factors) = churn(&[25.0, 20.0, 15.0, 10.0, 5.0], None);
        assert_eq!((p, risk), (0.0, "LOW"), "{factors}");
    }

    #[test]
    fn a_recent_order_does_not_hide_orders_thinning_out() {
        // Every 3 days until 45 days ago, then twice since.
        let mut ages = every(3.0, 45.0, 150.0);
        ages.extend([20.0, 1.0]);
        let (p, risk, factors) = churn(&ages, Some(0.1));
        assert_eq!(risk, "CRITICAL", "{p} {factors}");
        assert!(
            factors.contains("2 orders in the last") && factors.contains("% of normal"),
            "{factors}"
        );
    }

    #[test]
    fn too_little_history_is_said_not_guessed() {
        assert_eq!(churn(&[], None).1, "HIGH");
        let (_, risk, factors) = churn(&[5.0, 20.0], None);
        assert_eq!(risk, "LOW");
        assert!(factors.contains("no rhythm yet"), "{factors}");
        assert_eq!(churn(&[70.0, 100.0], None).1, "MEDIUM");
    }

    /// Customers simulated as Poisson buyers over 120 days: steady ones are rarely flagged,
    /// ones that slowed tenfold 45 days ago mostly are.
    #[test]
    fn churn_separates_steady_from_slowed_poisson_buyers() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut buyer = |interval: f64, slowed_since: f64| {
            let (mut age, mut ages) = (120.0, Vec::new());
            while age > 0.0 {
                ages.push(age);
                let mean = if age <= slowed_since {
                    interval * 10.0
                } else {
                    interval
                };
                age -= -mean * (1.0 - rng.random::<f64>()).ln();
            }
            let risk = churn(&ages, None).1;
            (risk == "HIGH" || risk == "CRITICAL") as usize
        };
        let steady: usize = (0..400).map(|i| buyer(2.0 + (i % 10) as f64, 0.0)).sum();
        let slowed: usize = (0..400).map(|i| buyer(2.0 + (i % 10) as f64, 45.0)).sum();
        assert!(steady <= 70, "{steady} of 400 steady buyers flagged");
        assert!(slowed >= 340, "only {slowed} of 400 slowed buyers flagged");
    }

    #[test]
    fn a_lead_is_a_customer_buying_faster_than_their_own_rhythm() {
        // Every 9 days for months: in rhythm, not a lead.
        let (p, tier, drivers) = lead(&every(9.0, 2.0, 170.0), Some(1.0));
        assert_eq!(tier, "COLD", "{p} {drivers}");
        assert!(
            drivers.contains("where about 3.") && drivers.contains("no quickening"),
            "{drivers}"
        );
        // Every 9 days until 40 days ago, every 3 since, spending more: a hot lead.
        let mut ages = every(9.0, 40.0, 170.0);
        ages.extend(every(3.0, 1.0, 39.0));
        let (p, tier, drivers) = lead(&ages, Some(2.6));
        assert_eq!(tier, "HOT", "{p} {drivers}");
        assert!(
            drivers.contains("orders in the last")
                && drivers.contains("were usual (one every 9.")
                && drivers.contains("260 % of normal")
                && drivers.contains("1 days since the last order"),
            "{drivers}"
        );
        // A customer going quiet is the opposite of a lead.
        assert_eq!(lead(&every(7.0, 40.0, 160.0), Some(0.0)).1, "COLD");
        assert_eq!(lead(&[], None).1, "COLD");
        assert!(lead(&[3.0, 9.0], None).2.contains("no rhythm yet"));
    }

    /// Customers simulated as Poisson buyers over 180 days: steady ones are rarely scored WARM
    /// or HOT, ones that quickened threefold 40 days ago mostly are.
    #[test]
    fn lead_scores_separate_steady_from_quickened_poisson_buyers() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut buyer = |interval: f64, quickened_since: f64| {
            let (mut age, mut ages) = (180.0, Vec::new());
            while age > 0.0 {
                ages.push(age);
                let mean = if age <= quickened_since {
                    interval / 3.0
                } else {
                    interval
                };
                age -= -mean * (1.0 - rng.random::<f64>()).ln();
            }
            (lead(&ages, None).1 != "COLD") as usize
        };
        let steady: usize = (0..400).map(|i| buyer(2.0 + (i % 10) as f64, 0.0)).sum();
        let quickened: usize = (0..400).map(|i| buyer(2.0 + (i % 10) as f64, 40.0)).sum();
        assert!(
            steady <= 35,
            "{steady} of 400 steady buyers scored as leads"
        );
        assert!(
            quickened >= 310,
            "only {quickened} of 400 quickened buyers scored as leads"
        );
    }

    #[tokio::test]
    async fn functions_are_callable_from_sql() {
        let ctx = SessionContext::new();
        register(&ctx);
        let b = ctx
            .sql(
                "SELECT predict_shortage(100, 10.0, 0, 14)['risk_level'] AS r, \
                  predict_churn(make_array(40, 47, 54, 61, 68, 75), 1.0)['risk_level'] AS c, \
                  score_lead(make_array(1, 2, 3, 4, 5, 6, 7, 8, 30, 60, 90, 120), 2.0)['tier'] AS l",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let s = arrow::util::pretty::pretty_format_batches(&b)
            .unwrap()
            .to_string();
        assert!(s.contains("CRITICAL") && s.contains("HOT"), "{s}");
    }

    /// A session judges by the thresholds it was registered with: 16 days of cover against a
    /// 14-day lead time is HIGH with the shipped 3-day margin and MEDIUM with a 1-day one.
    #[tokio::test]
    async fn functions_judge_by_the_configured_thresholds() {
        let sql = "SELECT predict_shortage(160, 10.0, 0, 14)['risk_level'] AS r";
        let run = |t: SignalsConfig| async move {
            let ctx = SessionContext::new();
            register_with(&ctx, Arc::new(t));
            let b = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            arrow::util::pretty::pretty_format_batches(&b)
                .unwrap()
                .to_string()
        };
        let shipped = run(SignalsConfig::default()).await;
        assert!(shipped.contains("HIGH"), "{shipped}");
        let mut t = SignalsConfig::default();
        t.shortage.high_margin_days = 1.0;
        let other = run(t).await;
        assert!(other.contains("MEDIUM"), "{other}");
    }
}
