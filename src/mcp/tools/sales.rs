//! Sales tools: accounts, churn risk, KPIs.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{ErrorData, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{RISK_ORDER, Risk};
use crate::mcp::args::{id, invalid, limit, opt_id, opt_text, text, timestamp};
use crate::mcp::catalog::AsOf;
use crate::mcp::query::Query;
use crate::mcp::server::Millstream;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerArgs {
    /// e.g. "C-0042".
    pub customer_id: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct CustomerInfo {
    pub customer_id: String,
    pub name: String,
    pub segment: String,
    pub region: String,
    pub account_manager: String,
    pub email: String,
    pub since: String,
    pub last_purchase: Option<String>,
    pub recency_days: Option<f64>,
    pub frequency_90d: Option<i64>,
    pub monetary_90d: Option<f64>,
    pub churn_probability: Option<f64>,
    pub churn_risk: Option<Risk>,
    pub churn_factors: Option<String>,
    pub recommendation: Option<String>,
    pub tickets_total: i64,
    pub tickets_open: i64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RecentPurchase {
    pub transaction_id: String,
    pub product_id: String,
    pub quantity: i64,
    pub amount: f64,
    pub currency: String,
    pub channel: String,
    pub ts: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct CustomerAnswer {
    pub customer: CustomerInfo,
    /// The latest ten purchases.
    pub recent_purchases: Vec<RecentPurchase>,
    pub as_of: AsOf,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ChurnSignal {
    pub customer_id: String,
    pub name: String,
    pub segment: String,
    pub region: String,
    pub account_manager: String,
    pub last_purchase: Option<String>,
    pub recency_days: Option<f64>,
    pub frequency_90d: i64,
    pub monetary_90d: f64,
    pub avg_interval_days: Option<f64>,
    /// Spend in the last 30 days over the monthly average of the 60 before (1 = steady).
    pub spend_trend: Option<f64>,
    pub churn_probability: f64,
    pub risk_level: Risk,
    pub factors: String,
    pub recommendation: String,
    /// Event-time watermark the signal was computed at.
    pub as_of: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ChurnAnswer {
    pub signals: Vec<ChurnSignal>,
    pub as_of: AsOf,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChurnRisksArgs {
    /// Lowest risk level to list (default HIGH).
    pub min_risk: Option<Risk>,
    pub region: Option<String>,
    pub account_manager: Option<String>,
    pub segment: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KpiGroup {
    Region,
    Channel,
    Segment,
    Product,
    Day,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KpiArgs {
    /// Trailing window in days, ending at the event-time watermark (default 30, at most 365).
    pub days: Option<u32>,
    /// Break the KPIs down by this (one total row when absent).
    pub group_by: Option<KpiGroup>,
    pub region: Option<String>,
    pub customer_id: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct KpiRow {
    /// The group's value ("all" without group_by).
    pub group: String,
    /// Sum of amount.
    pub revenue: f64,
    pub transactions: i64,
    pub units: i64,
    pub customers: i64,
    /// revenue / transactions.
    pub avg_order_value: f64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct KpiAnswer {
    pub window_start: String,
    pub window_end: String,
    pub rows: Vec<KpiRow>,
    pub as_of: AsOf,
}

const CHURN_COLUMNS: &str = "customer_id, name, segment, region, account_manager, last_purchase, \
     recency_days, frequency_90d, monetary_90d, avg_interval_days, spend_trend, \
     churn_probability, risk_level, factors, recommendation, as_of";

#[tool_router(router = sales_router, vis = "pub(crate)")]
impl Millstream {
    #[tool(
        description = "One customer account: segment, region, account manager, churn outlook \
                       (recency, frequency, monetary value, probability, factors, recommendation), \
                       support tickets and the latest purchases.",
        annotations(read_only_hint = true)
    )]
    pub async fn lookup_customer_info(
        &self,
        Parameters(a): Parameters<CustomerArgs>,
    ) -> Result<Json<CustomerAnswer>, ErrorData> {
        id("customer_id", &a.customer_id)?;
        let q = Query::new("SELECT * FROM views.lookup_customer_info")
            .filter("customer_id = ?", Some(text(&a.customer_id)))
            .finish("");
        let (mut rows, mut as_of): (Vec<CustomerInfo>, AsOf) = self.fetch(q).await?;
        let Some(customer) = rows.pop() else {
            return Err(invalid(
                "customer_id",
                format!("unknown customer_id {:?}", a.customer_id),
            ));
        };
        let q = Query::new(
            "SELECT transaction_id, product_id, quantity, amount, currency, channel, ts \
             FROM sales.transactions",
        )
        .filter("customer_id = ?", Some(text(&a.customer_id)))
        .finish("ORDER BY ts DESC LIMIT 10");
        let (recent_purchases, purchases_as_of) = self.fetch(q).await?;
        as_of.tables.extend(purchases_as_of.tables);
        Ok(Json(CustomerAnswer {
            customer,
            recent_purchases,
            as_of,
        }))
    }

    #[tool(
        description = "The churn prediction for a customer: probability, risk level, the \
                       recency/frequency/monetary factors behind it and a recommended action.",
        annotations(read_only_hint = true)
    )]
    pub async fn predict_churn(
        &self,
        Parameters(a): Parameters<CustomerArgs>,
    ) -> Result<Json<ChurnAnswer>, ErrorData> {
        id("customer_id", &a.customer_id)?;
        self.must_exist(
            "customer_id",
            &a.customer_id,
            "SELECT 1 FROM sales.customers WHERE customer_id = $1",
        )
        .await?;
        let q = Query::new(&format!("SELECT {CHURN_COLUMNS} FROM sales.churn_signals"))
            .filter("customer_id = ?", Some(text(&a.customer_id)))
            .finish("");
        let (signals, as_of) = self.fetch(q).await?;
        Ok(Json(ChurnAnswer { signals, as_of }))
    }

    #[tool(
        description = "Customers at or above a churn risk (default HIGH), most likely to churn \
                       first; filter by region, account manager or segment.",
        annotations(read_only_hint = true)
    )]
    pub async fn list_churn_risks(
        &self,
        Parameters(a): Parameters<ChurnRisksArgs>,
    ) -> Result<Json<ChurnAnswer>, ErrorData> {
        opt_id("region", &a.region)?;
        opt_id("account_manager", &a.account_manager)?;
        opt_id("segment", &a.segment)?;
        let n = limit(a.limit)?;
        let q = Query::new(&format!("SELECT {CHURN_COLUMNS} FROM sales.churn_signals"))
            .any_of("risk_level", &a.min_risk.unwrap_or(Risk::High).at_least())
            .filter("region = ?", opt_text(&a.region))
            .filter("account_manager = ?", opt_text(&a.account_manager))
            .filter("segment = ?", opt_text(&a.segment))
            .finish(&format!(
                "ORDER BY {RISK_ORDER}, churn_probability DESC, monetary_90d DESC, customer_id \
                 LIMIT {n}"
            ));
        let (signals, as_of) = self.fetch(q).await?;
        Ok(Json(ChurnAnswer { signals, as_of }))
    }

    #[tool(
        description = "Sales KPIs over a trailing window ending at the event-time watermark: \
                       revenue, transactions, units, distinct customers, average order value; in \
                       total or by region, channel, segment, product or day.",
        annotations(read_only_hint = true)
    )]
    pub async fn sales_kpis(
        &self,
        Parameters(a): Parameters<KpiArgs>,
    ) -> Result<Json<KpiAnswer>, ErrorData> {
        opt_id("region", &a.region)?;
        opt_id("customer_id", &a.customer_id)?;
        let days = a.days.unwrap_or(30);
        if !(1..=365).contains(&days) {
            return Err(invalid("days", format!("days {days} is outside 1..=365")));
        }
        let n = limit(a.limit)?;
        let group = match a.group_by {
            None => "'all'",
            Some(KpiGroup::Region) => "t.region",
            Some(KpiGroup::Channel) => "t.channel",
            Some(KpiGroup::Segment) => "coalesce(c.segment, 'unknown')",
            Some(KpiGroup::Product) => "t.product_id",
            Some(KpiGroup::Day) => "CAST(t.event_date AS VARCHAR)",
        };
        let end = self.window_end("sales.transactions");
        let start = end - chrono::Duration::days(i64::from(days));
        let q = Query::new(&format!(
            "SELECT {group} AS \"group\", coalesce(sum(t.amount), 0.0) AS revenue, \
             count(*) AS transactions, coalesce(sum(t.quantity), 0) AS units, \
             count(DISTINCT t.customer_id) AS customers, \
             coalesce(sum(t.amount) / nullif(count(*), 0), 0.0) AS avg_order_value \
             FROM sales.transactions t LEFT JOIN sales.customers c ON c.customer_id = t.customer_id"
        ))
        .filter("t.ts > ?", Some(timestamp(start)))
        .filter("t.ts <= ?", Some(timestamp(end)))
        .filter("t.region = ?", opt_text(&a.region))
        .filter("t.customer_id = ?", opt_text(&a.customer_id))
        .finish(&format!("GROUP BY 1 ORDER BY revenue DESC, 1 LIMIT {n}"));
        let (rows, as_of) = self.fetch(q).await?;
        Ok(Json(KpiAnswer {
            window_start: crate::mcp::catalog::rfc3339(start),
            window_end: crate::mcp::catalog::rfc3339(end),
            rows,
            as_of,
        }))
    }
}
