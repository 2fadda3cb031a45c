//! Change Data Feed reads: the rows a range of table versions inserted, updated or deleted, with
//! `_change_type`, `_commit_version` and `_commit_timestamp`. Serve tails this for push updates.

use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;

use crate::error::{Error, Result};

/// Changes in versions `from..=to` (`to = None`: up to the latest).
pub async fn read_changes(
    table: DeltaTable,
    table_name: &str,
    from: u64,
    to: Option<u64>,
) -> Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    let mut builder = table.scan_cdf().with_starting_version(from);
    if let Some(to) = to {
        builder = builder.with_ending_version(to);
    }
    let state = ctx.state();
    let plan = builder
        .build(&state, None)
        .await
        .map_err(|e| Error::delta(table_name, e))?;
    Ok(datafusion::physical_plan::collect(plan, ctx.task_ctx()).await?)
}
