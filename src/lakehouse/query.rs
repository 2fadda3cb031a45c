//! Read access through DataFusion: a session whose catalog `manufacturing` names every table of
//! the lakehouse as `schema.table` (`iot.telemetry`). Tables are opened when a query first
//! names them, not when the session is made, so a query reads only the logs it needs. A session
//! pins the version of each table it opened; make a new one to see later commits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::Lakehouse;
use crate::error::{Error, Result};
use crate::model::tables;

pub const CATALOG: &str = "manufacturing";

/// One schema of the catalog (`iot`, `ops`, …), opening its tables on first use.
#[derive(Debug)]
struct LazySchema {
    lake: Lakehouse,
    schema: String,
    opened: Mutex<HashMap<String, Arc<dyn TableProvider>>>,
    /// Tables read at a given version instead of their latest.
    pinned: Arc<HashMap<String, i64>>,
}

#[async_trait]
impl SchemaProvider for LazySchema {
    fn table_names(&self) -> Vec<String> {
        tables::catalog()
            .iter()
            .filter(|d| d.schema_name() == self.schema)
            .map(|d| d.table_name().to_string())
            .collect()
    }

    async fn table(
        &self,
        name: &str,
    ) -> std::result::Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        if let Some(t) = self.opened.lock().expect("poisoned").get(name) {
            return Ok(Some(t.clone()));
        }
        let full = format!("{}.{name}", self.schema);
        let external = |e: Error| DataFusionError::External(Box::new(e));
        if tables::get(&full).is_err() || !self.lake.exists(&full).await.map_err(external)? {
            return Ok(None);
        }
        let mut table = self.lake.open(&full).await.map_err(external)?;
        if let Some(v) = self.pinned.get(&full) {
            table
                .load_version(u64::try_from(*v).unwrap_or(0))
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
        }
        let provider = table.table_provider().await?;
        self.opened
            .lock()
            .expect("poisoned")
            .insert(name.to_string(), provider.clone());
        Ok(Some(provider))
    }

    fn table_exist(&self, name: &str) -> bool {
        tables::get(&format!("{}.{name}", self.schema)).is_ok()
    }
}

/// Settings of every millstream DataFusion session: the `manufacturing` catalog with
/// `default_schema` for unqualified names, and leaf-expression pushdown off. DataFusion 55.2
/// pushes a struct field access (`prediction['risk_level']`) together with the function
/// computing the struct below the nullable side of an outer join, where unmatched rows then get
/// NULL instead of the function's answer for a NULL argument (a customer with no purchases lost
/// their churn risk; `tests/pipelines/churn_signals/new_and_rare_buyers` catches it).
pub fn session_config(default_schema: &str) -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_create_default_catalog_and_schema(false)
        .with_default_catalog_and_schema(CATALOG, default_schema);
    let optimizer = &mut config.options_mut().optimizer;
    optimizer.enable_leaf_expression_pushdown = false;
    // DataFusion 55.2 plans `SELECT DISTINCT k … LIMIT n` over input already sorted on `k`
    // (a window partitioned by it, as in views.track_shipments) as a top-k aggregate without a
    // direction and then fails at run time ("Ordering direction required for DISTINCT with
    // limit"). The soft limit only saves work for DISTINCT with LIMIT: turn it off.
    optimizer.enable_distinct_aggregation_soft_limit = false;
    config
}

/// A text column of a query result, whatever string encoding the scan chose (`Utf8View` from
/// DataFusion's Parquet scan, `Utf8` elsewhere), as `Utf8`.
pub fn strings(batch: &RecordBatch, name: &str) -> Result<StringArray> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Internal(format!("column {name} missing")))?;
    let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8)?;
    Ok(c.as_string::<i32>().clone())
}

/// Runs `sql` over the snapshot an opened `table` holds, the table named `t` in it — not over
/// the latest version, so what a reader records having read is what it read. A table with no
/// snapshot yet (nothing committed) has no rows.
pub async fn snapshot_sql(table: &deltalake::DeltaTable, sql: &str) -> Result<Vec<RecordBatch>> {
    if table.snapshot().is_err() {
        return Ok(Vec::new());
    }
    let ctx = SessionContext::new();
    ctx.register_table("t", table.table_provider().await?)?;
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// Runs `sql` over `batches` registered as table `t` (nothing when there are none).
pub async fn batches_sql(batches: Vec<RecordBatch>, sql: &str) -> Result<Vec<RecordBatch>> {
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return Ok(Vec::new());
    };
    let ctx = SessionContext::new();
    ctx.register_table(
        "t",
        Arc::new(datafusion::datasource::MemTable::try_new(
            schema,
            vec![batches],
        )?),
    )?;
    Ok(ctx.sql(sql).await?.collect().await?)
}

impl Lakehouse {
    /// A DataFusion session over the latest version of the tables its queries name.
    pub async fn session(&self) -> Result<SessionContext> {
        self.session_at(HashMap::new()).await
    }

    /// A session reading the tables of `pinned` (`schema.table` → version) at those versions
    /// and every other table at its latest: what an answer read, read again.
    pub async fn session_at(&self, pinned: HashMap<String, i64>) -> Result<SessionContext> {
        let pinned = Arc::new(pinned);
        let ctx = SessionContext::new_with_config(session_config("ops"));
        let catalog = Arc::new(MemoryCatalogProvider::new());
        for def in tables::catalog() {
            if catalog.schema(def.schema_name()).is_none() {
                let schema = LazySchema {
                    lake: self.clone(),
                    schema: def.schema_name().to_string(),
                    opened: Mutex::new(HashMap::new()),
                    pinned: pinned.clone(),
                };
                catalog.register_schema(def.schema_name(), Arc::new(schema))?;
            }
        }
        ctx.register_catalog(CATALOG, catalog);
        Ok(ctx)
    }

    /// Runs one query and collects its result.
    pub async fn sql(&self, query: &str) -> Result<Vec<RecordBatch>> {
        let ctx = self.session().await?;
        Ok(ctx.sql(query).await?.collect().await?)
    }

    /// A query returning a single integer (e.g. `SELECT count(*) …`).
    /// Rows in a table at its latest version.
    pub async fn count_rows(&self, name: &str) -> Result<i64> {
        crate::model::tables::get(name)?;
        self.sql_i64(&format!("SELECT count(*) FROM {name}")).await
    }

    pub async fn sql_i64(&self, query: &str) -> Result<i64> {
        let batches = self.sql(query).await?;
        let col = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .map(|b| b.column(0).clone())
            .ok_or_else(|| Error::Invalid(format!("query returned no rows: {query}")))?;
        let col = arrow::compute::cast(&col, &arrow::datatypes::DataType::Int64)?;
        let ints = col
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("cast to Int64");
        if ints.is_null(0) {
            return Err(Error::Invalid(format!("query returned NULL: {query}")));
        }
        Ok(ints.value(0))
    }
}
