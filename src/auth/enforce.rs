//! Enforcement inside the query engine: row filters as security barriers (DESIGN §6).
//!
//! A principal's session holds only the tables it may read, each wrapped in a [`Secured`]
//! provider. Its scan is a barrier: rows pass the caller's row filters and get their masks
//! *inside* the scan, below a plan node ([`BarrierExec`]) that no optimizer rule sees through,
//! pushes anything under, or reorders. So none of the caller's expressions — in WHERE, JOIN ON,
//! HAVING, CASE, window or subqueries, or through a view — ever runs on a row the caller may not
//! read: no error, no timing and no side effect of a caller's expression depends on a hidden row
//! (PostgreSQL's `security_barrier` views and leakproof functions).
//!
//! - Only *leakproof* predicates of the caller reach the inner scan, to prune files and row
//!   groups: comparisons of an unmasked column with a constant of the column's own type, which
//!   cannot fail. Everything else stays above the barrier.
//! - Row filters are literal lists (`warehouse_id IN (…)`); a `visible_in` filter reads the other
//!   table as the caller sees it (through its own barrier), once per session, and becomes a
//!   literal list as well. A `readable` filter is the list of tables the caller may read.
//! - Masks (a fixed text, NULL, or a keyed HMAC-SHA256 digest) are applied to each batch inside
//!   the barrier, so the caller's expressions only ever see masked values.
//! - Where a caller's rows are filtered, the table's internal columns (`_partition`, `_offset`,
//!   `_ingested_at`) are not in its schema: gaps between offsets would count other tenants'
//!   rows. Views, which are trusted SQL, are planned over a variant that keeps them.
//! - The barrier reports no statistics, so no `count(*)` is answered from file metadata.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, StringArray, new_null_array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use datafusion::prelude::lit;
use datafusion::scalar::ScalarValue;
use futures::StreamExt;

use super::policy::{Access, ColumnFilter, HmacKey, MaskKind};
use crate::error::Result;

/// What a redacted text reads as.
pub const REDACTED: &str = "[redacted]";

/// Whether a restricted table keeps its internal columns (`_partition`, `_offset`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Internal {
    /// Dropped wherever the caller's rows are filtered (what the caller's SQL sees).
    Hidden,
    /// Kept (for views, trusted SQL that may order by offsets but never returns them).
    Kept,
}

/// How one output column is derived from the inner table's column.
#[derive(Debug, Clone)]
enum Mask {
    Redact,
    Null,
    Hash(HmacKey),
}

/// `provider` (the table `name`) as `access` may see it: unchanged when nothing restricts it,
/// else behind a [`Secured`] barrier. `visible` holds the tables already restricted for this
/// principal, which `visible_in` filters read.
pub fn restrict(
    name: &str,
    provider: Arc<dyn TableProvider>,
    access: &Access,
    visible: &BTreeMap<String, Arc<dyn TableProvider>>,
    internal: Internal,
) -> Result<Arc<dyn TableProvider>> {
    let both = restrict_both(name, provider, access, visible)?;
    Ok(match internal {
        Internal::Hidden => both.caller,
        Internal::Kept => both.trusted,
    })
}

/// One table as a principal sees it, twice: for the caller's SQL and for views.
pub struct Restricted {
    /// Internal columns hidden where rows are filtered.
    pub caller: Arc<dyn TableProvider>,
    /// Internal columns kept (views; `visible_in` sources).
    pub trusted: Arc<dyn TableProvider>,
}

/// [`restrict`] for both uses at once; the two share their `visible_in` lists.
pub fn restrict_both(
    name: &str,
    provider: Arc<dyn TableProvider>,
    access: &Access,
    visible: &BTreeMap<String, Arc<dyn TableProvider>>,
) -> Result<Restricted> {
    let filters = access.filters(name)?;
    let masks: BTreeMap<String, MaskKind> = access.masks(name).into_iter().collect();
    if filters.is_empty() && masks.is_empty() {
        return Ok(Restricted {
            caller: provider.clone(),
            trusted: provider,
        });
    }
    let inner_schema = provider.schema();
    let column = |c: &str| Expr::Column(Column::new_unqualified(c));
    let typed = |c: &str, v: ScalarValue| -> Result<Expr> {
        let ty = inner_schema.field_with_name(c)?.data_type();
        Ok(lit(v.cast_to(ty)?))
    };
    let null_passes = access.null_passes(name);
    let mut filter = Vec::new();
    let mut semi = Vec::new();
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
            filter.push(owned);
        }
    }
    for (filtered, f) in filters {
        let predicate = match f {
            ColumnFilter::In(values) => column(&filtered).in_list(
                values
                    .into_iter()
                    .map(|v| typed(&filtered, ScalarValue::Utf8(Some(v))))
                    .collect::<Result<_>>()?,
                false,
            ),
            ColumnFilter::Nothing => lit(false),
            ColumnFilter::VisibleIn(table) => match visible.get(&table) {
                Some(source) => {
                    semi.push(Semi {
                        column: filtered,
                        source: source.clone(),
                        null_passes,
                    });
                    continue;
                }
                None => lit(false),
            },
        };
        filter.push(if null_passes {
            column(&filtered).is_null().or(predicate)
        } else {
            predicate
        });
    }
    let filtered = !filter.is_empty() || !semi.is_empty();
    let semi = Arc::new(semi);
    let resolved: Arc<tokio::sync::OnceCell<Vec<Expr>>> = Arc::default();
    let secured = |hide_internal: bool| -> Arc<dyn TableProvider> {
        let mut columns = Vec::new();
        let mut fields = Vec::new();
        for (i, f) in inner_schema.fields().iter().enumerate() {
            if hide_internal && f.name().starts_with('_') {
                continue;
            }
            let mask = masks.get(f.name()).map(|kind| {
                let text = is_text(f.data_type());
                match kind {
                    MaskKind::Redact if text => Mask::Redact,
                    MaskKind::Hash if text => Mask::Hash(access.mask_key().clone()),
                    _ => Mask::Null,
                }
            });
            fields.push(match mask {
                Some(_) => f.as_ref().clone().with_nullable(true),
                None => f.as_ref().clone(),
            });
            columns.push((i, mask));
        }
        Arc::new(Secured {
            name: name.to_string(),
            inner: provider.clone(),
            schema: Arc::new(Schema::new(fields)),
            columns,
            filter: filter.clone(),
            semi: semi.clone(),
            resolved: resolved.clone(),
        })
    };
    Ok(Restricted {
        caller: secured(filtered),
        trusted: secured(false),
    })
}

fn is_text(ty: &DataType) -> bool {
    matches!(
        ty,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// A `visible_in` filter: the column's value must appear in `source`'s column of that name.
#[derive(Debug)]
struct Semi {
    column: String,
    source: Arc<dyn TableProvider>,
    null_passes: bool,
}

/// A table behind its caller's row filters and masks (see the module docs).
#[derive(Debug)]
pub struct Secured {
    name: String,
    inner: Arc<dyn TableProvider>,
    /// What the caller sees: the inner columns minus hidden ones, masked ones nullable.
    schema: SchemaRef,
    /// Per output column: its index in the inner schema and its mask.
    columns: Vec<(usize, Option<Mask>)>,
    /// Row filters over the inner columns, built from literals only.
    filter: Vec<Expr>,
    semi: Arc<Vec<Semi>>,
    /// `semi` as literal lists, computed by the first scan of this session.
    resolved: Arc<tokio::sync::OnceCell<Vec<Expr>>>,
}

impl Secured {
    /// The `visible_in` filters as `column IN (values the caller sees there)`.
    async fn semi_filters(&self, state: &dyn Session) -> DfResult<Vec<Expr>> {
        let inner_schema = self.inner.schema();
        self.resolved
            .get_or_try_init(|| async {
                let mut out = Vec::new();
                for s in self.semi.iter() {
                    let source_schema = s.source.schema();
                    let index = source_schema.index_of(&s.column)?;
                    let plan = s.source.scan(state, Some(&vec![index]), &[], None).await?;
                    let batches =
                        datafusion::physical_plan::collect(plan, state.task_ctx()).await?;
                    let ty = inner_schema.field_with_name(&s.column)?.data_type().clone();
                    let mut seen = HashSet::new();
                    let mut list = Vec::new();
                    for b in &batches {
                        let values = arrow::compute::cast(b.column(0), &ty)?;
                        for i in 0..values.len() {
                            if values.is_valid(i) {
                                let v = ScalarValue::try_from_array(&values, i)?;
                                if seen.insert(v.clone()) {
                                    list.push(lit(v));
                                }
                            }
                        }
                    }
                    let column = Expr::Column(Column::new_unqualified(&s.column));
                    let predicate = if list.is_empty() {
                        lit(false)
                    } else {
                        column.clone().in_list(list, false)
                    };
                    out.push(if s.null_passes {
                        column.is_null().or(predicate)
                    } else {
                        predicate
                    });
                }
                Ok(out)
            })
            .await
            .cloned()
    }

    /// Whether `expr`, a caller's predicate, may run on every row of the inner table: it cannot
    /// fail or behave differently whatever the row holds, and reads no masked column.
    fn leakproof(&self, expr: &Expr) -> bool {
        let inner = self.inner.schema();
        let unmasked_column = |e: &Expr| -> Option<DataType> {
            let Expr::Column(c) = e else { return None };
            let (index, mask) = self
                .columns
                .iter()
                .find(|(i, _)| inner.field(*i).name() == &c.name)?;
            match mask {
                Some(_) => None,
                None => Some(inner.field(*index).data_type().clone()),
            }
        };
        let same_type =
            |e: &Expr, ty: &DataType| matches!(e, Expr::Literal(v, _) if &v.data_type() == ty);
        let column_vs_constant = |a: &Expr, b: &Expr| match (unmasked_column(a), unmasked_column(b))
        {
            (Some(ty), None) => same_type(b, &ty),
            (None, Some(ty)) => same_type(a, &ty),
            _ => false,
        };
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::And | Operator::Or => self.leakproof(left) && self.leakproof(right),
                Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq
                | Operator::IsDistinctFrom
                | Operator::IsNotDistinctFrom => column_vs_constant(left, right),
                _ => false,
            },
            Expr::Not(e) => self.leakproof(e),
            Expr::IsNull(e) | Expr::IsNotNull(e) => unmasked_column(e).is_some(),
            Expr::InList(l) => {
                unmasked_column(&l.expr).is_some_and(|ty| l.list.iter().all(|v| same_type(v, &ty)))
            }
            Expr::Between(b) => unmasked_column(&b.expr)
                .is_some_and(|ty| same_type(&b.low, &ty) && same_type(&b.high, &ty)),
            _ => false,
        }
    }
}

#[async_trait]
impl TableProvider for Secured {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Inexact: DataFusion still applies every filter above the barrier; a leakproof one
        // is also handed to the inner scan, only to skip data.
        Ok(filters
            .iter()
            .map(|f| {
                if self.leakproof(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let inner_schema = self.inner.schema();
        let mut ours = self.filter.clone();
        ours.extend(self.semi_filters(state).await?);
        let wanted: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..self.columns.len()).collect());
        let mut needed: Vec<usize> = wanted.iter().map(|&i| self.columns[i].0).collect();
        for e in &ours {
            for c in e.column_refs() {
                needed.push(inner_schema.index_of(&c.name)?);
            }
        }
        needed.sort_unstable();
        needed.dedup();
        // The limit is not passed on: it counts rows before our filter.
        let pushed: Vec<Expr> = ours.iter().chain(filters).cloned().collect();
        let mut plan = self.inner.scan(state, Some(&needed), &pushed, None).await?;
        if let Some(predicate) = conjunction(ours) {
            let schema = DFSchema::try_from(plan.schema())?;
            let predicate = state.create_physical_expr(predicate, &schema)?;
            plan = Arc::new(FilterExec::try_new(predicate, plan)?);
        }
        let scanned = plan.schema();
        let mut columns = Vec::with_capacity(wanted.len());
        let mut fields = Vec::with_capacity(wanted.len());
        for &i in &wanted {
            let (inner, mask) = &self.columns[i];
            columns.push((
                scanned.index_of(inner_schema.field(*inner).name())?,
                mask.clone(),
            ));
            fields.push(self.schema.field(i).clone());
        }
        Ok(Arc::new(BarrierExec::new(
            self.name.clone(),
            plan,
            columns,
            Arc::new(Schema::new(fields)),
        )))
    }
}

/// The barrier: the caller's view of one table's rows. It takes nothing from above — no
/// filters, projections, sorts, limits or dynamic filters are pushed through it — and reports
/// no statistics; below it, the table's own scan and the row filter.
#[derive(Debug)]
pub struct BarrierExec {
    table: String,
    input: Arc<dyn ExecutionPlan>,
    columns: Vec<(usize, Option<Mask>)>,
    properties: Arc<PlanProperties>,
}

impl BarrierExec {
    fn new(
        table: String,
        input: Arc<dyn ExecutionPlan>,
        columns: Vec<(usize, Option<Mask>)>,
        schema: SchemaRef,
    ) -> BarrierExec {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        BarrierExec {
            table,
            input,
            columns,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for BarrierExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "BarrierExec: table={}", self.table)
    }
}

impl ExecutionPlan for BarrierExec {
    fn name(&self) -> &'static str {
        "BarrierExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "BarrierExec has one child".into(),
            ));
        }
        Ok(Arc::new(BarrierExec::new(
            self.table.clone(),
            children.swap_remove(0),
            self.columns.clone(),
            self.schema(),
        )))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = self.schema();
        let columns = self.columns.clone();
        let out_schema = schema.clone();
        let stream = input.map(move |batch| {
            let batch = batch?;
            let arrays = columns
                .iter()
                .zip(out_schema.fields())
                .map(|((i, mask), field)| masked(batch.column(*i), mask.as_ref(), field))
                .collect::<DfResult<Vec<_>>>()?;
            // A scan may read no column at all (`count(*)`): the row count says how many.
            let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
            Ok(RecordBatch::try_new_with_options(
                out_schema.clone(),
                arrays,
                &options,
            )?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// `values` as the caller may see them.
fn masked(values: &ArrayRef, mask: Option<&Mask>, field: &Field) -> DfResult<ArrayRef> {
    let ty = field.data_type();
    Ok(match mask {
        None => values.clone(),
        Some(Mask::Null) => new_null_array(ty, values.len()),
        Some(Mask::Redact) => {
            let redacted: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                REDACTED,
                values.len(),
            )));
            arrow::compute::cast(&redacted, ty)?
        }
        Some(Mask::Hash(key)) => {
            let text = arrow::compute::cast(values, &DataType::Utf8)?;
            let digests: ArrayRef = Arc::new(
                text.as_string::<i32>()
                    .iter()
                    .map(|v| v.map(|v| key.digest_hex(v.as_bytes())))
                    .collect::<StringArray>(),
            );
            arrow::compute::cast(&digests, ty)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::policy::Policies;
    use crate::model::tables;
    use arrow::array::{Array, RecordBatch, StringArray};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::col;

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
        let seen = restrict(
            "ops.alerts",
            table,
            &access,
            &BTreeMap::new(),
            Internal::Hidden,
        )
        .unwrap();
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

    /// A keyed digest: stable for one key (equal values still join), different under another
    /// key, and not the plain SHA-256 anyone could compute from a guessed value.
    #[test]
    fn hash_masks_are_keyed() {
        let a = HmacKey::new(b"key one");
        let b = HmacKey::new(b"key two");
        let value = b"alice@example.com";
        assert_eq!(a.digest_hex(value), a.digest_hex(value));
        assert_ne!(a.digest_hex(value), b.digest_hex(value));
        let plain = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value);
        let plain = hex::encode(plain);
        assert_ne!(a.digest_hex(value), plain);
        assert_eq!(a.digest_hex(value).len(), 64);
    }

    /// A `hash` mask through the barrier: the caller sees HMAC-SHA256 under the policies' key
    /// (the same digest for the same value, so it still joins), never the plain SHA-256 a
    /// guesser could compute, and never the value; the administrator sees the value.
    #[tokio::test]
    async fn hash_masks_digest_under_the_configured_key() {
        let policies = Policies::parse(
            "t",
            r#"
            [personas.rep]
            tools = []
            read = ["sales"]
            [personas.admin]
            tools = []
            read = ["*"]
            [[masks]]
            table = "sales.customers"
            column = "email"
            with = "hash"
            except = ["admin"]
            [principals.rep]
            persona = "rep"
            [principals.root]
            persona = "admin"
            "#,
        )
        .unwrap()
        .with_mask_key(b"secret of this deployment");
        let schema = tables::get("sales.customers")
            .unwrap()
            .arrow_projection(|c| c == "customer_id" || c == "email");
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["C-1", "C-2", "C-3"])),
                Arc::new(StringArray::from(vec!["a@x.com", "a@x.com", "b@y.org"])),
            ],
        )
        .unwrap();
        let table = Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap());
        let emails = |who: &'static str| {
            let access = policies.access(who).unwrap();
            let table = table.clone();
            async move {
                let seen = restrict(
                    "sales.customers",
                    table,
                    &access,
                    &BTreeMap::new(),
                    Internal::Hidden,
                )
                .unwrap();
                let b = datafusion::prelude::SessionContext::new()
                    .read_table(seen)
                    .unwrap()
                    .sort_by(vec![col("customer_id")])
                    .unwrap()
                    .select_columns(&["email"])
                    .unwrap()
                    .collect()
                    .await
                    .unwrap();
                let col = arrow::compute::cast(b[0].column(0), &DataType::Utf8).unwrap();
                col.as_string::<i32>()
                    .iter()
                    .map(|v| v.map(str::to_string))
                    .collect::<Vec<_>>()
            }
        };
        let key = HmacKey::new(b"secret of this deployment");
        let (a, b) = (key.digest_hex(b"a@x.com"), key.digest_hex(b"b@y.org"));
        assert_eq!(emails("rep").await, [Some(a.clone()), Some(a), Some(b)]);
        assert_eq!(
            emails("root").await,
            ["a@x.com", "a@x.com", "b@y.org"].map(|e| Some(e.to_string()))
        );
    }
}
