//! Tool query plans kept per input version. Turning a tool's SQL into a plan (parse, resolve the
//! views, analyse, optimise) costs more than running it over the small serving tables, and a
//! point lookup asks the same SQL with a new id on nearly every call, so its answer is rarely
//! kept ([`super::answers`]). Its plan can be: a tool's SQL is fixed text with `$n` parameters,
//! and the optimised plan with the placeholders still in it serves every call while the tables
//! it reads are at the same versions. A call binds its values into that plan and goes straight
//! to physical planning.
//!
//! - **Per caller.** A plan reads the caller's tables as its grants, row filters and masks
//!   shape them, so it is kept under the caller's access key and the SQL.
//! - **Per input version.** A plan holds the rows of the versions it was planned over; it is
//!   used only while every table it depends on (scanned, or looked into by a row filter) is at
//!   the same version, and dropped as soon as one moves, so it never pins an old version for
//!   long.
//! - **Only fixed queries.** The optimiser folds `now()` into a constant, so a plan with any
//!   function that is not immutable is never kept (the same rule as answers).
//! - **Bounded** by count (`serve.plan_cache_entries`); the least recently used leave first.

use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::LogicalPlan;
use datafusion::scalar::ScalarValue;

/// A kept plan.
pub struct Plan {
    /// Every table the plan's rows depend on, at the version it was planned over.
    pub inputs: Vec<(String, i64)>,
    /// The tables it scans (its `as_of` names these).
    pub read: Vec<String>,
    /// Analysed and optimised, with its `$n` placeholders unbound.
    optimized: LogicalPlan,
    /// Each placeholder's type, as the plan was analysed for it.
    types: std::collections::HashMap<String, DataType>,
}

impl Plan {
    /// `optimized` (placeholders unbound) as a plan to keep; `None` when a placeholder's type
    /// is unknown, so values could not be bound into it safely.
    pub fn new(
        inputs: Vec<(String, i64)>,
        read: Vec<String>,
        optimized: LogicalPlan,
    ) -> Option<Plan> {
        let types = optimized
            .get_parameter_types()
            .ok()?
            .into_iter()
            .map(|(id, t)| t.map(|t| (id, t)))
            .collect::<Option<_>>()?;
        Some(Plan {
            inputs,
            read,
            optimized,
            types,
        })
    }

    /// The plan with `params` bound to `$1`, `$2`, …, ready for physical planning. The plan was
    /// analysed before any value was known, so each value takes its placeholder's type (a
    /// `Utf8` id for a `Utf8View` column): `None` when a value does not convert to that type
    /// and back unchanged (`1.5` for an integer), or does not bind. Such a call is planned
    /// afresh, with its value's own type.
    pub fn bind(&self, params: &[ScalarValue]) -> Option<LogicalPlan> {
        if params.is_empty() {
            return Some(self.optimized.clone());
        }
        let mut bound = Vec::with_capacity(params.len());
        for (i, value) in params.iter().enumerate() {
            let value = match self.types.get(&format!("${}", i + 1)) {
                Some(t) if *t != value.data_type() => {
                    let cast = value.cast_to(t).ok()?;
                    (cast.cast_to(&value.data_type()).ok()? == *value).then_some(cast)?
                }
                _ => value.clone(),
            };
            bound.push(value);
        }
        self.optimized.clone().with_param_values(bound).ok()
    }
}

/// Whose plan (the caller's access key) of which SQL.
type Key = (String, String);

/// The plans, newest use last.
pub struct Plans {
    kept: Option<Mutex<lru::LruCache<Key, Arc<Plan>>>>,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Plans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self
            .kept
            .as_ref()
            .map_or(0, |k| k.lock().expect("poisoned").len());
        f.debug_struct("Plans").field("plans", &kept).finish()
    }
}

impl Plans {
    /// At most `entries` plans (0 keeps none).
    pub fn new(entries: usize) -> Plans {
        Plans {
            kept: std::num::NonZeroUsize::new(entries).map(|n| Mutex::new(lru::LruCache::new(n))),
            hits: Default::default(),
            misses: Default::default(),
        }
    }

    /// Whether plans are kept at all.
    pub fn keeps(&self) -> bool {
        self.kept.is_some()
    }

    /// How many lookups found a plan, and how many did not, so far.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// The plan kept for `principal`'s `sql`, if every table it depends on is still at the
    /// version it was planned over (`version` says which version the caller's snapshot
    /// serves). A plan whose tables have moved is dropped.
    pub fn get(
        &self,
        principal: &str,
        sql: &str,
        version: impl Fn(&str) -> Option<i64>,
    ) -> Option<Arc<Plan>> {
        let kept = self.kept.as_ref()?;
        let key = (principal.to_string(), sql.to_string());
        let hit = {
            let mut kept = kept.lock().expect("poisoned");
            match kept.get(&key) {
                Some(p) if current(p, &version) => Some(p.clone()),
                Some(_) => {
                    kept.pop(&key);
                    None
                }
                None => None,
            }
        };
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        hit
    }

    /// Keeps `plan` for `principal`'s `sql`, and drops every kept plan whose tables have moved
    /// since (they would only hold old versions in memory).
    pub fn put(
        &self,
        principal: &str,
        sql: &str,
        plan: Arc<Plan>,
        version: impl Fn(&str) -> Option<i64>,
    ) {
        let Some(kept) = &self.kept else {
            return;
        };
        let mut kept = kept.lock().expect("poisoned");
        kept.retain(|_, p| current(p, &version));
        kept.put((principal.to_string(), sql.to_string()), plan);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.kept
            .as_ref()
            .map_or(0, |k| k.lock().expect("poisoned").len())
    }
}

fn current(plan: &Plan, version: &impl Fn(&str) -> Option<i64>) -> bool {
    super::answers::current(&plan.inputs, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(inputs: &[(&str, i64)]) -> Arc<Plan> {
        let empty = LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
            produce_one_row: false,
            schema: Arc::new(datafusion::common::DFSchema::empty()),
        });
        let inputs = inputs.iter().map(|(t, v)| (t.to_string(), *v)).collect();
        Arc::new(Plan::new(inputs, Vec::new(), empty).unwrap())
    }

    /// `SELECT s FROM t WHERE s = $1 AND n >= $2` over a `Utf8View` and an `Int64` column,
    /// optimised before any value is known, as kept.
    async fn kept_lookup() -> (datafusion::prelude::SessionContext, Plan) {
        use datafusion::arrow::array::{Int64Array, RecordBatch, StringViewArray};
        use datafusion::arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8View, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringViewArray::from(vec!["a", "b", "c"])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        let table = datafusion::datasource::MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let df = ctx
            .sql("SELECT s FROM t WHERE s = $1 AND n >= $2")
            .await
            .unwrap();
        let optimized = ctx.state().optimize(df.logical_plan()).unwrap();
        (ctx, Plan::new(Vec::new(), Vec::new(), optimized).unwrap())
    }

    async fn rows(ctx: &datafusion::prelude::SessionContext, plan: LogicalPlan) -> Vec<String> {
        let state = ctx.state();
        let physical = state
            .query_planner()
            .create_physical_plan(&plan, &state)
            .await
            .unwrap();
        let batches = datafusion::physical_plan::collect(physical, state.task_ctx())
            .await
            .unwrap();
        batches
            .iter()
            .flat_map(|b| {
                let s = crate::lakehouse::query::strings(b, "s").unwrap();
                s.iter().flatten().map(str::to_string).collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn values_bind_into_a_kept_plan_in_its_placeholders_types_or_not_at_all() {
        let (ctx, plan) = kept_lookup().await;
        // A `Utf8` id compared with a `Utf8View` column: bound as `Utf8View` (bound as it
        // comes, the comparison fails when the plan runs).
        let b = plan
            .bind(&[
                ScalarValue::Utf8(Some("b".into())),
                ScalarValue::Int64(Some(2)),
            ])
            .unwrap();
        assert_eq!(rows(&ctx, b).await, ["b"]);
        let none = plan
            .bind(&[
                ScalarValue::Utf8(Some("b".into())),
                ScalarValue::Int64(Some(3)),
            ])
            .unwrap();
        assert!(rows(&ctx, none).await.is_empty());
        // An integer column's placeholder takes 2.0, not 1.5 (which would become 1 and let
        // "a"'s 1 >= 1.5 through): that call is planned afresh instead.
        let exact = [
            ScalarValue::Utf8(Some("b".into())),
            ScalarValue::Float64(Some(2.0)),
        ];
        assert_eq!(rows(&ctx, plan.bind(&exact).unwrap()).await, ["b"]);
        let inexact = [
            ScalarValue::Utf8(Some("a".into())),
            ScalarValue::Float64(Some(1.5)),
        ];
        assert!(plan.bind(&inexact).is_none());
        // A missing value does not bind either.
        assert!(plan.bind(&[ScalarValue::Utf8(Some("a".into()))]).is_none());
    }

    #[test]
    fn a_plan_serves_its_caller_and_sql_only_while_its_tables_stay_put() {
        let plans = Plans::new(8);
        let at = |v: i64| move |t: &str| (t == "a" || t == "f").then_some(v);
        plans.put("alice", "SELECT 1", plan(&[("a", 1), ("f", 1)]), at(1));
        assert!(plans.get("alice", "SELECT 1", at(1)).is_some());
        assert!(
            plans.get("bruno", "SELECT 1", at(1)).is_none(),
            "another caller"
        );
        assert!(plans.get("alice", "SELECT 2", at(1)).is_none(), "other SQL");
        // A row filter's table moving is enough to drop it, and it is gone for good.
        let filter_moved = |t: &str| match t {
            "a" => Some(1),
            "f" => Some(2),
            _ => None,
        };
        assert!(plans.get("alice", "SELECT 1", filter_moved).is_none());
        assert!(
            plans.get("alice", "SELECT 1", at(1)).is_none(),
            "dropped when stale"
        );
        assert_eq!(plans.hits_and_misses(), (1, 4));
    }

    #[test]
    fn keeping_a_plan_drops_the_stale_ones_and_the_count_is_bounded() {
        let plans = Plans::new(2);
        plans.put("alice", "q1", plan(&[("a", 1)]), |_| Some(1));
        plans.put("alice", "q2", plan(&[("b", 1)]), |_| Some(1));
        // `a` moved: q1 holds an old version and leaves when q3 is kept.
        let now = |t: &str| Some(if t == "a" { 2 } else { 1 });
        plans.put("alice", "q3", plan(&[("b", 1)]), now);
        assert_eq!(plans.len(), 2);
        assert!(plans.get("alice", "q2", now).is_some());
        // q2 was used last: q3 leaves for q4.
        plans.put("alice", "q4", plan(&[("b", 1)]), now);
        assert!(plans.get("alice", "q3", now).is_none());
        assert!(plans.get("alice", "q2", now).is_some());
        let none = Plans::new(0);
        none.put("alice", "q1", plan(&[]), now);
        assert!(!none.keeps() && none.get("alice", "q1", now).is_none());
    }
}
