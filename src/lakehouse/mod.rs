//! The lakehouse: Delta tables under one root, one folder per schema
//! (`<root>/<schema>/<table>`). This module creates tables idempotently from their definitions
//! (Change Data Feed always on), commits appends that carry Kafka offsets as `txn` actions
//! ([`commit`]), reads the Change Data Feed ([`cdf`]) and runs maintenance ([`maintain`]).

pub mod cdf;
pub mod commit;
pub mod maintain;
pub mod query;

use std::path::{Path, PathBuf};

use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError, TableProperty};
use url::Url;

use crate::error::{Error, Result};
use crate::model::{TableDef, tables};

/// Data commits made by this process, counted ([`announce_commit`]).
static COMMITS: std::sync::LazyLock<tokio::sync::watch::Sender<u64>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(0).0);

/// Tells this process's readers that a table it writes has a new version: the pipeline calls it
/// after each batch's and each derivation's commits, so a server in the same process (`up`)
/// loads the new versions at once instead of at its next poll.
pub fn announce_commit() {
    COMMITS.send_modify(|n| *n = n.wrapping_add(1));
}

/// Wakes (`changed()`) after each [`announce_commit`] of this process; several announcements
/// before the reader looks count as one.
pub fn commits() -> tokio::sync::watch::Receiver<u64> {
    COMMITS.subscribe()
}

#[derive(Debug, Clone)]
pub struct Lakehouse {
    root: PathBuf,
}

/// `rows` (serde structs named like the table's columns) as one record batch of table `name`'s
/// Arrow schema.
pub fn rows_batch<T: serde::Serialize>(
    name: &str,
    rows: &[T],
) -> Result<arrow::array::RecordBatch> {
    let mut decoder = arrow::json::ReaderBuilder::new(tables::get(name)?.arrow_schema())
        .with_batch_size(rows.len().max(1))
        .build_decoder()?;
    decoder.serialize(rows)?;
    decoder
        .flush()?
        .ok_or_else(|| Error::Internal(format!("{name}: no rows")))
}

impl Lakehouse {
    /// Opens (creating the folder if needed) the lakehouse at `root`.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let unusable = |e: std::io::Error| {
            Error::Config(vec![format!(
                "lakehouse {}: {e} (check lakehouse.root / --lakehouse)",
                root.display()
            )])
        };
        std::fs::create_dir_all(root).map_err(unusable)?;
        Ok(Lakehouse {
            root: std::fs::canonicalize(root).map_err(unusable)?,
        })
    }

    /// Fails, naming the root, unless a file can be written to it and removed: checked by the
    /// commands that write, at start, instead of failing on the first commit and retrying it.
    pub fn check_writable(&self) -> Result<()> {
        let probe = self
            .root
            .join(format!(".millstream-write-check-{}", std::process::id()));
        std::fs::write(&probe, b"millstream")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| {
                Error::Config(vec![format!(
                    "lakehouse {} is not writable: {e} (check lakehouse.root / --lakehouse and \
                     its permissions)",
                    self.root.display()
                )])
            })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn table_path(&self, name: &str) -> Result<PathBuf> {
        let def = tables::get(name)?;
        Ok(self.root.join(def.schema_name()).join(def.table_name()))
    }

    fn table_url(&self, def: &TableDef) -> Result<Url> {
        let path = self.root.join(def.schema_name()).join(def.table_name());
        std::fs::create_dir_all(&path)?;
        Url::from_directory_path(&path)
            .map_err(|_| Error::Invalid(format!("bad table path {}", path.display())))
    }

    /// Whether the table has a Delta log yet.
    pub async fn exists(&self, name: &str) -> Result<bool> {
        let def = tables::get(name)?;
        let url = self.table_url(def)?;
        let table = deltalake::DeltaTableBuilder::from_url(url)
            .and_then(|b| b.build())
            .map_err(|e| Error::delta(name, e))?;
        table
            .verify_deltatable_existence()
            .await
            .map_err(|e| Error::delta(name, e))
    }

    /// Opens a table that must exist.
    pub async fn open(&self, name: &str) -> Result<DeltaTable> {
        let def = tables::get(name)?;
        let url = self.table_url(def)?;
        deltalake::open_table(url).await.map_err(|e| match e {
            DeltaTableError::NotATable(_) | DeltaTableError::InvalidTableLocation(_) => Error::Invalid(format!(
                "table {name} does not exist under {}; run `millstream tables create` or start the pipeline",
                self.root.display()
            )),
            e => Error::delta(name, e),
        })
    }

    /// Creates the table from its definition if it does not exist, then opens it; an existing
    /// table gets the nullable columns its definition has gained ([`Self::evolve`]). Safe to
    /// call from several processes at once.
    pub async fn ensure(&self, name: &str) -> Result<DeltaTable> {
        let def = tables::get(name)?;
        let url = self.table_url(def)?;
        // Probe for the log first: opening a missing table makes the kernel log an error.
        if self.exists(name).await? {
            let table = deltalake::open_table(url.clone())
                .await
                .map_err(|e| Error::delta(name, e))?;
            return match evolve(def, table).await {
                Ok(t) => Ok(t),
                // Another process may have added them first: look again.
                Err(_) => {
                    let table = deltalake::open_table(url)
                        .await
                        .map_err(|e| Error::delta(name, e))?;
                    evolve(def, table).await
                }
            };
        }
        // Parquet min/max stats of binary and vector columns (raw dead-letter payloads,
        // embeddings) are useless and
        // make the writer warn on every file: collect stats only for the other columns.
        let stats_columns: Vec<&str> = def
            .columns
            .iter()
            .filter(|c| !c.ty.is_bulk() && !def.partition_by.contains(&c.name))
            .map(|c| c.name.as_str())
            .collect();
        let mut builder = deltalake::operations::create::CreateBuilder::new();
        if def.columns.iter().any(|c| c.ty.is_bulk()) {
            builder = builder.with_configuration_property(
                TableProperty::DataSkippingStatsColumns,
                Some(stats_columns.join(",")),
            );
        }
        let created = builder
            .with_location(url.to_string())
            .with_table_name(def.table_name())
            .with_comment(def.comment.clone())
            .with_columns(def.delta_fields())
            .with_partition_columns(def.partition_by.clone())
            .with_configuration_property(TableProperty::EnableChangeDataFeed, Some("true"))
            .with_save_mode(SaveMode::Ignore)
            .await;
        match created {
            Ok(t) => Ok(t),
            // Another process created it between our open and create.
            Err(_) => deltalake::open_table(url)
                .await
                .map_err(|e| Error::delta(name, e)),
        }
    }

    /// Creates every table in the catalog that does not exist yet (and evolves those that do).
    pub async fn ensure_all(&self) -> Result<Vec<DeltaTable>> {
        let mut out = Vec::new();
        for def in tables::catalog() {
            out.push(self.ensure(&def.name).await?);
        }
        Ok(out)
    }
}

/// Adds to `table` the columns its definition has and it lacks. Only nullable columns can be
/// added: the rows already written read them as NULL. A missing non-nullable column is an
/// error naming it, since no value could be given to the old rows.
async fn evolve(def: &TableDef, table: DeltaTable) -> Result<DeltaTable> {
    let schema = table
        .snapshot()
        .map_err(|e| Error::delta(&def.name, e))?
        .schema();
    let missing: Vec<&tables::ColumnDef> = def
        .columns
        .iter()
        .filter(|c| schema.field(&c.name).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(table);
    }
    if let Some(c) = missing.iter().find(|c| !c.nullable) {
        return Err(Error::Invalid(format!(
            "table {} lacks the non-nullable column {} of its definition; existing rows have no \
             value for it: migrate the table, or make the column nullable",
            def.name, c.name
        )));
    }
    let names: Vec<&str> = missing.iter().map(|c| c.name.as_str()).collect();
    tracing::info!(table = %def.name, columns = ?names, "adding columns from the table definition");
    table
        .add_columns()
        .with_fields(
            missing
                .iter()
                .map(|c| deltalake::kernel::StructField::new(c.name.clone(), c.ty.delta(), true))
                .collect::<Vec<_>>(),
        )
        .await
        .map_err(|e| Error::delta(&def.name, e))
}

/// Loads the commits newer than the version `table` holds; true when there were any.
pub async fn advance(table: &mut DeltaTable) -> Result<bool> {
    let before = table.version();
    let name = table.table_url().to_string();
    let latest = table
        .get_latest_version()
        .await
        .map_err(|e| Error::delta(&name, e))?;
    if Some(latest) == before {
        return Ok(false);
    }
    table
        .update_incremental(None)
        .await
        .map_err(|e| Error::delta(&name, e))?;
    Ok(table.version() != before)
}

/// When `version` of `table` was committed.
pub fn commit_time(
    name: &str,
    table: &DeltaTable,
    version: i64,
) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    let state = table.snapshot().map_err(|e| Error::delta(name, e))?;
    Ok(state
        .version_timestamp(version as u64)
        .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis))
}
