//! Read access through DataFusion: a session whose catalog `manufacturing` holds every table of
//! the lakehouse that exists, so SQL names them as `schema.table` (`iot.telemetry`). Each
//! session pins the table versions it opened; open a new one to see later commits.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::prelude::{SessionConfig, SessionContext};

use super::Lakehouse;
use crate::error::{Error, Result};
use crate::model::tables;

pub const CATALOG: &str = "manufacturing";

impl Lakehouse {
    /// A DataFusion session over the latest version of every existing table.
    pub async fn session(&self) -> Result<SessionContext> {
        let config = SessionConfig::new()
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG, "ops");
        let ctx = SessionContext::new_with_config(config);
        let catalog = Arc::new(MemoryCatalogProvider::new());
        for def in tables::catalog() {
            let schema = match catalog.schema(def.schema_name()) {
                Some(s) => s,
                None => {
                    let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
                    catalog.register_schema(def.schema_name(), s.clone())?;
                    s
                }
            };
            if !self.exists(&def.name).await? {
                continue;
            }
            let table = self.open(&def.name).await?;
            schema.register_table(def.table_name().to_string(), table.table_provider().await?)?;
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
