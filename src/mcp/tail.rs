//! In-memory tails of the append-only logs (the bronze tables, anomalies, dead letters).
//!
//! A micro-batch pipeline commits a small file to each log every batch, so a log has hundreds
//! of small files between compactions and a scan of it opens every one of them. The server
//! instead keeps the newest rows of each log in memory and extends them from the Change Data
//! Feed of each new version: one small read per commit instead of a scan per request.
//!
//! A tail holds at most `serve.tail_rows` rows and its share of `serve.tail_mb` (the memory of
//! all tails together, split by the catalog) and drops its oldest batches beyond either. It remembers the newest event time it dropped, so it knows which queries it can answer
//! alone: a scan whose filters bound the event time above everything dropped reads memory;
//! any other scan reads the Delta table ([`TieredTable`]). Both are the same table version, so
//! an answer is the same whichever serves it.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMicrosecondType};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::scalar::ScalarValue;

/// Which rows of the table a tail holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Holds {
    /// Every row.
    All,
    /// Every row whose event time is after this (µs since the epoch), and maybe some older.
    After(i64),
}

/// The newest rows of one log.
#[derive(Debug, Clone)]
pub(crate) struct Tail {
    schema: SchemaRef,
    /// The event-time column, if the table has one. Without it a tail can only hold everything.
    ts_column: Option<String>,
    batches: VecDeque<RecordBatch>,
    rows: usize,
    max_rows: usize,
    /// Memory of the batches held ([`RecordBatch::get_array_memory_size`]).
    bytes: usize,
    max_bytes: usize,
    holds: Holds,
}

impl Tail {
    pub(crate) fn new(
        schema: SchemaRef,
        ts_column: Option<&str>,
        max_rows: usize,
        max_bytes: usize,
        holds: Holds,
    ) -> Tail {
        Tail {
            schema,
            ts_column: ts_column.map(str::to_string),
            batches: VecDeque::new(),
            rows: 0,
            max_rows,
            bytes: 0,
            max_bytes,
            holds,
        }
    }

    pub(crate) fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows held.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Memory of the batches held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Changes the memory budget; the tail trims to it at its next [`Tail::append`].
    pub(crate) fn set_max_bytes(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes;
    }

    pub(crate) fn holds_all(&self) -> bool {
        self.holds == Holds::All
    }

    pub(crate) fn ts_column(&self) -> Option<&str> {
        self.ts_column.as_deref()
    }

    /// Appends `batches` (any column order; extra columns such as the CDF's are dropped), then
    /// drops the oldest batches beyond the row or memory budget (the newest batch always stays).
    /// False when the tail can no longer say which rows it holds (over budget without an
    /// event-time column): use the Delta table.
    pub(crate) fn append(&mut self, batches: &[RecordBatch]) -> datafusion::error::Result<bool> {
        for b in batches {
            if b.num_rows() == 0 {
                continue;
            }
            let b = project(b, &self.schema)?;
            self.rows += b.num_rows();
            self.bytes += b.get_array_memory_size();
            self.batches.push_back(b);
        }
        while (self.rows > self.max_rows || self.bytes > self.max_bytes) && self.batches.len() > 1 {
            let Some(ts) = &self.ts_column else {
                return Ok(false);
            };
            let dropped = self.batches.pop_front().expect("len > 1");
            self.rows -= dropped.num_rows();
            self.bytes -= dropped.get_array_memory_size();
            if let Some(max) = max_micros(&dropped, ts) {
                self.holds = match self.holds {
                    Holds::All => Holds::After(max),
                    Holds::After(t) => Holds::After(t.max(max)),
                };
            }
        }
        Ok(true)
    }

    /// A provider for this table version: memory alone when the tail holds every row, else
    /// memory for scans bounded to the rows it holds and `delta` for the rest.
    pub(crate) fn provider(
        &self,
        delta: Arc<dyn TableProvider>,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let memory = Arc::new(MemTable::try_new(
            self.schema.clone(),
            vec![self.batches.iter().cloned().collect()],
        )?);
        Ok(match (self.holds, &self.ts_column) {
            (Holds::All, _) => memory,
            (Holds::After(after), Some(ts)) => Arc::new(TieredTable {
                memory,
                delta,
                ts_column: ts.clone(),
                after,
            }),
            (Holds::After(_), None) => delta,
        })
    }
}

/// The latest event time in `batch`'s `column` (µs), if any.
pub(crate) fn max_micros(batch: &RecordBatch, column: &str) -> Option<i64> {
    let col = batch.column_by_name(column)?;
    let col = arrow::compute::cast(col, &DataType::Timestamp(TimeUnit::Microsecond, None)).ok()?;
    arrow::compute::max(col.as_primitive::<TimestampMicrosecondType>())
}

/// `batch`'s columns in `schema`'s order, cast where a type differs only in representation.
fn project(batch: &RecordBatch, schema: &SchemaRef) -> datafusion::error::Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let col = batch.column_by_name(f.name()).ok_or_else(|| {
                datafusion::error::DataFusionError::Internal(format!(
                    "change feed batch has no column {}",
                    f.name()
                ))
            })?;
            Ok(if col.data_type() == f.data_type() {
                col.clone()
            } else {
                arrow::compute::cast(col, f.data_type())?
            })
        })
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// A log whose newest rows are in memory: scans whose filters keep only rows the memory holds
/// read memory, the others read Delta.
#[derive(Debug)]
struct TieredTable {
    memory: Arc<MemTable>,
    delta: Arc<dyn TableProvider>,
    ts_column: String,
    /// Memory holds every row with event time after this (µs).
    after: i64,
}

impl TieredTable {
    /// True when `filters` (a conjunction) keep only rows with event time after `self.after`.
    fn memory_suffices(&self, filters: &[Expr]) -> bool {
        filters
            .iter()
            .any(|f| lower_bound(f, &self.ts_column).is_some_and(|b| b.after(self.after)))
    }
}

/// A lower bound on a column: `col > v` (strict) or `col >= v`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound {
    micros: i64,
    strict: bool,
}

impl Bound {
    /// Every row passing this bound has event time after `t`.
    fn after(self, t: i64) -> bool {
        if self.strict {
            self.micros >= t
        } else {
            self.micros > t
        }
    }
}

/// The tightest lower bound `expr` puts on `column`, looking through ANDs.
fn lower_bound(expr: &Expr, column: &str) -> Option<Bound> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return None;
    };
    if *op == Operator::And {
        return match (lower_bound(left, column), lower_bound(right, column)) {
            (Some(a), Some(b)) => Some(if a.micros >= b.micros { a } else { b }),
            (a, b) => a.or(b),
        };
    }
    let (op, value) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) if c.name == column => (*op, v),
        (Expr::Literal(v, _), Expr::Column(c)) if c.name == column => (op.swap()?, v),
        _ => return None,
    };
    let micros = timestamp_micros(value)?;
    match op {
        Operator::Gt => Some(Bound {
            micros,
            strict: true,
        }),
        Operator::GtEq => Some(Bound {
            micros,
            strict: false,
        }),
        _ => None,
    }
}

fn timestamp_micros(v: &ScalarValue) -> Option<i64> {
    match v
        .cast_to(&DataType::Timestamp(TimeUnit::Microsecond, None))
        .ok()?
    {
        ScalarValue::TimestampMicrosecond(Some(m), _) => Some(m),
        _ => None,
    }
}

#[async_trait::async_trait]
impl TableProvider for TieredTable {
    fn schema(&self) -> SchemaRef {
        self.memory.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Both sides may return more rows than the filters keep; DataFusion re-applies them.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if self.memory_suffices(filters) {
            self.memory.scan(state, projection, filters, limit).await
        } else {
            self.delta.scan(state, projection, filters, limit).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::prelude::{SessionContext, col, lit};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ]))
    }

    fn batch(rows: &[(i64, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                        .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap()
    }

    fn ts(micros: i64) -> Expr {
        lit(ScalarValue::TimestampMicrosecond(
            Some(micros),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn dropping_old_batches_records_what_the_tail_still_holds() {
        let mut tail = Tail::new(schema(), Some("ts"), 4, usize::MAX, Holds::All);
        assert!(tail.append(&[batch(&[(1, 10), (2, 30)])]).unwrap());
        assert!(tail.append(&[batch(&[(3, 20), (4, 40)])]).unwrap());
        assert_eq!(tail.holds, Holds::All);
        assert!(tail.append(&[batch(&[(5, 50)])]).unwrap());
        // The first batch went: every row after its newest event time (30) is still here.
        assert_eq!((tail.rows, tail.holds), (3, Holds::After(30)));

        let mut no_clock = Tail::new(schema(), None, 1, usize::MAX, Holds::All);
        assert!(
            !no_clock
                .append(&[batch(&[(1, 1)]), batch(&[(2, 2)])])
                .unwrap()
        );
    }

    /// The memory budget bounds a tail whatever its row budget: old batches go once the held
    /// batches outgrow it, the newest always stays, and the tail still says what it holds.
    #[test]
    fn a_tail_holds_no_more_memory_than_its_budget() {
        let one = batch(&[(1, 10), (2, 20)]).get_array_memory_size();
        let mut tail = Tail::new(schema(), Some("ts"), usize::MAX, 2 * one, Holds::All);
        for i in 0..10 {
            assert!(
                tail.append(&[batch(&[(i, 10 * i), (i, 10 * i + 5)])])
                    .unwrap()
            );
            assert!(tail.bytes <= 2 * one, "{} > {}", tail.bytes, 2 * one);
        }
        assert_eq!(tail.batches.len(), 2);
        assert_eq!((tail.rows, tail.holds), (4, Holds::After(75)));
        // A single batch over the budget stays: a tail never drops its newest rows.
        let mut small = Tail::new(schema(), Some("ts"), usize::MAX, 1, Holds::All);
        assert!(small.append(&[batch(&[(1, 10)])]).unwrap());
        assert_eq!(small.rows, 1);
    }

    #[test]
    fn only_filters_inside_the_tail_read_memory() {
        let tiered = TieredTable {
            memory: Arc::new(MemTable::try_new(schema(), vec![vec![]]).unwrap()),
            delta: Arc::new(MemTable::try_new(schema(), vec![vec![]]).unwrap()),
            ts_column: "ts".into(),
            after: 30,
        };
        let yes = |e: Expr| assert!(tiered.memory_suffices(std::slice::from_ref(&e)), "{e}");
        let no = |e: Expr| assert!(!tiered.memory_suffices(std::slice::from_ref(&e)), "{e}");
        yes(col("ts").gt(ts(30)));
        yes(col("ts").gt_eq(ts(31)));
        yes(ts(40).lt(col("ts")));
        yes(col("v").eq(lit(1)).and(col("ts").gt(ts(35))));
        no(col("ts").gt_eq(ts(30)));
        no(col("ts").gt(ts(29)));
        no(col("ts").lt(ts(100)));
        no(col("v").gt(lit(100)));
        no(col("ts").gt(ts(40)).or(col("v").eq(lit(1))));
    }

    async fn sum(provider: Arc<dyn TableProvider>, filter: &str) -> i64 {
        let ctx = SessionContext::new();
        ctx.register_table("t", provider).unwrap();
        let b = ctx
            .sql(&format!("SELECT coalesce(sum(v), 0) FROM t {filter}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        b[0].column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
    }

    #[tokio::test]
    async fn a_tiered_scan_answers_like_the_whole_table() {
        let rows = [(1, 10), (2, 30), (3, 20), (4, 40), (5, 50)];
        let whole: Arc<dyn TableProvider> =
            Arc::new(MemTable::try_new(schema(), vec![vec![batch(&rows)]]).unwrap());
        let mut tail = Tail::new(schema(), Some("ts"), 3, usize::MAX, Holds::All);
        for r in rows.chunks(2) {
            assert!(tail.append(&[batch(r)]).unwrap());
        }
        assert_eq!(tail.holds, Holds::After(30));
        let tiered = tail.provider(whole.clone()).unwrap();
        for filter in [
            "",
            "WHERE ts > to_timestamp_micros(30)",
            "WHERE ts > to_timestamp_micros(45)",
            "WHERE ts >= to_timestamp_micros(20)",
            "WHERE ts < to_timestamp_micros(45)",
        ] {
            assert_eq!(
                sum(tiered.clone(), filter).await,
                sum(whole.clone(), filter).await,
                "{filter}"
            );
        }
        // Scans bounded after 30 are answered from memory: with nothing behind it, the tail
        // still has them, and only them.
        let empty = Arc::new(datafusion::datasource::empty::EmptyTable::new(schema()));
        let memory_only = tail.provider(empty).unwrap();
        assert_eq!(
            sum(memory_only.clone(), "WHERE ts > to_timestamp_micros(30)").await,
            9
        );
        assert_eq!(
            sum(memory_only.clone(), "WHERE ts > to_timestamp_micros(20)").await,
            0
        );
    }
}
