//! The agent's MCP side: one rmcp client per server (millstream first, then any listed in
//! `[agent.servers]`), their tools in one namespace for the model. A name two servers share is
//! offered as `<server>__<tool>` for each of them; unique names stay as they are. A server's
//! `tools/list_changed` notification marks its list stale and it is read again before the
//! model's next step after that (rmcp handles notifications on their own task, so a change
//! announced during a call may show one step later). An expired HTTP session (404) is
//! re-initialized by the transport and the call retried once (rmcp's
//! `reinit_on_expired_session`); a broken connection is re-opened once.
//!
//! Millstream is reached as the end user: over HTTP with the user's own bearer token, or
//! in-process as the user's principal (the same handler, grants and audit as `/mcp`). Other
//! servers get only the credentials configured for them — never the user's token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::RwLock;

use crate::config::Secret;
use crate::mcp::Millstream;

/// How to reach one MCP server.
#[derive(Clone)]
pub enum Connect {
    /// Streamable HTTP at `url`, with this bearer token if any.
    Http { url: String, bearer: Option<Secret> },
    /// A program (and its arguments) started for this connection, spoken to over its stdin
    /// and stdout; its stderr is dropped. Started again if the connection breaks.
    Stdio { command: Vec<String> },
    /// This process's millstream server, already scoped to the user's principal.
    InProcess(Box<Millstream>),
    /// A byte stream already connected to a server (taken on first use; not re-opened).
    Stream(Arc<std::sync::Mutex<Option<tokio::io::DuplexStream>>>),
}

#[derive(Clone)]
pub struct ServerSpec {
    /// A short name (`[a-z0-9_-]`), used to prefix colliding tool names.
    pub name: String,
    pub connect: Connect,
}

/// A tool as the model sees it, and where it lives.
#[derive(Debug, Clone)]
pub struct HubTool {
    /// The name offered to the model (prefixed when it collides).
    pub name: String,
    pub server: String,
    pub remote: String,
    pub description: String,
    pub parameters: Value,
    /// It changes something (not annotated read-only): needs the user's confirmation.
    pub action: bool,
    /// Its results carry free text written by others (tickets, documents), which may hold
    /// instructions the agent must not follow.
    pub free_text: bool,
}

/// A call's result, as given to the model and kept in the turn's record.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// The structured result, or the text content, or the error.
    pub value: Value,
    pub is_error: bool,
}

/// A call that did not reach the tool, or that the server refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    #[error("no tool named {0:?}")]
    UnknownTool(String),
    /// The server answered with an MCP error (bad arguments, not permitted): the model may
    /// fix its call; retrying the same one will not help.
    #[error("{server} refused the call: {message}")]
    Refused {
        server: String,
        message: String,
        data: Option<Value>,
    },
    /// The server could not be reached, or the connection broke: worth retrying.
    #[error("{server} could not be reached: {message}")]
    Unreachable { server: String, message: String },
}

impl HubError {
    pub fn retryable(&self) -> bool {
        matches!(self, HubError::Unreachable { .. })
    }
}

/// Millstream's tools whose results quote text written by customers, technicians or account
/// managers — `query_sql` too, since it can select any such column.
const FREE_TEXT_TOOLS: [&str; 5] = [
    "search_knowledge",
    "search_tickets",
    "get_ticket_status",
    "lookup_customer_info",
    "query_sql",
];

/// Notices a server's `tools/list_changed`.
#[derive(Clone)]
struct Watch {
    stale: Arc<AtomicBool>,
}

impl ClientHandler for Watch {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.stale.store(true, Ordering::Release);
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("millstream-agent", env!("CARGO_PKG_VERSION")),
        )
    }
}

struct Conn {
    spec: ServerSpec,
    stale: Arc<AtomicBool>,
    client: RwLock<RunningService<RoleClient, Watch>>,
}

/// The MCP servers of one agent session and their tools.
pub struct Hub {
    conns: Vec<Conn>,
    tools: std::sync::RwLock<Vec<HubTool>>,
}

async fn open(
    spec: &ServerSpec,
    stale: &Arc<AtomicBool>,
) -> Result<RunningService<RoleClient, Watch>, HubError> {
    let watch = Watch {
        stale: stale.clone(),
    };
    let unreachable = |e: String| HubError::Unreachable {
        server: spec.name.clone(),
        message: e,
    };
    match &spec.connect {
        Connect::Http { url, bearer } => {
            let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                .reinit_on_expired_session(true);
            if let Some(token) = bearer {
                config = config.auth_header(token.expose());
            }
            let transport = StreamableHttpClientTransport::from_config(config);
            watch
                .serve(transport)
                .await
                .map_err(|e| unreachable(e.to_string()))
        }
        Connect::Stdio { command } => {
            let (program, args) = command
                .split_first()
                .ok_or_else(|| unreachable("no command".into()))?;
            let mut child = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| unreachable(format!("starting {program:?}: {e}")))?;
            let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
                return Err(unreachable("its stdio was not piped".into()));
            };
            // The child lives until it exits: a stdio server ends when its stdin closes, which
            // happens when this connection is dropped (and it is killed with the runtime).
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            watch
                .serve((stdout, stdin))
                .await
                .map_err(|e| unreachable(e.to_string()))
        }
        Connect::InProcess(server) => crate::mcp::connect_in_process(server, watch)
            .await
            .map_err(|e| unreachable(e.to_string())),
        Connect::Stream(stream) => {
            let stream = stream.lock().expect("poisoned").take().ok_or_else(|| {
                unreachable("its stream was closed and cannot be re-opened".into())
            })?;
            watch
                .serve(stream)
                .await
                .map_err(|e| unreachable(e.to_string()))
        }
    }
}

impl Hub {
    /// Connects to every server and reads their tools. The first server is millstream; a
    /// server that cannot be reached fails the whole connect, naming it.
    pub async fn connect(specs: Vec<ServerSpec>) -> Result<Hub, HubError> {
        let mut conns = Vec::with_capacity(specs.len());
        for spec in specs {
            let stale = Arc::new(AtomicBool::new(false));
            let client = open(&spec, &stale).await?;
            conns.push(Conn {
                spec,
                stale,
                client: RwLock::new(client),
            });
        }
        let hub = Hub {
            conns,
            tools: Default::default(),
        };
        hub.reload().await?;
        Ok(hub)
    }

    /// The tools, as offered to the model.
    pub fn tools(&self) -> Vec<HubTool> {
        self.tools.read().expect("poisoned").clone()
    }

    pub fn tool(&self, name: &str) -> Option<HubTool> {
        self.tools
            .read()
            .expect("poisoned")
            .iter()
            .find(|t| t.name == name)
            .cloned()
    }

    /// Reads the tool lists again if a server said they changed.
    pub async fn refresh(&self) -> Result<bool, HubError> {
        if self.conns.iter().any(|c| c.stale.load(Ordering::Acquire)) {
            self.reload().await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn reload(&self) -> Result<(), HubError> {
        let mut listed: Vec<(String, rmcp::model::Tool)> = Vec::new();
        for conn in &self.conns {
            conn.stale.store(false, Ordering::Release);
            let tools = self
                .with_client(conn, |c| async move { c.list_all_tools().await })
                .await?;
            listed.extend(tools.into_iter().map(|t| (conn.spec.name.clone(), t)));
        }
        let count = |name: &str| listed.iter().filter(|(_, t)| t.name == name).count();
        let first = self.conns.first().map(|c| c.spec.name.clone());
        let tools = listed
            .iter()
            .map(|(server, t)| {
                let remote = t.name.to_string();
                let name = if count(&remote) > 1 {
                    format!("{server}__{remote}")
                } else {
                    remote.clone()
                };
                HubTool {
                    name,
                    server: server.clone(),
                    action: t.annotations.as_ref().and_then(|a| a.read_only_hint) != Some(true),
                    // Any tool of another server may return text from anywhere.
                    free_text: Some(server) != first.as_ref()
                        || FREE_TEXT_TOOLS.contains(&remote.as_str()),
                    remote,
                    description: t.description.as_deref().unwrap_or_default().to_string(),
                    parameters: Value::Object((*t.input_schema).clone()),
                }
            })
            .collect();
        *self.tools.write().expect("poisoned") = tools;
        Ok(())
    }

    /// Runs `f` on `conn`'s client; when the connection broke, opens it again and runs `f` once
    /// more.
    async fn with_client<T, F, Fut>(&self, conn: &Conn, f: F) -> Result<T, HubError>
    where
        F: Fn(rmcp::service::Peer<RoleClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, rmcp::ServiceError>>,
    {
        let peer = conn.client.read().await.peer().clone();
        match f(peer).await {
            Ok(v) => Ok(v),
            Err(e) => match classify(&conn.spec.name, e) {
                HubError::Unreachable { .. } => {
                    let fresh = open(&conn.spec, &conn.stale).await?;
                    let peer = fresh.peer().clone();
                    *conn.client.write().await = fresh;
                    f(peer).await.map_err(|e| classify(&conn.spec.name, e))
                }
                other => Err(other),
            },
        }
    }

    /// Calls tool `name` (as the model knows it) with `arguments`.
    pub async fn call(
        &self,
        name: &str,
        arguments: serde_json::Map<String, Value>,
    ) -> Result<CallOutcome, HubError> {
        let tool = self
            .tool(name)
            .ok_or_else(|| HubError::UnknownTool(name.to_string()))?;
        let conn = self
            .conns
            .iter()
            .find(|c| c.spec.name == tool.server)
            .ok_or_else(|| HubError::UnknownTool(name.to_string()))?;
        let result = self
            .with_client(conn, |peer| {
                let mut params = CallToolRequestParams::new(tool.remote.clone());
                params.arguments = Some(arguments.clone());
                // The server joins this trace (only millstream gets it: the trace id is ours).
                if conn.spec.name == "millstream"
                    && let Some(tp) = crate::telemetry::traceparent()
                {
                    params.meta = serde_json::from_value(json!({ "traceparent": tp })).ok();
                }
                async move { peer.call_tool(params).await }
            })
            .await?;
        let text = || {
            result
                .content
                .iter()
                .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let value = match &result.structured_content {
            Some(v) => v.clone(),
            None => {
                serde_json::from_str::<Value>(&text()).unwrap_or_else(|_| Value::String(text()))
            }
        };
        Ok(CallOutcome {
            value,
            is_error: result.is_error == Some(true),
        })
    }

    /// The text of prompt `name` of the first server (millstream's persona prompts), if it has
    /// one by that name.
    pub async fn prompt(&self, name: &str) -> Option<String> {
        let conn = self.conns.first()?;
        let peer = conn.client.read().await.peer().clone();
        let prompt = peer
            .get_prompt(rmcp::model::GetPromptRequestParams::new(name.to_string()))
            .await
            .ok()?;
        let text: Vec<String> = prompt
            .messages
            .iter()
            .filter_map(|m| m.content.as_text().map(|t| t.text.clone()))
            .collect();
        (!text.is_empty()).then(|| text.join("\n"))
    }

    /// The names of the first server's prompts.
    pub async fn prompt_names(&self) -> Vec<String> {
        let Some(conn) = self.conns.first() else {
            return Vec::new();
        };
        let peer = conn.client.read().await.peer().clone();
        peer.list_all_prompts()
            .await
            .map(|ps| ps.into_iter().map(|p| p.name.to_string()).collect())
            .unwrap_or_default()
    }

    /// Closes every connection (ends HTTP sessions).
    pub async fn close(self) {
        for conn in self.conns {
            let _ = conn.client.into_inner().cancel().await;
        }
    }
}

fn classify(server: &str, e: rmcp::ServiceError) -> HubError {
    match e {
        rmcp::ServiceError::McpError(err) => HubError::Refused {
            server: server.to_string(),
            message: err.message.to_string(),
            data: err.data,
        },
        other => HubError::Unreachable {
            server: server.to_string(),
            message: other.to_string(),
        },
    }
}

/// A refused call as the model sees it: what went wrong and, when the server said, which
/// argument.
pub fn refusal_value(e: &HubError) -> Value {
    match e {
        HubError::Refused { message, data, .. } => json!({"error": message, "details": data}),
        other => json!({"error": other.to_string()}),
    }
}
