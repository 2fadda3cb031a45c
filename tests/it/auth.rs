//! HTTP authentication against a real token issuer (in process: an ES256 key pair whose JWKS
//! is served over HTTP). Missing, malformed, wrong-audience, expired, foreign-key, `alg: none`
//! and HMAC-confusion tokens are refused with 401 and a `WWW-Authenticate` challenge naming the
//! protected-resource metadata; a token without the scope, or for a principal the policies do
//! not know, gets 403 `insufficient_scope`. Valid callers get their persona's tools and only
//! their tenant's rows, and an order placed with a token records the token's subject as
//! `on_behalf_of`. The official Python SDK connects with a JWT and is refused with a wrong one.

use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::{self, Env};

const AUDIENCE: &str = "http://millstream.test/mcp";

struct Issuer {
    url: String,
    key: EncodingKey,
    /// Another key pair, not in the JWKS.
    stranger: EncodingKey,
    public: Vec<u8>,
}

fn keypair() -> (EncodingKey, Vec<u8>) {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    (
        EncodingKey::from_ec_der(pkcs8.as_ref()),
        pair.public_key().as_ref().to_vec(),
    )
}

async fn issuer() -> Issuer {
    let (key, public) = keypair();
    let (stranger, _) = keypair();
    // Uncompressed point: 0x04 ‖ x ‖ y.
    // The same public key three times: for signatures (k1), published for encryption (k2),
    // and allowed only to sign, not to verify (k3). Only k1 may verify a token.
    let point = |kid: &str, extra: Value| {
        let mut k = json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": kid,
            "x": B64.encode(&public[1..33]), "y": B64.encode(&public[33..65]),
        });
        k.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        k
    };
    let jwks = json!({ "keys": [
        point("k1", json!({ "use": "sig" })),
        point("k2", json!({ "use": "enc" })),
        point("k3", json!({ "key_ops": ["sign"] })),
    ]});
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || std::future::ready(axum::Json(jwks.clone()))),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Issuer {
        url,
        key,
        stranger,
        public,
    }
}

impl Issuer {
    fn claims(&self, sub: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({ "iss": self.url, "aud": AUDIENCE, "sub": sub, "exp": now + 600, "iat": now, "scope": "openid mcp" })
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }

    fn token(&self, sub: &str) -> String {
        self.sign(&self.claims(sub))
    }

    /// `claims` signed with k1's private key under another header.
    fn sign_with(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// The status, `WWW-Authenticate` header and body of an `initialize` POST with `token`.
async fn initialize(url: &str, token: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": { "protocolVersion": "2025-06-18", "capabilities": {},
                        "clientInfo": { "name": "auth-test", "version": "0" } }
        }));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, challenge, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_tokens_get_in_and_each_caller_gets_its_own_view() {
    let _w = support::watchdog("auth", Duration::from_secs(180));
    let issuer = issuer().await;
    let mut env = Env::new(1).await;
    env.config.auth.mode = "bearer".into();
    env.config.auth.issuer = issuer.url.clone();
    env.config.auth.audience = AUDIENCE.into();
    env.config.auth.scope = "mcp".into();
    env.config.auth.dev_tokens.insert(
        "alice@emea".into(),
        millstream::config::Secret::new("dev-alice-token"),
    );
    env.lake.ensure_all().await.unwrap();
    millstream::sim::write_reference(&env.lake, &env.config.simulate, false)
        .await
        .unwrap();
    let served = env.serve_mcp().await;
    let base = &served.base;
    let url = format!("{base}/mcp");
    let metadata_url = format!("{base}/.well-known/oauth-protected-resource");

    let metadata: Value = reqwest::get(&metadata_url)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["authorization_servers"], json!([issuer.url]));
    assert_eq!(metadata["scopes_supported"], json!(["mcp"]));
    assert!(metadata["resource"].as_str().unwrap().ends_with("/mcp"));

    // Refused with 401 and a challenge naming the metadata.
    let now = chrono::Utc::now().timestamp();
    let mut wrong_audience = issuer.claims("maria@emea");
    wrong_audience["aud"] = json!("http://somewhere.else/mcp");
    let mut expired = issuer.claims("maria@emea");
    expired["exp"] = json!(now - 3600);
    let mut wrong_issuer = issuer.claims("maria@emea");
    wrong_issuer["iss"] = json!("http://evil.example");
    let foreign = {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, &issuer.claims("maria@emea"), &issuer.stranger).unwrap()
    };
    let unsigned = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","kid":"k1","typ":"JWT"}"#),
        B64.encode(issuer.claims("maria@emea").to_string())
    );
    let hmac_confusion = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(
            &h,
            &issuer.claims("maria@emea"),
            &EncodingKey::from_secret(&issuer.public),
        )
        .unwrap()
    };
    let tampered = {
        let t = issuer.token("maria@emea");
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        parts[1] = B64.encode(issuer.claims("local-dev").to_string());
        parts.join(".")
    };
    let not_yet = {
        let mut c = issuer.claims("maria@emea");
        c["nbf"] = json!(now + 3600);
        issuer.sign(&c)
    };
    let with_header = |kid: &str, crit: Option<Vec<String>>| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        h.crit = crit;
        issuer.sign_with(h, &issuer.claims("maria@emea"))
    };
    for (case, token) in [
        ("not valid before an hour from now", Some(not_yet)),
        (
            "an unknown critical header",
            Some(with_header(
                "k1",
                Some(vec!["x-millstream-unheard-of".into()]),
            )),
        ),
        (
            "verified by an encryption key",
            Some(with_header("k2", None)),
        ),
        ("verified by a sign-only key", Some(with_header("k3", None))),
        ("missing", None),
        ("not a jwt", Some("garbage".to_string())),
        ("wrong audience", Some(issuer.sign(&wrong_audience))),
        ("wrong issuer", Some(issuer.sign(&wrong_issuer))),
        ("expired", Some(issuer.sign(&expired))),
        ("signed by another key", Some(foreign)),
        ("alg none", Some(unsigned)),
        ("HS256 with the public key", Some(hmac_confusion)),
        ("payload swapped", Some(tampered)),
    ] {
        let (status, challenge, body) = initialize(&url, token.as_deref()).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert!(challenge.starts_with("Bearer "), "{case}: {challenge}");
        assert!(
            challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
            "{case}: {challenge}"
        );
        if token.is_some() {
            assert!(
                challenge.contains("error=\"invalid_token\""),
                "{case}: {challenge}"
            );
        }
    }

    // Valid signature, but no grants here: 403 insufficient_scope.
    let mut no_scope = issuer.claims("maria@emea");
    no_scope["scope"] = json!("openid");
    for (case, token) in [
        ("without the scope", issuer.sign(&no_scope)),
        ("unknown principal", issuer.token("mallory@nowhere")),
    ] {
        let (status, challenge, body) = initialize(&url, Some(&token)).await;
        assert_eq!(status, 403, "{case}: {body}");
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{case}: {challenge}"
        );
    }

    // Let in: a JWT for maria (supply chain, EMEA) and alice's dev token (sales, EMEA).
    for (token, may, may_not) in [
        (
            issuer.token("maria@emea"),
            "create_order",
            "lookup_customer_info",
        ),
        (
            "dev-alice-token".to_string(),
            "lookup_customer_info",
            "create_order",
        ),
    ] {
        let (status, _, body) = initialize(&url, Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        use rmcp::ServiceExt;
        let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                url.clone(),
            )
            .auth_header(token.clone()),
        );
        let client = ().serve(transport).await.unwrap();
        let tools: Vec<String> = client
            .peer()
            .list_all_tools()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        assert!(
            tools.contains(&may.to_string()) && !tools.contains(&may_not.to_string()),
            "{tools:?}"
        );
        let refused = client
            .peer()
            .call_tool(
                rmcp::model::CallToolRequestParams::new(may_not.to_string()).with_arguments(
                    json!({ "part_id": "P-00001", "warehouse_id": "WH-01", "quantity": 10,
                        "idempotency_key": "k", "customer_id": "C-00001" })
                    .as_object()
                    .cloned()
                    .unwrap(),
                ),
            )
            .await;
        assert!(
            refused.is_err() || refused.unwrap().is_error == Some(true),
            "{may_not} allowed"
        );
        // query_sql answers from the caller's tenant only.
        let column = if may == "create_order" {
            "warehouse_id"
        } else {
            "region"
        };
        let table = if may == "create_order" {
            "supply_chain.inventory"
        } else {
            "sales.customers"
        };
        let answer = client
            .peer()
            .call_tool(
                rmcp::model::CallToolRequestParams::new("query_sql").with_arguments(
                    json!({ "sql": format!("SELECT DISTINCT {column} FROM {table}") })
                        .as_object()
                        .cloned()
                        .unwrap(),
                ),
            )
            .await
            .unwrap();
        let rows = answer.structured_content.unwrap()["rows"].clone();
        let seen: Vec<&str> = rows
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r[column].as_str())
            .collect();
        let allowed = ["WH-01", "WH-02", "EMEA-North", "EMEA-South"];
        assert!(
            !seen.is_empty() && seen.iter().all(|v| allowed.contains(v)),
            "{seen:?}"
        );
        if may == "create_order" {
            // The action records the token's subject. Arguments cannot say otherwise: a call
            // naming its own on_behalf_of is refused as an argument the tool does not take.
            let order = |extra: Option<&str>| {
                let mut args = json!({ "part_id": "P-00001", "warehouse_id": "WH-01",
                                       "quantity": 5000, "idempotency_key": "jwt-order" });
                if let Some(who) = extra {
                    args["on_behalf_of"] = json!(who);
                }
                client.peer().call_tool(
                    rmcp::model::CallToolRequestParams::new("create_order")
                        .with_arguments(args.as_object().cloned().unwrap()),
                )
            };
            let spoofed = order(Some("local-dev")).await.unwrap();
            assert_eq!(spoofed.is_error, Some(true), "{spoofed:?}");
            assert!(
                format!("{:?}", spoofed.content).contains("unknown field `on_behalf_of`"),
                "{spoofed:?}"
            );
            let receipt = order(None).await.unwrap();
            let receipt = receipt.structured_content.expect("a receipt");
            assert_eq!(receipt["on_behalf_of"], json!("maria@emea"), "{receipt}");
            // Like every answer, a receipt says which versions it was checked against.
            let checked: Vec<&str> = receipt["as_of"]["tables"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["table"].as_str().unwrap())
                .collect();
            assert!(
                checked.contains(&"supply_chain.parts")
                    && checked.contains(&"supply_chain.inventory"),
                "{receipt}"
            );
        }
        let _ = client.cancel().await;
    }

    // The official Python SDK, as a client of an authenticated server: maria's JWT gets her
    // tools and rows; a wrong token does not get in.
    let token = issuer.token("maria@emea");
    let report = tokio::task::spawn_blocking({
        let url = url.clone();
        move || support::mcp_client(&["bearer", &url, &token])
    })
    .await
    .unwrap();
    assert_eq!(report["warehouses"], json!(["WH-01", "WH-02"]), "{report}");
    let tools = report["tools"].as_array().unwrap();
    assert!(
        tools.contains(&json!("create_order")) && !tools.contains(&json!("lookup_customer_info"))
    );
    assert_eq!(report["wrong_token_statuses"], json!([401]), "{report}");

    // The order event on Kafka carries maria's principal into the action log.
    env.run_until(&env.options("auth", "auth"), 1).await;
    assert_eq!(
        support::rows(
            &env.lake,
            "SELECT on_behalf_of, warehouse_id FROM supply_chain.order_actions"
        )
        .await,
        vec!["maria@emea|WH-01".to_string()]
    );

    // Every call is audited under its caller, refusals included; tokens never are.
    let want = [
        "maria@emea|tool|query_sql|ok",
        "maria@emea|tool|lookup_customer_info|refused",
        "alice@emea|tool|query_sql|ok",
        "alice@emea|action|create_order|refused",
        "maria@emea|action|create_order|ok",
    ];
    let started = std::time::Instant::now();
    loop {
        // The lakehouse's own reader may race the audit writer's commits: retry.
        let rows = match env
            .lake
            .sql("SELECT principal, kind, name, outcome FROM ops.audit")
            .await
        {
            Ok(b) => support::batch_rows(&b),
            Err(e) => vec![e.to_string()],
        };
        if want.iter().all(|w| rows.iter().any(|r| r == w)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "ops.audit has {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leaked = support::rows(
        &env.lake,
        "SELECT audit_id FROM ops.audit WHERE arguments LIKE '%token%' OR error LIKE '%token%'",
    )
    .await;
    assert!(leaked.is_empty(), "{leaked:?}");
    let sql = support::rows(
        &env.lake,
        "SELECT arguments FROM ops.audit WHERE name = 'query_sql'",
    )
    .await;
    assert!(sql.iter().all(|a| a.contains("SELECT DISTINCT")), "{sql:?}");
}

/// Everything around a request in bearer mode: an MCP session belongs to the principal that
/// created it (another caller naming it gets 404 and can neither read its stream nor end it);
/// a browser Origin outside `serve.allowed_origins` is refused; a Host outside
/// `serve.allowed_hosts` is refused before anything could echo it; `/metrics` needs an
/// operator's token when `serve.metrics_auth = "bearer"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_origins_hosts_and_metrics_are_guarded() {
    let _w = support::watchdog("auth guards", Duration::from_secs(120));
    let mut env = Env::new(1).await;
    env.config.auth.mode = "bearer".into();
    env.config.serve.metrics_auth = "bearer".into();
    for (who, token) in [
        ("maria@emea", "tok-maria"),
        ("jon@amer", "tok-jon"),
        ("local-dev", "tok-ops"),
    ] {
        env.config
            .auth
            .dev_tokens
            .insert(who.into(), millstream::config::Secret::new(token));
    }
    env.lake.ensure_all().await.unwrap();
    let served = env.serve_mcp().await;
    let base = &served.base;
    let url = format!("{base}/mcp");
    let http = reqwest::Client::new();
    let rpc = |token: &str, session: Option<&str>, body: Value| {
        let mut req = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("authorization", format!("Bearer {token}"))
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        req.send()
    };
    let init = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": { "name": "guards", "version": "0" } }
    });
    let list = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {} });
    let resp = rpc("tok-maria", None, init.clone()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let _ = resp.text().await;
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    assert_eq!(
        rpc("tok-maria", Some(&session), initialized)
            .await
            .unwrap()
            .status(),
        202
    );

    // jon holds maria's session id: her stream, her tools and her session's end are not his.
    let stream = http
        .get(&url)
        .header("accept", "text/event-stream")
        .header("authorization", "Bearer tok-jon")
        .header("mcp-session-id", &session)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 404);
    assert_eq!(
        rpc("tok-jon", Some(&session), list.clone())
            .await
            .unwrap()
            .status(),
        404
    );
    let delete = |token: &str| {
        http.delete(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("mcp-session-id", &session)
            .send()
    };
    assert_eq!(delete("tok-jon").await.unwrap().status(), 404);
    let mine = rpc("tok-maria", Some(&session), list.clone())
        .await
        .unwrap();
    assert_eq!(mine.status(), 200);
    assert!(mine.text().await.unwrap().contains("create_order"));
    assert!(delete("tok-maria").await.unwrap().status().is_success());
    assert_eq!(
        rpc("tok-maria", Some(&session), list)
            .await
            .unwrap()
            .status(),
        404
    );

    // Origin: a foreign page's script is refused; a local one is served.
    for (origin, want) in [("http://evil.example", 403), ("http://localhost:5173", 200)] {
        let resp = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("authorization", "Bearer tok-maria")
            .header("origin", origin)
            .json(&init)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), want, "{origin}");
    }

    // Host: refused before the metadata or a challenge could echo it.
    for path in ["/.well-known/oauth-protected-resource", "/mcp"] {
        let resp = http
            .get(format!("{base}{path}"))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        assert!(resp.headers().get("www-authenticate").is_none());
        assert!(!resp.text().await.unwrap().contains("evil.example"));
    }

    // /metrics: operators only.
    let metrics = |token: Option<&str>| {
        let mut req = http.get(format!("{base}/metrics"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.send()
    };
    assert_eq!(metrics(None).await.unwrap().status(), 401);
    assert_eq!(metrics(Some("tok-maria")).await.unwrap().status(), 403);
    assert_eq!(metrics(Some("tok-ops")).await.unwrap().status(), 200);
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
}
