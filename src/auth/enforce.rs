//! Enforcement inside the query engine. A principal's session holds only the tables it may
//! read, each replaced by a view of itself: scan → its row filters → its masked columns. Every
//! query (a tool's or `query_sql`'s, with joins, subqueries, CTEs, UNIONs or views) reads the
//! table through that view, so there is nothing to reach around; the filters are literals and
//! subqueries built here, never text spliced into SQL.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, in_subquery};
use datafusion::prelude::{col, lit};
use datafusion::scalar::ScalarValue;

use super::policy::{Access, ColumnFilter, MaskKind};
use crate::error::Result;

/// What a redacted text reads as.
pub const REDACTED: &str = "[redacted]";

/// `provider` (the table `name`) as `access` may see it. `visible` holds the tables already
/// restricted for this principal, which `visible_in` filters read.
pub fn restrict(
    name: &str,
    provider: Arc<dyn TableProvider>,
    access: &Access,
    visible: &BTreeMap<String, Arc<dyn TableProvider>>,
) -> Result<Arc<dyn TableProvider>> {
    let filters = access.filters(name)?;
    let masks: BTreeMap<String, MaskKind> = access.masks(name).into_iter().collect();
    if filters.is_empty() && masks.is_empty() {
        return Ok(provider);
    }
    let reference = table_reference(name);
    let column =
        |c: &str| Expr::Column(datafusion::common::Column::new(Some(reference.clone()), c));
    let schema = provider.schema();
    let mut plan = LogicalPlanBuilder::scan(reference.clone(), provider_as_source(provider), None)?;
    let null_passes = access.null_passes(name);
    if null_passes {
        // NULL tenant columns pass below, so a row must say whose it is at all: one that sets
        // none (a writer's mistake) is seen only by callers no tenant filter restricts.
        let tenant = access.tenant_columns(name)?;
        if filters.iter().any(|(c, _)| tenant.contains(c))
            && let Some(owned) = tenant
                .iter()
                .map(|c| column(c).is_not_null())
                .reduce(Expr::or)
        {
            plan = plan.filter(owned)?;
        }
    }
    for (filtered, filter) in filters {
        let column_expr = column(&filtered);
        let predicate = match filter {
            ColumnFilter::In(values) => {
                column_expr.in_list(values.into_iter().map(lit).collect(), false)
            }
            ColumnFilter::Nothing => lit(false),
            ColumnFilter::VisibleIn(table) => match visible.get(&table) {
                Some(source) => {
                    let sub = LogicalPlanBuilder::scan(
                        table_reference(&table),
                        provider_as_source(source.clone()),
                        None,
                    )?
                    .project(vec![col(&filtered)])?
                    .build()?;
                    in_subquery(column_expr, Arc::new(sub))
                }
                None => lit(false),
            },
        };
        let predicate = if null_passes {
            column(&filtered).is_null().or(predicate)
        } else {
            predicate
        };
        plan = plan.filter(predicate)?;
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let c = column(f.name());
            match masks.get(f.name()) {
                None => c,
                Some(kind) => mask(c, *kind, f.data_type()).alias(f.name()),
            }
        })
        .collect::<Vec<_>>();
    let plan = plan.project(columns)?.build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}

fn table_reference(name: &str) -> TableReference {
    match name.split_once('.') {
        Some((schema, table)) => TableReference::partial(schema, table),
        None => TableReference::bare(name),
    }
}

/// A masked value of the column's type: redacted or hashed text, or NULL.
fn mask(column: Expr, kind: MaskKind, ty: &DataType) -> Expr {
    let text = matches!(
        ty,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    );
    let null = lit(ScalarValue::try_from(ty).unwrap_or(ScalarValue::Null));
    match kind {
        MaskKind::Redact if text => lit(REDACTED).cast_to_type(ty),
        // A stable digest: equal values still join and group together.
        MaskKind::Hash if text => datafusion::functions::expr_fn::encode(
            datafusion::functions::crypto::expr_fn::sha256(column),
            lit("hex"),
        )
        .cast_to_type(ty),
        _ => null,
    }
}

trait CastTo {
    fn cast_to_type(self, ty: &DataType) -> Expr;
}

impl CastTo for Expr {
    fn cast_to_type(self, ty: &DataType) -> Expr {
        Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(self),
            ty.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::policy::Policies;
    use crate::model::tables;
    use arrow::array::{Array, RecordBatch, StringArray};
    use datafusion::datasource::MemTable;

    /// Alerts a caller sees through the built-in policies: (id, source, warehouse, plant,
    /// region); customer and account manager NULL.
    async fn alerts_seen_by(principal: &str, rows: &[[Option<&str>; 5]]) -> Vec<String> {
        let cols = [
            "alert_id",
            "source",
            "warehouse_id",
            "plant_id",
            "region",
            "customer_id",
            "account_manager",
        ];
        let schema = tables::get("ops.alerts")
            .unwrap()
            .arrow_projection(|c| cols.contains(&c));
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                let i = cols.iter().position(|c| c == f.name()).unwrap();
                let values = rows.iter().map(|r| r.get(i).copied().flatten());
                Arc::new(StringArray::from_iter(values)) as Arc<dyn Array>
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let table = Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap());
        let access = Policies::load("").unwrap().access(principal).unwrap();
        let seen = restrict("ops.alerts", table, &access, &BTreeMap::new()).unwrap();
        let batches = datafusion::prelude::SessionContext::new()
            .read_table(seen)
            .unwrap()
            .select_columns(&["alert_id"])
            .unwrap()
            .sort_by(vec![col("alert_id")])
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches
            .iter()
            .flat_map(|b| {
                let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                ids.iter().flatten().map(str::to_string).collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn an_alert_that_names_no_tenant_is_seen_only_by_callers_of_every_tenant() {
        let shortage = Some("supply_chain.shortage_signals");
        let rows = [
            [
                Some("a1"),
                shortage,
                Some("WH-01"),
                None,
                Some("EMEA-North"),
            ],
            [Some("a2"), shortage, Some("WH-03"), None, Some("AMER-East")],
            // Written with no tenant column at all: NULLs pass filters, so without the
            // "names some tenant" rule every manager would see it.
            [Some("a3"), shortage, None, None, None],
            [
                Some("a4"),
                Some("iot.maintenance_alerts"),
                None,
                Some("PLANT-1"),
                None,
            ],
            [
                Some("a5"),
                Some("sales.churn_signals"),
                None,
                None,
                Some("EMEA-North"),
            ],
        ];
        assert_eq!(alerts_seen_by("maria@emea", &rows).await, ["a1", "a4"]);
        assert_eq!(alerts_seen_by("jon@amer", &rows).await, ["a2"]);
        assert_eq!(
            alerts_seen_by("local-dev", &rows).await,
            ["a1", "a2", "a3", "a4", "a5"]
        );
    }
}
