//! Analytics tools: what the tables hold (`describe_tables`) and one read-only query at a time
//! (`query_sql`).
//!
//! `query_sql` accepts exactly one statement and only a query (SELECT, WITH, VALUES …): the
//! text is parsed first and anything else is refused, table functions too (nothing reads
//! files or makes rows out of thin air), and the plan is made with DDL, DML and statements
//! (SET, …) disabled as a second lock. The result is cut at `limit` rows (default
//! 100, at most 10,000) and the query at the server's timeout.

use datafusion::execution::context::SQLOptions;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{ErrorData, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::mcp::catalog::AsOf;
use crate::mcp::server::{Millstream, internal, invalid, rows_json};
use crate::model::tables;

pub const SQL_DEFAULT_ROWS: u32 = 100;
pub const SQL_MAX_ROWS: u32 = 10_000;
const SQL_MAX_CHARS: usize = 20_000;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DescribeArgs {
    /// One table or view (e.g. "supply_chain.shortage_signals"); all when absent.
    pub table: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Column {
    pub name: String,
    /// string, long, integer, double, boolean, timestamp, date, binary
    #[serde(rename = "type")]
    pub ty: String,
    pub nullable: bool,
    pub description: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TableInfo {
    /// Name to use in query_sql (`schema.table`, views as `views.<name>`).
    pub name: String,
    /// table or view
    pub kind: String,
    pub description: String,
    pub columns: Vec<Column>,
    /// Delta version the server reads (tables only).
    pub version: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Kpi {
    pub name: String,
    pub definition: String,
    /// A query computing it.
    pub sql: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DescribeAnswer {
    pub tables: Vec<TableInfo>,
    pub kpis: Vec<Kpi>,
    /// The SQL dialect and functions available to query_sql.
    pub notes: Vec<String>,
    pub as_of: AsOf,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlArgs {
    /// One read-only query (SELECT / WITH), DataFusion SQL. Tables as `schema.table`.
    pub sql: String,
    /// Rows to return (default 100, at most 10000).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ResultColumn {
    pub name: String,
    /// Arrow data type.
    #[serde(rename = "type")]
    pub ty: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SqlAnswer {
    pub columns: Vec<ResultColumn>,
    /// One object per row; NULL columns are left out.
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
    /// True when the query had more rows than `limit`.
    pub truncated: bool,
    pub as_of: AsOf,
}

fn kpis() -> Vec<Kpi> {
    let k = |name: &str, definition: &str, sql: &str| Kpi {
        name: name.into(),
        definition: definition.into(),
        sql: sql.into(),
    };
    vec![
        k(
            "revenue",
            "Sum of sales amounts over a window",
            "SELECT sum(amount) FROM sales.transactions WHERE ts > now() - INTERVAL '30 days'",
        ),
        k(
            "avg_order_value",
            "Revenue divided by the number of transactions",
            "SELECT sum(amount) / count(*) FROM sales.transactions",
        ),
        k(
            "days_of_cover",
            "Days until a position runs out at its current usage, counting expected inbound",
            "SELECT part_id, warehouse_id, days_of_cover FROM supply_chain.shortage_signals",
        ),
        k(
            "positions_at_risk",
            "Part x warehouse positions at HIGH or CRITICAL shortage risk",
            "SELECT count(*) FROM supply_chain.shortage_signals WHERE risk_level IN ('HIGH', 'CRITICAL')",
        ),
        k(
            "churn_rate_at_risk",
            "Share of customers at HIGH or CRITICAL churn risk",
            "SELECT avg(CASE WHEN risk_level IN ('HIGH', 'CRITICAL') THEN 1.0 ELSE 0.0 END) FROM sales.churn_signals",
        ),
        k(
            "anomaly_rate",
            "Anomalous readings per 1000 readings",
            "SELECT 1000.0 * (SELECT count(*) FROM iot.anomalies) / (SELECT count(*) FROM iot.telemetry)",
        ),
        k(
            "open_tickets",
            "Tickets open or in progress",
            "SELECT count(*) FROM support.tickets WHERE status IN ('open', 'in_progress')",
        ),
        k(
            "supplier_on_time_rate",
            "Share of a supplier's deliveries that were never delayed",
            "SELECT supplier_id, avg(CASE WHEN status = 'delayed' THEN 0.0 ELSE 1.0 END) FROM supply_chain.shipments GROUP BY supplier_id",
        ),
    ]
}

/// Exactly one statement, and a query.
fn check_read_only(sql: &str) -> Result<(), ErrorData> {
    if sql.trim().is_empty() {
        return Err(invalid("sql", "sql is empty"));
    }
    if sql.len() > SQL_MAX_CHARS {
        return Err(invalid(
            "sql",
            format!("sql is longer than {SQL_MAX_CHARS} characters"),
        ));
    }
    let statements = DFParser::parse_sql(sql)
        .map_err(|e| invalid("sql", format!("cannot parse the query: {e}")))?;
    if statements.len() != 1 {
        return Err(invalid(
            "sql",
            format!(
                "exactly one statement is accepted, found {}",
                statements.len()
            ),
        ));
    }
    match &statements[0] {
        DfStatement::Statement(s) if matches!(s.as_ref(), Statement::Query(_)) => {
            no_table_functions(s)
        }
        other => {
            let kind = format!("{other}");
            let first = kind.split_whitespace().next().unwrap_or("statement");
            Err(invalid(
                "sql",
                format!(
                    "only read-only queries (SELECT, WITH) are accepted, not {}",
                    first.to_uppercase()
                ),
            ))
        }
    }
}

/// Refuses table functions (`generate_series(…)`, `range(…)`, and any a future DataFusion
/// registers, file readers included): a query reads the caller's tables and nothing else.
fn no_table_functions(statement: &Statement) -> Result<(), ErrorData> {
    use datafusion::sql::sqlparser::ast::{TableFactor, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Refuse;
    impl Visitor for Refuse {
        type Break = String;
        fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<String> {
            match t {
                TableFactor::Table {
                    name,
                    args: Some(_),
                    ..
                } => ControlFlow::Break(name.to_string()),
                TableFactor::Function { name, .. } => ControlFlow::Break(name.to_string()),
                TableFactor::TableFunction { expr, .. } => ControlFlow::Break(expr.to_string()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    match statement.visit(&mut Refuse) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(f) => Err(invalid(
            "sql",
            format!(
                "table functions are not available in query_sql (found {f}); read tables and views"
            ),
        )),
    }
}

#[tool_router(router = analytics_router, vis = "pub(crate)")]
impl Millstream {
    #[tool(
        description = "Every table and view query_sql can read, with column types and \
                       descriptions, the Delta version served, and the KPIs with a query for each.",
        annotations(read_only_hint = true)
    )]
    pub async fn describe_tables(
        &self,
        Parameters(a): Parameters<DescribeArgs>,
    ) -> Result<Json<DescribeAnswer>, ErrorData> {
        let session = self.session().await?;
        let mut out = Vec::new();
        for def in tables::catalog() {
            if a.table.as_deref().is_some_and(|t| t != def.name) || !self.access.may_read(&def.name)
            {
                continue;
            }
            out.push(TableInfo {
                name: def.name.clone(),
                kind: "table".into(),
                description: def.comment.clone(),
                columns: def
                    .columns
                    .iter()
                    .map(|c| Column {
                        name: c.name.clone(),
                        ty: format!("{:?}", c.ty).to_lowercase(),
                        nullable: c.nullable,
                        description: c.comment.clone(),
                    })
                    .collect(),
                version: self.catalog.version(&def.name),
            });
        }
        for (name, sql) in &self.catalog.definitions().views {
            let full = format!("views.{name}");
            if a.table.as_deref().is_some_and(|t| t != full) || !self.access.may_read(&full) {
                continue;
            }
            let schema = session
                .ctx
                .table(full.as_str())
                .await
                .map_err(|e| internal(format!("planning {full}: {e}")))?
                .schema()
                .clone();
            let description = sql
                .lines()
                .take_while(|l| l.starts_with("--"))
                .map(|l| l.trim_start_matches("--").trim())
                .collect::<Vec<_>>()
                .join(" ");
            out.push(TableInfo {
                name: full,
                kind: "view".into(),
                description,
                columns: schema
                    .fields()
                    .iter()
                    .map(|f| Column {
                        name: f.name().clone(),
                        ty: f.data_type().to_string(),
                        nullable: f.is_nullable(),
                        description: String::new(),
                    })
                    .collect(),
                version: None,
            });
        }
        if let Some(t) = &a.table
            && out.is_empty()
        {
            return Err(invalid(
                "table",
                format!("unknown table {t:?}; call describe_tables without arguments to list them"),
            ));
        }
        let names: Vec<String> = out
            .iter()
            .filter(|t| t.kind == "table")
            .map(|t| t.name.clone())
            .collect();
        let as_of = session.as_of_tables(names.iter().map(String::as_str));
        Ok(Json(DescribeAnswer {
            tables: out,
            kpis: kpis(),
            notes: vec![
                "DataFusion SQL (PostgreSQL-like). Tables are schema.table; views are views.<name>.".into(),
                "Functions: predict_shortage(available, daily_usage, inbound_expected, lead_time_days) -> {days_of_cover, risk_level}; predict_churn(purchase_ages_days, spend_trend) -> {churn_probability, risk_level, factors}.".into(),
                "Timestamps are UTC; signal tables carry as_of, the event time they were computed at.".into(),
            ],
            as_of,
        }))
    }

    #[tool(
        description = "Run one read-only SQL query (SELECT or WITH; DataFusion SQL) over the \
                       tables and views of describe_tables. Returns typed columns and rows, cut at \
                       `limit` (default 100, at most 10000), within the server's query timeout.",
        annotations(read_only_hint = true)
    )]
    pub async fn query_sql(
        &self,
        Parameters(a): Parameters<SqlArgs>,
    ) -> Result<Json<SqlAnswer>, ErrorData> {
        check_read_only(&a.sql)?;
        let n = match a.limit {
            None => SQL_DEFAULT_ROWS,
            Some(n) if (1..=SQL_MAX_ROWS).contains(&n) => n,
            Some(n) => {
                return Err(invalid(
                    "limit",
                    format!("limit {n} is outside 1..={SQL_MAX_ROWS}"),
                ));
            }
        } as usize;
        let session = self.session().await?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let work = async {
            let df = session.ctx.sql_with_options(&a.sql, options).await?;
            let as_of = session.as_of(df.logical_plan());
            let schema = df.schema().as_arrow().clone();
            let batches = df.limit(0, Some(n + 1))?.collect().await?;
            Ok::<_, datafusion::error::DataFusionError>((schema, batches, as_of))
        };
        let (schema, batches, as_of) = self
            .within_timeout(work)
            .await?
            .map_err(|e| invalid("sql", format!("query failed: {e}")))?;
        let mut rows: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_value(rows_json(&batches)?).map_err(internal)?;
        let truncated = rows.len() > n;
        rows.truncate(n);
        Ok(Json(SqlAnswer {
            columns: schema
                .fields()
                .iter()
                .map(|f| ResultColumn {
                    name: f.name().clone(),
                    ty: f.data_type().to_string(),
                })
                .collect(),
            rows,
            truncated,
            as_of,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::check_read_only;

    #[test]
    fn only_one_read_only_query_passes() {
        assert!(check_read_only("SELECT 1").is_ok());
        assert!(check_read_only("WITH a AS (SELECT 1 AS x) SELECT x FROM a").is_ok());
        assert!(
            check_read_only("SELECT * FROM iot.telemetry t JOIN views.track_shipments s ON true")
                .is_ok()
        );
        for bad in [
            "",
            "SELECT 1; SELECT 2",
            "DROP TABLE iot.telemetry",
            "INSERT INTO ops.alerts VALUES (1)",
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "COPY (SELECT 1) TO '/tmp/x.csv'",
            "SET datafusion.execution.batch_size = 1",
            "DELETE FROM support.tickets",
            "EXPLAIN SELECT 1",
            "SELECT * FROM generate_series(1, 10)",
            "SELECT * FROM iot.telemetry t JOIN range(5) r ON true",
            "WITH x AS (SELECT * FROM read_parquet('/etc/passwd')) SELECT * FROM x",
            "SELECT * FROM (SELECT 1) a WHERE EXISTS (SELECT * FROM GENERATE_SERIES(1, 2))",
        ] {
            let e = check_read_only(bad).expect_err(bad);
            assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS, "{bad}");
        }
    }
}
