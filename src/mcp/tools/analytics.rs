//! Analytics tools: what the tables hold (`describe_tables`) and one read-only query at a time
//! (`query_sql`).
//!
//! `query_sql` is governed SQL ([`crate::governed`]): exactly one read-only query over the
//! caller's own tables (row filters and masks inside the scans), allowed functions only, on
//! its own threads with a memory limit, a timeout that cancels and per-principal concurrency
//! limits. The answer is cut at `limit` rows (default 100, at most 10,000) or at
//! `serve.query_result_mb` of JSON, whichever comes first, and says which.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{ErrorData, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::mcp::args::{failed, internal, invalid};
use crate::mcp::catalog::AsOf;
use crate::mcp::server::Millstream;
use crate::model::tables;

pub const SQL_DEFAULT_ROWS: u32 = 100;
pub const SQL_MAX_ROWS: u32 = 10_000;

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
    /// True when the query had more rows than it returns.
    pub truncated: bool,
    /// Why rows were left out: "rows" (`limit`) or "bytes" (the server's answer size limit,
    /// serve.query_result_mb). Absent when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_by: Option<String>,
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
            // Where the caller's rows are filtered, internal columns are not its to see
            // (crate::auth::enforce).
            let filtered = !self.access.filters(&def.name).map_err(internal)?.is_empty();
            out.push(TableInfo {
                name: def.name.clone(),
                kind: "table".into(),
                description: def.comment.clone(),
                columns: def
                    .columns
                    .iter()
                    .filter(|c| !(filtered && c.name.starts_with('_')))
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
        let answer = crate::governed::query(
            &self.sandbox,
            &self.access.principal,
            self.access.restricted(),
            session.ctx.clone(),
            a.sql,
            n,
        )
        .await
        .map_err(|f| match f {
            crate::governed::Failure::Refused(why) => invalid("sql", why),
            other => failed(&other),
        })?;
        let as_of = session.as_of(&answer.plan);
        let (schema, rows) = (answer.schema, answer.rows);
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
            truncated: answer.truncated_by.is_some(),
            truncated_by: answer.truncated_by.map(str::to_string),
            as_of,
        }))
    }
}
