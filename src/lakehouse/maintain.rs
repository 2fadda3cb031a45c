//! Maintenance: streaming commits make many small files and many log entries. For each table:
//! compact (Z-ordered on the table's `zorder_by` keys), write a checkpoint, and vacuum files that
//! left the table more than the retention ago. Rewrites are `dataChange = false`, so the Change
//! Data Feed and the pipeline's txn versions are untouched. Safe to run while pipelines write:
//! compaction only conflicts with deletes of the same files, and is retried next round.
//!
//! Only partitions holding more than one file are rewritten (Z-order would otherwise rewrite
//! every partition on every round); a table with nothing to compact is only checkpointed and
//! vacuumed.

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

pub struct MaintainOptions {
    pub target_file_bytes: u64,
    pub vacuum_retention: Duration,
    /// Skip Z-order (plain bin-packing compaction), e.g. for a quick run.
    pub zorder: bool,
}

impl MaintainOptions {
    /// From `[maintain]`; `zorder` false compacts by plain bin-packing.
    pub fn from_config(maintain: &crate::config::MaintainConfig, zorder: bool) -> Self {
        MaintainOptions {
            target_file_bytes: maintain.target_file_mb * 1024 * 1024,
            vacuum_retention: Duration::from_secs(maintain.vacuum_retention_hours * 3600),
            zorder,
        }
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
    let files: Vec<String> = table
        .get_file_uris()
        .map_err(|e| Error::delta(name, e))?
        .collect();
    report.files_before = files.len();
    let crowded = crowded_partitions(&files, partition_by);
    let needs_compaction = if partition_by.is_empty() {
        files.len() > 1
    } else {
        !crowded.is_empty()
    };
    if needs_compaction {
        let kind = if opts.zorder && !zorder_by.is_empty() {
            OptimizeType::ZOrder(zorder_by.to_vec())
        } else {
            OptimizeType::Compact
        };
        let filters: Vec<FilterLiteral<'_>> = match partition_by {
            [column] => vec![(
                column.as_str(),
                FilterOp::In,
                FilterValue::Set(crowded.iter().map(String::as_str).collect()),
            )],
            _ => Vec::new(),
        };
        let (optimized, metrics) = table
            .optimize()
            .with_type(kind)
            .with_filters(&filters)
            .with_target_size(
                std::num::NonZeroU64::new(opts.target_file_bytes).expect("target > 0"),
            )
            .await
            .map_err(|e| Error::delta(name, e))?;
        report.files_compacted = metrics.num_files_removed;
        report.files_written = metrics.num_files_added;
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

/// Values of a single partition column whose folder holds more than one data file, read from
/// the `<column>=<value>/` segment of each file's path.
fn crowded_partitions(files: &[String], partition_by: &[String]) -> Vec<String> {
    let [column] = partition_by else {
        return Vec::new();
    };
    let prefix = format!("{column}=");
    let mut per_value: BTreeMap<String, usize> = BTreeMap::new();
    for f in files {
        if let Some(seg) = f
            .split('/')
            .find_map(|seg| seg.strip_prefix(prefix.as_str()))
        {
            *per_value.entry(seg.to_string()).or_default() += 1;
        }
    }
    per_value
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(v, _)| v)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partitions_with_several_files_are_crowded() {
        let files: Vec<String> = [
            "file:///l/iot/telemetry/event_date=2026-11-01/part-1.parquet",
            "file:///l/iot/telemetry/event_date=2026-11-01/part-2.parquet",
            "file:///l/iot/telemetry/event_date=2026-11-02/part-3.parquet",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            crowded_partitions(&files, &["event_date".into()]),
            vec!["2026-11-01".to_string()]
        );
        assert!(crowded_partitions(&files, &[]).is_empty());
    }
}
