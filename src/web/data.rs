//! How the console reads and acts: as an MCP client of this process's own server, one per
//! principal. A page calls the same tools an agent calls, so it gets the same grants, row
//! filters, masks, argument checks, errors and audit records (`ops.audit`), and nothing the
//! console does can reach around them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::RoleClient;
use rmcp::model::{CallToolRequestParams, ReadResourceRequestParams, ResourceContents};
use rmcp::service::RunningService;
use serde_json::Value;

use crate::mcp::Millstream;

type Client = RunningService<RoleClient, ()>;
/// Each principal's client, connected once by whichever request needs it first.
type ByPrincipal = HashMap<String, Arc<tokio::sync::OnceCell<Arc<Client>>>>;

/// Why a call gave no answer: the tool refused it (a message for the user, e.g. a bad
/// quantity or a tool the persona lacks), or the server could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Refused(String),
    #[error("the MCP server could not be reached: {0}")]
    Unreachable(String),
}

/// Per principal, an MCP session with the in-process server, connected on first use and again
/// if it closed.
#[derive(Clone)]
pub struct Clients {
    server: Millstream,
    clients: Arc<Mutex<ByPrincipal>>,
}

impl Clients {
    pub fn new(server: Millstream) -> Clients {
        Clients {
            server,
            clients: Arc::default(),
        }
    }

    pub fn server(&self) -> &Millstream {
        &self.server
    }

    async fn client(&self, principal: &str) -> Result<Arc<Client>, CallError> {
        loop {
            let cell = self
                .clients
                .lock()
                .expect("poisoned")
                .entry(principal.to_string())
                .or_default()
                .clone();
            let client = cell
                .get_or_try_init(|| async {
                    let server = self
                        .server
                        .as_principal(principal)
                        .map_err(|e| CallError::Refused(e.to_string()))?;
                    crate::mcp::connect_in_process(&server, ())
                        .await
                        .map(Arc::new)
                        .map_err(|e| CallError::Unreachable(e.to_string()))
                })
                .await?
                .clone();
            if !client.peer().is_transport_closed() {
                return Ok(client);
            }
            let mut clients = self.clients.lock().expect("poisoned");
            if clients
                .get(principal)
                .is_some_and(|c| Arc::ptr_eq(c, &cell))
            {
                clients.remove(principal);
            }
        }
    }

    /// Tool `tool` with `arguments` as `principal`: its structured answer.
    pub async fn call(
        &self,
        principal: &str,
        tool: &str,
        arguments: Value,
    ) -> Result<Value, CallError> {
        let client = self.client(principal).await?;
        let mut request = CallToolRequestParams::new(tool.to_string());
        if let Value::Object(args) = arguments {
            request = request.with_arguments(args);
        }
        match client.peer().call_tool(request).await {
            Ok(r) if r.is_error != Some(true) => Ok(r.structured_content.unwrap_or(Value::Null)),
            Ok(r) => Err(CallError::Refused(
                r.content
                    .iter()
                    .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                    .collect::<Vec<_>>()
                    .join(" "),
            )),
            Err(rmcp::ServiceError::McpError(e)) => Err(CallError::Refused(e.message.to_string())),
            Err(e) => Err(CallError::Unreachable(e.to_string())),
        }
    }

    /// One read-only SQL query through `query_sql` as `principal`: its rows.
    pub async fn sql(
        &self,
        principal: &str,
        sql: &str,
        limit: u32,
    ) -> Result<(Vec<Value>, Value), CallError> {
        let answer = self
            .call(
                principal,
                "query_sql",
                serde_json::json!({"sql": sql, "limit": limit}),
            )
            .await?;
        let rows = answer["rows"].as_array().cloned().unwrap_or_default();
        Ok((rows, answer["as_of"].clone()))
    }

    /// Resource `uri` as `principal`, parsed as JSON.
    pub async fn resource(&self, principal: &str, uri: &str) -> Result<Value, CallError> {
        let client = self.client(principal).await?;
        let read = client
            .peer()
            .read_resource(ReadResourceRequestParams::new(uri))
            .await
            .map_err(|e| match e {
                rmcp::ServiceError::McpError(e) => CallError::Refused(e.message.to_string()),
                e => CallError::Unreachable(e.to_string()),
            })?;
        let text = read
            .contents
            .iter()
            .find_map(|c| match c {
                ResourceContents::TextResourceContents { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .unwrap_or("null");
        serde_json::from_str(text).map_err(|e| CallError::Unreachable(format!("{uri}: {e}")))
    }
}
