//! Governed SQL under attack, over HTTP as a real MCP client sends it: a caller's query can
//! neither take the process down (a 10,000-term expression gets a clear error, and the server
//! answers the next call), nor hold it (a cartesian query from one tenant is cancelled at its
//! timeout, its memory returned, while another tenant's signal tools keep answering fast and
//! `/healthz` answers), nor exhaust memory (values and answers over their limits are refused
//! or cut), nor crowd out other callers (a principal's concurrent queries are limited).

use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use serde_json::{Value, json};

use crate::support::{self, Env};

type Client = rmcp::service::RunningService<rmcp::RoleClient, ()>;

async fn client(url: &str, token: &str) -> Client {
    let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            url.to_string(),
        )
        .auth_header(token.to_string()),
    );
    ().serve(transport).await.unwrap()
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

async fn sql(c: &Client, q: &str) -> Result<Value, String> {
    call(c, "query_sql", json!({ "sql": q, "limit": 10000 })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_query_can_neither_crash_hold_nor_exhaust_the_server() {
    let _w = support::watchdog("governed", Duration::from_secs(300));
    let mut env = Env::new(1).await;
    env.config.auth.mode = "bearer".into();
    for (who, token) in [("maria@emea", "tok-maria"), ("jon@amer", "tok-jon")] {
        env.config
            .auth
            .dev_tokens
            .insert(who.into(), millstream::config::Secret::new(token));
    }
    env.config.serve.query_timeout_ms = 3000;
    env.config.serve.query_per_principal = 1;
    env.config.serve.query_wait_ms = 500;
    env.lake.ensure_all().await.unwrap();
    millstream::sim::write_reference(&env.lake, &env.config.simulate, false)
        .await
        .unwrap();
    millstream::pipeline::derive::Deriver::new(
        env.lake.clone(),
        millstream::pipeline::definition::Definitions::built_in()
            .await
            .unwrap(),
    )
    .round()
    .await
    .unwrap();
    let served = env.serve_mcp().await;
    let base = &served.base;
    let url = format!("{base}/mcp");
    let jon = client(&url, "tok-jon").await;
    let maria = client(&url, "tok-maria").await;

    // Deep expressions: a clear error, and the process lives on.
    for (q, want) in [
        (
            format!("SELECT {}", vec!["1"; 10_000].join("+")),
            "more than 100 levels",
        ),
        (
            format!("SELECT 1 WHERE {}", vec!["true"; 5_000].join(" AND ")),
            "more than 100 levels",
        ),
        (
            format!("SELECT {}", vec!["'x'"; 5_000].join(" || ")),
            "more than 100 levels",
        ),
    ] {
        let e = sql(&jon, &q).await.unwrap_err();
        assert!(e.contains(want), "{e}");
    }
    assert_eq!(
        sql(&jon, "SELECT 1 + 1 AS two").await.unwrap()["rows"],
        json!([{ "two": 2 }])
    );

    // Values the caller sizes: refused before anything is allocated.
    let e = sql(&jon, "SELECT repeat('x', 1500000000)")
        .await
        .unwrap_err();
    assert!(e.contains("would build a value"), "{e}");
    let e = sql(
        &jon,
        "SELECT lpad(part_id, 100000000) FROM supply_chain.inventory",
    )
    .await
    .unwrap_err();
    assert!(e.contains("would build a value"), "{e}");
    // Answers are cut at the byte limit (4 MB of JSON), and say so.
    let big = sql(
        &jon,
        "SELECT part_id, repeat('x', 20000) AS pad FROM supply_chain.inventory",
    )
    .await
    .unwrap();
    let rows = big["rows"].as_array().unwrap();
    assert_eq!(big["truncated_by"], json!("bytes"), "{}", rows.len());
    assert!(big["truncated"].as_bool().unwrap());
    let bytes: usize = rows.iter().map(|r| r.to_string().len()).sum();
    assert!(
        !rows.is_empty() && bytes <= 4 * 1024 * 1024,
        "{} rows, {bytes} bytes",
        rows.len()
    );
    // Collecting a cartesian product needs more than the query's memory: refused once it does.
    let e = sql(
        &jon,
        "SELECT array_agg(concat(a.part_id, b.part_id)) AS everything \
         FROM supply_chain.inventory a CROSS JOIN supply_chain.inventory b",
    )
    .await
    .map(|a| a["rows"].as_array().map(Vec::len))
    .unwrap_err();
    assert!(
        e.contains("memory limit") || e.contains("did not finish within"),
        "{e}"
    );
    assert_eq!(millstream::governed::pooled_bytes(), 0);

    // A cartesian count from jon runs into its 3 s timeout. Meanwhile maria's signal tool and
    // /healthz answer at their usual speed, and a second query of jon's waits its 0.5 s for a
    // slot and is refused (one at a time per principal here).
    let heavy = {
        let jon = client(&url, "tok-jon").await;
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = sql(
                &jon,
                "SELECT count(*) AS n FROM supply_chain.inventory a, supply_chain.inventory b, \
                 supply_chain.inventory c",
            )
            .await;
            (outcome, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!heavy.is_finished(), "{:?}", heavy.await);
    let refused = Instant::now();
    let e = sql(&jon, "SELECT 1").await.unwrap_err();
    assert!(e.contains("already runs 1 queries"), "{e}");
    assert!(
        refused.elapsed() >= Duration::from_millis(500),
        "refused without waiting"
    );
    let http = reqwest::Client::new();
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_millis(2400);
    while Instant::now() < until {
        let started = Instant::now();
        call(
            &maria,
            "list_shortage_risks",
            json!({ "min_risk": "LOW", "limit": 20 }),
        )
        .await
        .unwrap();
        latencies.push(started.elapsed());
        let health = http
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
    }
    let (outcome, took) = heavy.await.unwrap();
    let e = outcome.unwrap_err();
    assert!(e.contains("did not finish within 3000 ms"), "{e}");
    assert!(
        took >= Duration::from_millis(2900) && took <= Duration::from_secs(4),
        "cancelled after {took:?}"
    );
    latencies.sort();
    let p95 = latencies[latencies.len() * 95 / 100];
    assert!(
        latencies.len() >= 10 && p95 < Duration::from_millis(100),
        "maria's p95 {p95:?} over {} calls while jon's query ran",
        latencies.len()
    );
    // Its memory is back, its slot free.
    assert_eq!(millstream::governed::pooled_bytes(), 0);
    assert_eq!(
        sql(&jon, "SELECT 2 AS two").await.unwrap()["rows"],
        json!([{ "two": 2 }])
    );
    let _ = jon.cancel().await;
    let _ = maria.cancel().await;
}
