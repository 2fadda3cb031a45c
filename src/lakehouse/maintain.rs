//! Maintenance: streaming commits make many small files and many log entries. For each table:
//! compact, write a checkpoint, and vacuum files that left the table more than the retention
//! ago. Rewrites are `dataChange = false`, so the Change Data Feed and the pipeline's txn versions
//! are untouched. Safe to run while pipelines write: compaction only conflicts with deletes of the
//! same files, and is retried next round.
//!
//! What is rewritten is planned per partition (an unpartitioned table is one), so that the cost
//! of a round grows with what changed since the last one, not with the table:
//! - a partition with fewer than two *small* files (under half the target file size) is left
//!   alone: it is already compact;
//! - one whose data is at most `zorder_max_bytes` is Z-ordered on the table's `zorder_by` keys
//!   (a Z-order sorts the whole partition, in memory: the bound is the bound on that memory);
//! - a bigger one is bin-packed: only its small files are merged, a target-sized file at a time,
//!   streaming — the open day of a busy table costs a round what arrived since the last one.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use deltalake::operations::optimize::OptimizeType;
use deltalake::{FilterLiteral, FilterOp, FilterValue};
use serde::Serialize;

use super::Lakehouse;
use crate::error::{Error, Result};
use crate::model::tables;

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    pub version: u64,
    pub files_before: usize,
    pub files_after: usize,
    pub files_compacted: u64,
    pub files_written: u64,
    pub files_vacuumed: usize,
    pub checkpoint: bool,
    pub millis: u128,
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct MaintainOptions {
    pub target_file_bytes: u64,
    pub vacuum_retention: Duration,
    /// Skip Z-order (plain bin-packing compaction), e.g. for a quick run.
    pub zorder: bool,
    /// Partitions holding more data than this (Parquet bytes) are bin-packed, not Z-ordered.
    pub zorder_max_bytes: u64,
}

impl MaintainOptions {
    /// From `[maintain]`; `zorder` false compacts by plain bin-packing.
    pub fn from_config(maintain: &crate::config::MaintainConfig, zorder: bool) -> Self {
        MaintainOptions {
            target_file_bytes: maintain.target_file_mb * 1024 * 1024,
            vacuum_retention: Duration::from_secs(maintain.vacuum_retention_hours * 3600),
            zorder,
            zorder_max_bytes: maintain.zorder_max_mb * 1024 * 1024,
        }
    }
}

/// A round of [`run`] every `interval` (counted from the end of the last) until `stop`, each on
/// the maintenance runtime ([`crate::runtime::maintenance`]) at the lowest CPU priority: what
/// `up` and `bench freshness` run beside the pipeline. Returns the rounds run.
pub async fn run_every(
    lake: &Lakehouse,
    opts: &MaintainOptions,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> u32 {
    let mut rounds = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return rounds,
        }
        let (lake, opts) = (lake.clone(), opts.clone());
        if let Err(e) = crate::runtime::maintenance()
            .spawn(async move { run(&lake, &opts).await })
            .await
        {
            tracing::warn!(error = %e, "maintenance round ended abnormally");
        }
        rounds += 1;
    }
}

/// Maintains every existing table in the catalog; a failure on one table is reported in its
/// row and does not stop the others.
pub async fn run(lake: &Lakehouse, opts: &MaintainOptions) -> Vec<TableReport> {
    let mut reports = Vec::new();
    for def in tables::catalog() {
        if !lake.exists(&def.name).await.unwrap_or(false) {
            continue;
        }
        let started = Instant::now();
        let mut report = TableReport {
            table: def.name.clone(),
            version: 0,
            files_before: 0,
            files_after: 0,
            files_compacted: 0,
            files_written: 0,
            files_vacuumed: 0,
            checkpoint: false,
            millis: 0,
            error: None,
        };
        if let Err(e) = maintain_table(
            lake,
            &def.name,
            &def.zorder_by,
            &def.partition_by,
            opts,
            &mut report,
        )
        .await
        {
            // The table keeps its data and its files; the next run tries again.
            tracing::warn!(table = %report.table, error = %e, "maintenance of a table failed");
            report.error = Some(e.to_string());
        }
        report.millis = started.elapsed().as_millis();
        tracing::info!(table = %report.table, version = report.version, compacted = report.files_compacted,
            written = report.files_written, vacuumed = report.files_vacuumed, ms = report.millis,
            error = report.error.as_deref().unwrap_or(""), "maintained");
        reports.push(report);
    }
    reports
}

async fn maintain_table(
    lake: &Lakehouse,
    name: &str,
    zorder_by: &[String],
    partition_by: &[String],
    opts: &MaintainOptions,
    report: &mut TableReport,
) -> Result<()> {
    let mut table = lake.open(name).await?;
    let files: Vec<DataFile> = table
        .snapshot()
        .map_err(|e| Error::delta(name, e))?
        .log_data()
        .iter()
        .map(|f| DataFile {
            partition: match partition_by {
                [column] => f.partition_values_map().remove(column).flatten(),
                _ => None,
            },
            bytes: u64::try_from(f.size()).unwrap_or(0),
        })
        .collect();
    report.files_before = files.len();
    let zorder = opts.zorder && !zorder_by.is_empty();
    let plan = plan(
        &files,
        partition_by.len() == 1,
        opts.target_file_bytes,
        if zorder { opts.zorder_max_bytes } else { 0 },
    );
    for (kind, partitions) in [
        (Rewrite::ZOrder, &plan.zorder),
        (Rewrite::BinPack, &plan.bin_pack),
    ] {
        if partitions.is_empty() {
            continue;
        }
        let optimize_type = match kind {
            Rewrite::ZOrder => OptimizeType::ZOrder(zorder_by.to_vec()),
            Rewrite::BinPack => OptimizeType::Compact,
        };
        // Every partition of the plan, by value; an unpartitioned table has one, `None`.
        let filters: Vec<FilterLiteral<'_>> = match partition_by {
            [column] => vec![(
                column.as_str(),
                FilterOp::In,
                FilterValue::Set(partitions.iter().flatten().map(String::as_str).collect()),
            )],
            _ => Vec::new(),
        };
        let (optimized, metrics) = table
            .optimize()
            .with_type(optimize_type)
            .with_filters(&filters)
            .with_target_size(
                std::num::NonZeroU64::new(opts.target_file_bytes).expect("target > 0"),
            )
            // Background work: one bin at a time, written as commits write (deltalake's
            // defaults are a bin per core, zstd level 4 and row groups of a million rows).
            .with_max_concurrent_tasks(1)
            .with_writer_properties(super::commit::writer_properties())
            .await
            .map_err(|e| Error::delta(name, e))?;
        report.files_compacted += metrics.num_files_removed;
        report.files_written += metrics.num_files_added;
        table = optimized;
    }
    deltalake::checkpoints::create_checkpoint(&table, None)
        .await
        .map_err(|e| Error::delta(name, e))?;
    report.checkpoint = true;
    let (table, vacuum) = table
        .vacuum()
        .with_retention_period(
            chrono::Duration::from_std(opts.vacuum_retention).unwrap_or(chrono::Duration::days(7)),
        )
        .with_enforce_retention_duration(false)
        .await
        .map_err(|e| Error::delta(name, e))?;
    report.files_vacuumed = vacuum.files_deleted.len();
    report.version = table.version().unwrap_or(0);
    report.files_after = table
        .get_file_uris()
        .map_err(|e| Error::delta(name, e))?
        .count();
    Ok(())
}

/// A data file of a table, as the planner sees it.
#[derive(Debug, Clone)]
struct DataFile {
    /// Its value of the table's single partition column (`None` when unpartitioned).
    partition: Option<String>,
    bytes: u64,
}

#[derive(Debug, Clone, Copy)]
enum Rewrite {
    ZOrder,
    BinPack,
}

/// Which partitions a round rewrites, and how (see the module's docs). An unpartitioned table
/// is the one partition `None`.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    zorder: Vec<Option<String>>,
    bin_pack: Vec<Option<String>>,
}

/// Plans a round over `files`: partitions with at least two files under half of
/// `target_file_bytes` are rewritten — Z-ordered when they hold at most `zorder_max_bytes`,
/// bin-packed otherwise. A partitioned table's files with no partition value (a null) cannot be
/// selected by a filter and are left alone.
fn plan(
    files: &[DataFile],
    partitioned: bool,
    target_file_bytes: u64,
    zorder_max_bytes: u64,
) -> Plan {
    let mut per_partition: BTreeMap<Option<&str>, (usize, u64)> = BTreeMap::new();
    for f in files {
        if partitioned && f.partition.is_none() {
            continue;
        }
        let (small, bytes) = per_partition.entry(f.partition.as_deref()).or_default();
        *small += usize::from(f.bytes < target_file_bytes / 2);
        *bytes += f.bytes;
    }
    let mut plan = Plan::default();
    for (partition, (small, bytes)) in per_partition {
        if small < 2 {
            continue;
        }
        let partition = partition.map(str::to_string);
        if bytes <= zorder_max_bytes {
            plan.zorder.push(partition);
        } else {
            plan.bin_pack.push(partition);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    fn file(partition: Option<&str>, mb: u64) -> DataFile {
        DataFile {
            partition: partition.map(str::to_string),
            bytes: mb * MB,
        }
    }

    fn day(d: &str) -> Option<String> {
        Some(d.to_string())
    }

    /// Compact partitions are left alone; small ones with several small files are Z-ordered; a
    /// partition bigger than the Z-order bound is bin-packed, however many small files it has.
    #[test]
    fn each_partition_is_left_z_ordered_or_bin_packed_by_what_it_holds() {
        let files = [
            // Compacted already: one big file and one small one.
            file(Some("2026-11-01"), 120),
            file(Some("2026-11-01"), 10),
            // Small and crowded: 3 × 5 MB.
            file(Some("2026-11-02"), 5),
            file(Some("2026-11-02"), 5),
            file(Some("2026-11-02"), 5),
            // Big and crowded: 3 × 128 MB compacted and 2 new small files.
            file(Some("2026-11-03"), 128),
            file(Some("2026-11-03"), 128),
            file(Some("2026-11-03"), 128),
            file(Some("2026-11-03"), 1),
            file(Some("2026-11-03"), 1),
            // A null partition value cannot be filtered on: never planned.
            file(None, 1),
            file(None, 1),
        ];
        let p = plan(&files, true, 128 * MB, 256 * MB);
        assert_eq!(
            p,
            Plan {
                zorder: vec![day("2026-11-02")],
                bin_pack: vec![day("2026-11-03")],
            }
        );
        // Without Z-order (a bound of 0), every crowded partition is bin-packed.
        let p = plan(&files, true, 128 * MB, 0);
        assert_eq!(p.zorder, Vec::<Option<String>>::new());
        assert_eq!(p.bin_pack, vec![day("2026-11-02"), day("2026-11-03")]);
    }

    /// An unpartitioned table is one partition: Z-ordered while it is small, bin-packed once it
    /// outgrows the bound, left alone when compact.
    #[test]
    fn an_unpartitioned_table_is_one_partition() {
        let small = [file(None, 1), file(None, 1)];
        assert_eq!(plan(&small, false, 128 * MB, 256 * MB).zorder, vec![None]);
        let big = [file(None, 300), file(None, 1), file(None, 1)];
        assert_eq!(plan(&big, false, 128 * MB, 256 * MB).bin_pack, vec![None]);
        let compact = [file(None, 300), file(None, 1)];
        assert_eq!(plan(&compact, false, 128 * MB, 256 * MB), Plan::default());
    }
}
