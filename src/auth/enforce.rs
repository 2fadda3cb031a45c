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
    let schema = provider.schema();
    let mut plan = LogicalPlanBuilder::scan(reference.clone(), provider_as_source(provider), None)?;
    for (column, filter) in filters {
        let column_expr = Expr::Column(datafusion::common::Column::new(
            Some(reference.clone()),
            &column,
        ));
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
                    .project(vec![col(&column)])?
                    .build()?;
                    in_subquery(column_expr, Arc::new(sub))
                }
                None => lit(false),
            },
        };
        let predicate = if access.null_passes(name) {
            Expr::Column(datafusion::common::Column::new(
                Some(reference.clone()),
                &column,
            ))
            .is_null()
            .or(predicate)
        } else {
            predicate
        };
        plan = plan.filter(predicate)?;
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let c = Expr::Column(datafusion::common::Column::new(
                Some(reference.clone()),
                f.name(),
            ));
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
