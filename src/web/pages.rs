//! The console's pages and the panels ("fragments") they are made of.
//!
//! A page is shown to a principal whose persona may call every tool it uses, so a sales rep
//! never gets a supply-chain page (nor its URL) and the reverse. A panel names the tables it
//! reads: the live stream re-renders it when one of them has a new version. Each panel loads
//! its data through [`super::data::Clients`], as the signed-in principal, and renders
//! `web/templates/frag_<id>.html`, whose root element carries `id="<id>"` so a live update
//! replaces it whole. A panel whose data cannot be read renders the reason in its place.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::data::{CallError, Clients};

/// A console page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Page {
    Stock,
    Shipments,
    Machines,
    Sales,
    Customers,
    Customer,
    Ops,
}

/// A panel of a page: its element id, the tables whose new versions change it, and whether it
/// takes half the width (two half panels in a row share it).
#[derive(Debug)]
pub struct Fragment {
    pub id: &'static str,
    pub tables: &'static [&'static str],
    pub half: bool,
}

const fn full(id: &'static str, tables: &'static [&'static str]) -> Fragment {
    Fragment {
        id,
        tables,
        half: false,
    }
}

const fn half(id: &'static str, tables: &'static [&'static str]) -> Fragment {
    Fragment {
        id,
        tables,
        half: true,
    }
}

/// The alert feed, beside every page's own panels.
pub const ALERTS: Fragment = full("alerts", &["ops.alerts"]);

/// The pages of the navigation, in order.
pub const NAV: [Page; 6] = [
    Page::Stock,
    Page::Shipments,
    Page::Machines,
    Page::Sales,
    Page::Customers,
    Page::Ops,
];

impl Page {
    pub fn name(self) -> &'static str {
        match self {
            Page::Stock => "stock",
            Page::Shipments => "shipments",
            Page::Machines => "machines",
            Page::Sales => "sales",
            Page::Customers => "customers",
            Page::Customer => "customer",
            Page::Ops => "ops",
        }
    }

    pub fn from_name(name: &str) -> Option<Page> {
        NAV.into_iter()
            .chain([Page::Customer])
            .find(|p| p.name() == name)
    }

    pub fn title(self) -> &'static str {
        match self {
            Page::Stock => "Stock and shortages",
            Page::Shipments => "Shipments",
            Page::Machines => "Machines",
            Page::Sales => "Sales",
            Page::Customers => "Customers",
            Page::Customer => "Customer 360",
            Page::Ops => "Operations",
        }
    }

    /// The tools the page calls: a persona lacking one does not get the page.
    fn tools(self) -> &'static [&'static str] {
        match self {
            Page::Stock => &[
                "get_inventory_status",
                "list_shortage_risks",
                "create_order",
                "query_sql",
            ],
            Page::Shipments => &["track_shipments"],
            Page::Machines => &["maintenance_alerts", "list_anomalies", "query_sql"],
            Page::Sales => &["sales_kpis", "list_churn_risks", "query_sql"],
            Page::Customers | Page::Customer => {
                &["lookup_customer_info", "search_tickets", "query_sql"]
            }
            Page::Ops => &["describe_tables", "query_sql"],
        }
    }

    /// Whether `access` may see this page.
    pub fn allowed(self, access: &crate::auth::Access) -> bool {
        self.tools().iter().all(|t| access.may_call(t))
            && (self != Page::Ops || access.reads_everything())
    }

    /// The page's panels, the alert feed first.
    pub fn fragments(self) -> &'static [Fragment] {
        const STOCK: &[Fragment] = &[
            ALERTS,
            full(
                "warehouses",
                &["supply_chain.inventory", "supply_chain.shortage_signals"],
            ),
            full("shortages", &["supply_chain.shortage_signals"]),
            full(
                "orders",
                &["supply_chain.purchase_orders", "supply_chain.shipments"],
            ),
        ];
        const SHIPMENTS: &[Fragment] = &[ALERTS, full("lanes", &["supply_chain.shipments"])];
        const MACHINES: &[Fragment] = &[
            ALERTS,
            full("maintenance", &["iot.maintenance_alerts"]),
            half("anomalies", &["iot.anomalies"]),
            half("sensors", &["iot.telemetry"]),
        ];
        const SALES: &[Fragment] = &[
            ALERTS,
            full("kpis", &["sales.transactions"]),
            full("heatmap", &["sales.churn_signals"]),
            full("churn", &["sales.churn_signals"]),
            full("leads", &["sales.lead_scores"]),
        ];
        const CUSTOMERS: &[Fragment] = &[
            ALERTS,
            full("customer_list", &["sales.customers", "sales.churn_signals"]),
        ];
        const CUSTOMER: &[Fragment] = &[
            ALERTS,
            full(
                "profile",
                &[
                    "sales.customers",
                    "sales.churn_signals",
                    "sales.transactions",
                    "support.tickets",
                ],
            ),
            half("tickets", &["support.tickets"]),
            half("proposals", &["knowledge.proposals"]),
        ];
        // The operations figures and the table list read no one table: they follow every
        // publication.
        const OPS: &[Fragment] = &[
            ALERTS,
            full("pipeline", &[]),
            half("table_versions", &[]),
            half("dead_letters", &["ops.dead_letters"]),
        ];
        match self {
            Page::Stock => STOCK,
            Page::Shipments => SHIPMENTS,
            Page::Machines => MACHINES,
            Page::Sales => SALES,
            Page::Customers => CUSTOMERS,
            Page::Customer => CUSTOMER,
            Page::Ops => OPS,
        }
    }
}

/// What a page is asked for: the page and its parameters (already checked).
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub page: Page,
    /// The machine whose sensors are charted (Machines).
    pub machine: Option<String>,
    /// The customer (Customer 360).
    pub customer: Option<String>,
    /// A filter on names (Customers).
    pub q: Option<String>,
}

/// An id as the console accepts it in a URL: the shapes of millstream's ids.
pub fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':'))
}

/// The window of the machines' sensor chart, and its buckets: a fixed number of points
/// however long the page stays open.
const SENSOR_WINDOW_HOURS: u32 = 6;
const SENSOR_BUCKET_MINUTES: u32 = 5;

/// The elements of `v`, an array in a tool's answer (none when it is absent).
fn items(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// The tables [`default_machine`] reads.
pub const DEFAULT_MACHINE_FROM: &[&str] = &["iot.maintenance_alerts", "iot.anomalies"];

/// The machine the Machines page charts when none is asked for: the one of the newest
/// maintenance alert, else of the latest anomaly (none when neither exists or can be read).
pub async fn default_machine(clients: &Clients, principal: &str) -> Option<String> {
    let alerts = clients
        .call(principal, "maintenance_alerts", json!({"limit": 1}))
        .await
        .ok()?;
    if let Some(m) = alerts["alerts"][0]["machine_id"].as_str() {
        return Some(m.to_string());
    }
    let anomalies = clients
        .call(
            principal,
            "list_anomalies",
            json!({"hours": 24, "limit": 1}),
        )
        .await
        .ok()?;
    anomalies["anomalies"][0]["machine_id"]
        .as_str()
        .map(String::from)
}

/// The template context of panel `id` of `view` for `principal`.
pub async fn load(
    clients: &Clients,
    principal: &str,
    view: &View,
    id: &str,
) -> Result<Value, CallError> {
    let c = clients;
    let p = principal;
    match id {
        "alerts" => {
            let feed = c.resource(p, "millstream://alerts/active").await?;
            let all = items(&feed["items"]);
            Ok(json!({"alerts": &all[..all.len().min(12)], "as_of": feed["as_of"]}))
        }
        "warehouses" => {
            let (rows, as_of) = c
                .sql(
                    p,
                    "SELECT warehouse_id, region, count(*) AS positions, sum(available) AS available, \
                     round(approx_median(days_of_cover), 1) AS median_cover, \
                     round(min(days_of_cover), 1) AS min_cover, \
                     sum(CASE WHEN risk_level IN ('HIGH', 'CRITICAL') THEN 1 ELSE 0 END) AS at_risk, \
                     sum(CASE WHEN risk_level = 'CRITICAL' THEN 1 ELSE 0 END) AS critical \
                     FROM views.get_inventory_status GROUP BY warehouse_id, region ORDER BY warehouse_id",
                    100,
                )
                .await?;
            Ok(json!({"warehouses": rows, "as_of": as_of}))
        }
        "shortages" => {
            let a = c
                .call(
                    p,
                    "list_shortage_risks",
                    json!({"min_risk": "HIGH", "limit": 25}),
                )
                .await?;
            let signals: Vec<Value> = items(&a["signals"])
                .iter()
                .cloned()
                .map(|mut s| {
                    // One key per row and rendering: a double click sends the same order twice,
                    // which the action's idempotency turns into one. Renderings are shared per
                    // principal and table version (`cache`), so a second tab or a reload at the
                    // same version orders under the same key too.
                    s["order_key"] = format!("console-{}", crate::actions::new_key()).into();
                    s
                })
                .collect();
            Ok(json!({"signals": signals, "as_of": a["as_of"]}))
        }
        "orders" => {
            let (rows, as_of) = c
                .sql(
                    p,
                    "SELECT po_id, part_id, warehouse_id, quantity, priority, status, expected_at, \
                     created_at, received_at, on_behalf_of FROM views.order_status \
                     ORDER BY created_at DESC, po_id LIMIT 10",
                    10,
                )
                .await?;
            Ok(json!({"orders": rows, "as_of": as_of}))
        }
        "lanes" => {
            let a = c
                .call(
                    p,
                    "track_shipments",
                    json!({"open_only": true, "limit": 1000}),
                )
                .await?;
            Ok(json!({"lanes": lanes(items(&a["shipments"])), "as_of": a["as_of"]}))
        }
        "maintenance" => {
            let a = c
                .call(p, "maintenance_alerts", json!({"limit": 15}))
                .await?;
            Ok(json!({"alerts": a["alerts"], "as_of": a["as_of"], "machine": view.machine}))
        }
        "anomalies" => {
            let a = c
                .call(p, "list_anomalies", json!({"hours": 24, "limit": 500}))
                .await?;
            let mut per_machine: BTreeMap<String, (u64, u64, String)> = BTreeMap::new();
            for an in items(&a["anomalies"]) {
                let machine = an["machine_id"].as_str().unwrap_or("").to_string();
                let e = per_machine.entry(machine).or_default();
                e.0 += 1;
                if matches!(an["severity"].as_str(), Some("HIGH" | "CRITICAL")) {
                    e.1 += 1;
                }
                let ts = an["ts"].as_str().unwrap_or("").to_string();
                if ts > e.2 {
                    e.2 = ts;
                }
            }
            let mut machines: Vec<Value> = per_machine
                .into_iter()
                .map(|(m, (n, high, last))| json!({"machine_id": m, "anomalies": n, "high": high, "last": last}))
                .collect();
            machines.sort_by_key(|m| std::cmp::Reverse(m["anomalies"].as_u64()));
            machines.truncate(20);
            Ok(
                json!({"machines": machines, "window_end": a["window_end"], "as_of": a["as_of"], "machine": view.machine}),
            )
        }
        "sensors" => {
            let Some(machine) = &view.machine else {
                return Ok(json!({"machine": null, "series": []}));
            };
            // `machine` passed valid_id (letters, digits, - _ . @ :): no quote can end the literal.
            let sql = format!(
                "SELECT sensor_type, unit, date_bin(INTERVAL '{SENSOR_BUCKET_MINUTES} minutes', ts, TIMESTAMP '2000-01-01') AS t, \
                 avg(value) AS v, min(value) AS lo, max(value) AS hi FROM iot.telemetry \
                 WHERE machine_id = '{machine}' AND ts > (SELECT max(ts) FROM iot.telemetry) - INTERVAL '{SENSOR_WINDOW_HOURS} hours' \
                 GROUP BY sensor_type, unit, t ORDER BY sensor_type, t"
            );
            let buckets = SENSOR_WINDOW_HOURS * 60 / SENSOR_BUCKET_MINUTES + 1;
            let (rows, as_of) = c.sql(p, &sql, buckets * 8).await?;
            Ok(
                json!({"machine": machine, "series": sensor_series(&rows), "as_of": as_of,
                      "window_hours": SENSOR_WINDOW_HOURS, "bucket_minutes": SENSOR_BUCKET_MINUTES}),
            )
        }
        "kpis" => {
            let a = c
                .call(
                    p,
                    "sales_kpis",
                    json!({"days": 28, "group_by": "day", "limit": 100}),
                )
                .await?;
            Ok(kpis(&a))
        }
        "heatmap" => {
            let (rows, as_of) = c
                .sql(
                    p,
                    "SELECT segment, region, count(*) AS customers, round(avg(churn_probability), 3) AS avg_probability, \
                     sum(CASE WHEN risk_level IN ('HIGH', 'CRITICAL') THEN 1 ELSE 0 END) AS at_risk \
                     FROM sales.churn_signals GROUP BY segment, region ORDER BY segment, region",
                    500,
                )
                .await?;
            Ok(heatmap(&rows, as_of))
        }
        "churn" => {
            let a = c
                .call(
                    p,
                    "list_churn_risks",
                    json!({"min_risk": "HIGH", "limit": 20}),
                )
                .await?;
            Ok(json!({"signals": a["signals"], "as_of": a["as_of"]}))
        }
        "leads" => {
            let (rows, as_of) = c
                .sql(
                    p,
                    "SELECT customer_id, name, segment, region, orders_30d, usual_orders_30d, \
                     lead_score, tier, drivers, recommendation FROM sales.lead_scores \
                     WHERE tier IN ('HOT', 'WARM') ORDER BY lead_score DESC, customer_id",
                    20,
                )
                .await?;
            Ok(json!({"leads": rows, "as_of": as_of}))
        }
        "customer_list" => {
            let (rows, as_of) = c
                .sql(
                    p,
                    "SELECT c.customer_id, c.name, c.segment, c.region, c.account_manager, \
                     s.churn_probability, s.risk_level FROM sales.customers c \
                     LEFT JOIN sales.churn_signals s ON s.customer_id = c.customer_id \
                     ORDER BY s.churn_probability DESC NULLS LAST, c.customer_id",
                    1000,
                )
                .await?;
            let q = view.q.as_deref().unwrap_or("").to_lowercase();
            let matching: Vec<Value> = rows
                .into_iter()
                .filter(|r| {
                    q.is_empty()
                        || ["name", "customer_id", "region", "segment"]
                            .iter()
                            .any(|k| {
                                r[*k]
                                    .as_str()
                                    .is_some_and(|v| v.to_lowercase().contains(&q))
                            })
                })
                .collect();
            let total = matching.len();
            Ok(
                json!({"customers": matching.into_iter().take(100).collect::<Vec<_>>(), "total": total, "q": view.q, "as_of": as_of}),
            )
        }
        "profile" => {
            let id = view.customer.as_deref().unwrap_or("");
            let a = c
                .call(p, "lookup_customer_info", json!({"customer_id": id}))
                .await?;
            Ok(a)
        }
        "tickets" => {
            let id = view.customer.as_deref().unwrap_or("");
            let a = c
                .call(p, "search_tickets", json!({"customer_id": id, "limit": 10}))
                .await?;
            Ok(json!({"tickets": a["tickets"], "as_of": a["as_of"]}))
        }
        "proposals" => {
            let id = view.customer.as_deref().unwrap_or("");
            let a = c
                .call(
                    p,
                    "search_knowledge",
                    json!({"query": "sales proposal offer pricing terms", "kinds": ["proposal"], "customer_id": id, "k": 5}),
                )
                .await;
            match a {
                Ok(a) => Ok(
                    json!({"hits": a["hits"], "as_of": a["as_of"], "customer_id": id, "available": true}),
                ),
                Err(CallError::Refused(why)) => {
                    Ok(json!({"available": false, "why": why, "customer_id": id}))
                }
                Err(e) => Err(e),
            }
        }
        "pipeline" => Ok(super::ops::pipeline()),
        "table_versions" => {
            let a = c.call(p, "describe_tables", json!({})).await?;
            let tables: Vec<Value> = items(&a["tables"])
                .iter()
                .filter(|t| t["kind"] != "view")
                .map(|t| json!({"name": t["name"], "kind": t["kind"], "version": t["version"]}))
                .collect();
            Ok(json!({"tables": tables, "as_of": a["as_of"]}))
        }
        "dead_letters" => {
            let (rows, as_of) = c
                .sql(
                    p,
                    "SELECT pipeline, topic, \"partition\", \"offset\", reason, received_at, \
                     encode(substr(payload, 1, 256), 'hex') AS payload_hex, length(payload) AS payload_bytes \
                     FROM ops.dead_letters ORDER BY received_at DESC, topic, \"partition\", \"offset\" LIMIT 10",
                    10,
                )
                .await?;
            let rows: Vec<Value> = rows
                .into_iter()
                .map(|mut r| {
                    r["hexdump"] =
                        super::ops::hexdump(r["payload_hex"].as_str().unwrap_or("")).into();
                    r
                })
                .collect();
            Ok(json!({"dead_letters": rows, "as_of": as_of}))
        }
        other => Err(CallError::Refused(format!("no panel {other:?}"))),
    }
}

/// Open shipments grouped into supplier → warehouse lanes, the lanes with delays first.
fn lanes(shipments: &[Value]) -> Vec<Value> {
    let mut lanes: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for s in shipments {
        let key = (
            s["supplier_id"].as_str().unwrap_or("").to_string(),
            s["warehouse_id"].as_str().unwrap_or("").to_string(),
        );
        lanes.entry(key).or_default().push(s);
    }
    let mut out: Vec<Value> = lanes
        .into_iter()
        .map(|((supplier, warehouse), list)| {
            let delayed = list.iter().filter(|s| s["status"] == "delayed").count();
            let in_transit = list.iter().filter(|s| s["status"] == "in_transit").count();
            let mut list: Vec<&Value> = list;
            list.sort_by_key(|s| {
                (
                    s["status"] != "delayed",
                    s["eta"].as_str().unwrap_or("").to_string(),
                )
            });
            json!({"supplier_id": supplier, "warehouse_id": warehouse, "delayed": delayed,
                   "in_transit": in_transit, "open": list.len(),
                   "shipments": list.into_iter().take(8).collect::<Vec<_>>()})
        })
        .collect();
    out.sort_by_key(|l| {
        (
            std::cmp::Reverse(l["delayed"].as_u64()),
            std::cmp::Reverse(l["open"].as_u64()),
        )
    });
    out
}

/// Sensor buckets as one chart series per sensor type: `[times (s), averages, lows, highs]`.
fn sensor_series(rows: &[Value]) -> Vec<Value> {
    let mut by_sensor: BTreeMap<(String, String), [Vec<Value>; 4]> = BTreeMap::new();
    for r in rows {
        let key = (
            r["sensor_type"].as_str().unwrap_or("").to_string(),
            r["unit"].as_str().unwrap_or("").to_string(),
        );
        let t = r["t"].as_str().and_then(epoch_seconds);
        let Some(t) = t else { continue };
        let e = by_sensor.entry(key).or_default();
        e[0].push(t.into());
        e[1].push(r["v"].clone());
        e[2].push(r["lo"].clone());
        e[3].push(r["hi"].clone());
    }
    by_sensor
        .into_iter()
        .map(|((sensor, unit), data)| json!({"sensor": sensor, "unit": unit, "data": data}))
        .collect()
}

/// An Arrow JSON timestamp (RFC 3339, or without an offset for UTC) as Unix seconds.
fn epoch_seconds(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| t.timestamp())
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                .map(|t| t.and_utc().timestamp())
        })
        .ok()
}

/// The last 7 days against the 7 before, and the daily revenue trend.
fn kpis(answer: &Value) -> Value {
    let mut days: Vec<&Value> = items(&answer["rows"]).iter().collect();
    days.sort_by_key(|d| d["group"].as_str().unwrap_or("").to_string());
    let sum = |rows: &[&Value], k: &str| {
        rows.iter()
            .map(|r| r[k].as_f64().unwrap_or(0.0))
            .sum::<f64>()
    };
    let n = days.len();
    let current: Vec<&Value> = days[n.saturating_sub(7)..].to_vec();
    let previous: Vec<&Value> = days[n.saturating_sub(14)..n.saturating_sub(7)].to_vec();
    let metric = |name: &str, key: &str| {
        let (now, before) = (sum(&current, key), sum(&previous, key));
        let change = (before > 0.0).then(|| (now - before) / before * 100.0);
        json!({"name": name, "current": now, "previous": before, "change_pct": change})
    };
    let trend_t: Vec<Value> = days
        .iter()
        .filter_map(|d| {
            chrono::NaiveDate::parse_from_str(d["group"].as_str()?, "%Y-%m-%d")
                .ok()
                .map(|t| {
                    t.and_hms_opt(0, 0, 0)
                        .map(|t| t.and_utc().timestamp())
                        .into()
                })
        })
        .collect();
    let trend_v: Vec<Value> = days.iter().map(|d| d["revenue"].clone()).collect();
    json!({
        "metrics": [
            metric("Revenue", "revenue"),
            metric("Transactions", "transactions"),
            metric("Units", "units"),
        ],
        "trend": [{"sensor": "revenue per day", "unit": "", "data": [trend_t, trend_v]}],
        "window_start": answer["window_start"], "window_end": answer["window_end"],
        "as_of": answer["as_of"],
    })
}

/// Churn risk by segment × region, as rows of cells.
fn heatmap(rows: &[Value], as_of: Value) -> Value {
    let mut segments: Vec<String> = rows
        .iter()
        .filter_map(|r| r["segment"].as_str().map(String::from))
        .collect();
    let mut regions: Vec<String> = rows
        .iter()
        .filter_map(|r| r["region"].as_str().map(String::from))
        .collect();
    segments.sort();
    segments.dedup();
    regions.sort();
    regions.dedup();
    let grid: Vec<Value> = segments
        .iter()
        .map(|s| {
            let cells: Vec<Value> = regions
                .iter()
                .map(|r| {
                    rows.iter()
                        .find(|row| row["segment"] == s.as_str() && row["region"] == r.as_str())
                        .map_or(Value::Null, |row| {
                            let p = row["avg_probability"].as_f64().unwrap_or(0.0);
                            // Five heat levels, so the colour says what the number says.
                            json!({"customers": row["customers"], "at_risk": row["at_risk"],
                                   "avg_probability": p, "level": ((p * 5.0).floor() as i64).clamp(0, 4)})
                        })
                })
                .collect();
            json!({"segment": s, "cells": cells})
        })
        .collect();
    json!({"regions": regions, "grid": grid, "as_of": as_of})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_urls_cannot_carry_quotes_or_paths() {
        assert!(valid_id("M-001") && valid_id("C-00042") && valid_id("maria@emea"));
        for bad in ["", "M'001", "a b", "../x", "x;y", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn every_page_is_found_by_its_name_and_has_the_alert_feed_first() {
        for p in NAV.iter().chain([&Page::Customer]) {
            assert_eq!(Page::from_name(p.name()), Some(*p));
            assert_eq!(p.fragments()[0].id, "alerts");
        }
        assert_eq!(Page::from_name("admin"), None);
    }

    #[test]
    fn the_kpi_comparison_is_the_last_seven_days_against_the_seven_before() {
        let rows: Vec<Value> = (1..=14)
            .map(|d| json!({"group": format!("2026-11-{d:02}"), "revenue": d as f64, "transactions": 1, "units": 2}))
            .collect();
        let k = kpis(&json!({"rows": rows}));
        let revenue = &k["metrics"][0];
        assert_eq!(revenue["current"], json!((8..=14).sum::<i32>() as f64));
        assert_eq!(revenue["previous"], json!((1..=7).sum::<i32>() as f64));
        assert_eq!(k["trend"][0]["data"][0].as_array().unwrap().len(), 14);
    }

    #[test]
    fn sensor_buckets_become_one_series_per_sensor() {
        let rows = [
            json!({"sensor_type": "vibration", "unit": "mm/s", "t": "2026-11-01T00:05:00Z", "v": 1.0, "lo": 0.5, "hi": 2.0}),
            json!({"sensor_type": "vibration", "unit": "mm/s", "t": "2026-11-01T00:10:00", "v": 2.0, "lo": 1.0, "hi": 3.0}),
            json!({"sensor_type": "temperature", "unit": "C", "t": "2026-11-01T00:05:00.000Z", "v": 60.0, "lo": 59.0, "hi": 61.0}),
        ];
        let s = sensor_series(&rows);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1]["sensor"], "vibration");
        assert_eq!(s[1]["data"][0], json!([1793491500, 1793491800]));
        assert_eq!(s[1]["data"][3], json!([2.0, 3.0]));
    }

    #[test]
    fn lanes_put_delays_first() {
        let s = |sup: &str, wh: &str, status: &str| json!({"supplier_id": sup, "warehouse_id": wh, "status": status, "eta": "x"});
        let l = lanes(&[
            s("S1", "WH-01", "in_transit"),
            s("S1", "WH-01", "in_transit"),
            s("S2", "WH-02", "delayed"),
        ]);
        assert_eq!(l[0]["supplier_id"], "S2");
        assert_eq!(l[0]["delayed"], 1);
        assert_eq!(l[1]["open"], 2);
    }
}
