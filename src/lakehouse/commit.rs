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
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, OutputMode, SaveMode};
use futures::{StreamExt, TryStreamExt};

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
    let Ok(state) = table.snapshot() else {
        return Ok(Offsets::new());
    };
    let log_store = table.log_store();
    // Each lookup is a log replay of its own (the kernel has no public "every app id" read), on
    // object storage a few round trips: they run side by side, as a rebalance waits for them.
    let lookups = partitions.into_iter().map(|p| {
        let log_store = log_store.clone();
        async move {
            let v = state
                .transaction_version(log_store.as_ref(), p.app_id(pipeline))
                .await
                .map_err(|e| Error::delta(table_name, e))?;
            Ok::<_, Error>(v.map(|v| (p, v)))
        }
    });
    let found = futures::stream::iter(lookups)
        .buffer_unordered(LOOKUPS_IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// Log reads one worker keeps in flight at once when it resolves positions.
pub const LOOKUPS_IN_FLIGHT: usize = 8;

fn transactions(pipeline: &str, offsets: &Offsets) -> Vec<Transaction> {
    offsets
        .iter()
        .map(|(p, v)| Transaction::new(p.app_id(pipeline), *v))
        .collect()
}

/// The properties of a streaming commit (a pipeline's or a derived table's): delta-rs's
/// defaults, except that the commit does not clean up expired log files. That cleanup lists
/// the table's whole `_delta_log` and reads every entry's metadata, on every commit: after 30
/// minutes of `up` (6,000 commits to telemetry) that listing took about a quarter of the
/// process's CPU, and it grows with the log. Maintenance cleans up once per round instead
/// ([`super::maintain`]). Checkpoints are still written every `delta.checkpointInterval`
/// commits.
pub(crate) fn streaming_commit_properties() -> CommitProperties {
    CommitProperties::default().with_cleanup_expired_logs(Some(false))
}

/// The txn actions for `offsets`, and the pipeline's name in the commit info.
fn commit_properties(pipeline: &str, offsets: &Offsets) -> CommitProperties {
    streaming_commit_properties()
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
///
/// The columns with a new value in every row ([`UNIQUE_COLUMNS`]) are written plain: a
/// dictionary of them would hash every value only to be dropped when it outgrows its page, and
/// it was the largest part of encoding a bronze batch. Their statistics are kept per column
/// chunk (what Delta's file skipping reads), not per page.
pub(crate) fn writer_properties() -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    for column in UNIQUE_COLUMNS {
        let column = ColumnPath::from(column);
        builder = builder
            .set_column_dictionary_enabled(column.clone(), false)
            .set_column_statistics_enabled(column, EnabledStatistics::Chunk);
    }
    builder.build()
}

/// Columns whose every row holds a value of its own: the events' ids and the source offsets.
const UNIQUE_COLUMNS: [&str; 2] = ["event_id", "_offset"];

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

/// Reruns of a MERGE that lost its commit to a concurrent writer before the error goes to the
/// caller. Several workers merge into one table (the inventory: each its own partitions' keys,
/// but Delta sees overlapping reads), and the caller's recourse, a restart, makes the whole
/// consumer group rebalance: a rerun is far cheaper.
const MERGE_ATTEMPTS: u32 = 30;
/// A rerun waits between half of and the whole of this times 2, 4, … up to 32 (at most 1.6 s).
const MERGE_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Merges `source` into the table by the sink's key (matched rows updated, others inserted) and
/// records `offsets` in the same commit (alone, when the merge changes no row). A concurrent
/// commit that touched the same files makes delta-rs refuse the merge; it is rerun on the new
/// version (after a short, jittered wait; up to `MERGE_ATTEMPTS` times) — but only after
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
        let merged = builder
            .with_commit_properties(props)
            .with_writer_properties(writer_properties())
            .await;
        let result = match merged {
            // delta-rs makes no commit for a merge that changes no row (its source empty after
            // the sink's SQL, say a batch of documents none of which is a proposal): the
            // offsets are committed alone, or the worker would count as durable what the log
            // does not hold, and its next fence would fail against the older offsets.
            Ok((t, _metrics)) if t.version() == table.version() && !offsets.is_empty() => {
                commit_offsets_only(t, table_name, commit_properties(pipeline, offsets)).await
            }
            Ok((t, _metrics)) => Ok(t),
            Err(e) => Err(classify(table_name, e)),
        };
        match result {
            Ok(t) => return Ok(t),
            Err(Error::Delta {
                source: deltalake::DeltaTableError::Transaction { .. },
                ..
            }) if attempt < MERGE_ATTEMPTS => {
                attempt += 1;
                // Writers that collided rerun at different moments, so the same two do not
                // collide again at once.
                let wait = crate::error::jittered(MERGE_BACKOFF * 2u32.pow(attempt.min(5)));
                tracing::info!(
                    table = table_name,
                    attempt,
                    ?wait,
                    "merge conflicted with a concurrent commit; rerunning on the new version"
                );
                tokio::time::sleep(wait).await;
                table
                    .update_state()
                    .await
                    .map_err(|e| Error::delta(table_name, e))?;
                fence(&table, table_name, pipeline, offsets, expected).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use deltalake::kernel::{DataType as DeltaType, PrimitiveType, StructField};

    use super::*;

    const PIPELINE: &str = "bronze";

    fn rows(keys: &[&str], values: &[i64]) -> datafusion::prelude::DataFrame {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(values.to_vec())),
            ],
        )
        .unwrap();
        datafusion::prelude::SessionContext::new()
            .read_batch(batch)
            .unwrap()
    }

    fn at(offset: i64) -> Offsets {
        Offsets::from([(SourcePartition::new("mfg.knowledge.documents", 3), offset)])
    }

    fn upsert() -> MergeSpec {
        let set = |cols: &[&str]| {
            cols.iter()
                .map(|c| (c.to_string(), format!("source.{c}")))
                .collect()
        };
        MergeSpec {
            key: vec!["k".into()],
            update: set(&["v"]),
            insert: set(&["k", "v"]),
            delete: None,
        }
    }

    async fn stored(uri: &str) -> Offsets {
        let table = deltalake::open_table(url::Url::parse(uri).unwrap())
            .await
            .unwrap();
        txn_versions(&table, "t", PIPELINE, at(0).into_keys())
            .await
            .unwrap()
    }

    /// Streaming commits still write delta-rs's checkpoints (every `delta.checkpointInterval`
    /// commits, here 3) but remove no expired log file: with a log retention of zero, version
    /// 0's entry is still there after two checkpoints. (delta-rs's own cleanup would have
    /// removed it, listing the whole log to do so, on every commit.)
    #[tokio::test]
    async fn streaming_commits_checkpoint_but_leave_log_cleanup_to_maintenance() {
        let dir = tempfile::tempdir().unwrap();
        let uri = url::Url::from_directory_path(dir.path()).unwrap();
        let mut table = deltalake::operations::create::CreateBuilder::new()
            .with_location(uri.to_string())
            .with_columns([StructField::new(
                "k",
                DeltaType::Primitive(PrimitiveType::String),
                false,
            )])
            .with_configuration([
                ("delta.checkpointInterval", Some("3")),
                ("delta.logRetentionDuration", Some("interval 0 seconds")),
            ])
            .await
            .unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["a"]))]).unwrap();
        // Create is version 0; the appends make 1..=5, alternately with rows and offsets alone.
        for offset in 0..5 {
            let rows = if offset % 2 == 0 {
                vec![batch.clone()]
            } else {
                vec![]
            };
            table = append(table, "t", PIPELINE, rows, &at(offset), 1 << 20)
                .await
                .unwrap();
        }
        assert_eq!(table.version(), Some(5));
        let log = dir.path().join("_delta_log");
        let text = std::fs::read_to_string(log.join("_last_checkpoint")).unwrap();
        let last: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(last["version"].as_i64(), Some(5));
        assert!(log.join("00000000000000000002.checkpoint.parquet").exists());
        assert!(log.join("00000000000000000000.json").exists());
    }

    /// A batch whose rows the sink's SQL filters out (document events none of which is a
    /// proposal) merges nothing, and delta-rs then makes no commit; the batch's offsets must
    /// reach the log all the same. Otherwise the worker counts them durable while the log keeps
    /// the older ones, and its next merge that races a compaction fences against offsets Delta
    /// never stored and resets the whole pipeline (seen 3–5 times in 30 minutes of `up`).
    #[tokio::test]
    async fn a_merge_that_changes_no_row_still_records_its_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let uri = url::Url::from_directory_path(dir.path()).unwrap();
        let table = deltalake::operations::create::CreateBuilder::new()
            .with_location(uri.to_string())
            .with_columns([
                StructField::new("k", DeltaType::Primitive(PrimitiveType::String), false),
                StructField::new("v", DeltaType::Primitive(PrimitiveType::Long), false),
            ])
            .await
            .unwrap();
        let spec = upsert();
        let merge = async |table, source, offsets: Offsets, expected: Offsets| {
            super::merge(table, "t", &spec, PIPELINE, source, &offsets, &expected).await
        };
        let table = merge(table, rows(&["a"], &[1]), at(0), Offsets::new())
            .await
            .unwrap();
        let table = merge(table, rows(&["b"], &[2]), at(1), at(0))
            .await
            .unwrap();
        let version = table.version();
        let table = merge(table, rows(&[], &[]), at(2), at(1)).await.unwrap();
        assert_eq!(table.version(), version.map(|v| v + 1), "no commit");
        assert_eq!(stored(uri.as_str()).await, at(2));

        // Compaction commits behind this writer's back; the next merge, which reads the
        // compacted rows, conflicts with it, is rerun on the new version, and its fence finds
        // the offsets the writer last committed.
        let other = deltalake::open_table(uri.clone()).await.unwrap();
        let (_, metrics) = other.optimize().await.unwrap();
        assert_eq!(metrics.num_files_removed, 2);
        let table = merge(table, rows(&["b", "c"], &[4, 3]), at(3), at(2))
            .await
            .unwrap();
        assert_eq!(stored(uri.as_str()).await, at(3));
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("t", table.table_provider().await.unwrap())
            .unwrap();
        let got = ctx.sql("SELECT k, v FROM t ORDER BY k").await.unwrap();
        let got = arrow::util::pretty::pretty_format_batches(&got.collect().await.unwrap())
            .unwrap()
            .to_string();
        assert!(
            got.contains("| a | 1 |") && got.contains("| b | 4 |") && got.contains("| c | 3 |"),
            "{got}"
        );
    }
}
