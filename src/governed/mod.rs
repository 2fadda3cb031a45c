//! Governed SQL: a caller's query is hostile code (DESIGN §6).
//!
//! [`query`] takes one caller's SQL over the caller's own session (whose tables are already
//! behind their row filters and masks, [`crate::auth::enforce`]) and answers it, or says
//! precisely why not:
//! - [`check`]: exactly one read-only query, allowed functions only, bounded size and depth;
//! - [`Sandbox`]: its own threads, a memory pool, guards between operators, a timeout that
//!   cancels, per-principal and total concurrency limits;
//! - the answer is cut at a row count and a byte count, whichever comes first;
//! - errors to a caller whose rows are filtered or masked carry no data values
//!   ([`describe`]).

pub mod check;
pub mod functions;
mod sandbox;

use arrow::datatypes::SchemaRef;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

pub use sandbox::{Budget, Failure, Limits, Sandbox, describe, pooled_bytes};

/// A caller's row, as JSON (NULL columns left out).
pub type Row = serde_json::Map<String, serde_json::Value>;

/// What a query answered.
pub struct Answer {
    pub schema: SchemaRef,
    pub rows: Vec<Row>,
    /// Why rows were left out, if some were: `"rows"` (the row limit) or `"bytes"` (the
    /// answer's byte limit).
    pub truncated_by: Option<&'static str>,
    /// The plan, for the answer's `as_of`.
    pub plan: LogicalPlan,
}

/// Runs `sql` for `principal` over `shared` (the caller's session) in `sandbox`: at most
/// `max_rows` rows and the sandbox's byte limit. `restricted`: the caller's rows are filtered
/// or masked somewhere, so errors it gets name no values.
pub async fn query(
    sandbox: &Sandbox,
    principal: &str,
    restricted: bool,
    shared: SessionContext,
    sql: String,
    max_rows: usize,
) -> Result<Answer, Failure> {
    sandbox
        .run(principal, move |budget| async move {
            check::check(&sql).map_err(|r| Failure::Refused(r.0))?;
            let limits = *budget.limits();
            let fail = |e: datafusion::error::DataFusionError| describe(&e, &limits, restricted);
            let ctx = budget.session(&shared).map_err(fail)?;
            let options = SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            // Planning reads no rows: its errors speak of the query and the caller's own
            // schema only, so they are given in full.
            let df = ctx
                .sql_with_options(&sql, options)
                .await
                .map_err(|e| Failure::Refused(format!("query failed: {e}")))?;
            let plan = df.logical_plan().clone();
            let schema = SchemaRef::new(df.schema().as_arrow().clone());
            let mut stream = df
                .limit(0, Some(max_rows + 1))
                .map_err(fail)?
                .execute_stream()
                .await
                .map_err(fail)?;
            let mut rows = Vec::new();
            let mut bytes = 0usize;
            let mut truncated_by = None;
            'batches: while let Some(batch) = stream.next().await {
                let batch = batch.map_err(fail)?;
                let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
                writer
                    .write(&batch)
                    .and_then(|_| writer.finish())
                    .map_err(|e| fail(e.into()))?;
                for line in writer.into_inner().split(|b| *b == b'\n') {
                    if line.is_empty() {
                        continue;
                    }
                    if rows.len() == max_rows {
                        truncated_by = Some("rows");
                        break 'batches;
                    }
                    if bytes + line.len() > limits.result {
                        truncated_by = Some("bytes");
                        break 'batches;
                    }
                    bytes += line.len();
                    rows.push(
                        serde_json::from_slice(line)
                            .map_err(|e| Failure::Failed(format!("encoding a row as JSON: {e}")))?,
                    );
                }
            }
            Ok(Answer {
                schema,
                rows,
                truncated_by,
                plan,
            })
        })
        .await
}
