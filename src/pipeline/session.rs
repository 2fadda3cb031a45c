//! DataFusion sessions for pipeline SQL and queries: the `manufacturing` catalog (every table as
//! `schema.table`), the millstream functions ([`super::udf`]) and the views of
//! `pipelines/views/` as `views.<name>`.
//!
//! [`memory`] holds in-memory batches under the tables' names, so checks, golden tests and
//! `eval` run the very same SQL as [`with_tables`] over Delta versions. Views are given as
//! their SQL by name (`pipelines/views/<name>.sql`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use arrow::array::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::datasource::{MemTable, ViewTable};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use crate::error::Result;
use crate::lakehouse::query::CATALOG;
use crate::model::{TableDef, tables};

pub use crate::model::tables::VIEWS;

/// Views by name → their SQL.
pub type Views = BTreeMap<String, String>;

/// A session over in-memory tables: `data` holds rows for some tables (by `schema.table`);
/// every other table of the catalog is empty. Views are not registered (see [`with_views`]).
pub fn memory(data: &BTreeMap<String, Vec<RecordBatch>>) -> Result<SessionContext> {
    with_tables(|def| {
        let batches = data.get(&def.name).cloned().unwrap_or_default();
        Ok(Some(Arc::new(MemTable::try_new(
            def.arrow_schema(),
            vec![batches],
        )?)))
    })
}

/// A session whose catalog holds the tables of the lakehouse as `provider(def)` gives them
/// (`None` leaves a table out), with the millstream functions (no views).
pub fn with_tables(
    provider: impl FnMut(&TableDef) -> Result<Option<Arc<dyn TableProvider>>>,
) -> Result<SessionContext> {
    let ctx = plain_context();
    ctx.register_catalog(CATALOG, tables_catalog(provider)?);
    super::udf::register(&ctx);
    Ok(ctx)
}

/// The `manufacturing` catalog holding the tables as `provider(def)` gives them.
pub fn tables_catalog(
    mut provider: impl FnMut(&TableDef) -> Result<Option<Arc<dyn TableProvider>>>,
) -> Result<Arc<dyn CatalogProvider>> {
    let catalog = Arc::new(MemoryCatalogProvider::new());
    for def in tables::catalog() {
        let Some(table) = provider(def)? else {
            continue;
        };
        let schema = match catalog.schema(def.schema_name()) {
            Some(s) => s,
            None => {
                let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
                catalog.register_schema(def.schema_name(), s.clone())?;
                s
            }
        };
        schema.register_table(def.table_name().to_string(), table)?;
    }
    Ok(catalog)
}

/// Adds `views.<name>` for every view, planned now against `ctx`'s tables.
pub async fn with_views(ctx: &SessionContext, views: &Views) -> Result<()> {
    let schema = Arc::new(MemorySchemaProvider::new());
    for (name, sql) in views {
        let plan = ctx.sql(sql).await?.into_optimized_plan()?;
        schema.register_table(
            name.clone(),
            Arc::new(ViewTable::new(plan, Some(sql.clone()))),
        )?;
    }
    if let Some(catalog) = ctx.catalog(CATALOG) {
        catalog.register_schema(VIEWS, schema)?;
    }
    Ok(())
}

fn plain_context() -> SessionContext {
    context_with_default_schema("ops")
}

fn context_with_default_schema(schema: &str) -> SessionContext {
    SessionContext::new_with_config(crate::lakehouse::query::session_config(schema))
}

/// The schema holding a micro-batch's rows for `batch`-input pipelines.
const INPUT: &str = "input";

/// `ctx`'s catalog and functions, plus a micro-batch's rows as `batch` (unqualified).
pub fn with_batch(
    ctx: &SessionContext,
    schema: arrow::datatypes::SchemaRef,
    batches: Vec<RecordBatch>,
    filter: Option<&str>,
) -> Result<SessionContext> {
    let rows: Arc<dyn datafusion::catalog::TableProvider> =
        Arc::new(MemTable::try_new(schema, vec![batches])?);
    // A pipeline's batch filter (`[input] filter`): `batch` holds only the rows it keeps.
    let rows = match filter {
        None => rows,
        Some(f) => {
            let all = SessionContext::new().read_table(rows)?;
            let keep = all.parse_sql_expr(f)?;
            all.filter(keep)?.into_view()
        }
    };
    with_unqualified(ctx, "batch", rows)
}

/// `ctx`'s catalog and functions, plus `table` under the unqualified `name` (`batch`, an
/// input's `changes`).
pub fn with_unqualified(
    ctx: &SessionContext,
    name: &str,
    table: Arc<dyn datafusion::catalog::TableProvider>,
) -> Result<SessionContext> {
    let catalog = ctx
        .catalog(CATALOG)
        .ok_or_else(|| crate::error::Error::Internal("session without the catalog".into()))?;
    let input = Arc::new(MemorySchemaProvider::new());
    input.register_table(name.to_string(), table)?;
    catalog.register_schema(INPUT, input)?;
    let out = context_with_default_schema(INPUT);
    out.register_catalog(CATALOG, catalog);
    super::udf::register(&out);
    Ok(out)
}

/// Registers the millstream functions on `ctx` and its views as `views.<name>`, each planned
/// when a query first names it, against the very tables of `ctx`'s catalog (so a view reads the
/// same versions as the query around it).
pub fn with_functions_and_views(ctx: &SessionContext, views: &Views) {
    if let Some(catalog) = ctx.catalog(CATALOG) {
        register_views(ctx, views, ViewTables::Own(Arc::downgrade(&catalog)));
    }
}

/// Like [`with_functions_and_views`], but the views are planned against `tables` instead of
/// `ctx`'s own catalog (a principal's views read tables that keep their internal columns,
/// which its own queries do not see).
pub fn with_functions_and_views_over(
    ctx: &SessionContext,
    views: &Views,
    tables: Arc<dyn CatalogProvider>,
) {
    register_views(ctx, views, ViewTables::Other(tables));
}

fn register_views(ctx: &SessionContext, views: &Views, tables: ViewTables) {
    super::udf::register(ctx);
    if let Some(catalog) = ctx.catalog(CATALOG) {
        let views = LazyViews {
            tables,
            views: views.clone(),
            planned: Mutex::new(HashMap::new()),
        };
        // Registering a schema on a memory catalog cannot fail.
        let _ = catalog.register_schema(VIEWS, Arc::new(views));
    }
}

/// The tables views are planned against.
#[derive(Debug)]
enum ViewTables {
    /// The catalog holding the views themselves. Weak: a strong reference would be a cycle
    /// and leak every session.
    Own(Weak<dyn CatalogProvider>),
    /// Another catalog (which does not hold the views).
    Other(Arc<dyn CatalogProvider>),
}

/// Views planned when a query first names them.
#[derive(Debug)]
struct LazyViews {
    tables: ViewTables,
    views: Views,
    planned: Mutex<HashMap<String, Arc<dyn TableProvider>>>,
}

#[async_trait]
impl SchemaProvider for LazyViews {
    fn table_names(&self) -> Vec<String> {
        self.views.keys().cloned().collect()
    }

    async fn table(
        &self,
        name: &str,
    ) -> std::result::Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        if let Some(t) = self.planned.lock().expect("poisoned").get(name) {
            return Ok(Some(t.clone()));
        }
        let Some(sql) = self.views.get(name) else {
            return Ok(None);
        };
        let tables = match &self.tables {
            ViewTables::Own(weak) => weak.upgrade().ok_or_else(|| {
                DataFusionError::Internal("view planned after its session was dropped".into())
            })?,
            ViewTables::Other(tables) => tables.clone(),
        };
        let ctx = plain_context();
        ctx.register_catalog(CATALOG, tables);
        super::udf::register(&ctx);
        let plan = ctx.sql(sql).await?.into_optimized_plan()?;
        let view: Arc<dyn TableProvider> = Arc::new(ViewTable::new(plan, Some(sql.clone())));
        self.planned
            .lock()
            .expect("poisoned")
            .insert(name.to_string(), view.clone());
        Ok(Some(view))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.views.contains_key(name)
    }
}
