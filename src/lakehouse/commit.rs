//! Exactly-once commits (DESIGN §3, after kafka-delta-ingest's `delta_helpers`).
//!
//! Every commit of a pipeline to a sink table carries one `txn` action per source partition in
//! the batch: `appId = "<pipeline>/<topic>/<partition>"`, `version` = the last offset included.
//! A table's txn versions therefore say exactly which records it already holds, durably and
//! atomically with the data. delta-rs rejects a commit whose app ids were changed by a
//! concurrent commit since the writer's snapshot, which is how two workers that briefly believe
//! they own the same partition are stopped from both writing it.

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::{DeltaOperation, OutputMode, SaveMode};

use crate::error::{Error, Result};

/// A source partition: topic and partition number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePartition {
    pub topic: String,
    pub partition: i32,
}

impl SourcePartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        SourcePartition {
            topic: topic.into(),
            partition,
        }
    }

    pub fn app_id(&self, pipeline: &str) -> String {
        format!("{pipeline}/{}/{}", self.topic, self.partition)
    }
}

/// Last offset per source partition, as stored in (or to be stored in) a table's txn actions.
pub type Offsets = BTreeMap<SourcePartition, i64>;

/// Reads the txn versions of `partitions` from the table's current snapshot. Partitions the
/// table has never seen are absent.
pub async fn txn_versions(
    table: &DeltaTable,
    table_name: &str,
    pipeline: &str,
    partitions: impl IntoIterator<Item = SourcePartition>,
) -> Result<Offsets> {
    let mut out = Offsets::new();
    let Ok(state) = table.snapshot() else {
        return Ok(out);
    };
    let log_store = table.log_store();
    for p in partitions {
        let v = state
            .transaction_version(log_store.as_ref(), p.app_id(pipeline))
            .await
            .map_err(|e| Error::delta(table_name, e))?;
        if let Some(v) = v {
            out.insert(p, v);
        }
    }
    Ok(out)
}

fn transactions(pipeline: &str, offsets: &Offsets) -> Vec<Transaction> {
    offsets
        .iter()
        .map(|(p, v)| Transaction::new(p.app_id(pipeline), *v))
        .collect()
}

/// The txn actions for `offsets`, and the pipeline's name in the commit info.
fn commit_properties(pipeline: &str, offsets: &Offsets) -> CommitProperties {
    CommitProperties::default()
        .with_application_transactions(transactions(pipeline, offsets))
        .with_metadata([(
            "millstream.pipeline".to_string(),
            serde_json::Value::from(pipeline),
        )])
}

/// How millstream writes Parquet, in commits and in compaction: zstd at level 1 (cheap to
/// compress, small contexts), and row groups of at most [`ROW_GROUP_ROWS`] rows. A writer holds
/// a whole row group's pages until the group is done, so the row-group bound is what bounds a
/// compaction's memory (Parquet's default is 1,048,576 rows).
pub(crate) fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build()
}

/// Rows per Parquet row group at most: a pipeline batch's worth, and small enough that readers
/// still skip row groups by their statistics.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Appends `batches` and records `offsets` in the same commit. Returns the table at the new
/// version. With no batches, commits the offsets alone (a txn-only streaming update).
pub async fn append(
    table: DeltaTable,
    table_name: &str,
    pipeline: &str,
    batches: Vec<RecordBatch>,
    offsets: &Offsets,
    target_file_bytes: u64,
) -> Result<DeltaTable> {
    write(
        table,
        table_name,
        pipeline,
        batches,
        offsets,
        target_file_bytes,
        None,
    )
    .await
}

/// Like [`append`], but with `replace = Some(predicate)` the rows matching the predicate are
/// replaced by `batches` in the same commit (`replaceWhere`), e.g. one partition's state.
pub async fn write(
    table: DeltaTable,
    table_name: &str,
    pipeline: &str,
    batches: Vec<RecordBatch>,
    offsets: &Offsets,
    target_file_bytes: u64,
    replace: Option<String>,
) -> Result<DeltaTable> {
    let props = commit_properties(pipeline, offsets);
    if batches.iter().all(|b| b.num_rows() == 0) {
        return commit_offsets_only(table, table_name, props).await;
    }
    let mut builder = table.write(batches);
    builder = match replace {
        Some(predicate) => builder
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(predicate),
        None => builder.with_save_mode(SaveMode::Append),
    };
    builder
        .with_commit_properties(props)
        .with_writer_properties(writer_properties())
        .with_target_file_size(std::num::NonZeroU64::new(target_file_bytes))
        .await
        .map_err(|e| classify(table_name, e))
}

async fn commit_offsets_only(
    mut table: DeltaTable,
    table_name: &str,
    props: CommitProperties,
) -> Result<DeltaTable> {
    let snapshot = table.snapshot().map_err(|e| Error::delta(table_name, e))?;
    let op = DeltaOperation::StreamingUpdate {
        output_mode: OutputMode::Append,
        query_id: "millstream".into(),
        epoch_id: snapshot.version() as i64,
    };
    let finalized = CommitBuilder::from(props)
        .build(Some(snapshot), table.log_store(), op)
        .await
        .map_err(|e| classify(table_name, e))?;
    table.state = Some(finalized.snapshot);
    Ok(table)
}

/// Fails with [`Error::ConflictingOffsets`] unless the table's current version stores, for every
/// partition of `offsets`, exactly the version in `expected` (none where `expected` has none).
pub async fn fence(
    table: &DeltaTable,
    table_name: &str,
    pipeline: &str,
    offsets: &Offsets,
    expected: &Offsets,
) -> Result<()> {
    let stored = txn_versions(table, table_name, pipeline, offsets.keys().cloned()).await?;
    for p in offsets.keys() {
        let (want, found) = (expected.get(p).copied(), stored.get(p).copied());
        if want != found {
            return Err(Error::ConflictingOffsets {
                table: table_name.to_string(),
                app_id: p.app_id(pipeline),
                expected: want,
                found,
            });
        }
    }
    Ok(())
}

/// Turns delta-rs's "someone else committed this app id" into [`Error::ConflictingOffsets`], the
/// signal to reset from the log.
fn classify(table_name: &str, e: deltalake::DeltaTableError) -> Error {
    use deltalake::kernel::transaction::{CommitConflictError, TransactionError};
    match e {
        deltalake::DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction),
        } => Error::ConflictingOffsets {
            table: table_name.to_string(),
            app_id: "(concurrent commit)".into(),
            expected: None,
            found: None,
        },
        e => Error::delta(table_name, e),
    }
}

/// How a MERGE applies a source to its table: matched on `key`, matched rows updated with
/// `update` (column → expression over `target` and `source`), the others inserted with `insert`.
#[derive(Debug, Clone, Default)]
pub struct MergeSpec {
    pub key: Vec<String>,
    pub update: BTreeMap<String, String>,
    pub insert: BTreeMap<String, String>,
    /// Matched rows this predicate holds for are deleted; source rows it holds for are not
    /// inserted.
    pub delete: Option<String>,
}

/// Merges `source` into the table by the sink's key (matched rows updated, others inserted) and
/// records `offsets` in the same commit. A concurrent commit that touched the same files makes
/// delta-rs refuse the merge; it is rerun on the new version (a few times) — but only after
/// checking that the new version still stores `expected` for every partition of `offsets` (what
/// this writer last committed, or nothing). A version that moved them means another writer
/// merged these records already: [`Error::ConflictingOffsets`], and the worker resets from the
/// log instead of applying them twice. A conflict on our own app ids means the same.
pub async fn merge(
    mut table: DeltaTable,
    table_name: &str,
    sink: &MergeSpec,
    pipeline: &str,
    source: datafusion::prelude::DataFrame,
    offsets: &Offsets,
    expected: &Offsets,
) -> Result<DeltaTable> {
    let predicate = sink
        .key
        .iter()
        .map(|k| format!("target.{k} = source.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let mut attempt = 0;
    loop {
        let props = commit_properties(pipeline, offsets);
        let builder = table
            .clone()
            .merge(source.clone(), predicate.as_str())
            .with_source_alias("source")
            .with_target_alias("target");
        // Deletes first: the first matched clause whose predicate holds decides a row.
        let builder = match &sink.delete {
            Some(p) => builder
                .when_matched_delete(|d| d.predicate(p.as_str()))
                .map_err(|e| Error::delta(table_name, e))?,
            None => builder,
        };
        // No updates: matched rows are left as they are. No inserts: unmatched ones dropped.
        let builder = if sink.update.is_empty() {
            Ok(builder)
        } else {
            builder.when_matched_update(|mut u| {
                for (c, e) in &sink.update {
                    u = u.update(c.as_str(), e.as_str());
                }
                u
            })
        };
        let builder = builder
            .and_then(|b| {
                if sink.insert.is_empty() {
                    return Ok(b);
                }
                b.when_not_matched_insert(|mut i| {
                    if let Some(p) = &sink.delete {
                        i = i.predicate(format!("NOT ({p})"));
                    }
                    for (c, e) in &sink.insert {
                        i = i.set(c.as_str(), e.as_str());
                    }
                    i
                })
            })
            .map_err(|e| Error::delta(table_name, e))?;
        let result = builder
            .with_commit_properties(props)
            .with_writer_properties(writer_properties())
            .await;
        match result {
            Ok((t, _metrics)) => return Ok(t),
            Err(e) => match classify(table_name, e) {
                Error::Delta {
                    source: deltalake::DeltaTableError::Transaction { .. },
                    ..
                } if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(
                        table = table_name,
                        attempt,
                        "merge conflicted; rerunning on the new version"
                    );
                    table
                        .update_state()
                        .await
                        .map_err(|e| Error::delta(table_name, e))?;
                    fence(&table, table_name, pipeline, offsets, expected).await?;
                }
                e => return Err(e),
            },
        }
    }
}
