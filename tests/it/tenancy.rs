//! Isolation enforced in the engine: two tenants (EMEA, AMER) × two personas (supply-chain
//! manager, sales rep). Through `query_sql` — with joins, subqueries, CTEs, UNIONs, views,
//! comments and case tricks — and through every tool, resource and subscription over a real MCP
//! client, no caller reaches another tenant's rows or a table its persona is not granted;
//! masked columns stay masked; actions on another tenant's ids are refused and the ones placed
//! record who placed them; everything but one read-only query is refused.

use std::collections::BTreeSet;
use std::time::Duration;

use millstream::auth::Policies;
use millstream::mcp::Millstream;
use rmcp::handler::server::wrapper::Parameters;
use serde_json::{Value, json};

use crate::support::{self, Env};

async fn sql(
    server: &Millstream,
    sql: &str,
) -> Result<Vec<serde_json::Map<String, Value>>, String> {
    let args: millstream::mcp::tools::analytics::SqlArgs =
        serde_json::from_value(serde_json::json!({ "sql": sql, "limit": 10000 })).unwrap();
    server
        .query_sql(Parameters(args))
        .await
        .map(|a| a.0.rows)
        .map_err(|e| e.message.to_string())
}

/// The distinct values of `column` in `rows`.
fn values(rows: &[serde_json::Map<String, Value>], column: &str) -> BTreeSet<String> {
    rows.iter()
        .filter_map(|r| r.get(column))
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        })
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A lakehouse with both tenants' rows in every table the tools read, and MCP servers over it.
struct Seeded {
    env: Env,
    catalog: millstream::mcp::LiveCatalog,
    _stop: tokio_util::sync::DropGuard,
    policies: std::sync::Arc<Policies>,
    actions: std::sync::Arc<millstream::actions::ActionProducer>,
}

impl Seeded {
    /// Hands `customer` to carol in `sales.customers` (only that table moves) and waits until
    /// the catalog serves the new version.
    async fn hand_to_carol(&self, customer: &str) {
        let before = self.catalog.version("sales.customers").unwrap();
        let table = self.env.lake.open("sales.customers").await.unwrap();
        table
            .update()
            .with_predicate(format!("customer_id = '{customer}'"))
            .with_update("account_manager", "'carol'")
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.catalog.version("sales.customers") == Some(before) {
            assert!(
                std::time::Instant::now() < deadline,
                "the catalog never served the update"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// History (sales for churn and KPIs, shipments, telemetry), then live events, then one
    /// round of the signal pipelines, then alerts of every kind for both tenants (the
    /// simulated data may raise none of some kinds).
    async fn new(name: &str) -> Seeded {
        let mut env = Env::new(1).await;
        env.config.simulate.seed_telemetry = 2_000;
        env.config.simulate.seed_shipments = 100;
        env.lake.ensure_all().await.unwrap();
        millstream::sim::write_reference(&env.lake, &env.config.simulate, false)
            .await
            .unwrap();
        env.ingest_history(name, 8000).await;
        let defs = millstream::pipeline::definition::Definitions::built_in()
            .await
            .unwrap();
        millstream::pipeline::derive::Deriver::new(env.lake.clone(), defs.clone())
            .round()
            .await
            .unwrap();
        let alerts = [
            ("supply_chain.shortage_signals", "P-1@WH-01", r#""warehouse_id": "WH-01", "region": "EMEA-North""#),
            ("supply_chain.shortage_signals", "P-1@WH-03", r#""warehouse_id": "WH-03", "region": "AMER-East""#),
            ("iot.maintenance_alerts", "M-001", r#""plant_id": "PLANT-1""#),
            ("iot.maintenance_alerts", "M-009", r#""plant_id": "PLANT-2""#),
        ]
        .map(|(source, key, tenant)| {
            format!(
                r#"{{"alert_id": "{source}:{key}", "source": "{source}", "signal_key": "{key}", "severity": "CRITICAL", "title": "t", "detail": "d", "signal_ts": "2026-11-08T00:00:00Z", "alert_date": "2026-11-08", {tenant}}}"#
            )
        })
        .join("\n");
        support::write_json(&env.lake, "ops.alerts", &alerts).await;
        // Maintenance alerts of both tenants (the seeded faults may not persist long enough
        // to raise one).
        let maintenance = ["PLANT-1", "PLANT-2"]
            .map(|plant| {
                format!(
                    r#"{{"alert_id": "MA-{plant}", "machine_id": "M-{plant}", "plant_id": "{plant}", "window_start": "2026-11-08T00:00:00Z", "window_end": "2026-11-08T01:00:00Z", "anomalies": 9, "active_windows": 4, "sensors": "vibration", "severity": "HIGH", "first_ts": "2026-11-08T00:01:00Z", "last_ts": "2026-11-08T00:59:00Z"}}"#
                )
            })
            .join("\n");
        support::write_json(&env.lake, "iot.maintenance_alerts", &maintenance).await;
        let (catalog, stop) = env.live_catalog(50, 100_000).await;
        let actions = std::sync::Arc::new(
            millstream::actions::ActionProducer::new(&env.config.kafka, &env.brokers()).unwrap(),
        );
        Seeded {
            env,
            catalog,
            _stop: stop,
            policies: std::sync::Arc::new(Policies::load("").unwrap()),
            actions,
        }
    }

    /// The MCP server as `who` (a principal of the built-in policies).
    fn server(&self, who: &str) -> Millstream {
        Millstream::new(
            self.catalog.clone(),
            Some(self.actions.clone()),
            Duration::from_secs(30),
            self.policies.clone(),
            who,
        )
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tool_or_sql_reaches_another_tenants_rows() {
    let _w = support::watchdog("tenancy", Duration::from_secs(300));
    let seeded = Seeded::new("tenancy").await;
    let env = &seeded.env;
    let server = |who: &str| seeded.server(who);
    let admin = server("local-dev");
    let all_warehouses = values(
        &sql(
            &admin,
            "SELECT DISTINCT warehouse_id FROM supply_chain.inventory",
        )
        .await
        .unwrap(),
        "warehouse_id",
    );
    assert!(all_warehouses.len() >= 4, "{all_warehouses:?}");

    // Supply-chain managers: only their warehouses and plants, however the SQL is written.
    for (who, warehouses, plants) in [
        ("maria@emea", set(&["WH-01", "WH-02"]), set(&["PLANT-1"])),
        (
            "jon@amer",
            set(&["WH-03", "WH-04"]),
            set(&["PLANT-2", "PLANT-3"]),
        ),
    ] {
        let s = server(who);
        for q in [
            "SELECT warehouse_id FROM supply_chain.inventory",
            "SeLeCt /* all of them */ WAREHOUSE_ID FROM Supply_Chain.Inventory -- really",
            "SELECT \"warehouse_id\" FROM \"supply_chain\".\"inventory\"",
            "SELECT i.warehouse_id FROM supply_chain.inventory i JOIN supply_chain.parts p ON p.part_id = i.part_id",
            "SELECT warehouse_id FROM supply_chain.inventory WHERE warehouse_id IN (SELECT warehouse_id FROM supply_chain.shipments) OR 1 = 1",
            "WITH x AS (SELECT * FROM supply_chain.inventory_movements) SELECT warehouse_id FROM x",
            "SELECT warehouse_id FROM supply_chain.inventory UNION ALL SELECT warehouse_id FROM supply_chain.shipments UNION ALL SELECT warehouse_id FROM supply_chain.inventory_movements",
            "SELECT warehouse_id FROM views.get_inventory_status",
            "SELECT warehouse_id FROM supply_chain.inventory WHERE warehouse_id = 'WH-05' OR warehouse_id <> 'x'",
        ] {
            let rows = sql(&s, q)
                .await
                .unwrap_or_else(|e| panic!("{who}: {q}: {e}"));
            let seen = values(&rows, "warehouse_id");
            assert!(!seen.is_empty(), "{who} sees none of their own rows: {q}");
            assert!(seen.is_subset(&warehouses), "{who}: {q} reached {seen:?}");
        }
        let plants_seen = values(
            &sql(&s, "SELECT DISTINCT plant_id FROM iot.telemetry UNION SELECT plant_id FROM iot.sensor_state").await.unwrap(),
            "plant_id",
        );
        assert!(
            !plants_seen.is_empty() && plants_seen.is_subset(&plants),
            "{who}: {plants_seen:?}"
        );
        // Not granted: the sales side does not exist for them.
        for q in [
            "SELECT * FROM sales.customers",
            "SELECT count(*) FROM support.tickets",
            "SELECT * FROM views.lookup_customer_info",
        ] {
            let e = sql(&s, q).await.unwrap_err();
            assert!(
                e.contains("not found") || e.contains("query failed"),
                "{who}: {q}: {e}"
            );
        }
    }

    // Sales reps: their region and their own accounts; e-mail masked; tickets of their
    // customers only.
    for (who, regions, rep) in [
        ("alice@emea", set(&["EMEA-North", "EMEA-South"]), "alice"),
        ("bruno@amer", set(&["AMER-East", "AMER-West"]), "bruno"),
    ] {
        let s = server(who);
        let customers = sql(
            &s,
            "SELECT customer_id, region, account_manager, email FROM sales.customers",
        )
        .await
        .unwrap();
        assert!(!customers.is_empty(), "{who} sees no customers");
        assert!(values(&customers, "region").is_subset(&regions));
        assert_eq!(values(&customers, "account_manager"), set(&[rep]));
        assert_eq!(
            values(&customers, "email"),
            set(&[millstream::auth::enforce::REDACTED])
        );
        let mine = values(&customers, "customer_id");
        for q in [
            "SELECT customer_id FROM sales.transactions",
            "SELECT customer_id FROM sales.churn_signals",
            "SELECT customer_id FROM support.tickets",
            "SELECT t.customer_id FROM sales.transactions t LEFT JOIN sales.customers c USING (customer_id)",
            "SELECT customer_id FROM views.lookup_customer_info",
        ] {
            let rows = sql(&s, q)
                .await
                .unwrap_or_else(|e| panic!("{who}: {q}: {e}"));
            let seen = values(&rows, "customer_id");
            assert!(!seen.is_empty(), "{who} sees none of their own rows: {q}");
            assert!(
                values(
                    &sql(
                        &s,
                        &format!(
                            "SELECT region FROM ({q}) x JOIN sales.customers c USING (customer_id)"
                        )
                    )
                    .await
                    .unwrap(),
                    "region"
                )
                .is_subset(&regions),
                "{who}: {q}"
            );
            if q.contains("transactions") {
                // Transactions are filtered by region; the rep's own accounts are a subset.
                continue;
            }
            assert!(
                seen.is_subset(&mine),
                "{who}: {q} reached {:?}",
                seen.difference(&mine)
            );
        }
        let e = sql(&s, "SELECT * FROM supply_chain.inventory")
            .await
            .unwrap_err();
        assert!(
            e.contains("not found") || e.contains("query failed"),
            "{who}: {e}"
        );
    }

    // Anything but one read-only query is refused, for everyone (the administrator too).
    for who in ["local-dev", "maria@emea", "alice@emea"] {
        let s = server(who);
        for q in [
            "SELECT 1; SELECT 2",
            "SHOW TABLES",
            "EXPLAIN SELECT * FROM supply_chain.inventory",
            "SELECT * FROM information_schema.tables",
            "CREATE TABLE x AS SELECT 1",
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "INSERT INTO supply_chain.parts VALUES (1)",
            "DELETE FROM supply_chain.parts",
            "COPY (SELECT 1) TO '/tmp/x.csv'",
            "SET datafusion.execution.batch_size = 1",
            "SELECT * FROM '/etc/passwd'",
            "SELECT * FROM read_parquet('/etc/passwd')",
            "SELECT * FROM read_csv('/etc/passwd')",
            "DROP TABLE supply_chain.parts",
            "SELECT * FROM generate_series(1, 3)",
            "SELECT * FROM supply_chain.parts JOIN range(3) r ON true",
        ] {
            assert!(sql(&s, q).await.is_err(), "{who}: {q} was accepted");
        }
    }

    tools_keep_to_the_callers_tenant(env, &server, &admin).await;
}

/// What a sales rep's or manager's MCP client sees and may do, through every tool.
async fn tools_keep_to_the_callers_tenant(
    env: &Env,
    server: &dyn Fn(&str) -> Millstream,
    admin: &Millstream,
) {
    let first = |q: &'static str| async move {
        let rows = sql(admin, q).await.unwrap();
        let v = rows.first().unwrap_or_else(|| panic!("no rows: {q}"));
        v.values().next().unwrap().as_str().unwrap().to_string()
    };
    // The other tenant's ids, which each caller must not reach.
    let amer_customer =
        first("SELECT customer_id FROM sales.customers WHERE account_manager = 'bruno' AND region LIKE 'AMER%' LIMIT 1")
            .await;
    let emea_customer =
        first("SELECT customer_id FROM sales.customers WHERE account_manager = 'alice' AND region LIKE 'EMEA%' LIMIT 1")
            .await;
    let amer_ticket = first("SELECT t.ticket_id FROM support.tickets t JOIN sales.customers c USING (customer_id) WHERE c.account_manager = 'bruno' AND c.region LIKE 'AMER%' LIMIT 1").await;
    let emea_ticket = first("SELECT t.ticket_id FROM support.tickets t JOIN sales.customers c USING (customer_id) WHERE c.account_manager = 'alice' AND c.region LIKE 'EMEA%' LIMIT 1").await;
    let part = first("SELECT part_id FROM supply_chain.shortage_signals GROUP BY part_id HAVING count(DISTINCT warehouse_id) >= 4 LIMIT 1").await;
    let emea_machine =
        first("SELECT machine_id FROM iot.telemetry WHERE plant_id = 'PLANT-1' LIMIT 1").await;
    let amer_machine =
        first("SELECT machine_id FROM iot.telemetry WHERE plant_id = 'PLANT-2' LIMIT 1").await;

    let mut orders = Vec::new();
    for (who, warehouses, plants, foreign_warehouse, foreign_plant, own_machine, foreign_machine) in [
        (
            "maria@emea",
            set(&["WH-01", "WH-02"]),
            set(&["PLANT-1"]),
            "WH-03",
            "PLANT-2",
            &emea_machine,
            &amer_machine,
        ),
        (
            "jon@amer",
            set(&["WH-03", "WH-04"]),
            set(&["PLANT-2", "PLANT-3"]),
            "WH-01",
            "PLANT-1",
            &amer_machine,
            &emea_machine,
        ),
    ] {
        let (c, _) = connect(server(who)).await;
        let own = |answer: &Value, list: &str, column: &str, allowed: &BTreeSet<String>| {
            let seen = field_values(answer, list, column);
            assert!(!seen.is_empty(), "{who}: {list} is empty");
            assert!(seen.is_subset(allowed), "{who}: {list} reached {seen:?}");
        };
        for (tool, args, list, column, allowed) in [
            (
                "get_inventory_status",
                json!({ "limit": 1000 }),
                "positions",
                "warehouse_id",
                &warehouses,
            ),
            (
                "list_shortage_risks",
                json!({ "min_risk": "LOW", "limit": 1000 }),
                "signals",
                "warehouse_id",
                &warehouses,
            ),
            (
                "predict_shortage",
                json!({ "part_id": part }),
                "signals",
                "warehouse_id",
                &warehouses,
            ),
            (
                "track_shipments",
                json!({ "limit": 1000 }),
                "shipments",
                "warehouse_id",
                &warehouses,
            ),
            (
                "list_anomalies",
                json!({ "hours": 720, "min_severity": "LOW", "limit": 1000 }),
                "anomalies",
                "plant_id",
                &plants,
            ),
            (
                "sensor_stats",
                json!({ "minutes": 10080, "limit": 1000 }),
                "sensors",
                "plant_id",
                &plants,
            ),
            (
                "query_sensor_data",
                json!({ "machine_id": own_machine, "minutes": 10080, "limit": 1000 }),
                "readings",
                "plant_id",
                &plants,
            ),
        ] {
            let answer = call(&c, tool, args.clone())
                .await
                .unwrap_or_else(|e| panic!("{who}: {tool} {args}: {e}"));
            own(&answer, list, column, allowed);
        }
        // Asking for the other tenant by name finds nothing, or is told it does not exist.
        for (tool, args, list) in [
            (
                "get_inventory_status",
                json!({ "warehouse_id": foreign_warehouse }),
                "positions",
            ),
            (
                "list_shortage_risks",
                json!({ "min_risk": "LOW", "warehouse_id": foreign_warehouse }),
                "signals",
            ),
            (
                "track_shipments",
                json!({ "warehouse_id": foreign_warehouse }),
                "shipments",
            ),
            (
                "list_anomalies",
                json!({ "hours": 720, "plant_id": foreign_plant }),
                "anomalies",
            ),
            (
                "sensor_stats",
                json!({ "minutes": 10080, "plant_id": foreign_plant }),
                "sensors",
            ),
            (
                "query_sensor_data",
                json!({ "machine_id": foreign_machine, "minutes": 10080 }),
                "readings",
            ),
            (
                "maintenance_alerts",
                json!({ "plant_id": foreign_plant }),
                "alerts",
            ),
            (
                "predict_shortage",
                json!({ "part_id": part, "warehouse_id": foreign_warehouse }),
                "signals",
            ),
        ] {
            match call(&c, tool, args.clone()).await {
                Ok(answer) => assert!(
                    field_values(&answer, list, "warehouse_id").is_empty()
                        && field_values(&answer, list, "plant_id").is_empty(),
                    "{who}: {tool} {args} answered {answer}"
                ),
                Err(e) => assert!(e.contains("unknown"), "{who}: {tool} {args}: {e}"),
            }
        }
        let order = |warehouse: &str, key: &str| {
            json!({ "part_id": part, "warehouse_id": warehouse, "quantity": 5000,
                    "idempotency_key": format!("{who}-{key}") })
        };
        let e = call(&c, "create_order", order(foreign_warehouse, "theirs"))
            .await
            .unwrap_err();
        assert!(e.contains("unknown warehouse_id"), "{who}: {e}");
        let mine = warehouses.first().unwrap().clone();
        let receipt = call(&c, "create_order", order(&mine, "mine"))
            .await
            .unwrap();
        assert_eq!(receipt["on_behalf_of"], json!(who), "{receipt}");
        orders.push((who, receipt["po_id"].as_str().unwrap().to_string()));
        // Not this persona's: listed nowhere, refused by name, resources included.
        let tools = tool_names(&c).await;
        assert!(!tools.contains("lookup_customer_info") && tools.contains("create_order"));
        let e = call(
            &c,
            "lookup_customer_info",
            json!({ "customer_id": emea_customer }),
        )
        .await
        .unwrap_err();
        assert!(e.contains("not available to persona"), "{who}: {e}");
        assert_eq!(
            resource_uris(&c).await,
            set(&[
                "millstream://alerts/active",
                "millstream://signals/maintenance",
                "millstream://signals/shortages"
            ])
        );
        let shortages = read_resource(&c, "millstream://signals/shortages")
            .await
            .unwrap();
        let seen = field_values(&shortages, "items", "warehouse_id");
        assert!(seen.is_subset(&warehouses), "{who}: {seen:?}");
        // Alerts: the caller's warehouses' and plants' only, no customer's.
        let alerts = read_resource(&c, "millstream://alerts/active")
            .await
            .unwrap();
        let seen = field_values(&alerts, "items", "warehouse_id");
        assert!(
            !seen.is_empty() && seen.is_subset(&warehouses),
            "{who}: {seen:?}"
        );
        assert!(field_values(&alerts, "items", "plant_id").is_subset(&plants));
        assert!(field_values(&alerts, "items", "customer_id").is_empty());
        for uri in ["millstream://signals/churn"] {
            let e = read_resource(&c, uri).await.unwrap_err();
            assert!(e.contains("not available to persona"), "{who}: {uri}: {e}");
            let e = subscribe(&c, uri).await.unwrap_err();
            assert!(e.contains("not available to persona"), "{who}: {uri}: {e}");
        }
        let _ = c.cancel().await;
    }

    for (who, regions, rep, foreign_customer, foreign_ticket, own_customer) in [
        (
            "alice@emea",
            set(&["EMEA-North", "EMEA-South"]),
            "alice",
            &amer_customer,
            &amer_ticket,
            &emea_customer,
        ),
        (
            "bruno@amer",
            set(&["AMER-East", "AMER-West"]),
            "bruno",
            &emea_customer,
            &emea_ticket,
            &amer_customer,
        ),
    ] {
        let (c, _) = connect(server(who)).await;
        let churn = call(
            &c,
            "list_churn_risks",
            json!({ "min_risk": "LOW", "limit": 1000 }),
        )
        .await
        .unwrap();
        assert_eq!(
            field_values(&churn, "signals", "account_manager"),
            set(&[rep]),
            "{who}"
        );
        assert!(field_values(&churn, "signals", "region").is_subset(&regions));
        let kpis = call(
            &c,
            "sales_kpis",
            json!({ "days": 365, "group_by": "region" }),
        )
        .await
        .unwrap();
        let groups = field_values(&kpis, "rows", "group");
        assert!(
            !groups.is_empty() && groups.is_subset(&regions),
            "{who}: {groups:?}"
        );
        let info = call(
            &c,
            "lookup_customer_info",
            json!({ "customer_id": own_customer }),
        )
        .await
        .unwrap();
        assert_eq!(info["customer"]["account_manager"], json!(rep));
        assert_eq!(
            info["customer"]["email"],
            json!(millstream::auth::enforce::REDACTED)
        );
        let tickets = call(&c, "search_tickets", json!({ "limit": 1000 }))
            .await
            .unwrap();
        let mine: BTreeSet<String> = field_values(
            &call(
                &c,
                "query_sql",
                json!({ "sql": "SELECT customer_id FROM sales.customers", "limit": 10000 }),
            )
            .await
            .unwrap(),
            "rows",
            "customer_id",
        );
        let seen = field_values(&tickets, "tickets", "customer_id");
        assert!(!seen.is_empty() && seen.is_subset(&mine), "{who}: {seen:?}");
        // The other tenant's customer and ticket do not exist for this caller, to read or act on.
        for (tool, args, field) in [
            (
                "lookup_customer_info",
                json!({ "customer_id": foreign_customer }),
                "customer_id",
            ),
            (
                "predict_churn",
                json!({ "customer_id": foreign_customer }),
                "customer_id",
            ),
            (
                "get_ticket_status",
                json!({ "ticket_id": foreign_ticket }),
                "ticket_id",
            ),
            (
                "create_ticket",
                json!({ "customer_id": foreign_customer, "subject": "x",
                "description": "y", "category": "billing", "idempotency_key": format!("{who}-t") }),
                "customer_id",
            ),
            (
                "update_ticket_resolution",
                json!({ "ticket_id": foreign_ticket, "status": "resolved",
                "resolution": "z", "idempotency_key": format!("{who}-u") }),
                "ticket_id",
            ),
        ] {
            let e = call(&c, tool, args).await.unwrap_err();
            assert!(
                e.contains(&format!("unknown {field}")),
                "{who}: {tool}: {e}"
            );
        }
        let kpis = call(
            &c,
            "sales_kpis",
            json!({ "days": 365, "customer_id": foreign_customer }),
        )
        .await
        .unwrap();
        assert!(
            kpis["rows"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["transactions"] == json!(0)),
            "{who}: {kpis}"
        );
        let e = call(
            &c,
            "create_order",
            json!({ "part_id": part, "warehouse_id": "WH-01",
            "quantity": 5000, "idempotency_key": "k" }),
        )
        .await
        .unwrap_err();
        assert!(e.contains("not available to persona"), "{who}: {e}");
        assert_eq!(
            resource_uris(&c).await,
            set(&["millstream://alerts/active", "millstream://signals/churn"])
        );
        let churn = read_resource(&c, "millstream://signals/churn")
            .await
            .unwrap();
        assert!(field_values(&churn, "items", "account_manager").is_subset(&set(&[rep])));
        // Alerts: churn alerts of the rep's own customers only, nothing of warehouses or plants.
        let alerts = read_resource(&c, "millstream://alerts/active")
            .await
            .unwrap();
        assert!(field_values(&alerts, "items", "account_manager").is_subset(&set(&[rep])));
        let alerted = field_values(&alerts, "items", "customer_id");
        assert!(
            !alerted.is_empty() && alerted.is_subset(&mine),
            "{who}: {alerted:?}"
        );
        assert!(field_values(&alerts, "items", "region").is_subset(&regions));
        assert!(field_values(&alerts, "items", "warehouse_id").is_empty());
        assert!(field_values(&alerts, "items", "plant_id").is_empty());
        let _ = c.cancel().await;
    }

    // The orders materialize, each recording who placed it; each is the placer's alone.
    env.run_until(&env.options("tenancy", "tenancy"), orders.len() as u64)
        .await;
    millstream::pipeline::derive::Deriver::new(
        env.lake.clone(),
        millstream::pipeline::definition::Definitions::built_in()
            .await
            .unwrap(),
    )
    .round()
    .await
    .unwrap();
    let placed = support::rows(
        &env.lake,
        "SELECT on_behalf_of, po_id FROM supply_chain.purchase_orders ORDER BY on_behalf_of",
    )
    .await;
    let mut want: Vec<String> = orders.iter().map(|(w, po)| format!("{w}|{po}")).collect();
    want.sort();
    assert_eq!(placed, want);
    let (maria, jon) = (
        connect(server("maria@emea")).await.0,
        connect(server("jon@amer")).await.0,
    );
    let started = std::time::Instant::now();
    let status = loop {
        match call(&maria, "get_order_status", json!({ "po_id": orders[0].1 })).await {
            Ok(s) => break s,
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                assert!(e.contains("unknown po_id"), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("maria's order is not served: {e}"),
        }
    };
    assert_eq!(status["order"]["on_behalf_of"], json!("maria@emea"));
    let e = call(&jon, "get_order_status", json!({ "po_id": orders[0].1 }))
        .await
        .unwrap_err();
    assert!(e.contains("unknown po_id"), "{e}");

    // Subscriptions: a change to the other tenant's rows notifies no one but that tenant.
    let (maria, maria_updates) = connect(server("maria@emea")).await;
    let (jon, jon_updates) = connect(server("jon@amer")).await;
    for c in [&maria, &jon] {
        subscribe(c, "millstream://signals/shortages")
            .await
            .unwrap();
    }
    let touch = |warehouse: &'static str| async move {
        let table = env
            .lake
            .open("supply_chain.shortage_signals")
            .await
            .unwrap();
        table
            .update()
            .with_predicate(format!("warehouse_id = '{warehouse}'").as_str())
            .with_update("reasons", "'reviewed'")
            .await
            .unwrap();
    };
    touch("WH-03").await;
    jon_updates.wait_for(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(maria_updates.count(), 0, "maria was told of an AMER change");
    touch("WH-01").await;
    maria_updates.wait_for(1).await;
    assert_eq!(jon_updates.count(), 1, "jon was told of an EMEA change");
}

/// Resource update notifications a client received.
#[derive(Clone, Default)]
struct Updates(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Updates {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    async fn wait_for(&self, n: usize) {
        let started = std::time::Instant::now();
        while self.count() < n {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no resource update"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl rmcp::ClientHandler for Updates {
    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        self.0.lock().unwrap().push(params.uri.to_string());
    }
}

type Client = rmcp::service::RunningService<rmcp::RoleClient, Updates>;

/// A real MCP client (JSON-RPC over an in-memory pipe) talking to `server`.
async fn connect(server: Millstream) -> (Client, Updates) {
    let updates = Updates::default();
    let client = millstream::mcp::connect_in_process(&server, updates.clone())
        .await
        .unwrap();
    (client, updates)
}

/// A tool's structured answer, or its error's text.
async fn call(c: &Client, tool: &str, args: Value) -> Result<Value, String> {
    let request = rmcp::model::CallToolRequestParams::new(tool.to_string())
        .with_arguments(args.as_object().cloned().unwrap());
    match c.peer().call_tool(request).await {
        Ok(r) if r.is_error != Some(true) => Ok(r.structured_content.unwrap_or(Value::Null)),
        Ok(r) => Err(format!("{:?}", r.content)),
        Err(e) => Err(e.to_string()),
    }
}

/// `resources/subscribe`, which millstream serves (rmcp marks it legacy in favour of the
/// 2026-07-28 subscriptions model).
#[allow(deprecated)]
async fn subscribe(c: &Client, uri: &str) -> Result<(), String> {
    c.peer()
        .subscribe(rmcp::model::SubscribeRequestParams::new(uri))
        .await
        .map_err(|e| e.to_string())
}

async fn tool_names(c: &Client) -> BTreeSet<String> {
    let tools = c.peer().list_all_tools().await.unwrap();
    tools.into_iter().map(|t| t.name.to_string()).collect()
}

async fn resource_uris(c: &Client) -> BTreeSet<String> {
    let resources = c.peer().list_all_resources().await.unwrap();
    resources.into_iter().map(|r| r.uri.to_string()).collect()
}

async fn read_resource(c: &Client, uri: &str) -> Result<Value, String> {
    let r = c
        .peer()
        .read_resource(rmcp::model::ReadResourceRequestParams::new(uri))
        .await
        .map_err(|e| e.to_string())?;
    match &r.contents[0] {
        rmcp::model::ResourceContents::TextResourceContents { text, .. } => {
            Ok(serde_json::from_str(text).unwrap())
        }
        other => panic!("{uri}: {other:?}"),
    }
}

/// The distinct values of `column` in the rows of `answer[list]`.
fn field_values(answer: &Value, list: &str, column: &str) -> BTreeSet<String> {
    let rows: Vec<serde_json::Map<String, Value>> = answer[list]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r.as_object().cloned()).collect())
        .unwrap_or_default();
    values(&rows, column)
}

/// tests/tenancy/attacks.toml.
#[derive(serde::Deserialize)]
struct Attacks {
    value: Vec<Named>,
    placement: Vec<Named>,
    tables: std::collections::BTreeMap<String, Shape>,
}

#[derive(serde::Deserialize)]
struct Named {
    name: String,
    sql: String,
}

#[derive(serde::Deserialize)]
struct Shape {
    tenant: String,
    c: String,
    k: String,
    s: String,
}

/// The error-channel attack matrix (tests/tenancy/attacks.toml): for every restricted
/// principal and every table and view it reads through a row filter, expressions that fail on
/// any hidden row — in WHERE, JOIN ON, HAVING, CASE, subqueries, windows and ORDER BY — answer
/// exactly as if they were the constant 1, so no hidden row ever reached them; turned around
/// to fail on a visible row, they fail with an error naming no value of the table. Then the
/// smaller channels: internal columns, row counts from file statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_rows_never_reach_a_callers_expression() {
    let _w = support::watchdog("tenancy attacks", Duration::from_secs(900));
    let seeded = Seeded::new("attacks").await;
    let attacks: Attacks = toml::from_str(include_str!("../tenancy/attacks.toml")).unwrap();
    let admin = seeded.server("local-dev");
    let mut attacked = Vec::new();
    let mut empty = Vec::new();
    for who in ["maria@emea", "jon@amer", "alice@emea", "bruno@amer"] {
        let me = seeded.server(who);
        let access = seeded.policies.access(who).unwrap();
        for (table, shape) in &attacks.tables {
            if !access.may_read(table) {
                continue;
            }
            let tenant = &shape.tenant;
            let distinct = format!("SELECT DISTINCT {tenant} AS v FROM {table}");
            let seen = values(&sql(&me, &distinct).await.unwrap(), "v");
            let all = values(&sql(&admin, &distinct).await.unwrap(), "v");
            if all.is_empty() {
                empty.push(table.clone());
                continue;
            }
            if seen == all {
                // Nothing hidden from this caller here (e.g. reference data).
                continue;
            }
            let list = seen
                .iter()
                .map(|v| format!("'{v}'"))
                .collect::<Vec<_>>()
                .join(", ");
            let hidden = if seen.is_empty() {
                "TRUE".to_string()
            } else {
                format!("({tenant} IS NULL OR {tenant} NOT IN ({list}))")
            };
            // `hidden` is exactly the rows the caller does not see: what the administrator
            // sees outside it is what the caller sees.
            let count = |rows: Vec<serde_json::Map<String, Value>>| rows[0]["n"].clone();
            assert_eq!(
                count(
                    sql(
                        &admin,
                        &format!("SELECT count(*) AS n FROM {table} WHERE NOT {hidden}")
                    )
                    .await
                    .unwrap()
                ),
                count(
                    sql(&me, &format!("SELECT count(*) AS n FROM {table}"))
                        .await
                        .unwrap()
                ),
                "{who}: {table}: the test's idea of hidden rows is off"
            );
            let samples = values(
                &sql(
                    &admin,
                    &format!("SELECT DISTINCT {} AS v FROM {table} LIMIT 300", shape.s),
                )
                .await
                .unwrap_or_else(|e| panic!("{table}: {e}")),
                "v",
            );
            for placement in &attacks.placement {
                let fill = |q: &str, v: &str| {
                    q.replace("{v}", v)
                        .replace("{t}", table)
                        .replace("{c}", &shape.c)
                        .replace("{k}", &shape.k)
                        .replace("{s}", &shape.s)
                };
                let want = sql(&me, &fill(&placement.sql, "1"))
                    .await
                    .unwrap_or_else(|e| panic!("{who}: {table}: {}: {e}", placement.name));
                for value in &attacks.value {
                    let v = value.sql.replace("{h}", &hidden);
                    let q = fill(&placement.sql, &v);
                    let got = sql(&me, &q).await;
                    assert_eq!(
                        got.as_ref(),
                        Ok(&want),
                        "{who}: {table}: {} in {}: a hidden row reached the caller's expression\n{q}",
                        value.name,
                        placement.name
                    );
                }
            }
            // Turned around, failing on visible rows: an error, and one that names no value.
            for value in &attacks.value {
                let v = value.sql.replace("{h}", &format!("NOT {hidden}"));
                let q = attacks.placement[0]
                    .sql
                    .replace("{v}", &v)
                    .replace("{t}", table)
                    .replace("{c}", &shape.c)
                    .replace("{s}", &shape.s);
                let e = sql(&me, &q).await.expect_err(&format!(
                    "{who}: {table}: {} did not fail on visible rows: {q}",
                    value.name
                ));
                for leaked in all.iter().chain(&samples) {
                    assert!(
                        leaked.len() < 3 || !e.contains(leaked.as_str()),
                        "{who}: {table}: {}: the error names {leaked:?}: {e}",
                        value.name
                    );
                }
            }
            attacked.push(format!("{who} {table}"));
        }
    }
    // Every filtered table of each persona was attacked, unless it holds no rows at all.
    assert!(
        attacked.len() >= 20,
        "attacked only {attacked:?} (empty: {empty:?})"
    );
    assert!(
        empty.iter().all(|t| t == "supply_chain.purchase_orders"),
        "tables without rows: {empty:?}"
    );

    // Internal columns: a caller whose rows are filtered cannot count other tenants' rows from
    // offset gaps, so the columns are not there for it; views still use them, and an
    // administrator still sees them.
    let maria = seeded.server("maria@emea");
    for q in [
        "SELECT _offset FROM supply_chain.shipments",
        "SELECT max(_partition) FROM iot.telemetry",
        "SELECT _ingested_at FROM supply_chain.inventory_movements",
    ] {
        let e = sql(&maria, q).await.unwrap_err();
        assert!(e.contains("_"), "{q}: {e}");
    }
    let row = &sql(&maria, "SELECT * FROM supply_chain.shipments LIMIT 1")
        .await
        .unwrap()[0];
    assert!(
        row.keys().all(|k| !k.starts_with('_')) && row.contains_key("shipment_id"),
        "{row:?}"
    );
    assert!(
        !sql(&maria, "SELECT * FROM views.track_shipments")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        sql(
            &admin,
            "SELECT max(_offset) AS o FROM supply_chain.shipments"
        )
        .await
        .unwrap()[0]
            .contains_key("o")
    );
    let described = maria
        .describe_tables(rmcp::handler::server::wrapper::Parameters(
            serde_json::from_value(json!({ "table": "supply_chain.shipments" })).unwrap(),
        ))
        .await
        .unwrap()
        .0;
    let columns: Vec<&str> = described.tables[0]
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        columns.iter().all(|c| !c.starts_with('_')) && columns.contains(&"shipment_id"),
        "{columns:?}"
    );
    // count(*) counts the caller's rows, never the table's from its file statistics.
    let mine = sql(
        &admin,
        "SELECT count(*) AS n FROM supply_chain.shipments WHERE warehouse_id IN ('WH-01', 'WH-02')",
    )
    .await
    .unwrap();
    let theirs = sql(&maria, "SELECT count(*) AS n FROM supply_chain.shipments")
        .await
        .unwrap();
    assert_eq!(mine, theirs);
}

/// A tool query's plan is kept per caller with its parameters unbound: every id asked through
/// it gets that id's own row, another tenant's id stays unknown, and the plan is not used once
/// a table it depends on moves. A customer handed from alice to carol is unknown to alice at
/// once, though alice's lookup plan was kept while she owned it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_plan_answers_each_id_for_itself_and_never_outlives_a_change() {
    let _w = support::watchdog("plans", Duration::from_secs(300));
    let seeded = Seeded::new("plans").await;
    let (alice, _) = connect(seeded.server("alice@emea")).await;
    let (bruno, _) = connect(seeded.server("bruno@amer")).await;
    let all = json!({ "min_risk": "LOW", "limit": 1000 });
    let listed = call(&alice, "list_churn_risks", all.clone()).await.unwrap();
    let rows: Vec<Value> = listed["signals"].as_array().unwrap().clone();
    assert!(rows.len() >= 3, "{listed}");
    let theirs = field_values(
        &call(&bruno, "list_churn_risks", all).await.unwrap(),
        "signals",
        "customer_id",
    );
    let foreign = theirs.iter().next().expect("bruno has customers").clone();

    let (hits, _) = seeded.catalog.plans().hits_and_misses();
    for row in &rows {
        let id = row["customer_id"].as_str().unwrap();
        let one = call(&alice, "predict_churn", json!({ "customer_id": id }))
            .await
            .unwrap();
        let signals = one["signals"].as_array().unwrap();
        assert_eq!(signals.len(), 1, "{one}");
        for field in [
            "customer_id",
            "churn_probability",
            "risk_level",
            "recency_days",
        ] {
            assert_eq!(signals[0][field], row[field], "{id}: {field}");
        }
    }
    assert!(
        seeded.catalog.plans().hits_and_misses().0 >= hits + rows.len() as u64,
        "each new id is answered from the kept plans"
    );
    // Bound into alice's kept plan, bruno's customer is still not hers.
    let refused = call(&alice, "predict_churn", json!({ "customer_id": foreign }))
        .await
        .unwrap_err();
    assert!(refused.contains("unknown customer_id"), "{refused}");

    // Hand one of alice's customers to carol: only sales.customers moves.
    let moved = rows[0]["customer_id"].as_str().unwrap().to_string();
    seeded.hand_to_carol(&moved).await;
    let gone = call(&alice, "predict_churn", json!({ "customer_id": moved }))
        .await
        .unwrap_err();
    assert!(gone.contains("unknown customer_id"), "{moved}: {gone}");
    // Her other customers are answered as before, from plans made at the new version.
    let kept = rows[1]["customer_id"].as_str().unwrap();
    let still = call(&alice, "predict_churn", json!({ "customer_id": kept }))
        .await
        .unwrap();
    assert_eq!(still["signals"][0]["customer_id"], kept);
}

/// A tool answer is kept per caller and reused only while every table it depends on is at the
/// same version. The table a row filter looks into counts too: a customer handed from alice to
/// another account manager leaves alice's churn list at once, though the churn table has not
/// moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_answer_never_outlives_a_change_to_what_the_caller_may_see() {
    let _w = support::watchdog("answers", Duration::from_secs(300));
    let seeded = Seeded::new("answers").await;
    let (alice, _) = connect(seeded.server("alice@emea")).await;
    let (bruno, _) = connect(seeded.server("bruno@amer")).await;
    let all = json!({ "min_risk": "LOW", "limit": 1000 });
    let churn_version = |answer: &Value| {
        answer["as_of"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == "sales.churn_signals")
            .map(|t| t["version"].clone())
    };

    let first = call(&alice, "list_churn_risks", all.clone()).await.unwrap();
    let mine = field_values(&first, "signals", "customer_id");
    assert!(!mine.is_empty(), "{first}");
    let (hits, _) = seeded.catalog.answers().hits_and_misses();
    let again = call(&alice, "list_churn_risks", all.clone()).await.unwrap();
    assert_eq!(again["signals"], first["signals"]);
    assert_eq!(churn_version(&again), churn_version(&first));
    assert!(
        seeded.catalog.answers().hits_and_misses().0 > hits,
        "the same call at the same versions is answered from the kept answer"
    );
    // bruno's answer is his own, not alice's kept one.
    let his = call(&bruno, "list_churn_risks", all.clone()).await.unwrap();
    let his_ids = field_values(&his, "signals", "customer_id");
    assert!(his_ids.is_disjoint(&mine), "{his_ids:?} {mine:?}");

    // Hand one of alice's customers to carol: only sales.customers moves.
    let moved = mine.iter().next().unwrap().clone();
    assert!(
        seeded.catalog.answers().held().0 >= 2,
        "alice's and bruno's answers are kept"
    );
    seeded.hand_to_carol(&moved).await;
    // Both answers depend on sales.customers through the row filter: once the server serves
    // its new version, neither can be used again, and neither is still held.
    assert_eq!(
        seeded.catalog.answers().held(),
        (0, 0),
        "answers computed at the old version are dropped when the new one is served"
    );

    let after = call(&alice, "list_churn_risks", all.clone()).await.unwrap();
    assert_eq!(
        churn_version(&after),
        churn_version(&first),
        "the churn table itself did not move"
    );
    let now_mine = field_values(&after, "signals", "customer_id");
    assert!(
        !now_mine.contains(&moved),
        "{moved} is carol's now: {now_mine:?}"
    );
    assert_eq!(now_mine.len() + 1, mine.len());
}
