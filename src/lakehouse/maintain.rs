//! Maintenance: streaming commits make many small files and many log entries. For each table:
//! compact, write a checkpoint, and vacuum files that left the table more than the retention
//! ago. Rewrites are `dataChange = false`, so the Change Data Feed and the pipeline's txn versions
//! are untouched. Safe to run while pipelines write: compaction only conflicts with deletes of the
//! same files, and is retried next round.
//!
//! What is rewritten is planned per partition (an unpartitioned table is one), so that the cost
//! of a round grows with what changed since the last one, not with the table. Files come in two
//! sizes on the way up: *small* ones (a commit's, under a sixteenth of the target file size) and
//! *round-sized* ones (a sixteenth of the target up to half of it). Each round, per partition:
//! - with fewer than two small files, it is already compact for this round;
//! - when most of it is new (its small files hold at least half its data) and it holds at most
//!   `zorder_max_bytes`, it is Z-ordered on the table's `zorder_by` keys (a Z-order sorts the
//!   whole partition, in memory: the bound is the bound on that memory, and "most of it is new"
//!   keeps the sort's cost within twice the change);
//! - otherwise its small files are bin-packed into round-sized files, streaming: files already
//!   round-sized are not read again, so the open day of a busy table costs a round what arrived
//!   since the last one;
//! - and once its round-sized files add up to half a target file, they are bin-packed into
//!   target-sized files, so each byte is rewritten about twice in all, whatever the rate.
//!
//! Before, every file under the target was merged again each round, so the open day's growing
//! file was rewritten every 15 s until it reached the target, and small partitions were sorted
//! whole each round.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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
    /// Expired log files deleted (older than the table's log retention and its checkpoint).
    pub logs_cleaned: usize,
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
    /// In [`run_every`]'s rounds: how long a table whose writers read its files (MERGE,
    /// replace-where, recomputed signals) waits between two rewrites. A compaction that lands
    /// between such a writer's read and its commit makes the commit rerun, so these go at the
    /// slower pace; append-only tables are maintained in every round in which they changed.
    pub read_tables_interval: Duration,
    /// In [`run_every`]'s rounds: how long between two vacuums of a table (a vacuum lists every
    /// file under the table, so not every round).
    pub vacuum_interval: Duration,
}

impl MaintainOptions {
    /// From `[maintain]`; `zorder` false compacts by plain bin-packing.
    pub fn from_config(maintain: &crate::config::MaintainConfig, zorder: bool) -> Self {
        MaintainOptions {
            target_file_bytes: maintain.target_file_mb * 1024 * 1024,
            vacuum_retention: Duration::from_secs(maintain.vacuum_retention_hours * 3600),
            zorder,
            zorder_max_bytes: maintain.zorder_max_mb * 1024 * 1024,
            read_tables_interval: Duration::from_secs(maintain.read_tables_interval_secs),
            vacuum_interval: Duration::from_secs(maintain.vacuum_interval_secs),
        }
    }
}

/// A round every `interval` (counted from the end of the last) until `stop`, each on the
/// maintenance runtime ([`crate::runtime::maintenance`]) at the lowest CPU priority: what `up`
/// and `bench freshness` run beside the pipeline. Returns the rounds run.
///
/// Rounds come often because every streaming commit costs more as its table collects small
/// files: delta-rs rebuilds the table's file list after each commit (a 16k-row telemetry
/// commit: 20 ms into an empty table, 54 ms into one of 100 files, 113 ms into one of 400;
/// `cargo bench --bench hot_paths -- commit`). With a round of every table every 15 s,
/// `bench freshness --rate 50000` had p99 409-470 ms; with these, 301-343 ms (three runs each).
/// So a round does only what is due ([`Due`]): a table that did not change since its last round
/// is left alone (one that rests is not even opened); an append-only table that changed is
/// compacted and checkpointed; a table whose writers read its files waits
/// `read_tables_interval` between rewrites; and a table is vacuumed every `vacuum_interval`.
pub async fn run_every(
    lake: &Lakehouse,
    opts: &MaintainOptions,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> u32 {
    let mut rounds = Rounds::default();
    let mut count = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return count,
        }
        let (lake, opts) = (lake.clone(), opts.clone());
        let mut this = std::mem::take(&mut rounds);
        match crate::runtime::maintenance()
            .spawn(async move {
                this.run(&lake, &opts).await;
                this
            })
            .await
        {
            Ok(this) => rounds = this,
            // What the aborted round knew is lost: the next one maintains every table.
            Err(e) => tracing::warn!(error = %e, "maintenance round ended abnormally"),
        }
        count += 1;
    }
}

/// Rounds that each maintain only what is due since the ones before ([`run_every`]'s).
#[derive(Debug, Default)]
pub struct Rounds {
    seen: BTreeMap<String, Maintained>,
}

impl Rounds {
    /// The next round: the reports of the tables it did something to.
    pub async fn run(&mut self, lake: &Lakehouse, opts: &MaintainOptions) -> Vec<TableReport> {
        round(lake, opts, Some(&mut self.seen)).await
    }
}

/// What a round last did to a table, for [`run_every`]'s next ones.
#[derive(Debug, Clone, Copy)]
struct Maintained {
    /// The table's version when the round left it (its own compaction included).
    version: Option<u64>,
    rewritten: Instant,
    vacuumed: Instant,
}

impl Maintained {
    /// What is known of a table after a round did `due` to it, leaving it at `version`.
    fn after(last: Option<Maintained>, due: Due, version: u64, now: Instant) -> Maintained {
        Maintained {
            version: if due.rewrite {
                Some(version)
            } else {
                last.and_then(|l| l.version)
            },
            rewritten: match last {
                Some(l) if !due.rewrite => l.rewritten,
                _ => now,
            },
            vacuumed: match last {
                Some(l) if !due.vacuum => l.vacuumed,
                _ => now,
            },
        }
    }
}

/// What a round does to one table.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Due {
    rewrite: bool,
    vacuum: bool,
}

impl Due {
    const ALL: Due = Due {
        rewrite: true,
        vacuum: true,
    };

    fn any(self) -> bool {
        self.rewrite || self.vacuum
    }

    /// What is due for a table at `version` that a round left as `last` (`None`: never).
    fn at(
        version: Option<u64>,
        last: Option<&Maintained>,
        append_only: bool,
        opts: &MaintainOptions,
        now: Instant,
    ) -> Due {
        let Some(last) = last else {
            return Due::ALL;
        };
        let at_most = Due::possible(last, append_only, opts, now);
        Due {
            rewrite: at_most.rewrite && version != last.version,
            vacuum: at_most.vacuum,
        }
    }

    /// What may be due before the table's version is known: a rewrite if the table has rested
    /// long enough (append-only tables always have), a vacuum if its interval is over. When
    /// neither is, the table is not even opened.
    fn possible(last: &Maintained, append_only: bool, opts: &MaintainOptions, now: Instant) -> Due {
        Due {
            rewrite: append_only || now.duration_since(last.rewritten) >= opts.read_tables_interval,
            vacuum: now.duration_since(last.vacuumed) >= opts.vacuum_interval,
        }
    }
}

/// Maintains every existing table in the catalog: compaction, checkpoint and vacuum; a failure
/// on one table is reported in its row and does not stop the others.
pub async fn run(lake: &Lakehouse, opts: &MaintainOptions) -> Vec<TableReport> {
    round(lake, opts, None).await
}

/// One round over the catalog's existing tables: all of each (`seen` is `None`), or only what
/// is due after the rounds `seen` remembers (and it is updated).
async fn round(
    lake: &Lakehouse,
    opts: &MaintainOptions,
    mut seen: Option<&mut BTreeMap<String, Maintained>>,
) -> Vec<TableReport> {
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
            logs_cleaned: 0,
            millis: 0,
            error: None,
        };
        let last = seen.as_deref().and_then(|s| s.get(&def.name).copied());
        let append_only = def.role.append_only();
        if last.is_some_and(|l| !Due::possible(&l, append_only, opts, started).any()) {
            continue;
        }
        // With no rounds before (`run`, or a table new to them), `last` is `None`: all is due.
        let due = |version| Due::at(version, last.as_ref(), append_only, opts, started);
        let done = maintain_table(lake, def, opts, due, &mut report).await;
        if let Err(e) = &done {
            // The table keeps its data and its files; the next round tries again.
            tracing::warn!(table = %report.table, error = %e, "maintenance of a table failed");
            report.error = Some(e.to_string());
        }
        if let (Some(seen), Ok(due)) = (seen.as_deref_mut(), &done) {
            seen.insert(
                def.name.clone(),
                Maintained::after(last, *due, report.version, started),
            );
            if !due.any() {
                continue;
            }
        }
        report.millis = started.elapsed().as_millis();
        tracing::info!(table = %report.table, version = report.version, compacted = report.files_compacted,
            written = report.files_written, vacuumed = report.files_vacuumed, ms = report.millis,
            error = report.error.as_deref().unwrap_or(""), "maintained");
        reports.push(report);
    }
    reports
}

/// Maintains one table as far as `due` says for its current version; returns what was done.
async fn maintain_table(
    lake: &Lakehouse,
    def: &tables::TableDef,
    opts: &MaintainOptions,
    due: impl Fn(Option<u64>) -> Due,
    report: &mut TableReport,
) -> Result<Due> {
    let (name, zorder_by, partition_by) = (def.name.as_str(), &def.zorder_by, &def.partition_by);
    let mut table = lake.open(name).await?;
    let due = due(table.version());
    report.version = table.version().unwrap_or(0);
    if due.vacuum && !due.rewrite {
        report.files_before = table
            .get_file_uris()
            .map_err(|e| Error::delta(name, e))?
            .count();
    }
    if due.rewrite {
        table = rewrite(table, name, zorder_by, partition_by, opts, report).await?;
    }
    if due.vacuum {
        let (vacuumed, vacuum) = table
            .vacuum()
            .with_retention_period(
                chrono::Duration::from_std(opts.vacuum_retention)
                    .unwrap_or(chrono::Duration::days(7)),
            )
            .with_enforce_retention_duration(false)
            .await
            .map_err(|e| Error::delta(name, e))?;
        report.files_vacuumed = vacuum.files_deleted.len();
        table = vacuumed;
    }
    if due.rewrite || due.vacuum {
        report.version = table.version().unwrap_or(0);
        report.files_after = table
            .get_file_uris()
            .map_err(|e| Error::delta(name, e))?
            .count();
    }
    Ok(due)
}

/// Compacts the table as planned, writes a checkpoint and deletes expired log files.
async fn rewrite(
    mut table: deltalake::DeltaTable,
    name: &str,
    zorder_by: &[String],
    partition_by: &[String],
    opts: &MaintainOptions,
    report: &mut TableReport,
) -> Result<deltalake::DeltaTable> {
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
    let round_file_bytes = round_file_bytes(opts.target_file_bytes);
    for (kind, partitions) in [
        (Rewrite::ZOrder, &plan.zorder),
        (Rewrite::SmallFiles, &plan.small_files),
        (Rewrite::RoundFiles, &plan.round_files),
    ] {
        if partitions.is_empty() {
            continue;
        }
        let (optimize_type, target) = match kind {
            Rewrite::ZOrder => (
                OptimizeType::ZOrder(zorder_by.to_vec()),
                opts.target_file_bytes,
            ),
            // Files at or over the target size are not read: merging small files into
            // round-sized ones leaves the round-sized ones alone.
            Rewrite::SmallFiles => (OptimizeType::Compact, round_file_bytes),
            Rewrite::RoundFiles => (OptimizeType::Compact, opts.target_file_bytes),
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
            .with_target_size(std::num::NonZeroU64::new(target.max(1)).expect("target > 0"))
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
    // Streaming commits leave this to maintenance (`commit::streaming_commit_properties`):
    // log files older than the table's `delta.logRetentionDuration` and than the checkpoint
    // just written go.
    use deltalake::table::config::TablePropertiesExt as _;
    let cleanup = table
        .snapshot()
        .map_err(|e| Error::delta(name, e))?
        .table_config()
        .enable_expired_log_cleanup();
    if cleanup {
        report.logs_cleaned = deltalake::checkpoints::cleanup_metadata(&table, None)
            .await
            .map_err(|e| Error::delta(name, e))?;
    }
    Ok(table)
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
    SmallFiles,
    RoundFiles,
}

/// The size small files are merged into each round: a sixteenth of the target file size.
fn round_file_bytes(target_file_bytes: u64) -> u64 {
    target_file_bytes / 16
}

/// Which partitions a round rewrites, and how (see the module's docs). An unpartitioned table
/// is the one partition `None`.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    /// Z-ordered whole: small, and mostly new.
    zorder: Vec<Option<String>>,
    /// Their small files bin-packed into round-sized files.
    small_files: Vec<Option<String>>,
    /// Their round-sized (and small) files bin-packed into target-sized files.
    round_files: Vec<Option<String>>,
}

/// What one partition holds, by file size.
#[derive(Debug, Default, Clone, Copy)]
struct Sizes {
    small: usize,
    small_bytes: u64,
    round: usize,
    round_bytes: u64,
    bytes: u64,
}

/// Plans a round over `files` (see the module's docs). A partitioned table's files with no
/// partition value (a null) cannot be selected by a filter and are left alone.
fn plan(
    files: &[DataFile],
    partitioned: bool,
    target_file_bytes: u64,
    zorder_max_bytes: u64,
) -> Plan {
    let round_file = round_file_bytes(target_file_bytes);
    let mut per_partition: BTreeMap<Option<&str>, Sizes> = BTreeMap::new();
    for f in files {
        if partitioned && f.partition.is_none() {
            continue;
        }
        let sizes = per_partition.entry(f.partition.as_deref()).or_default();
        sizes.bytes += f.bytes;
        if f.bytes < round_file {
            sizes.small += 1;
            sizes.small_bytes += f.bytes;
        } else if f.bytes < target_file_bytes / 2 {
            sizes.round += 1;
            sizes.round_bytes += f.bytes;
        }
    }
    let mut plan = Plan::default();
    for (partition, sizes) in per_partition {
        let partition = partition.map(str::to_string);
        if sizes.small >= 2 {
            if sizes.bytes <= zorder_max_bytes && sizes.small_bytes * 2 >= sizes.bytes {
                plan.zorder.push(partition.clone());
            } else {
                plan.small_files.push(partition.clone());
            }
        }
        if sizes.round >= 2 && sizes.round_bytes >= target_file_bytes / 2 {
            plan.round_files.push(partition);
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

    /// Compact partitions are left alone; small ones that are mostly new are Z-ordered; in the
    /// others only the small files are merged, into round-sized files; round-sized files are
    /// merged into target-sized ones once they add up to half a target file.
    #[test]
    fn each_partition_is_rewritten_by_what_changed_in_it() {
        let files = [
            // Compacted already: one big file and one round-sized one.
            file(Some("2026-11-01"), 120),
            file(Some("2026-11-01"), 10),
            // Small, crowded and all new: 3 × 5 MB.
            file(Some("2026-11-02"), 5),
            file(Some("2026-11-02"), 5),
            file(Some("2026-11-02"), 5),
            // Big and crowded: 3 × 128 MB compacted and 2 new small files.
            file(Some("2026-11-03"), 128),
            file(Some("2026-11-03"), 128),
            file(Some("2026-11-03"), 128),
            file(Some("2026-11-03"), 1),
            file(Some("2026-11-03"), 1),
            // Under the Z-order bound, but mostly sorted already: 12 MB Z-ordered, 2 MB new.
            file(Some("2026-11-04"), 12),
            file(Some("2026-11-04"), 1),
            file(Some("2026-11-04"), 1),
            // The open day of a busy table: eight round-sized files and new small ones.
            file(Some("2026-11-05"), 8),
            file(Some("2026-11-05"), 8),
            file(Some("2026-11-05"), 8),
            file(Some("2026-11-05"), 8),
            file(Some("2026-11-05"), 8),
            file(Some("2026-11-05"), 8),
            file(Some("2026-11-05"), 8),
            file(Some("2026-11-05"), 8),
            file(Some("2026-11-05"), 1),
            file(Some("2026-11-05"), 1),
            // A null partition value cannot be filtered on: never planned.
            file(None, 1),
            file(None, 1),
        ];
        let p = plan(&files, true, 128 * MB, 256 * MB);
        assert_eq!(
            p,
            Plan {
                zorder: vec![day("2026-11-02")],
                small_files: vec![day("2026-11-03"), day("2026-11-04"), day("2026-11-05")],
                round_files: vec![day("2026-11-05")],
            }
        );
        // Without Z-order (a bound of 0), small files are only ever merged.
        let p = plan(&files, true, 128 * MB, 0);
        assert_eq!(p.zorder, Vec::<Option<String>>::new());
        assert_eq!(
            p.small_files,
            vec![
                day("2026-11-02"),
                day("2026-11-03"),
                day("2026-11-04"),
                day("2026-11-05")
            ]
        );
    }

    /// An unpartitioned table is one partition: Z-ordered while it is small and mostly new,
    /// its small files merged once it is not, left alone when compact.
    #[test]
    fn an_unpartitioned_table_is_one_partition() {
        let small = [file(None, 1), file(None, 1)];
        assert_eq!(plan(&small, false, 128 * MB, 256 * MB).zorder, vec![None]);
        let big = [file(None, 300), file(None, 1), file(None, 1)];
        assert_eq!(
            plan(&big, false, 128 * MB, 256 * MB).small_files,
            vec![None]
        );
        let compact = [file(None, 300), file(None, 1)];
        assert_eq!(plan(&compact, false, 128 * MB, 256 * MB), Plan::default());
    }

    /// A partition growing at a steady rate, planned and "rewritten" round after round as the
    /// plan says (Z-order counted as a merge of the same files): small files never pile up, no
    /// round rewrites more than two target files' worth however big the partition grows, and
    /// each byte is rewritten about 3.5 times in all. The planner before this one merged every
    /// file under the target each round: 11.7 rewrites per byte at this rate, 108 at 0.5 MB a
    /// round (where this one does 9.8).
    #[test]
    fn a_growing_partition_costs_each_round_what_changed() {
        let (target, arrive) = (128 * MB, 6 * MB);
        let mut files: Vec<u64> = Vec::new();
        let (mut rewritten, mut arrived) = (0u64, 0u64);
        for round in 0..400 {
            // A round's worth of commits: 60 small files.
            files.extend(std::iter::repeat_n(arrive / 60, 60));
            arrived += arrive;
            let as_files: Vec<DataFile> = files
                .iter()
                .map(|&bytes| DataFile {
                    partition: None,
                    bytes,
                })
                .collect();
            let p = plan(&as_files, false, target, 16 * MB);
            let mut this_round = 0;
            for (planned, limit) in [
                (
                    !p.zorder.is_empty() || !p.small_files.is_empty(),
                    target / 16,
                ),
                (!p.round_files.is_empty(), target),
            ] {
                if !planned {
                    continue;
                }
                // Bin-packing: every file under the limit is merged into files of the limit.
                let (merge, keep): (Vec<u64>, Vec<u64>) = files.iter().partition(|&&b| b < limit);
                let bytes: u64 = merge.iter().sum();
                this_round += bytes;
                files = keep;
                files.extend(std::iter::repeat_n(limit, (bytes / limit) as usize));
                if !bytes.is_multiple_of(limit) {
                    files.push(bytes % limit);
                }
            }
            rewritten += this_round;
            assert!(
                this_round <= 2 * target,
                "round {round} rewrote {this_round} bytes"
            );
            // Small files never pile up past one round's.
            assert!(files.iter().filter(|&&b| b < target / 16).count() <= 61);
        }
        let per_byte = rewritten as f64 / arrived as f64;
        assert!(per_byte < 4.0, "{per_byte:.2} rewrites per byte");
    }
}
