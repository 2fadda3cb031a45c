//! Tool answers kept per input version. A tool query's rows are a function of the caller (its
//! grants, row filters and masks), the query, its parameters and the versions of the tables it
//! depends on: those it scans, and those its row filters look into (`visible_in`). While none of
//! those tables moves, the same call gets the same rows without planning or running anything;
//! its `as_of` is worked out again, so it still says how old the data is now.
//!
//! A query with a function whose result is not fixed by its arguments (`now()`, `random()`, …)
//! is never kept. The cache is bounded in bytes (`serve.answer_cache_mb`); the least recently
//! used answers leave first. Table versions only move forward, so an answer one of whose tables
//! has moved can never be used again: each time the server starts serving new versions, such
//! answers are dropped ([`Answers::forget_stale`]) instead of holding the budget until the
//! least recently used rule reaches them.

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
    /// Keeps `batches` in buffers of their own ([`compact`]), so the answer holds its rows
    /// and not the table version they were cut from.
    pub fn new(inputs: Vec<(String, i64)>, read: Vec<String>, batches: Vec<RecordBatch>) -> Answer {
        let batches: Vec<RecordBatch> = batches.iter().map(compact).collect();
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

/// `batch` with each column in buffers holding only its own values.
///
/// A query's result often shares buffers with what it read: a filter over a text column
/// (`Utf8View`, as DataFusion reads Parquet text) copies the 16-byte views of the rows it keeps
/// but points into the scanned batch's data buffers, and a `LIMIT` slices. A ten-row answer
/// over an in-memory table then holds that table version's text (hundreds of KB), and the
/// budget counts it so (`get_array_memory_size`): under `bench mcp` the cache's 64 MB held
/// about 120 answers. Kept answers outlive the version they read, so they get their own copy:
/// view arrays keep only their own views and the bytes those point to, and a sliced array of
/// any other layout whose buffers are more than twice what its values need is copied. Nested
/// columns are kept as they are.
fn compact(batch: &RecordBatch) -> RecordBatch {
    use arrow::array::{
        Array, ArrayRef, AsArray, BinaryViewArray, MutableArrayData, StringViewArray, make_array,
    };
    use arrow::datatypes::DataType;
    let compact_column = |col: &ArrayRef| -> ArrayRef {
        match col.data_type() {
            // `gc` copies the views and exactly the bytes they point to, but when every value
            // is short enough to sit in its view it keeps the views buffer as it is (a slice
            // of a table's column then still holds all of its views): those are rebuilt.
            DataType::Utf8View => match col.as_string_view().gc() {
                g if g.data_buffers().is_empty() => Arc::new(StringViewArray::from_iter(&g)),
                g => Arc::new(g),
            },
            DataType::BinaryView => match col.as_binary_view().gc() {
                g if g.data_buffers().is_empty() => Arc::new(BinaryViewArray::from_iter(&g)),
                g => Arc::new(g),
            },
            t if t.is_nested() => col.clone(),
            _ => {
                let data = col.to_data();
                match data.get_slice_memory_size() {
                    Ok(needed) if col.get_array_memory_size() > 2 * needed + 1024 => {
                        let mut copy = MutableArrayData::new(vec![&data], false, data.len());
                        match copy.try_extend(0, 0, data.len()) {
                            Ok(()) => make_array(copy.freeze()),
                            Err(_) => col.clone(),
                        }
                    }
                    _ => col.clone(),
                }
            }
        }
    };
    let columns = batch.columns().iter().map(compact_column).collect();
    RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .expect("the same columns, types and rows")
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

impl Kept {
    fn emit(&self) {
        crate::telemetry::events::AnswerCacheHeld {
            answers: self.answers.len(),
            bytes: self.bytes,
        }
        .emit();
    }
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
        kept.emit();
    }

    /// Drops every answer one of whose tables is no longer at the version it was computed
    /// from (`version`: the versions now served). Served versions only move forward, so no
    /// call could use such an answer again; kept, it would only hold memory until the least
    /// recently used rule reached it.
    pub fn forget_stale(&self, version: impl Fn(&str) -> Option<i64>) {
        let mut kept = self.kept.lock().expect("poisoned");
        let Kept { answers, bytes } = &mut *kept;
        let before = answers.len();
        answers.retain(|k, a| {
            let keep = current(&a.inputs, &version);
            if !keep {
                *bytes -= a.bytes + k.bytes();
            }
            keep
        });
        if answers.len() < before {
            kept.emit();
        }
    }

    /// Answers kept now, and their bytes as the budget counts them.
    pub fn held(&self) -> (usize, usize) {
        let kept = self.kept.lock().expect("poisoned");
        (kept.answers.len(), kept.bytes)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held().0
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

    #[test]
    fn a_kept_answer_holds_its_own_rows_not_the_batch_they_were_cut_from() {
        use arrow::array::{AsArray, BooleanArray, StringViewArray};
        // A table's text column (long values live in the data buffers, not in the views) and a
        // number column; the answer is three rows of it, filtered, and two rows sliced.
        let n = 20_000;
        let text = StringViewArray::from_iter_values(
            (0..n).map(|i| format!("part P-{i:05} at warehouse W-{:02}, bin {i}", i % 7)),
        );
        let num = Int64Array::from_iter_values(0..n as i64);
        let table = RecordBatch::try_from_iter([
            ("text", Arc::new(text) as arrow::array::ArrayRef),
            ("num", Arc::new(num) as _),
        ])
        .unwrap();
        let keep = BooleanArray::from_iter((0..n).map(|i| Some(i % 7_000 == 3)));
        let filtered = arrow::compute::filter_record_batch(&table, &keep).unwrap();
        // Sliced: the text column's ids are short enough to sit in the views themselves.
        let ids = StringViewArray::from_iter_values((0..n).map(|i| format!("C-{i}")));
        let sliced = RecordBatch::try_from_iter([
            ("id", Arc::new(ids) as arrow::array::ArrayRef),
            ("num", table.column(1).clone()),
        ])
        .unwrap()
        .slice(100, 2);
        let table_bytes = table.get_array_memory_size();
        assert!(
            filtered.get_array_memory_size() > table_bytes / 2,
            "the filter shares buffers"
        );

        let answer = Answer::new(vec![], vec![], vec![filtered.clone(), sliced.clone()]);
        assert!(
            answer.bytes < 4096,
            "{} bytes kept for five rows of a {table_bytes}-byte batch",
            answer.bytes
        );
        assert_eq!(answer.batches, vec![filtered, sliced], "the same rows");
        let kept = answer.batches[0].column(0).as_string_view();
        assert_eq!(kept.value(1), "part P-07003 at warehouse W-03, bin 7003");
        assert_eq!(
            answer.batches[1].column(0).as_string_view().value(1),
            "C-101"
        );
        assert_eq!(
            answer.batches[1]
                .column(1)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            100
        );
    }

    #[test]
    fn answers_whose_tables_moved_are_dropped_and_their_bytes_given_back() {
        let answers = Answers::new(1 << 20);
        let on =
            |t: &str, v: i64| Answer::new(vec![(t.to_string(), v)], vec![t.into()], batch(100));
        answers.put(key("p", "a"), on("a.t", 3));
        answers.put(key("p", "b"), on("b.t", 5));
        answers.put(key("p", "c"), Answer::new(vec![], vec![], batch(100)));
        let full = answers.kept.lock().unwrap().bytes;
        // a.t moved to 4; b.t is still at 5.
        answers.forget_stale(|t| match t {
            "a.t" => Some(4),
            "b.t" => Some(5),
            _ => None,
        });
        assert_eq!(answers.len(), 2);
        let after = answers.kept.lock().unwrap().bytes;
        assert_eq!(
            full - after,
            on("a.t", 3).bytes + key("p", "a").bytes(),
            "the dropped answer's bytes are given back"
        );
        let now = |t: &str| (t == "b.t").then_some(5);
        assert!(answers.get(&key("p", "b"), now).is_some());
        assert!(answers.get(&key("p", "c"), now).is_some());
        // A table that is no longer served at all makes its answers stale too.
        answers.forget_stale(|_| None);
        assert_eq!(
            answers.len(),
            1,
            "only the answer that reads no table is left"
        );
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
