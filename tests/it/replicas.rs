//! Stateless MCP replicas (protocol 2026-07-28): two `millstream serve` processes over one
//! lakehouse behind a proxy that sends each request wherever it is told, talked to by rmcp's
//! client with the 2026-07-28 lifecycle (`server/discover`, no session). A client that sends the versions it has
//! seen (`_meta["millstream/seen"]`) never gets an older answer from the other replica, and a
//! `subscriptions/listen` stream moves to the other replica without missing a change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, ClientRequest, GetMeta, MetaObject, ProtocolVersion, RequestMetaObject,
    ServerNotification, SubscriptionFilter, SubscriptionsListenRequest,
    SubscriptionsListenRequestParams,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, PeerRequestOptions};
use serde_json::{Value, json};

use crate::support::{self, Env};

const SEEN: &str = millstream::mcp::consistency::SEEN;
const ALERTS: &str = "millstream://alerts/active";

/// `resources/updated` notifications delivered to the client's handler: URI and the versions in
/// their `_meta`.
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<Vec<Update>>>);

/// A notification's URI and the versions in its `_meta`.
type Update = (String, Option<Value>);

impl Heard {
    async fn wait_for(&self, n: usize, what: &str) -> Vec<Update> {
        let started = std::time::Instant::now();
        loop {
            let heard = self.0.lock().unwrap().clone();
            if heard.len() >= n {
                return heard;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{what}: heard {heard:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl rmcp::ClientHandler for Heard {
    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        // rmcp 3.11 moves the notification's extensions into the context before its `_meta`,
        // so the `_meta` arrives inside `context.extensions`, and `context.meta` is empty.
        let seen = context
            .extensions
            .get::<rmcp::model::NotificationMetaObject>()
            .unwrap_or(&context.meta)
            .get(SEEN)
            .cloned();
        self.0.lock().unwrap().push((params.uri.to_string(), seen));
    }
}

type Client = rmcp::service::RunningService<rmcp::RoleClient, Heard>;

/// rmcp's client on the 2026-07-28 lifecycle: no `initialize`, no session, every request
/// self-contained.
async fn connect(url: &str, heard: Heard) -> Client {
    let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(url.to_string());
    heard
        .serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("a 2026-07-28 client connects")
}

fn seen_meta(seen: &BTreeMap<String, i64>) -> RequestMetaObject {
    RequestMetaObject(MetaObject(
        json!({ SEEN: seen }).as_object().cloned().unwrap(),
    ))
}

/// The alerts a replica counts, and the `ops.alerts` version it read, sending `seen` (if any).
async fn count_alerts(c: &Client, seen: &BTreeMap<String, i64>) -> Result<(i64, i64), String> {
    let mut request = CallToolRequestParams::new("query_sql").with_arguments(
        json!({ "sql": "SELECT count(*) AS n FROM ops.alerts" })
            .as_object()
            .cloned()
            .unwrap(),
    );
    if !seen.is_empty() {
        request.meta = Some(seen_meta(seen));
    }
    let answer = match c.peer().call_tool(request).await {
        Ok(r) if r.is_error != Some(true) => r.structured_content.unwrap(),
        Ok(r) => return Err(format!("{:?}", r.content)),
        Err(e) => return Err(e.to_string()),
    };
    let version = answer["as_of"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "ops.alerts")
        .and_then(|t| t["version"].as_i64())
        .expect("as_of names ops.alerts");
    Ok((answer["rows"][0]["n"].as_i64().unwrap(), version))
}

/// A `millstream serve` process over `env`'s lakehouse on a free port, looking for new versions
/// every `refresh_ms`; killed (SIGKILL) when dropped.
struct Replica {
    child: std::process::Child,
    base: String,
}

impl Replica {
    fn start(env: &Env, refresh_ms: u64) -> Replica {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_millstream"))
            .arg("--lakehouse")
            .arg(env.lake.local_root().unwrap())
            .args(["serve", "--addr", "127.0.0.1:0"])
            .env("MILLSTREAM__SERVE__REFRESH_MS", refresh_ms.to_string())
            .env("MILLSTREAM__KNOWLEDGE__ENABLED", "false")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let base = support::serve_url(&mut child)
            .trim_end_matches("/mcp")
            .to_string();
        Replica { child, base }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Commits one more active alert; the new `ops.alerts` version. Not announced in-process: a
/// replica learns of it by polling, or when a client's token asks for it.
async fn add_alert(env: &Env, id: &str) -> i64 {
    let line = format!(
        r#"{{"alert_id": "{id}", "source": "supply_chain.shortage_signals", "signal_key": "{id}", "severity": "CRITICAL", "title": "t", "detail": "d", "signal_ts": "2026-11-08T00:00:00Z", "alert_date": "2026-11-08", "warehouse_id": "WH-01", "region": "EMEA-North"}}"#
    );
    support::write_json(&env.lake, "ops.alerts", &line).await;
    env.lake
        .open("ops.alerts")
        .await
        .unwrap()
        .version()
        .unwrap() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_answer_monotonically_and_a_subscription_moves_between_them() {
    let _w = support::watchdog("replicas", Duration::from_secs(180));
    let env = Env::new(1).await;
    env.lake.ensure_all().await.unwrap();
    add_alert(&env, "AL-0").await;
    // Replica A looks for new versions every 50 ms; replica B only every minute, so in this
    // test it learns of a commit only when a caller's token asks for it.
    let mut a = Replica::start(&env, 50);
    let b = Replica::start(&env, 60_000);
    let (proxy, backend, forwarded) = support::switching_proxy(&a.base).await;
    let to = |server: &Replica| *backend.lock().unwrap() = server.base.clone();
    let url = format!("{proxy}/mcp");
    let client = connect(&url, Heard::default()).await;

    // A serves a new commit within its poll.
    let mut version = add_alert(&env, "AL-1").await;
    let mut seen = BTreeMap::new();
    let started = std::time::Instant::now();
    loop {
        let (n, v) = count_alerts(&client, &seen).await.unwrap();
        if v == version {
            assert_eq!(n, 2);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "A serves {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen.insert("ops.alerts".to_string(), version);

    // Without the token B answers from the version it has: older than what the client saw.
    to(&b);
    let (n, v) = count_alerts(&client, &BTreeMap::new()).await.unwrap();
    assert_eq!((n, v), (1, version - 1), "B was expected to lag");
    // With it, B loads the newer version first.
    assert_eq!(count_alerts(&client, &seen).await, Ok((2, version)));

    // Calls alternating between the replicas, with commits in between: never back in time.
    let mut alerts = 2;
    for i in 0..8 {
        if i % 2 == 0 {
            version = add_alert(&env, &format!("AL-{}", alerts)).await;
            alerts += 1;
            // Only A's poll sees it; the client learns the version from A's answer.
            to(&a);
            let started = std::time::Instant::now();
            while count_alerts(&client, &seen).await.unwrap().1 < version {
                assert!(started.elapsed() < Duration::from_secs(10));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            to(&b);
        }
        let (n, v) = count_alerts(&client, &seen).await.unwrap();
        assert!(v >= seen["ops.alerts"], "call {i} went back to {v}");
        assert_eq!((n, v), (alerts, version), "call {i}");
        seen.insert("ops.alerts".to_string(), v);
    }
    let hosts: Vec<String> = forwarded
        .lock()
        .unwrap()
        .iter()
        .map(|(h, _)| h.clone())
        .collect();
    assert!(hosts.contains(&a.base) && hosts.contains(&b.base));
    assert!(
        forwarded.lock().unwrap().iter().all(|(_, s)| *s == 200),
        "{:?}",
        forwarded.lock().unwrap()
    );

    // A token naming a table that does not exist is refused, precisely.
    let bad = count_alerts(&client, &BTreeMap::from([("no.such_table".to_string(), 1)]))
        .await
        .unwrap_err();
    assert!(bad.contains(SEEN) && bad.contains("no.such_table"), "{bad}");

    // A subscription on A: acknowledged, and told of a change with the version it reflects.
    to(&a);
    let mut subscription = client
        .peer()
        .listen(
            SubscriptionFilter::builder()
                .resource_subscription(ALERTS)
                .build(),
        )
        .await
        .expect("listen is acknowledged");
    assert_eq!(
        subscription.acknowledged().resource_subscriptions,
        Some(vec![ALERTS.to_string()])
    );
    version = add_alert(&env, "AL-live").await;
    let told = tokio::time::timeout(Duration::from_secs(20), subscription.next())
        .await
        .expect("a notification within 20 s")
        .unwrap()
        .expect("the stream is open");
    let ServerNotification::ResourceUpdatedNotification(n) = &told else {
        panic!("{told:?}")
    };
    assert_eq!(n.params.uri, ALERTS);
    let resume = told
        .get_meta()
        .get(SEEN)
        .cloned()
        .expect("versions in _meta");
    assert_eq!(resume, json!({ "ops.alerts": version }));

    // A is killed: the stream ends. A change lands while no one listens.
    to(&b);
    a.kill();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(_)) = subscription.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its replica");
    let missed = add_alert(&env, "AL-missed").await;

    // Listening again lands on B, resuming from the versions of the last notification: B loads
    // the missed commit (it would not poll for minutes) and tells of it first.
    let heard = Heard::default();
    let listener = connect(&url, heard.clone()).await;
    let meta: BTreeMap<String, i64> = serde_json::from_value(resume).unwrap();
    let _listening = listener
        .peer()
        .send_request_with_option(
            ClientRequest::SubscriptionsListenRequest(SubscriptionsListenRequest::new(
                SubscriptionsListenRequestParams::new(
                    SubscriptionFilter::builder()
                        .resource_subscription(ALERTS)
                        .build(),
                ),
            )),
            {
                let mut options = PeerRequestOptions::no_options();
                options.meta = Some(seen_meta(&meta));
                options
            },
        )
        .await
        .unwrap();
    let got = heard.wait_for(1, "the missed change").await;
    assert_eq!(
        got[0],
        (ALERTS.to_string(), Some(json!({ "ops.alerts": missed })))
    );
    // And B goes on telling of new changes as it learns of them (here: from another caller's
    // token; otherwise at its next poll).
    let next = add_alert(&env, "AL-after").await;
    let seen_next = BTreeMap::from([("ops.alerts".to_string(), next)]);
    assert_eq!(count_alerts(&client, &seen_next).await.unwrap().1, next);
    let got = heard.wait_for(2, "a change after the move").await;
    assert_eq!(
        got[1],
        (ALERTS.to_string(), Some(json!({ "ops.alerts": next })))
    );
    drop(b);
}

/// Under bearer auth, stateless (2026-07-28) callers are who their token says: a listen names
/// only feeds the caller's persona may read, and a consistency token only tables it may read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_caller_listens_and_catches_up_only_on_what_it_may_read() {
    let _w = support::watchdog("replicas tenancy", Duration::from_secs(120));
    let mut env = Env::new(1).await;
    env.lake.ensure_all().await.unwrap();
    env.config.auth.mode = "bearer".into();
    env.config.auth.dev_tokens.insert(
        "alice@emea".into(),
        millstream::config::Secret::new("alice-token"),
    );
    let served = env.serve_mcp().await;
    let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            format!("{}/mcp", served.base),
        )
        .auth_header("alice-token".to_string()),
    );
    let alice = Heard::default()
        .serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("alice connects");
    let listen = |uri: &'static str| {
        alice.peer().listen(
            SubscriptionFilter::builder()
                .resource_subscription(uri)
                .build(),
        )
    };
    // A sales rep may not follow shortage signals. rmcp acknowledges a listen before the
    // server sees who asks (the filter is accepted per server), so the stream's first and last
    // message is the refusal.
    let mut refused = listen("millstream://signals/shortages")
        .await
        .expect("acknowledged");
    let refused = tokio::time::timeout(Duration::from_secs(10), refused.next())
        .await
        .expect("the refusal within 10 s");
    let refused = format!("{refused:?}");
    assert!(
        refused.contains("not available to persona sales_rep"),
        "{refused}"
    );
    // Churn signals are hers.
    let churn = listen("millstream://signals/churn").await.expect("churn");
    assert_eq!(
        churn.acknowledged().resource_subscriptions,
        Some(vec!["millstream://signals/churn".to_string()])
    );
    // A token naming a table she may not read is refused like one that does not exist.
    let mut request = CallToolRequestParams::new("describe_tables");
    request.meta = Some(seen_meta(&BTreeMap::from([(
        "supply_chain.shortage_signals".to_string(),
        0,
    )])));
    let e = alice
        .peer()
        .call_tool(request)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a table you may read"), "{e}");
    let mut request = CallToolRequestParams::new("describe_tables");
    request.meta = Some(seen_meta(&BTreeMap::from([(
        "sales.churn_signals".to_string(),
        0,
    )])));
    alice
        .peer()
        .call_tool(request)
        .await
        .expect("her own table");
}
