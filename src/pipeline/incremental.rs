//! Incremental recompute of a derived pipeline: only the keys its inputs' changes touch.
//!
//! A pipeline with an `[incremental]` section computes one sink row per key (part × warehouse,
//! customer) from that key's rows of its *keyed* inputs, from whole *shared* inputs (parts,
//! suppliers, shipments) and from an evaluation time, its *clock* CTE. Given the Change Data Feed
//! of each input since the last run, a round:
//!
//! 1. runs the clock CTE alone over the whole inputs; if its row differs from the last run's
//!    (the clock ticked), every key is due and the pipeline runs in full;
//! 2. maps each changed input's CDF rows (`changes`, with `_change_type`) to the keys they touch
//!    by the input's `touches` SQL (a keyed input's default: its key columns), in a session
//!    holding the whole inputs too, so a change can fan out (a delivery moves its supplier's
//!    lateness, and so every position that supplier has inbound to); a changed input with no
//!    `touches` makes every key due;
//! 3. runs the pipeline's own SQL over the keyed inputs' rows of the due keys only, the shared
//!    inputs whole and the clock CTE replaced by the row of step 1, keeps the rows of due keys,
//!    and writes them with the last result's rows of every other key.
//!
//! Every term of the SQL that reads time reads the clock CTE, so a key's row depends only on
//! its keyed rows, the shared inputs and the clock: the result equals a full recompute over the
//! same input versions (`tests::incremental_equals_full_recompute` checks it row for row).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, TableProvider};
use datafusion::common::JoinType;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Query, Statement};

use crate::error::{Error, Result};
use crate::lakehouse::query::CATALOG;

/// The schema of the session holding the clock row and the due keys.
const SCHEMA: &str = "incremental";

/// How a derived pipeline recomputes only what changed (`[incremental]` of its definition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incremental {
    /// The sink's key: one row per key.
    pub key: Vec<String>,
    /// The CTE of the SQL that holds the evaluation time: every time-dependent term reads it.
    pub clock: String,
    /// Inputs read for the due keys only (each has the key columns).
    pub keyed: Vec<String>,
    /// Input → SQL over its changed rows (`changes`) giving the keys they touch.
    pub touches: BTreeMap<String, String>,
}

impl Incremental {
    /// The SQL mapping `input`'s changed rows to keys, `None` when any change of it makes
    /// every key due.
    pub fn touches_sql(&self, input: &str) -> Option<String> {
        self.touches.get(input).cloned().or_else(|| {
            self.keyed
                .iter()
                .any(|k| k == input)
                .then(|| format!("SELECT {} FROM changes", self.key.join(", ")))
        })
    }
}

/// The parsed statement of a pipeline's SQL.
fn statement(ctx: &SessionContext, sql: &str) -> Result<DfStatement> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    Ok(state.sql_to_statement(sql, &dialect)?)
}

fn query_mut(stmt: &mut DfStatement) -> Option<&mut Query> {
    match stmt {
        DfStatement::Statement(s) => match s.as_mut() {
            Statement::Query(q) => Some(q.as_mut()),
            _ => None,
        },
        _ => None,
    }
}

/// The body of CTE `cte` of `sql`'s top-level `WITH`, as a statement of its own.
pub fn cte_statement(ctx: &SessionContext, sql: &str, cte: &str) -> Result<DfStatement> {
    let mut stmt = statement(ctx, sql)?;
    let body = cte_query(&mut stmt, cte)?.clone();
    Ok(DfStatement::Statement(Box::new(Statement::Query(body))))
}

/// The query of CTE `cte` of `stmt`'s top-level `WITH`.
fn cte_query<'a>(stmt: &'a mut DfStatement, cte: &str) -> Result<&'a mut Box<Query>> {
    query_mut(stmt)
        .and_then(|q| q.with.as_mut())
        .and_then(|w| w.cte_tables.iter_mut().find(|c| c.alias.name.value == cte))
        .map(|c| &mut c.query)
        .ok_or_else(|| Error::Invalid(format!("the SQL has no top-level WITH query named {cte:?}")))
}

/// `sql` with the body of CTE `cte` replaced by `SELECT * FROM incremental.clock`.
fn with_clock_table(ctx: &SessionContext, sql: &str, cte: &str) -> Result<DfStatement> {
    let mut stmt = statement(ctx, sql)?;
    let DfStatement::Statement(replacement) =
        statement(ctx, &format!("SELECT * FROM {SCHEMA}.clock"))?
    else {
        return Err(Error::Internal("the clock query is not a statement".into()));
    };
    let Statement::Query(replacement) = *replacement else {
        return Err(Error::Internal("the clock query is not a query".into()));
    };
    *cte_query(&mut stmt, cte)? = replacement;
    Ok(stmt)
}

async fn plan(ctx: &SessionContext, stmt: DfStatement) -> Result<DataFrame> {
    let plan: LogicalPlan = ctx.state().statement_to_plan(stmt).await?;
    Ok(ctx.execute_logical_plan(plan).await?)
}

/// The clock CTE's rows over the whole inputs of `ctx`.
pub async fn clock(ctx: &SessionContext, sql: &str, cte: &str) -> Result<Vec<RecordBatch>> {
    let df = plan(ctx, cte_statement(ctx, sql, cte)?).await?;
    Ok(non_empty(df.collect().await?))
}

fn non_empty(batches: Vec<RecordBatch>) -> Vec<RecordBatch> {
    batches.into_iter().filter(|b| b.num_rows() > 0).collect()
}

/// Registers `tables` (name → rows) as `incremental.<name>` in `ctx`'s catalog.
fn register(ctx: &SessionContext, tables: Vec<(&str, SchemaRef, Vec<RecordBatch>)>) -> Result<()> {
    let catalog = ctx
        .catalog(CATALOG)
        .ok_or_else(|| Error::Internal("session without the catalog".into()))?;
    let schema = match catalog.schema(SCHEMA) {
        Some(s) => s,
        None => {
            let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
            catalog.register_schema(SCHEMA, s.clone())?;
            s
        }
    };
    for (name, s, rows) in tables {
        let table: Arc<dyn TableProvider> = Arc::new(MemTable::try_new(s, vec![rows])?);
        schema.deregister_table(name)?;
        schema.register_table(name.to_string(), table)?;
    }
    Ok(())
}

/// The keys `changes` (an input's CDF rows) touch, by `touches` run in `ctx` (the whole inputs)
/// with the changes as `changes`. Key columns are cast to `key_schema`'s types.
pub async fn touched(
    ctx: &SessionContext,
    touches: &str,
    changes: Vec<RecordBatch>,
    key_schema: &SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let Some(first) = changes.first() else {
        return Ok(Vec::new());
    };
    let schema = first.schema();
    // `changes` unqualified, as `batch` is for micro-batch pipelines.
    let ctx = super::session::with_unqualified(
        ctx,
        "changes",
        Arc::new(MemTable::try_new(schema, vec![changes])?),
    )?;
    let keys = ctx.sql(touches).await?.collect().await?;
    conform_keys(&non_empty(keys), key_schema)
}

/// `batches` reduced to `key_schema`'s columns, in its types.
fn conform_keys(batches: &[RecordBatch], key_schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    batches
        .iter()
        .map(|b| columns_as(b, key_schema, "touched keys"))
        .collect()
}

/// `batch`'s columns named as `schema`'s, in its order and types; `what` names the batch in
/// the error of a missing column.
pub fn columns_as(batch: &RecordBatch, schema: &SchemaRef, what: &str) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let c = batch.column_by_name(f.name()).ok_or_else(|| {
                Error::Invalid(format!("{what}: the result lacks column {}", f.name()))
            })?;
            Ok(arrow::compute::cast(c, f.data_type())?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The sink's key columns, in its types.
pub fn key_schema(table: &str, key: &[String]) -> Result<SchemaRef> {
    let schema = crate::model::tables::get(table)?.arrow_schema();
    let fields = key
        .iter()
        .map(|k| {
            schema
                .field_with_name(k)
                .cloned()
                .map_err(|_| Error::Invalid(format!("{table} has no key column {k}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(arrow::datatypes::Schema::new(fields)))
}

/// What a keyed recompute produced: the sink's new content.
pub struct Recomputed {
    /// The due keys' new rows followed by the other keys' rows of the last result (columns by
    /// name, not yet in the sink's order and types).
    pub batches: Vec<RecordBatch>,
    /// Distinct due keys.
    pub keys: usize,
}

/// Runs `sql` for the `due` keys only and merges the result into the sink's last content.
///
/// `tables` names each input (and the sink) → its provider at the run's version; keyed inputs
/// are cut to the due keys' rows here. `clock` is the clock CTE's row of this run.
pub async fn recompute(
    sql: &str,
    inc: &Incremental,
    tables: &BTreeMap<&str, Arc<dyn TableProvider>>,
    sink: &str,
    clock: Vec<RecordBatch>,
    due: Vec<RecordBatch>,
) -> Result<Recomputed> {
    let key_schema = key_schema(sink, &inc.key)?;
    let clock_schema = clock
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| Error::Internal("a clock without rows".into()))?;
    let keys: Vec<&str> = inc.key.iter().map(String::as_str).collect();
    // Distinct due keys, once.
    let scratch = SessionContext::new();
    let due = scratch
        .read_table(Arc::new(MemTable::try_new(key_schema.clone(), vec![due])?))?
        .distinct()?
        .collect()
        .await?;
    let count = due.iter().map(|b| b.num_rows()).sum();
    let due_df = |ctx: &SessionContext| -> Result<DataFrame> {
        Ok(ctx.read_table(Arc::new(MemTable::try_new(
            key_schema.clone(),
            vec![due.clone()],
        )?))?)
    };
    // The keyed inputs' rows of the due keys.
    let mut cut: BTreeMap<&str, Arc<dyn TableProvider>> = BTreeMap::new();
    for name in &inc.keyed {
        let provider = tables
            .get(name.as_str())
            .ok_or_else(|| Error::Internal(format!("keyed input {name} is not open")))?;
        let rows = scratch.read_table(provider.clone())?.join(
            due_df(&scratch)?,
            JoinType::LeftSemi,
            &keys,
            &keys,
            None,
        )?;
        let schema = provider.schema();
        let batches = rows.collect().await?;
        cut.insert(name, Arc::new(MemTable::try_new(schema, vec![batches])?));
    }
    let ctx = super::session::with_tables(|t| {
        Ok(cut
            .get(t.name.as_str())
            .or_else(|| tables.get(t.name.as_str()))
            .cloned())
    })?;
    register(&ctx, vec![("clock", clock_schema, clock)])?;
    let fresh = plan(&ctx, with_clock_table(&ctx, sql, &inc.clock)?)
        .await?
        // Only due keys' rows: a row of another key would stand twice in the result.
        .join(due_df(&ctx)?, JoinType::LeftSemi, &keys, &keys, None)?
        .collect()
        .await?;
    let sink_provider = tables
        .get(sink)
        .ok_or_else(|| Error::Internal(format!("sink {sink} is not open")))?;
    let kept = scratch
        .read_table(sink_provider.clone())?
        .join(due_df(&scratch)?, JoinType::LeftAnti, &keys, &keys, None)?
        .collect()
        .await?;
    // (the caller conforms both to the sink's columns)
    let batches = fresh
        .into_iter()
        .chain(kept)
        .filter(|b| b.num_rows() > 0)
        .collect::<Vec<_>>();
    Ok(Recomputed {
        batches,
        keys: count,
    })
}

/// Whether two table contents hold the same rows, whatever their order: rows are matched by
/// `key`, other columns compared exactly, floats within 1e-9 (relative; a sum's last bits follow
/// the order DataFusion adds in). The first difference, said plainly.
pub fn same_rows(
    a: &[RecordBatch],
    b: &[RecordBatch],
    key: &[String],
) -> std::result::Result<(), String> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type};
    let sorted = |batches: &[RecordBatch]| -> std::result::Result<Option<RecordBatch>, String> {
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        let all =
            arrow::compute::concat_batches(&first.schema(), batches).map_err(|e| e.to_string())?;
        let columns = key
            .iter()
            .map(|k| {
                all.column_by_name(k)
                    .cloned()
                    .map(|values| arrow::compute::SortColumn {
                        values,
                        options: None,
                    })
                    .ok_or_else(|| format!("no key column {k}"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let order =
            arrow::compute::lexsort_to_indices(&columns, None).map_err(|e| e.to_string())?;
        arrow::compute::take_record_batch(&all, &order)
            .map(Some)
            .map_err(|e| e.to_string())
    };
    let (a, b) = (sorted(a)?, sorted(b)?);
    let rows = |x: &Option<RecordBatch>| x.as_ref().map_or(0, |b| b.num_rows());
    if rows(&a) != rows(&b) {
        return Err(format!("{} rows against {}", rows(&a), rows(&b)));
    }
    let (Some(a), Some(b)) = (a, b) else {
        return Ok(());
    };
    for field in a.schema().fields() {
        let name = field.name();
        let x = a.column_by_name(name).ok_or("column lost")?;
        let y = b
            .column_by_name(name)
            .ok_or_else(|| format!("no column {name} in the other"))?;
        if field.data_type() == &DataType::Float64 {
            let (x, y) = (
                x.as_primitive::<Float64Type>(),
                y.as_primitive::<Float64Type>(),
            );
            for i in 0..x.len() {
                let same = match (x.is_null(i), y.is_null(i)) {
                    (true, true) => true,
                    (false, false) => {
                        let (u, v) = (x.value(i), y.value(i));
                        u == v || (u - v).abs() <= 1e-9 * u.abs().max(v.abs())
                    }
                    _ => false,
                };
                if !same {
                    return Err(format!(
                        "row {i} column {name}: {:?} against {:?}",
                        x.slice(i, 1),
                        y.slice(i, 1)
                    ));
                }
            }
        } else if x.to_data() != y.to_data() {
            let i = (0..x.len())
                .find(|&i| x.slice(i, 1).to_data() != y.slice(i, 1).to_data())
                .unwrap_or(0);
            return Err(format!(
                "row {i} column {name}: {:?} against {:?}",
                x.slice(i, 1),
                y.slice(i, 1)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQL: &str = "WITH clock AS (SELECT max(ts) AS as_of FROM sales.transactions), \
        other AS (SELECT 1 AS one) \
        SELECT c.as_of FROM clock c CROSS JOIN other";

    #[tokio::test]
    async fn the_clock_cte_runs_alone_and_is_replaced_by_the_given_row() {
        let ctx = super::super::session::memory(&BTreeMap::new()).unwrap();
        // Alone: the CTE's own query over the (empty) table.
        let alone = clock(&ctx, SQL, "clock").await.unwrap();
        let rows: usize = alone.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 1, "max over no rows is one NULL row");
        // Replaced: the query reads the registered row instead of the table.
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("as_of", arrow::datatypes::DataType::Int64, true),
        ]));
        let row = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::Int64Array::from(vec![42]))],
        )
        .unwrap();
        register(&ctx, vec![("clock", schema, vec![row])]).unwrap();
        let out = plan(&ctx, with_clock_table(&ctx, SQL, "clock").unwrap())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&out)
            .unwrap()
            .to_string();
        assert!(text.contains("42"), "{text}");
        // A CTE that is not there is named in the error.
        let err = cte_statement(&ctx, SQL, "tick").unwrap_err().to_string();
        assert!(err.contains("\"tick\""), "{err}");
    }
}
