//! Tool answers kept per input version. A tool query's rows are a function of the caller (its
//! grants, row filters and masks), the query, its parameters and the versions of the tables it
//! depends on: those it scans, and those its row filters look into (`visible_in`). While none of
//! those tables moves, the same call gets the same rows without planning or running anything;
//! its `as_of` is worked out again, so it still says how old the data is now.
//!
//! A query with a function whose result is not fixed by its arguments (`now()`, `random()`, …)
//! is never kept. The cache is bounded in bytes (`serve.answer_cache_mb`); the least recently
//! used answers leave first.

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::scalar::ScalarValue;

/// What an answer is about: the caller (its access key), the SQL and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    principal: String,
    sql: String,
    /// The parameters with their types (`Utf8("P-1")` is not `Int64(1)`).
    params: String,
}

impl Key {
    pub fn new(principal: &str, sql: &str, params: &[ScalarValue]) -> Key {
        Key {
            principal: principal.to_string(),
            sql: sql.to_string(),
            params: format!("{params:?}"),
        }
    }

    fn bytes(&self) -> usize {
        self.principal.len() + self.sql.len() + self.params.len()
    }
}

/// A kept answer.
pub struct Answer {
    /// Every table the rows depend on, at the version they were computed from.
    pub inputs: Vec<(String, i64)>,
    /// The tables the query scans (its `as_of` names these).
    pub read: Vec<String>,
    pub batches: Vec<RecordBatch>,
    bytes: usize,
}

impl Answer {
    pub fn new(inputs: Vec<(String, i64)>, read: Vec<String>, batches: Vec<RecordBatch>) -> Answer {
        let bytes = batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum::<usize>()
            + inputs.iter().map(|(t, _)| t.len() + 8).sum::<usize>()
            + read.iter().map(String::len).sum::<usize>();
        Answer {
            inputs,
            read,
            batches,
            bytes,
        }
    }
}

/// The answers, newest use last, within a byte budget.
pub struct Answers {
    kept: Mutex<Kept>,
    budget: usize,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

struct Kept {
    answers: lru::LruCache<Key, Arc<Answer>>,
    bytes: usize,
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.kept.lock().expect("poisoned");
        f.debug_struct("Answers")
            .field("answers", &kept.answers.len())
            .field("bytes", &kept.bytes)
            .field("budget", &self.budget)
            .finish()
    }
}

impl Answers {
    /// At most `budget` bytes of answers (0 keeps none).
    pub fn new(budget: usize) -> Answers {
        Answers {
            kept: Mutex::new(Kept {
                answers: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            budget,
            hits: Default::default(),
            misses: Default::default(),
        }
    }

    /// Whether answers are kept at all (`serve.answer_cache_mb` > 0): when not, nothing needs
    /// working out for one.
    pub fn keeps(&self) -> bool {
        self.budget > 0
    }

    /// How many lookups found an answer, and how many did not, so far.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// The answer kept for `key`, if every table it depends on is still at the version it was
    /// computed from (`version` says which version the caller's snapshot serves).
    pub fn get(&self, key: &Key, version: impl Fn(&str) -> Option<i64>) -> Option<Arc<Answer>> {
        let hit = {
            let mut kept = self.kept.lock().expect("poisoned");
            kept.answers
                .get(key)
                .filter(|a| current(&a.inputs, &version))
                .cloned()
        };
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::telemetry::events::AnswerCache { hit: hit.is_some() }.emit();
        hit
    }

    /// Keeps `answer` for `key` (replacing an older one), unless it alone is over the budget;
    /// the least recently used answers leave until the rest fit.
    pub fn put(&self, key: Key, answer: Answer) {
        let size = answer.bytes + key.bytes();
        if size > self.budget / 16 {
            return;
        }
        let mut kept = self.kept.lock().expect("poisoned");
        if let Some(old) = kept.answers.put(key.clone(), Arc::new(answer)) {
            kept.bytes -= old.bytes + key.bytes();
        }
        kept.bytes += size;
        while kept.bytes > self.budget {
            match kept.answers.pop_lru() {
                Some((k, a)) => kept.bytes -= a.bytes + k.bytes(),
                None => break,
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.kept.lock().expect("poisoned").answers.len()
    }
}

/// Whether every table of `inputs` is still at the version noted there (`version` says which
/// version the caller's snapshot serves): the rule for reusing a kept answer or plan.
pub fn current(inputs: &[(String, i64)], version: &impl Fn(&str) -> Option<i64>) -> bool {
    inputs.iter().all(|(t, v)| version(t) == Some(*v))
}

/// Whether `plan` (not yet analyzed: views are scans carrying their own plans, which count
/// too) gives the same rows every time it runs over the same table versions: no function in it
/// is stable-per-query (`now()`) or volatile (`random()`).
pub fn deterministic(plan: &LogicalPlan) -> bool {
    let mut fixed = true;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(view) = scan.source.get_logical_plan()
            && !deterministic(&view)
        {
            fixed = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    fixed = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(if fixed {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn batch(n: usize) -> Vec<RecordBatch> {
        let a = Int64Array::from_iter_values(0..n as i64);
        vec![RecordBatch::try_from_iter([("a", Arc::new(a) as _)]).unwrap()]
    }

    fn key(p: &str, param: &str) -> Key {
        Key::new(p, "SELECT 1", &[ScalarValue::from(param)])
    }

    #[test]
    fn an_answer_is_reused_only_while_every_input_is_at_its_version() {
        let answers = Answers::new(1 << 20);
        let inputs = vec![("a.t".to_string(), 3), ("a.filter".to_string(), 7)];
        answers.put(
            key("alice", "x"),
            Answer::new(inputs, vec!["a.t".into()], batch(5)),
        );
        let at = |t: i64, f: i64| {
            move |table: &str| match table {
                "a.t" => Some(t),
                "a.filter" => Some(f),
                _ => None,
            }
        };
        assert!(answers.get(&key("alice", "x"), at(3, 7)).is_some());
        // The scanned table moved, or only the table a row filter looks into: recompute.
        assert!(answers.get(&key("alice", "x"), at(4, 7)).is_none());
        assert!(answers.get(&key("alice", "x"), at(3, 8)).is_none());
        // Another caller, or other arguments, never see it.
        assert!(answers.get(&key("bob", "x"), at(3, 7)).is_none());
        assert!(answers.get(&key("alice", "y"), at(3, 7)).is_none());
        // Parameters of another type are another key.
        let int = Key::new("alice", "SELECT 1", &[ScalarValue::Int64(Some(1))]);
        let text = Key::new("alice", "SELECT 1", &[ScalarValue::from("1")]);
        assert_ne!(int, text);
    }

    #[test]
    fn the_cache_stays_within_its_budget_least_recently_used_first() {
        let one = Answer::new(vec![], vec![], batch(1000)).bytes + key("p", "0").bytes();
        let answers = Answers::new(one * 20);
        for i in 0..40 {
            answers.put(
                key("p", &format!("{i:02}")),
                Answer::new(vec![], vec![], batch(1000)),
            );
            if i == 10 {
                // Used now: outlives the answers put before it.
                assert!(answers.get(&key("p", "00"), |_| None).is_some());
            }
            if i == 25 {
                assert!(answers.get(&key("p", "00"), |_| None).is_some());
                assert!(answers.get(&key("p", "01"), |_| None).is_none());
            }
        }
        let kept = answers.kept.lock().unwrap().bytes;
        assert!(
            kept <= one * 20,
            "{kept} bytes kept over a budget of {}",
            one * 20
        );
        assert!(answers.len() >= 19, "{} answers", answers.len());
        assert!(answers.get(&key("p", "39"), |_| None).is_some());
        assert!(answers.get(&key("p", "01"), |_| None).is_none());
        // One answer over a sixteenth of the budget is not kept at all.
        answers.put(key("p", "big"), Answer::new(vec![], vec![], batch(100_000)));
        assert!(answers.get(&key("p", "big"), |_| None).is_none());
    }

    #[tokio::test]
    async fn queries_with_time_or_chance_in_them_are_not_deterministic() {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.sql("CREATE VIEW v AS SELECT now() AS t").await.unwrap();
        for (sql, fixed) in [
            ("SELECT 1 + 2 AS x", true),
            ("SELECT abs(-1), upper('a')", true),
            ("SELECT now()", false),
            ("SELECT random() > 0.5", false),
            ("SELECT 1 WHERE EXISTS (SELECT now())", false),
            ("SELECT * FROM v", false),
        ] {
            let plan = ctx.state().create_logical_plan(sql).await.unwrap();
            assert_eq!(deterministic(&plan), fixed, "{sql}");
        }
    }
}
