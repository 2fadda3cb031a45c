//! SQL functions for pipelines and queries: the brief's `predict_shortage` and `predict_churn`,
//! computed from the numbers the SQL hands them (which pipelines take from live tables).
//!
//! - `predict_shortage(available, daily_usage, inbound_expected, lead_time_days)` →
//!   `{days_of_cover, risk_level}`. Cover is `(available + inbound_expected) / daily_usage` days
//!   (NULL when nothing is used). Risk against the lead time `L`: CRITICAL when out of stock or
//!   cover < L (an order placed now arrives too late); HIGH when cover < L + 3 days (most of a
//!   week's safety margin gone with nothing inbound in time); MEDIUM when cover < L + 7 days (at
//!   the reorder point: order now); else LOW.
//! - `predict_churn(recency_days, avg_interval_days, purchases_30d, spend_trend)` →
//!   `{churn_probability, risk_level, factors}`. Judged against the customer's own rhythm (mean
//!   interval, 30 days when unknown), as a customer still buying at that rate would be: the
//!   chance of a silence this long (`exp(−recency / interval)`) and of this few orders in 30 days
//!   (Poisson with mean `30 / interval`). The churn probability is one minus the smaller of the
//!   two; falling spend (trend < 0.5) adds 0.02. No purchases at all is HIGH. Risk: CRITICAL ≥
//!   0.99, HIGH ≥ 0.95, MEDIUM ≥ 0.8, else LOW.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Fields};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Registers every millstream SQL function on `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(predict_shortage());
    ctx.register_udf(predict_churn());
}

/// Risk of a shortage from cover and lead time (see the module docs).
pub fn shortage_risk(available: f64, cover: Option<f64>, lead_time_days: f64) -> &'static str {
    match cover {
        _ if available <= 0.0 => "CRITICAL",
        None => "LOW",
        Some(c) if c < lead_time_days => "CRITICAL",
        Some(c) if c < lead_time_days + 3.0 => "HIGH",
        Some(c) if c < lead_time_days + 7.0 => "MEDIUM",
        Some(_) => "LOW",
    }
}

/// Churn probability, risk and factors (see the module docs).
pub fn churn(
    recency_days: Option<f64>,
    avg_interval_days: Option<f64>,
    purchases_30d: Option<f64>,
    spend_trend: Option<f64>,
) -> (f64, &'static str, String) {
    let Some(recency) = recency_days else {
        return (0.7, "HIGH", "no purchases on record".into());
    };
    let interval = avg_interval_days.filter(|i| *i > 0.0).unwrap_or(30.0);
    let seen = purchases_30d.unwrap_or(0.0).max(0.0);
    let expected = 30.0 / interval;
    // How likely a customer still buying at their usual rate is to look like this.
    let p_silence = (-recency / interval).exp();
    let p_few = poisson_cdf(seen as u64, expected);
    let mut p = 1.0 - p_silence.min(p_few);
    let mut factors = vec![format!(
        "{recency:.0} days since the last order, usually every {interval:.1}"
    )];
    if p_few < 0.3 {
        factors.push(format!(
            "{seen:.0} orders in 30 days, {expected:.1} expected"
        ));
    }
    if let Some(t) = spend_trend.filter(|t| *t < 0.5) {
        p += 0.02;
        factors.push(format!(
            "spend in the last 30 days at {:.0} % of normal",
            t * 100.0
        ));
    }
    let p = p.clamp(0.0, 1.0);
    let risk = match p {
        p if p >= 0.99 => "CRITICAL",
        p if p >= 0.95 => "HIGH",
        p if p >= 0.8 => "MEDIUM",
        _ => "LOW",
    };
    ((p * 1000.0).round() / 1000.0, risk, factors.join("; "))
}

/// P(N ≤ k) for N ~ Poisson(λ).
fn poisson_cdf(k: u64, lambda: f64) -> f64 {
    let (mut term, mut sum) = ((-lambda).exp(), 0.0);
    for i in 0..=k {
        if i > 0 {
            term *= lambda / i as f64;
        }
        sum += term;
    }
    sum.min(1.0)
}

/// A row-at-a-time SQL function of four numeric arguments (cast to DOUBLE, NULL as `None`)
/// returning a struct: the shape both predict functions share.
#[derive(Debug)]
struct StructUdf {
    name: &'static str,
    signature: Signature,
    fields: Fields,
    /// Columns of the result, computed from the argument columns.
    compute: fn(&[Float64Array]) -> Vec<ArrayRef>,
}

// A function is identified by its name (function pointers have no meaningful identity).
impl PartialEq for StructUdf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for StructUdf {}

impl std::hash::Hash for StructUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl StructUdf {
    fn new(
        name: &'static str,
        fields: Vec<Field>,
        compute: fn(&[Float64Array]) -> Vec<ArrayRef>,
    ) -> ScalarUDF {
        ScalarUDF::from(StructUdf {
            name,
            signature: Signature::any(4, Volatility::Immutable),
            fields: Fields::from(fields),
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
        let arrays = ColumnarValue::values_to_arrays(&args.args)?
            .iter()
            .map(|a| {
                let c = arrow::compute::cast(a, &DataType::Float64)?;
                Ok(c.as_any()
                    .downcast_ref::<Float64Array>()
                    .expect("cast to Float64")
                    .clone())
            })
            .collect::<Result<Vec<_>>>()?;
        let columns = (self.compute)(&arrays);
        Ok(ColumnarValue::Array(Arc::new(StructArray::try_new(
            self.fields.clone(),
            columns,
            None,
        )?)))
    }
}

fn get(a: &Float64Array, i: usize) -> Option<f64> {
    (!a.is_null(i)).then(|| a.value(i))
}

fn predict_shortage() -> ScalarUDF {
    StructUdf::new(
        "predict_shortage",
        vec![
            Field::new("days_of_cover", DataType::Float64, true),
            Field::new("risk_level", DataType::Utf8, false),
        ],
        |a| {
            let (avail, usage, inbound, lead) = (&a[0], &a[1], &a[2], &a[3]);
            let mut cover = Vec::with_capacity(avail.len());
            let mut risk = Vec::with_capacity(avail.len());
            for i in 0..avail.len() {
                let available = get(avail, i).unwrap_or(0.0);
                let u = get(usage, i).unwrap_or(0.0);
                let c = (u > 0.0).then(|| {
                    let days = (available.max(0.0) + get(inbound, i).unwrap_or(0.0)) / u;
                    (days * 100.0).round() / 100.0
                });
                risk.push(shortage_risk(available, c, get(lead, i).unwrap_or(0.0)));
                cover.push(c);
            }
            vec![
                Arc::new(Float64Array::from(cover)),
                Arc::new(StringArray::from(risk)),
            ]
        },
    )
}

fn predict_churn() -> ScalarUDF {
    StructUdf::new(
        "predict_churn",
        vec![
            Field::new("churn_probability", DataType::Float64, false),
            Field::new("risk_level", DataType::Utf8, false),
            Field::new("factors", DataType::Utf8, false),
        ],
        |a| {
            let n = a[0].len();
            let (mut p, mut risk, mut factors) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for i in 0..n {
                let (prob, r, f) =
                    churn(get(&a[0], i), get(&a[1], i), get(&a[2], i), get(&a[3], i));
                p.push(prob);
                risk.push(r);
                factors.push(f);
            }
            vec![
                Arc::new(Float64Array::from(p)),
                Arc::new(StringArray::from(risk)),
                Arc::new(StringArray::from(factors)),
            ]
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortage_risk_follows_cover_against_lead_time() {
        assert_eq!(shortage_risk(0.0, Some(30.0), 10.0), "CRITICAL");
        assert_eq!(shortage_risk(50.0, Some(9.9), 10.0), "CRITICAL");
        assert_eq!(shortage_risk(50.0, Some(12.9), 10.0), "HIGH");
        assert_eq!(shortage_risk(50.0, Some(16.9), 10.0), "MEDIUM");
        assert_eq!(shortage_risk(50.0, Some(17.0), 10.0), "LOW");
        assert_eq!(shortage_risk(50.0, None, 10.0), "LOW");
    }

    #[test]
    fn churn_judges_silence_against_the_customers_own_rhythm() {
        // Silent 10 days: normal for a customer who orders every 10 days, alarming for weekly.
        assert_eq!(churn(Some(10.0), Some(10.0), Some(3.0), Some(1.0)).1, "LOW");
        assert_eq!(
            churn(Some(40.0), Some(7.0), Some(0.0), Some(1.0)).1,
            "CRITICAL"
        );
        // A recent order does not hide a collapse in frequency: 1 order where 10 were due.
        let (p, risk, factors) = churn(Some(2.0), Some(3.0), Some(1.0), Some(0.2));
        assert_eq!(risk, "CRITICAL", "{p}");
        assert!(factors.contains("10.0 expected") && factors.contains("% of normal"));
        assert_eq!(churn(None, None, None, None).1, "HIGH");
    }

    #[tokio::test]
    async fn functions_are_callable_from_sql() {
        let ctx = SessionContext::new();
        register(&ctx);
        let b = ctx
            .sql(
                "SELECT predict_shortage(100, 10.0, 0, 14)['risk_level'] AS r, \
                  predict_churn(40.0, 7.0, 2, 1.0)['risk_level'] AS c",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let s = arrow::util::pretty::pretty_format_batches(&b)
            .unwrap()
            .to_string();
        assert!(s.contains("CRITICAL"), "{s}");
    }
}
