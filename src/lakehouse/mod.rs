//! The lakehouse: Delta tables under one root, one folder per schema
//! (`<root>/<schema>/<table>`). The root is a local folder or a prefix in object storage
//! (`s3://bucket/prefix`, through deltalake's S3 support: concurrent writers are safe through
//! conditional puts, no lock table). This module creates tables idempotently from their definitions
//! (Change Data Feed always on), commits appends that carry Kafka offsets as `txn` actions
//! ([`commit`]), reads the Change Data Feed ([`cdf`]) and runs maintenance ([`maintain`]).

pub mod cdf;
pub mod commit;
mod local_store;
pub mod maintain;
pub mod query;

use std::collections::HashMap;
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
    root: Root,
}

/// Where the tables live.
#[derive(Clone)]
enum Root {
    Local(PathBuf),
    /// A prefix in object storage, as a directory URL (ends in `/`), and the storage options
    /// (`lakehouse.storage_options`; deltalake adds the `AWS_*` environment variables).
    ObjectStore {
        url: Url,
        options: HashMap<String, String>,
    },
}

/// Shows the root and the names of the storage options, never their values (credentials).
impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Root::Local(p) => write!(f, "{}", p.display()),
            Root::ObjectStore { url, options } => {
                let mut keys: Vec<&str> = options.keys().map(String::as_str).collect();
                keys.sort_unstable();
                write!(f, "{url} (options: {keys:?})")
            }
        }
    }
}

/// Object-storage schemes this build can open.
const OBJECT_STORE_SCHEMES: [&str; 2] = ["s3", "s3a"];

/// Retries of object-store requests unless `lakehouse.storage_options` says otherwise: enough to
/// ride out minutes of throttling or dropped connections (about 4 minutes of backoff capped at
/// 10 s), where object_store's own default (10 retries from 100 ms) gives up within seconds.
const STORE_RETRY_DEFAULTS: [(&str, &str); 4] = [
    ("max_retries", "30"),
    ("retry_timeout", "300s"),
    ("backoff_config.init_backoff", "200ms"),
    ("backoff_config.max_backoff", "10s"),
];

/// How long the start check waits for object storage to answer.
const STORE_CHECK: std::time::Duration = std::time::Duration::from_secs(20);

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
    /// Opens the lakehouse at `root`: a local folder (created if needed), or an object-storage
    /// URL (`s3://bucket/prefix`) whose credentials and endpoint come from the `AWS_*`
    /// environment variables.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        Self::with_storage_options(root, &std::collections::BTreeMap::new())
    }

    /// The lakehouse of `config` (`lakehouse.root` and `lakehouse.storage_options`).
    pub fn from_config(config: &crate::config::LakehouseConfig) -> Result<Self> {
        Self::with_storage_options(&config.root, &config.storage_options.0)
    }

    /// [`Self::new`] with the object store's options from `lakehouse.storage_options` (e.g.
    /// `aws_endpoint`, `aws_region`, `aws_allow_http`); they win over the environment. Ignored
    /// for a local root.
    pub fn with_storage_options(
        root: impl AsRef<Path>,
        options: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self> {
        let root = root.as_ref();
        let text = root.to_string_lossy();
        if let Some((scheme, _)) = text.split_once("://") {
            if !OBJECT_STORE_SCHEMES.contains(&scheme) {
                return Err(Error::Config(vec![format!(
                    "lakehouse {text}: unsupported scheme {scheme}:// (a local path or s3://bucket/prefix)"
                )]));
            }
            let dir = if text.ends_with('/') {
                text.to_string()
            } else {
                format!("{text}/")
            };
            let url = Url::parse(&dir).map_err(|e| {
                Error::Config(vec![format!(
                    "lakehouse {text}: {e} (check lakehouse.root / --lakehouse)"
                )])
            })?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(Error::Config(vec![format!(
                    "lakehouse {text}: no bucket (s3://bucket/prefix)"
                )]));
            }
            static HANDLERS: std::sync::Once = std::sync::Once::new();
            HANDLERS.call_once(|| deltalake::aws::register_handlers(None));
            let mut options: HashMap<String, String> = options
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in STORE_RETRY_DEFAULTS {
                options
                    .entry(k.to_string())
                    .or_insert_with(|| v.to_string());
            }
            return Ok(Lakehouse {
                root: Root::ObjectStore { url, options },
            });
        }
        let unusable = |e: std::io::Error| {
            Error::Config(vec![format!(
                "lakehouse {}: {e} (check lakehouse.root / --lakehouse)",
                root.display()
            )])
        };
        std::fs::create_dir_all(root).map_err(unusable)?;
        local_store::register();
        Ok(Lakehouse {
            root: Root::Local(std::fs::canonicalize(root).map_err(unusable)?),
        })
    }

    /// Fails, naming the root, unless an object can be written under it and removed: checked by
    /// the commands that write, at start, instead of failing on the first commit and retrying
    /// it. For object storage this is where an unreachable endpoint, a missing bucket or wrong
    /// credentials show (within [`STORE_CHECK`]).
    pub async fn check_writable(&self) -> Result<()> {
        match &self.root {
            Root::Local(root) => {
                let probe = root.join(format!(".millstream-write-check-{}", std::process::id()));
                std::fs::write(&probe, b"millstream")
                    .and_then(|()| std::fs::remove_file(&probe))
                    .map_err(|e| {
                        Error::Config(vec![format!(
                            "lakehouse {} is not writable: {e} (check lakehouse.root / --lakehouse and \
                             its permissions)",
                            root.display()
                        )])
                    })
            }
            Root::ObjectStore { url, options } => {
                let fail = |why: String| {
                    Error::Config(vec![format!(
                        "lakehouse {url} is not usable: {why} (check lakehouse.root / --lakehouse, \
                         the bucket, and the credentials and endpoint in AWS_* or \
                         lakehouse.storage_options)"
                    )])
                };
                // Few retries: a wrong endpoint should fail the start, not back off for minutes.
                let mut opts = options.clone();
                opts.insert("max_retries".into(), "2".into());
                opts.insert("retry_timeout".into(), "10s".into());
                let store = deltalake::DeltaTableBuilder::from_url(url.clone())
                    .map_err(|e| fail(e.to_string()))?
                    .with_storage_options(opts)
                    .build_storage()
                    .map_err(|e| fail(e.to_string()))?
                    .object_store(None);
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let probe = deltalake::Path::from(format!(
                    ".millstream-write-check-{}-{nanos}",
                    std::process::id()
                ));
                let check = async {
                    use deltalake::logstore::object_store::ObjectStoreExt as _;
                    store.put(&probe, "millstream".into()).await?;
                    store.delete(&probe).await
                };
                match tokio::time::timeout(STORE_CHECK, check).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(fail(e.to_string())),
                    Err(_) => Err(fail(format!("no answer in {}s", STORE_CHECK.as_secs()))),
                }
            }
        }
    }

    /// The local folder the tables live in; `None` for object storage.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.root {
            Root::Local(p) => Some(p),
            Root::ObjectStore { .. } => None,
        }
    }

    /// The root as `--lakehouse` takes it: the local path or the object-storage URL.
    pub fn uri(&self) -> String {
        match &self.root {
            Root::Local(p) => p.display().to_string(),
            Root::ObjectStore { url, .. } => url.to_string(),
        }
    }

    /// The folder of table `name` under a local root; `None` for object storage.
    pub fn table_path(&self, name: &str) -> Result<Option<PathBuf>> {
        let def = tables::get(name)?;
        Ok(self
            .local_root()
            .map(|root| root.join(def.schema_name()).join(def.table_name())))
    }

    fn table_url(&self, def: &TableDef) -> Result<Url> {
        match &self.root {
            Root::Local(root) => {
                let path = root.join(def.schema_name()).join(def.table_name());
                std::fs::create_dir_all(&path)?;
                Url::from_directory_path(&path)
                    .map_err(|_| Error::Invalid(format!("bad table path {}", path.display())))
            }
            Root::ObjectStore { url, .. } => url
                .join(&format!("{}/{}/", def.schema_name(), def.table_name()))
                .map_err(|e| Error::Invalid(format!("bad table URL under {url}: {e}"))),
        }
    }

    /// The storage options every table of this lakehouse opens with.
    fn storage_options(&self) -> HashMap<String, String> {
        match &self.root {
            Root::Local(_) => HashMap::new(),
            Root::ObjectStore { options, .. } => options.clone(),
        }
    }

    async fn open_url(&self, name: &str, url: Url) -> Result<DeltaTable> {
        deltalake::open_table_with_storage_options(url, self.storage_options())
            .await
            .map_err(|e| Error::delta(name, e))
    }

    /// Whether the table has a Delta log yet.
    pub async fn exists(&self, name: &str) -> Result<bool> {
        let def = tables::get(name)?;
        let url = self.table_url(def)?;
        let table = deltalake::DeltaTableBuilder::from_url(url)
            .and_then(|b| b.with_storage_options(self.storage_options()).build())
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
        deltalake::open_table_with_storage_options(url, self.storage_options()).await.map_err(|e| match e {
            DeltaTableError::NotATable(_) | DeltaTableError::InvalidTableLocation(_) => Error::Invalid(format!(
                "table {name} does not exist under {}; run `millstream tables create` or start the pipeline",
                self.uri()
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
            let table = self.open_url(name, url.clone()).await?;
            return match evolve(def, table).await {
                Ok(t) => Ok(t),
                // Another process may have added them first: look again.
                Err(_) => evolve(def, self.open_url(name, url).await?).await,
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
            .with_storage_options(self.storage_options())
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
            Err(_) => self.open_url(name, url).await,
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

/// When `version` of `table` was committed: its commit file's timestamp. The snapshot knows it
/// for the commits after its checkpoint; a checkpoint at `version` itself (maintenance on a
/// quiet table) leaves none there, so then the store is asked for the commit file.
pub async fn commit_time(
    name: &str,
    table: &DeltaTable,
    version: i64,
) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    use deltalake::logstore::object_store::ObjectStoreExt as _;
    let state = table.snapshot().map_err(|e| Error::delta(name, e))?;
    let Ok(v) = u64::try_from(version) else {
        return Ok(None);
    };
    if let Some(ms) = state.version_timestamp(v) {
        return Ok(chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms));
    }
    let file = deltalake::logstore::commit_uri_from_version(Some(v));
    match table.log_store().object_store(None).head(&file).await {
        Ok(meta) => Ok(Some(meta.last_modified)),
        // Removed by log cleanup: the time is no longer known.
        Err(deltalake::ObjectStoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::delta(name, e.into())),
    }
}
