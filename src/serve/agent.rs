//! `POST /agent/turn`: one agent turn for the authenticated caller, its steps streamed as
//! server-sent events (the console's chat uses it). The agent reaches millstream in-process as
//! the caller's principal — the caller's token never leaves this server — and remembers the
//! conversation in `ops.conversations` under that principal.
//!
//! Request: `{"message": "…", "conversation_id": "…"?, "approve": [{"tool", "arguments"}]?}`.
//! Events: `text`, `tool_call`, `tool_result`, `confirmation`, `retry`, `answer` (see
//! [`crate::agent::Step`]), then `done` with the turn's report and conversation id, or `error`.
//! An action runs only when the request approves that exact call (tool and arguments): a turn
//! proposing one ends with a `confirmation` event (`approved: false`), and the client asks
//! again with it in `approve`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::extract::{Json, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::agent::{self, Chat, Memory, Step};
use crate::config::AgentConfig;
use crate::mcp::Millstream;

/// Longest message a caller may send.
const MAX_MESSAGE: usize = 8000;
/// Most calls one request may approve.
const MAX_APPROVALS: usize = 16;

/// What the endpoint needs: the model (or why there is none), the agent's settings, the MCP
/// server to scope per caller, and per principal its turn slots and its agent.
#[derive(Clone)]
pub struct AgentEndpoint {
    llm: Result<agent::Llm, String>,
    config: AgentConfig,
    server: Millstream,
    memory: Memory,
    callers: Arc<Mutex<HashMap<String, Arc<Caller>>>>,
}

/// One principal's share of the endpoint: its concurrent turns, and its agent, connected on its
/// first turn and reused (tools, prompts and the MCP session are read once, not per request).
struct Caller {
    slots: Arc<Semaphore>,
    agent: tokio::sync::OnceCell<Arc<agent::Agent>>,
}

impl AgentEndpoint {
    pub fn new(config: &AgentConfig, server: Millstream) -> Self {
        let llm = agent::llm_settings(config)
            .map_err(|e| e.to_string())
            .and_then(|s| agent::Llm::new(s).map_err(|e| e.to_string()));
        AgentEndpoint {
            llm,
            config: config.clone(),
            memory: Memory::buffered(server.catalog.lake().clone()),
            server,
            callers: Arc::default(),
        }
    }

    fn caller(&self, principal: &str) -> Arc<Caller> {
        self.callers
            .lock()
            .expect("poisoned")
            .entry(principal.to_string())
            .or_insert_with(|| {
                Arc::new(Caller {
                    slots: Arc::new(Semaphore::new(self.config.turns_per_principal)),
                    agent: Default::default(),
                })
            })
            .clone()
    }

    /// `principal`'s agent, connected on first use.
    async fn agent(
        &self,
        caller: &Caller,
        llm: agent::Llm,
        principal: &str,
    ) -> anyhow::Result<Arc<agent::Agent>> {
        caller
            .agent
            .get_or_try_init(|| async {
                agent::in_process(llm, &self.server, principal, &self.config)
                    .await
                    .map(Arc::new)
            })
            .await
            .cloned()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnRequest {
    pub message: String,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub approve: Vec<Approval>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub tool: String,
    pub arguments: Value,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

/// The handler: checks the request, then streams the turn.
pub async fn turn(
    State(endpoint): State<AgentEndpoint>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    body: Result<Json<TurnRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let principal = caller
        .map(|c| c.0.principal)
        .unwrap_or_else(|| endpoint.server.principal().to_string());
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("bad request body: {e}")),
    };
    let llm = match &endpoint.llm {
        Ok(l) => l.clone(),
        Err(why) => return refuse(StatusCode::SERVICE_UNAVAILABLE, why.clone()),
    };
    let chars = body.message.chars().count();
    if chars == 0 || chars > MAX_MESSAGE {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("message must be 1 to {MAX_MESSAGE} characters"),
        );
    }
    if body.approve.len() > MAX_APPROVALS {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_APPROVALS} approvals per request"),
        );
    }
    let id = body
        .conversation_id
        .clone()
        .unwrap_or_else(agent::memory::new_id);
    if let Err(e) = agent::memory::check_id(&id) {
        return refuse(StatusCode::BAD_REQUEST, e.to_string());
    }
    let caller = endpoint.caller(&principal);
    let Ok(slot) = caller.slots.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{principal} already has {} agent turns running",
                endpoint.config.turns_per_principal
            ),
        );
    };
    if let Err(e) = endpoint.server.as_principal(&principal) {
        return refuse(StatusCode::FORBIDDEN, e.to_string());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        let _slot = slot;
        let send = |name: &str, data: &Value| {
            let _ = tx.send(Event::default().event(name).data(data.to_string()));
        };
        let agent = match endpoint.agent(&caller, llm, &principal).await {
            Ok(a) => a,
            Err(e) => return send("error", &json!({"error": format!("{e:#}")})),
        };
        let conversation = match endpoint.memory.load(&principal, &id).await {
            Ok(c) => c,
            Err(e) => return send("error", &json!({"error": e.to_string()})),
        };
        let mut chat = Chat {
            agent: &agent,
            memory: endpoint.memory.clone(),
            conversation,
            budget: endpoint.config.memory_tokens,
        };
        let approved = agent::turn::Approved::new(
            body.approve
                .into_iter()
                .map(|a| (a.tool, a.arguments))
                .collect(),
        );
        let observe = |step: Step| {
            let v = serde_json::to_value(&step).unwrap_or(Value::Null);
            let name = v["type"].as_str().unwrap_or("step").to_string();
            send(&name, &v);
        };
        match chat.say(&body.message, &approved, &observe).await {
            Ok(report) => {
                let mut v = serde_json::to_value(&report).unwrap_or(Value::Null);
                v["conversation_id"] = id.clone().into();
                send("done", &v);
            }
            Err(e) => send("error", &json!({"error": format!("{e:#}")})),
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
