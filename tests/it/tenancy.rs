//! Isolation enforced in the engine: two tenants (EMEA, AMER) × two personas (supply-chain
//! manager, sales rep). Through `query_sql` — with joins, subqueries, CTEs, UNIONs, views,
//! comments and case tricks — no caller reaches another tenant's rows or a table its persona is
//! not granted; masked columns stay masked; everything but one read-only query is refused.

use std::collections::BTreeSet;
use std::time::Duration;

use millstream::auth::Policies;
use millstream::mcp::Millstream;
use rmcp::handler::server::wrapper::Parameters;
use serde_json::Value;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tool_or_sql_reaches_another_tenants_rows() {
    let _w = support::watchdog("tenancy", Duration::from_secs(180));
    let env = Env::new(1).await;
    env.lake.ensure_all().await.unwrap();
    millstream::sim::write_reference(&env.lake, &env.config.simulate, false)
        .await
        .unwrap();
    env.produce(&support::events("tenancy", 4000, 0.0)).await;
    env.run_until(&env.options("tenancy", "tenancy"), 4000)
        .await;
    let (catalog, _stop) = env.live_catalog(50, 100_000).await;
    let policies = std::sync::Arc::new(Policies::load("").unwrap());
    let server = |who: &str| {
        Millstream::new(
            catalog.clone(),
            None,
            Duration::from_secs(30),
            policies.clone(),
            who,
        )
        .unwrap()
    };
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
        ] {
            assert!(sql(&s, q).await.is_err(), "{who}: {q} was accepted");
        }
    }
}
