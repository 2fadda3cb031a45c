//! The functions a caller's query may use, and bounds on the ones that build large values.
//!
//! An allowlist, not a blocklist: a function DataFusion adds in a later release is refused
//! until someone reads what it does. What is here returns values no larger than a fixed
//! multiple of its arguments (aggregates and window functions hold their state in the query's
//! memory pool), except [`BOUNDED`]: functions whose output size a caller picks with a number
//! (`repeat('x', 1500000000)`). Those are wrapped so that they refuse, before allocating
//! anything, to build a value over the limit. Functions that build collections from a count
//! (`range`, `array_repeat`, `generate_series`, …) are not allowed at all.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;

/// Functions (scalar, aggregate and window) a caller's query may call, by DataFusion name.
pub const ALLOWED: &[&str] = &[
    // conditionals and comparisons
    "coalesce",
    "nullif",
    "nvl",
    "nvl2",
    "greatest",
    "least",
    "ifnull",
    // math
    "abs",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "cbrt",
    "ceil",
    "cos",
    "cosh",
    "cot",
    "degrees",
    "exp",
    "factorial",
    "floor",
    "gcd",
    "isnan",
    "iszero",
    "lcm",
    "ln",
    "log",
    "log10",
    "log2",
    "nanvl",
    "pi",
    "pow",
    "power",
    "radians",
    "random",
    "round",
    "signum",
    "sin",
    "sinh",
    "sqrt",
    "tan",
    "tanh",
    "trunc",
    // text (output at most a small multiple of the input)
    "ascii",
    "bit_length",
    "btrim",
    "char_length",
    "character_length",
    "chr",
    "concat",
    "concat_ws",
    "contains",
    "ends_with",
    "find_in_set",
    "initcap",
    "instr",
    "left",
    "length",
    "levenshtein",
    "lower",
    "ltrim",
    "md5",
    "octet_length",
    "position",
    "reverse",
    "right",
    "rtrim",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "split_part",
    "starts_with",
    "strpos",
    "substr",
    "substring",
    "substr_index",
    "substring_index",
    "to_hex",
    "translate",
    "trim",
    "upper",
    "uuid",
    "regexp_like",
    "regexp_match",
    "regexp_count",
    "regexp_instr",
    "like",
    "ilike",
    // text whose size a caller could pick: bounded (see BOUNDED)
    "repeat",
    "lpad",
    "rpad",
    "replace",
    "regexp_replace",
    // time
    "current_date",
    "current_time",
    "current_timestamp",
    "date_bin",
    "date_part",
    "date_trunc",
    "datepart",
    "datetrunc",
    "extract",
    "from_unixtime",
    "make_date",
    "now",
    "to_char",
    "to_date",
    "to_local_time",
    "to_timestamp",
    "to_timestamp_micros",
    "to_timestamp_millis",
    "to_timestamp_nanos",
    "to_timestamp_seconds",
    "to_unixtime",
    // types
    "arrow_cast",
    "arrow_typeof",
    "get_field",
    "named_struct",
    "struct",
    // arrays: reading and small literals only
    "array_element",
    "array_has",
    "array_has_all",
    "array_has_any",
    "array_length",
    "array_position",
    "cardinality",
    "make_array",
    "array_sort",
    "array_distinct",
    // aggregates (state in the query's memory pool)
    "approx_distinct",
    "approx_median",
    "approx_percentile_cont",
    "array_agg",
    "avg",
    "bit_and",
    "bit_or",
    "bit_xor",
    "bool_and",
    "bool_or",
    "corr",
    "count",
    "covar",
    "covar_pop",
    "covar_samp",
    "first_value",
    "last_value",
    "max",
    "mean",
    "median",
    "min",
    "percentile_cont",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "sum",
    "var",
    "var_pop",
    "var_samp",
    // window functions
    "cume_dist",
    "dense_rank",
    "lag",
    "lead",
    "nth_value",
    "ntile",
    "percent_rank",
    "rank",
    "row_number",
    // millstream's (see pipeline::udf)
    "predict_shortage",
    "predict_churn",
];

/// Functions whose output size follows a number (or a pattern) the caller chooses.
pub const BOUNDED: &[&str] = &["repeat", "lpad", "rpad", "replace", "regexp_replace"];

/// Whether a caller's query may call `name`.
pub fn allowed(name: &str) -> bool {
    ALLOWED.contains(&name)
}

/// Replaces the [`BOUNDED`] functions of `ctx` with versions that refuse to build a value
/// over `max_value` bytes.
pub fn register_bounded(ctx: &SessionContext, max_value: usize) {
    for name in BOUNDED {
        if let Ok(inner) = ctx.udf(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
                inner: inner.as_ref().clone(),
                max_value,
            }));
        }
    }
}

/// A function built from another, refusing outputs over `max_value` bytes per value.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    max_value: usize,
}

/// A value a bounded function refused to build (told apart from other errors by
/// [`super::sandbox::describe`]).
#[derive(Debug)]
pub(crate) struct TooLarge {
    pub function: String,
    pub bytes: usize,
    pub max: usize,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} would build a value of {} bytes; at most {} are accepted in query_sql",
            self.function, self.bytes, self.max
        )
    }
}

impl std::error::Error for TooLarge {}

impl Bounded {
    /// The most bytes the call could build for each row.
    fn bounds(&self, args: &ScalarFunctionArgs) -> DfResult<Vec<usize>> {
        let rows = args.number_rows;
        let arg = |i: usize| args.args.get(i);
        let lengths = |i: usize| arg(i).map(|v| text_lengths(v, rows)).transpose();
        let counts = |i: usize| arg(i).map(|v| counts(v, rows)).transpose();
        let zip = |a: Vec<usize>, b: Vec<usize>, f: fn(usize, usize) -> usize| {
            a.into_iter().zip(b).map(|(x, y)| f(x, y)).collect()
        };
        Ok(match self.inner.name() {
            "repeat" => match (lengths(0)?, counts(1)?) {
                (Some(l), Some(n)) => zip(l, n, usize::saturating_mul),
                _ => vec![0; rows],
            },
            // Characters, each up to four bytes.
            "lpad" | "rpad" => match counts(1)? {
                Some(n) => n.into_iter().map(|n| n.saturating_mul(4)).collect(),
                None => vec![0; rows],
            },
            // Every position of the text may become the replacement.
            "replace" | "regexp_replace" => match (lengths(0)?, lengths(2)?) {
                (Some(s), Some(to)) => zip(s, to, |s, to| {
                    (s + 1).saturating_mul(to + 1).saturating_add(s)
                }),
                _ => vec![0; rows],
            },
            _ => vec![0; rows],
        })
    }
}

/// Byte length of each row's text (0 for NULL or non-text).
fn text_lengths(v: &ColumnarValue, rows: usize) -> DfResult<Vec<usize>> {
    Ok(match v {
        ColumnarValue::Scalar(s) => {
            let len = match s {
                ScalarValue::Utf8(Some(t))
                | ScalarValue::LargeUtf8(Some(t))
                | ScalarValue::Utf8View(Some(t)) => t.len(),
                _ => 0,
            };
            vec![len; rows]
        }
        ColumnarValue::Array(a) => {
            let text = arrow::compute::cast(a, &DataType::LargeUtf8)?;
            text.as_string::<i64>()
                .iter()
                .map(|t| t.map_or(0, str::len))
                .collect()
        }
    })
}

/// Each row's count argument (negative and NULL as 0).
fn counts(v: &ColumnarValue, rows: usize) -> DfResult<Vec<usize>> {
    let to_usize = |n: Option<i64>| n.map_or(0, |n| n.max(0) as usize);
    Ok(match v {
        ColumnarValue::Scalar(s) => {
            let n = match s.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(n) => n,
                _ => None,
            };
            vec![to_usize(n); rows]
        }
        ColumnarValue::Array(a) => {
            let n = arrow::compute::cast(a, &DataType::Int64)?;
            let n = n.as_primitive::<Int64Type>();
            (0..n.len())
                .map(|i| to_usize(n.is_valid(i).then(|| n.value(i))))
                .collect()
        }
    })
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if let Some(bytes) = self.bounds(&args)?.into_iter().max()
            && bytes > self.max_value
        {
            return Err(DataFusionError::External(Box::new(TooLarge {
                function: self.inner.name().to_string(),
                bytes,
                max: self.max_value,
            })));
        }
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every allowed name is a function DataFusion (or millstream) registers: a typo or a
    /// function renamed by an upgrade shows here instead of as a refused query.
    #[test]
    fn every_allowed_function_exists() {
        let ctx = crate::pipeline::session::memory(&Default::default()).unwrap();
        let state = ctx.state();
        let known = |n: &str| {
            state.scalar_functions().contains_key(n)
                || state.aggregate_functions().contains_key(n)
                || state.window_functions().contains_key(n)
                || state
                    .scalar_functions()
                    .values()
                    .any(|f| f.aliases().iter().any(|a| a == n))
                || state
                    .aggregate_functions()
                    .values()
                    .any(|f| f.aliases().iter().any(|a| a == n))
                || state
                    .window_functions()
                    .values()
                    .any(|f| f.aliases().iter().any(|a| a == n))
        };
        let missing: Vec<&str> = ALLOWED.iter().copied().filter(|n| !known(n)).collect();
        // `like`/`ilike`/`extract`/`position`/`substring`/`trim`/`struct` are SQL syntax that
        // the planner maps to other functions.
        let syntax = [
            "like",
            "ilike",
            "extract",
            "position",
            "substring",
            "trim",
            "struct",
        ];
        let missing: Vec<&str> = missing
            .into_iter()
            .filter(|n| !syntax.contains(n))
            .collect();
        assert!(missing.is_empty(), "not registered: {missing:?}");
    }

    #[tokio::test]
    async fn bounded_functions_refuse_large_values_before_building_them() {
        let ctx = crate::pipeline::session::memory(&Default::default()).unwrap();
        register_bounded(&ctx, 1024);
        let run = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                ctx.sql(sql)
                    .await?
                    .collect()
                    .await
                    .map(|b| b.iter().map(|b| b.num_rows()).sum::<usize>())
            }
        };
        assert_eq!(run("SELECT repeat('ab', 100)").await.unwrap(), 1);
        assert_eq!(run("SELECT lpad('x', 200, 'y')").await.unwrap(), 1);
        for sql in [
            "SELECT repeat('x', 1500000000)",
            "SELECT lpad('x', 1500000000)",
            "SELECT rpad('x', 2000, 'y')",
            "SELECT replace(repeat('a', 500), 'a', repeat('b', 500))",
            "SELECT repeat(v, 1000) FROM (VALUES ('abc'), ('de')) t(v)",
        ] {
            let e = run(sql).await.unwrap_err().to_string();
            assert!(e.contains("would build a value"), "{sql}: {e}");
        }
    }
}
