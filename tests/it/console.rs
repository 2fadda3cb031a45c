//! The console in a real browser: Debian's Chromium, headless, driven by Playwright
//! (`tests/py/console_browser.py`) against `serve` over a seeded lakehouse with the pipeline
//! running. What the browser saw is compared with the tables:
//! - each persona signs in with its token and sees only its pages (others answer 403) and only
//!   its tenant's rows (warehouses, plants, regions, customers, alerts);
//! - an order double-clicked from a shortage row is one purchase order, listed with its status;
//! - a sales rep's customer 360 matches that customer's rows;
//! - an alert the pipeline commits appears in the open page within 2 s, without a reload;
//! - the chat panel streams the agent's tool calls and answer (a scripted model), and an action
//!   runs only once approved in the page;
//! - no page logs a JavaScript error or fails a request; screenshots of every page at desktop and
//!   phone width land in `target/console-screenshots/`.
//!
//! The HTTP-level guards (cookie flags, CSRF, origins, persona pages) are checked without a
//! browser in [`the_console_refuses_what_a_browser_must_not_do`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use serde_json::{Value, json};

use millstream::agent::scripted::{Script, ScriptedModel};

use crate::support::{self, Env};

const TOKENS: [(&str, &str); 5] = [
    ("maria@emea", "tok-maria"),
    ("jon@amer", "tok-jon"),
    ("alice@emea", "tok-alice"),
    ("bruno@amer", "tok-bruno"),
    ("local-dev", "tok-admin"),
];

/// An environment whose server takes the dev tokens of [`TOKENS`], configured further by
/// `tune`, with every table created and the reference data written.
async fn with_reference(tune: impl FnOnce(&mut millstream::config::Config)) -> Env {
    let mut env = Env::new(1).await;
    env.config.auth.mode = "bearer".into();
    for (principal, token) in TOKENS {
        env.config
            .auth
            .dev_tokens
            .insert(principal.into(), millstream::config::Secret::new(token));
    }
    tune(&mut env.config);
    env.lake.ensure_all().await.unwrap();
    millstream::sim::write_reference(&env.lake, &env.config.simulate, false)
        .await
        .unwrap();
    env
}

/// A lakehouse with reference data, history, live events and one round of derived signals; a
/// CRITICAL shortage at WH-01 (so the manager has a row to order from); the pipeline running
/// (it materializes orders); and the server with the console, tokens as in [`TOKENS`].
async fn seeded(
    name: &str,
) -> (
    Env,
    support::Served,
    tokio_util::sync::CancellationToken,
    millstream::pipeline::derive::Deriver,
    ScriptedModel,
) {
    let mut env = with_reference(|c| {
        c.simulate.seed_telemetry = 3_000;
        c.simulate.seed_shipments = 200;
    })
    .await;
    let opts = env.ingest_history(name, 6000).await;
    let mut deriver = millstream::pipeline::derive::Deriver::new(env.lake.clone(), defs().await);
    deriver.round().await.unwrap();
    let part = support::rows(
        &env.lake,
        "SELECT part_id, supplier_id FROM supply_chain.parts ORDER BY part_id LIMIT 1",
    )
    .await;
    let (part, supplier) = part[0].split_once('|').unwrap();
    let shortage = format!(
        r#"{{"part_id": "{part}", "warehouse_id": "WH-01", "region": "EMEA-North", "supplier_id": "{supplier}", "on_hand": 3, "available": 3, "daily_usage": 40.0, "inbound_open": 0, "inbound_expected": 0.0, "lead_time_days": 9, "days_of_cover": 0.1, "risk_level": "CRITICAL", "suggested_order_qty": 5000, "reasons": "usage 40/day against 3 available; nothing inbound", "as_of": "2026-11-08T00:00:00Z"}}"#
    );
    support::write_json(&env.lake, "supply_chain.shortage_signals", &shortage).await;
    let (stop, _pipeline) = env.spawn_pipeline(&opts);
    let customer = support::rows(
        &env.lake,
        "SELECT customer_id FROM sales.customers WHERE account_manager = 'alice' \
         AND region IN ('EMEA-North', 'EMEA-South') ORDER BY customer_id LIMIT 1",
    )
    .await;
    let model = ScriptedModel::start(chat_script(&customer[0]))
        .await
        .unwrap();
    env.config.agent.llm_base_url = model.base_url.clone();
    env.config.agent.llm_model = "scripted".into();
    let served = env.serve_mcp().await;
    (env, served, stop, deriver, model)
}

/// The model behind the chat panel: a question answered from a governed query, and an action
/// (a ticket for `customer`) that waits for the person's approval.
fn chat_script(customer: &str) -> Script {
    serde_json::from_value(json!({
        "rules": [
            {"when": ["how many customers"], "steps": [
                {"calls": [{"name": "query_sql", "arguments": {"sql": "SELECT count(*) AS n FROM sales.customers"}}]},
                {"answer": "You can see {{query_sql:/rows/0/n}} customers."}
            ]},
            {"when": ["open a ticket"], "steps": [
                {"calls": [{"name": "create_ticket", "arguments": {
                    "customer_id": customer, "subject": "Late delivery", "description": "Two pallets missing",
                    "category": "delivery", "idempotency_key": "console-chat-1"}}]},
                {"answer": "Ticket {{create_ticket:/ticket_id}} is open."}
            ]}
        ]
    }))
    .unwrap()
}

async fn defs() -> millstream::pipeline::definition::Definitions {
    millstream::pipeline::definition::Definitions::built_in()
        .await
        .unwrap()
}

/// The rows of `sql` (one column) as a set.
async fn row_set(lake: &millstream::lakehouse::Lakehouse, sql: &str) -> BTreeSet<String> {
    support::rows(lake, sql).await.into_iter().collect()
}

fn set(values: &Value) -> BTreeSet<String> {
    values
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

fn strings(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The browser run: the script's JSON lines, answering its `ready` with `commit`'s alert id.
fn browse(base: &str, artifacts: &std::path::Path, commit: impl FnOnce() -> String) -> Vec<Value> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/console_browser.py");
    let tokens: BTreeMap<&str, &str> = TOKENS.into_iter().collect();
    let mut child = std::process::Command::new(support::python())
        .arg(&script)
        .args([base, &serde_json::to_string(&tokens).unwrap()])
        .arg(artifacts)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python3 (scripts/test installs Playwright and Chromium)");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = Vec::new();
    let mut commit = Some(commit);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).expect("the script prints JSON lines");
        if v["ready"] == "alert" {
            let id = (commit.take().unwrap())();
            writeln!(stdin, "{}", json!({"alert_id": id})).unwrap();
            stdin.flush().unwrap();
        }
        lines.push(v);
    }
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{} failed (pip install -r tests/requirements.txt; apt-get install chromium); it printed {lines:#?}",
        script.display()
    );
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_persona_sees_its_own_pages_and_rows_and_acts_live_in_a_real_browser() {
    let _w = support::watchdog("console browser", Duration::from_secs(900));
    let (env, served, stop, mut deriver, _model) = seeded("console-browser").await;
    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&artifacts).unwrap();
    let lake = env.lake.clone();
    let handle = tokio::runtime::Handle::current();
    let base = served.base.clone();
    let lines = tokio::task::spawn_blocking(move || {
        browse(&base, &artifacts, move || {
            // A maintenance alert of maria's plant, newer than every other, through the
            // pipeline's alerts derivation (ops.alerts). The same deriver as before, so only
            // the derivations whose inputs changed run (the maintenance alerts are not
            // recomputed from the anomalies over the row written here).
            handle.block_on(async {
                let row = r#"{"alert_id": "MA-LIVE", "machine_id": "M-LIVE1", "plant_id": "PLANT-1", "window_start": "2027-01-01T00:00:00Z", "window_end": "2027-01-01T01:00:00Z", "anomalies": 99, "active_windows": 6, "sensors": "vibration", "severity": "CRITICAL", "first_ts": "2027-01-01T00:01:00Z", "last_ts": "2027-01-01T00:59:00Z"}"#;
                support::write_json(&lake, "iot.maintenance_alerts", row).await;
                deriver.round().await.unwrap();
            });
            "iot.maintenance_alerts:M-LIVE1:CRITICAL:2027-01-01".to_string()
        })
    })
    .await
    .unwrap();
    let done = lines.last().unwrap();
    assert_eq!(done["done"], true, "{lines:#?}");
    assert_eq!(
        done["errors"],
        json!([]),
        "JavaScript errors or failed requests"
    );

    // 1. Pages and rows per persona.
    let alert_rows = support::rows(
        &env.lake,
        "SELECT alert_id, coalesce(warehouse_id, ''), coalesce(plant_id, ''), coalesce(region, ''), coalesce(account_manager, ''), source FROM ops.alerts",
    )
    .await;
    let alerts: Vec<Vec<&str>> = alert_rows.iter().map(|r| r.split('|').collect()).collect();
    let visible_alerts = |warehouses: &[&str],
                          plants: &[&str],
                          regions: &[&str],
                          manager: &str,
                          sales: bool|
     -> BTreeSet<String> {
        alerts
            .iter()
            .filter(|a| {
                let source_ok = if sales {
                    a[5] == "sales.churn_signals"
                } else {
                    a[5] != "sales.churn_signals"
                };
                source_ok
                    && (a[1].is_empty() || warehouses.contains(&a[1]))
                    && (a[2].is_empty() || plants.contains(&a[2]))
                    && (a[3].is_empty() || regions.contains(&a[3]))
                    && (a[4].is_empty() || a[4] == manager)
            })
            .map(|a| a[0].to_string())
            .collect()
    };
    let reports: Vec<&Value> = lines
        .iter()
        .filter(|l| l["principal"].is_string())
        .collect();
    assert_eq!(
        reports.len(),
        TOKENS.len() * 2,
        "every principal at both sizes"
    );
    let supply = strings(&["stock", "shipments", "machines"]);
    let sales = strings(&["sales", "customers"]);
    for r in &reports {
        let who = r["principal"].as_str().unwrap();
        let nav = set(&r["nav"]);
        let pages = &r["pages"];
        for (name, page) in pages.as_object().unwrap() {
            assert_eq!(page["status"], 200, "{who} {name}");
        }
        let (warehouses, plants, regions, manager, expected_nav): (
            &[&str],
            &[&str],
            &[&str],
            &str,
            BTreeSet<String>,
        ) = match who {
            "maria@emea" => (
                &["WH-01", "WH-02"],
                &["PLANT-1"],
                &["EMEA-North", "EMEA-South"],
                "",
                supply.clone(),
            ),
            "jon@amer" => (
                &["WH-03", "WH-04"],
                &["PLANT-2", "PLANT-3"],
                &["AMER-East", "AMER-West"],
                "",
                supply.clone(),
            ),
            "alice@emea" => (
                &["WH-01", "WH-02"],
                &["PLANT-1"],
                &["EMEA-North", "EMEA-South"],
                "alice",
                sales.clone(),
            ),
            "bruno@amer" => (
                &["WH-03", "WH-04"],
                &["PLANT-2", "PLANT-3"],
                &["AMER-East", "AMER-West"],
                "bruno",
                sales.clone(),
            ),
            _ => {
                assert_eq!(
                    nav.len(),
                    6,
                    "the admin sees every page, operations included: {nav:?}"
                );
                continue;
            }
        };
        assert_eq!(nav, expected_nav, "{who}'s pages");
        if r["size"] == "desktop" {
            for (name, status) in r["refused"].as_object().unwrap() {
                assert_eq!(status, 403, "{who} must not get /console/{name}");
            }
            assert_eq!(r["refused"].as_object().unwrap().len(), 6 - nav.len());
        }
        for page in pages.as_object().unwrap().values() {
            let seen_alerts = set(&page["alerts"]);
            let allowed = visible_alerts(warehouses, plants, regions, manager, !manager.is_empty());
            assert!(
                seen_alerts.is_subset(&allowed),
                "{who} saw alerts {:?} not theirs",
                seen_alerts.difference(&allowed).collect::<Vec<_>>()
            );
        }
        let within = |key: &str, page: &str, allowed: &[&str]| {
            let seen = set(&pages[page][key]);
            let allowed = strings(allowed);
            assert!(
                seen.is_subset(&allowed),
                "{who} {page}.{key}: {seen:?} outside {allowed:?}"
            );
            seen
        };
        if manager.is_empty() {
            assert_eq!(
                within("warehouses", "stock", warehouses),
                strings(warehouses),
                "{who} sees its warehouses' stock"
            );
            within("shortage_warehouses", "stock", warehouses);
            let open = row_set(
                &env.lake,
                &format!(
                    "SELECT DISTINCT warehouse_id FROM (SELECT warehouse_id, status, row_number() \
                     OVER (PARTITION BY shipment_id ORDER BY ts DESC, _offset DESC) AS rn FROM supply_chain.shipments) \
                     WHERE rn = 1 AND status IN ('created', 'in_transit', 'delayed') AND warehouse_id IN ('{}')",
                    warehouses.join("', '")
                ),
            )
            .await;
            assert_eq!(
                within("lane_warehouses", "shipments", warehouses),
                open,
                "{who}'s lanes: its warehouses with open shipments"
            );
            within("maintenance_plants", "machines", plants);
        } else {
            within("heatmap_regions", "sales", regions);
            within("churn_regions", "sales", regions);
            // Leads: the caller's HOT and WARM customers, best first, as the table ranks them.
            assert_eq!(pages["sales"]["leads_panel"], 1, "{who} sees the lead list");
            let leads: Vec<String> = support::rows(
                &env.lake,
                &format!(
                    "SELECT customer_id FROM sales.lead_scores WHERE tier IN ('HOT', 'WARM') \
                     AND account_manager = '{manager}' AND region IN ('{}') \
                     ORDER BY lead_score DESC, customer_id LIMIT 20",
                    regions.join("', '")
                ),
            )
            .await;
            assert_eq!(
                pages["sales"]["leads"],
                serde_json::json!(leads),
                "{who}'s leads: its HOT and WARM customers in score order"
            );
            let shown = set(&pages["customers"]["customers"]);
            let in_table = row_set(
                &env.lake,
                &format!(
                    "SELECT customer_id FROM sales.customers WHERE account_manager = '{manager}' AND region IN ('{}')",
                    regions.join("', '")
                ),
            )
            .await;
            assert!(!shown.is_empty(), "{who} has customers");
            assert_eq!(
                shown, in_table,
                "{who}'s customer list is exactly its customers"
            );
        }
    }
    let maria = reports
        .iter()
        .find(|r| r["principal"] == "maria@emea")
        .unwrap();
    assert!(
        maria["pages"]["machines"]["charts"].as_u64().unwrap() > 0,
        "the sensor charts draw"
    );

    // 2. The double-clicked order: one purchase order, listed with its live status.
    let order = &lines.iter().find(|l| l["order"].is_object()).unwrap()["order"];
    let po = order["po_id"].as_str().unwrap();
    assert_eq!(order["rows_with_po"], 1, "{order}");
    assert!(
        ["open", "shipped", "received"].contains(&order["status"].as_str().unwrap()),
        "{order}"
    );
    let stored = support::rows(
        &env.lake,
        &format!(
            "SELECT po_id, part_id, warehouse_id, quantity, on_behalf_of FROM supply_chain.purchase_orders WHERE po_id = '{po}'"
        ),
    )
    .await;
    assert_eq!(
        stored,
        vec![format!(
            "{po}|{}|WH-01|5000|maria@emea",
            order["part_id"].as_str().unwrap()
        )],
        "exactly one order for the double click, on maria's behalf"
    );

    // 3. Customer 360 against the tables.
    let c = &lines.iter().find(|l| l["customer"].is_object()).unwrap()["customer"];
    let id = c["customer_id"].as_str().unwrap();
    let row = support::rows(
        &env.lake,
        &format!("SELECT name, segment, region, account_manager FROM sales.customers WHERE customer_id = '{id}'"),
    )
    .await;
    let fields: Vec<&str> = row[0].split('|').collect();
    assert!(c["heading"].as_str().unwrap().starts_with(fields[0]), "{c}");
    assert_eq!(c["facts"]["Segment"], fields[1]);
    assert_eq!(c["facts"]["Region"], fields[2]);
    assert_eq!(c["facts"]["Account manager"], fields[3]);
    let transactions = row_set(
        &env.lake,
        &format!("SELECT transaction_id FROM sales.transactions WHERE customer_id = '{id}'"),
    )
    .await;
    let shown = set(&c["transactions"]);
    assert!(!shown.is_empty() && shown.is_subset(&transactions), "{c}");
    let tickets = row_set(
        &env.lake,
        &format!("SELECT ticket_id FROM support.tickets WHERE customer_id = '{id}'"),
    )
    .await;
    assert!(set(&c["tickets"]).is_subset(&tickets), "{c}");
    assert_eq!(c["draft"], 1, "a proposal draft is built");

    // 4. The live alert.
    let alert = &lines.iter().find(|l| l["alert"].is_object()).unwrap()["alert"];
    assert_eq!(
        alert["shown"], true,
        "the committed alert appears within 2 s: {alert}"
    );
    assert_eq!(alert["reloaded"], false, "{alert}");
    eprintln!(
        "console: alert shown {} s after its commit; order listed {} s after its receipt",
        alert["seconds"], order["seconds_to_listed"]
    );

    // 5. Chat: the answer comes from the caller's own rows; the tool call is shown; the
    //    action ran only after the approval in the page.
    let chat = &lines.iter().find(|l| l["chat"].is_object()).unwrap()["chat"];
    let shown: Vec<(String, String)> = chat["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l[0].as_str().unwrap().into(), l[1].as_str().unwrap().into()))
        .collect();
    let position = |class: &str, text: &str| {
        shown
            .iter()
            .position(|(c, t)| c == class && t.contains(text))
            .unwrap_or_else(|| panic!("no {class} line with {text:?}: {shown:#?}"))
    };
    let mine = support::rows(
        &env.lake,
        "SELECT count(*) FROM sales.customers WHERE account_manager = 'alice' \
         AND region IN ('EMEA-North', 'EMEA-South')",
    )
    .await;
    let asked = position("user", "How many customers");
    let called = position("tool", "→ query_sql");
    let answered = position("agent", &format!("You can see {} customers.", mine[0]));
    assert!(asked < called && called < answered, "{shown:#?}");
    assert!(
        chat["asked"].as_str().unwrap().contains("create_ticket"),
        "{chat}"
    );
    // Every turn's stream reached its end: the question, the ticket asked for, the approval.
    assert_eq!(chat["turns_done"], "3", "{chat}");
    let ran = position("tool", "← create_ticket");
    let ticket = position("agent", "Ticket TKT-");
    assert!(
        position("user", "open a ticket") < ran && ran < ticket,
        "{shown:#?}"
    );
    stop.cancel();
    drop(served);
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Cookie flags, CSRF, origins and persona pages, over plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_what_a_browser_must_not_do() {
    let _w = support::watchdog("console http", Duration::from_secs(300));
    let env = with_reference(|_| {}).await;
    let served = env.serve_mcp().await;
    let base = &served.base;
    let origin = base.as_str();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sign_in = |token: &'static str, origin: &'static str| {
        let http = http.clone();
        let url = format!("{base}/console/login");
        let origin = if origin.is_empty() {
            base.clone()
        } else {
            origin.to_string()
        };
        async move {
            http.post(url)
                .header("origin", origin)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(&[("token", token)]))
                .send()
                .await
                .unwrap()
        }
    };
    // Unauthenticated pages go to sign-in; other requests are refused.
    let r = http
        .get(format!("{base}/console/stock"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/login");
    let r = http
        .post(format!("{base}/console/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A wrong token signs nobody in; a login from a foreign origin is refused.
    assert_eq!(sign_in("nope", "").await.status(), 401);
    assert_eq!(
        sign_in("tok-maria", "https://evil.example").await.status(),
        403
    );
    let r = sign_in("tok-maria", "").await;
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/console"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    let session = cookie.split(';').next().unwrap().to_string();
    let get = |path: &str| {
        http.get(format!("{base}{path}"))
            .header("cookie", &session)
            .send()
    };
    let page = get("/console/stock").await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let body = page.text().await.unwrap();
    let csrf = body
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    // A sales page is not the manager's, nor its panels or live stream.
    for path in [
        "/console/sales",
        "/console/customers/C-0001",
        "/console/fragment/sales/kpis",
        "/console/live/customers",
    ] {
        assert_eq!(get(path).await.unwrap().status(), 403, "{path}");
    }
    // Actions need the session's CSRF token and this origin.
    let order = [
        ("part_id", "P-00001"),
        ("warehouse_id", "WH-01"),
        ("quantity", "10"),
        ("priority", "standard"),
        ("idempotency_key", "k-1"),
    ];
    let post = |token: Option<&str>, origin: &str| {
        let mut r = http
            .post(format!("{base}/console/orders"))
            .header("cookie", &session)
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&order));
        if let Some(t) = token {
            r = r.header("x-csrf-token", t);
        }
        r.send()
    };
    assert_eq!(post(None, origin).await.unwrap().status(), 403);
    assert_eq!(post(Some("00ff"), origin).await.unwrap().status(), 403);
    assert_eq!(
        post(Some(&csrf), "https://evil.example")
            .await
            .unwrap()
            .status(),
        403
    );
    // With both, the order reaches create_order, whose own checks answer (here: a quantity
    // below the supplier's minimum, or the order itself).
    let r = post(Some(&csrf), origin).await.unwrap();
    assert_eq!(r.status(), 200);
    let receipt = r.text().await.unwrap();
    assert!(
        receipt.contains("class=\"error\"") || receipt.contains("class=\"po\""),
        "{receipt}"
    );
    // The chat panel on a server without a model: refused, naming the setting to make.
    let r = http
        .post(format!("{base}/console/chat"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .header("origin", origin)
        .header("content-type", "application/json")
        .body(json!({"message": "Which parts run out first?"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("agent.llm_base_url"));
    // Malformed parameters are refused, not passed on.
    let r = get("/console/machines?machine=M'1").await.unwrap();
    assert_eq!(r.status(), 400);
    // Signing out ends the session at once.
    let r = http
        .post(format!("{base}/console/logout"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get("/console/stock").await.unwrap().status(), 303);
}
