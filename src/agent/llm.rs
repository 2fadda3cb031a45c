//! The language model, through the OpenAI-compatible Chat Completions API: messages and tool
//! definitions in, an assistant message (text and/or tool calls) and token usage out, streamed
//! or not. Any compatible server works (hosted, vLLM, llama.cpp's server, the scripted model
//! of the tests). Small models often write their tool calls as JSON text in `content` instead
//! of `tool_calls`; [`calls_in_text`] reads those too.
//!
//! The API key goes to the model's server only, as its bearer token, and never into a log.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Secret;

/// One message of a conversation, as the API takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// "system", "user", "assistant" or "tool".
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn system(text: impl Into<String>) -> Self {
        Self::text("system", text)
    }
    pub fn user(text: impl Into<String>) -> Self {
        Self::text("user", text)
    }
    pub fn assistant(text: impl Into<String>) -> Self {
        Self::text("assistant", text)
    }
    pub fn tool(call_id: &str, text: impl Into<String>) -> Self {
        Message {
            tool_call_id: Some(call_id.to_string()),
            ..Self::text("tool", text)
        }
    }
    fn text(role: &str, text: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: Some(text.into()),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text (as the API carries them).
    #[serde(default)]
    pub arguments: String,
}

/// A tool as offered to the model.
#[derive(Debug, Clone, Serialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
    }
}

/// What the model answered.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The assistant message; its tool calls include those written as text (see
    /// [`calls_in_text`]), whose text is then not shown as an answer.
    pub message: Message,
    pub usage: Usage,
    pub finish_reason: Option<String>,
}

/// `messages` for a model that sees tools only as text: the tools described after the system
/// message (or in one of their own), each earlier call as the JSON text such a model writes,
/// and each result as a user message naming its call. Its JSON answer is read back as a call
/// (see [`calls_in_text`]).
fn in_prompt(messages: &[Message], tools: &[ToolSpec]) -> Vec<Message> {
    let mut catalog = String::from(
        "You can use these tools. To use one, answer with only a JSON object \
         {\"name\": \"<tool>\", \"arguments\": {...}} and nothing else; you will get its \
         result, then answer the user.\n",
    );
    for t in tools {
        catalog.push_str(&format!(
            "\n- {}: {}\n  arguments (JSON Schema): {}",
            t.name, t.description, t.parameters
        ));
    }
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut out = Vec::with_capacity(messages.len() + 1);
    for m in messages {
        match m.role.as_str() {
            "system" if out.is_empty() => out.push(Message::system(format!(
                "{}\n\n{catalog}",
                m.content.as_deref().unwrap_or_default()
            ))),
            "assistant" if !m.tool_calls.is_empty() => {
                let calls: Vec<String> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        names.insert(&c.id, &c.function.name);
                        let arguments: Value =
                            serde_json::from_str(&c.function.arguments).unwrap_or(Value::Null);
                        json!({"name": c.function.name, "arguments": arguments}).to_string()
                    })
                    .collect();
                out.push(Message::text("assistant", calls.join("\n")));
            }
            "tool" => {
                let name = m
                    .tool_call_id
                    .as_deref()
                    .and_then(|id| names.get(id).copied())
                    .unwrap_or("the tool");
                out.push(Message::user(format!(
                    "Result of {name}: {}",
                    m.content.as_deref().unwrap_or_default()
                )));
            }
            _ => out.push(m.clone()),
        }
    }
    if messages.first().is_none_or(|m| m.role != "system") {
        out.insert(0, Message::system(catalog));
    }
    out
}

/// A failed model call: whether trying again may help (timeouts, 429, 5xx) or not (a bad key,
/// an unknown model).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct LlmError {
    pub message: String,
    pub retryable: bool,
}

impl LlmError {
    fn new(message: impl Into<String>, retryable: bool) -> Self {
        LlmError {
            message: message.into(),
            retryable,
        }
    }
}

/// Where the model is and how to talk to it.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8080/v1`; `/chat/completions` is
    /// appended.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<Secret>,
    pub stream: bool,
    /// Describe the tools in the system message and send calls and results as text, for chat
    /// templates without tool support ([`in_prompt`]).
    pub tools_in_prompt: bool,
    pub timeout: Duration,
    pub temperature: f32,
}

/// A client of one OpenAI-compatible endpoint.
#[derive(Clone)]
pub struct Llm {
    http: reqwest::Client,
    url: String,
    settings: LlmSettings,
}

impl Llm {
    pub fn new(settings: LlmSettings) -> Result<Self, LlmError> {
        let base = settings.base_url.trim_end_matches('/');
        let parsed = url::Url::parse(base).map_err(|e| {
            LlmError::new(
                format!("agent.llm_base_url {base:?} is not a URL: {e}"),
                false,
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(LlmError::new(
                format!("agent.llm_base_url {base:?} must be http:// or https://"),
                false,
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| LlmError::new(format!("HTTP client: {e}"), false))?;
        Ok(Llm {
            http,
            url: format!("{base}/chat/completions"),
            settings,
        })
    }

    pub fn model(&self) -> &str {
        &self.settings.model
    }

    /// The Chat Completions request for `messages` offering `tools`.
    fn body(&self, messages: &[Message], tools: &[ToolSpec]) -> Value {
        let in_prompt;
        let messages = if self.settings.tools_in_prompt && !tools.is_empty() {
            in_prompt = self::in_prompt(messages, tools);
            &in_prompt[..]
        } else {
            messages
        };
        let mut body = json!({
            "model": self.settings.model,
            "messages": messages,
            "temperature": self.settings.temperature,
            "stream": self.settings.stream,
        });
        if !tools.is_empty() && !self.settings.tools_in_prompt {
            body["tools"] = Value::Array(
                tools
                    .iter()
                    .map(|t| json!({"type": "function", "function": t}))
                    .collect(),
            );
        }
        if self.settings.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    /// One completion. Text deltas go to `on_text` as they arrive (when streaming), except
    /// text that turns out to be a tool call written as JSON. `known` says which tool names
    /// exist, for reading such calls.
    pub async fn complete(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        known: &(dyn Fn(&str) -> bool + Sync),
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Reply, LlmError> {
        let body = self.body(messages, tools);
        let mut request = self
            .http
            .post(&self.url)
            .timeout(self.settings.timeout)
            .json(&body);
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key.expose());
        }
        let response = request.send().await.map_err(|e| {
            LlmError::new(
                format!("the language model at {} did not answer: {e}", self.url),
                true,
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let detail: String = text.chars().take(500).collect();
            return Err(LlmError::new(
                format!(
                    "the language model at {} answered {status}: {detail}",
                    self.url
                ),
                status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408,
            ));
        }
        let mut reply = if self.settings.stream
            && response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"))
        {
            self.read_stream(response, known, on_text).await?
        } else {
            let value: Value = response.json().await.map_err(|e| {
                LlmError::new(
                    format!("the language model's answer is not JSON: {e}"),
                    true,
                )
            })?;
            let reply = parse_completion(&value)?;
            if let Some(text) = &reply.message.content
                && reply.message.tool_calls.is_empty()
                && calls_in_text(text, known).is_none()
            {
                on_text(text);
            }
            reply
        };
        if reply.message.tool_calls.is_empty()
            && let Some(calls) = reply
                .message
                .content
                .as_deref()
                .and_then(|t| calls_in_text(t, known))
        {
            reply.message.tool_calls = calls;
            reply.message.content = None;
        }
        Ok(reply)
    }

    async fn read_stream(
        &self,
        response: reqwest::Response,
        known: &(dyn Fn(&str) -> bool + Sync),
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Reply, LlmError> {
        let mut text = String::new();
        // Text is held back while it may still be a tool call written as JSON.
        let mut shown = 0usize;
        let mut holding: Option<bool> = None;
        let mut calls: Vec<ToolCall> = Vec::new();
        let mut usage = Usage::default();
        let mut finish = None;
        let mut buf = Vec::<u8>::new();
        let mut body = response.bytes_stream();
        'read: while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                LlmError::new(format!("the language model's stream broke off: {e}"), true)
            })?;
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim().strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    break 'read;
                }
                let value: Value = serde_json::from_str(data).map_err(|e| {
                    LlmError::new(
                        format!("the language model sent a bad stream chunk: {e}"),
                        true,
                    )
                })?;
                if let Some(err) = value.get("error") {
                    return Err(LlmError::new(
                        format!("the language model failed mid-answer: {err}"),
                        true,
                    ));
                }
                if let Some(u) = value.get("usage").filter(|u| !u.is_null()) {
                    usage = serde_json::from_value(u.clone()).unwrap_or_default();
                }
                let Some(choice) = value["choices"].get(0) else {
                    continue;
                };
                if let Some(f) = choice["finish_reason"].as_str() {
                    finish = Some(f.to_string());
                }
                let delta = &choice["delta"];
                if let Some(t) = delta["content"].as_str() {
                    text.push_str(t);
                    if holding.is_none() && !text.trim_start().is_empty() {
                        // Decided at the first non-blank character.
                        holding = Some(looks_like_call(&text));
                    }
                    if holding == Some(false) {
                        on_text(&text[shown..]);
                        shown = text.len();
                    }
                }
                if let Some(parts) = delta["tool_calls"].as_array() {
                    for part in parts {
                        let index = part["index"].as_u64().unwrap_or(calls.len() as u64) as usize;
                        if index > 128 {
                            return Err(LlmError::new(
                                "more than 128 tool calls in one answer",
                                false,
                            ));
                        }
                        while calls.len() <= index {
                            calls.push(ToolCall {
                                id: String::new(),
                                kind: function_type(),
                                function: FunctionCall {
                                    name: String::new(),
                                    arguments: String::new(),
                                },
                            });
                        }
                        let call = &mut calls[index];
                        if let Some(id) = part["id"].as_str() {
                            call.id = id.to_string();
                        }
                        if let Some(n) = part["function"]["name"].as_str() {
                            call.function.name.push_str(n);
                        }
                        if let Some(a) = part["function"]["arguments"].as_str() {
                            call.function.arguments.push_str(a);
                        }
                    }
                }
            }
        }
        name_calls(&mut calls);
        if holding == Some(true) && calls_in_text(&text, known).is_none() {
            // Held back as a possible call, but it is an answer after all.
            on_text(&text[shown..]);
        }
        Ok(Reply {
            message: Message {
                role: "assistant".into(),
                content: (!text.is_empty()).then_some(text),
                tool_calls: calls,
                tool_call_id: None,
            },
            usage,
            finish_reason: finish,
        })
    }
}

/// A non-streamed completion's first choice.
fn parse_completion(value: &Value) -> Result<Reply, LlmError> {
    if let Some(err) = value.get("error") {
        return Err(LlmError::new(
            format!("the language model failed: {err}"),
            true,
        ));
    }
    let choice = value["choices"]
        .get(0)
        .ok_or_else(|| LlmError::new("the language model answered without a choice", true))?;
    let mut message: Message = serde_json::from_value(choice["message"].clone()).map_err(|e| {
        LlmError::new(
            format!("the language model's message is malformed: {e}"),
            true,
        )
    })?;
    name_calls(&mut message.tool_calls);
    Ok(Reply {
        message,
        usage: serde_json::from_value(value["usage"].clone()).unwrap_or_default(),
        finish_reason: choice["finish_reason"].as_str().map(String::from),
    })
}

/// Gives calls the server left without an id one (`call_<n>`), so tool messages can answer them.
fn name_calls(calls: &mut [ToolCall]) {
    for (i, c) in calls.iter_mut().enumerate() {
        if c.id.is_empty() {
            c.id = format!("call_{i}");
        }
    }
}

/// Whether text starts like a tool call written as JSON (held back from the user until known).
fn looks_like_call(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with('{') || t.starts_with('[') || t.starts_with("```") || t.starts_with("<tool_call>")
}

/// Tool calls a model wrote as text: the whole answer a JSON call (or a list of them), or
/// fenced (```json) or tagged (`<tool_call>`) blocks holding them. Every name must be a known
/// tool — otherwise this is an answer that happens to contain JSON, and `None` is returned.
pub fn calls_in_text(text: &str, known: &(dyn Fn(&str) -> bool + Sync)) -> Option<Vec<ToolCall>> {
    let mut blocks: Vec<&str> = Vec::new();
    let trimmed = text.trim();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        blocks.push(trimmed);
    } else {
        for (open, close) in [
            ("<tool_call>", "</tool_call>"),
            ("```json", "```"),
            ("```", "```"),
        ] {
            let mut rest = text;
            while let Some(start) = rest.find(open) {
                let after = &rest[start + open.len()..];
                let Some(end) = after.find(close) else { break };
                blocks.push(after[..end].trim());
                rest = &after[end + close.len()..];
            }
            if !blocks.is_empty() {
                break;
            }
        }
    }
    let mut calls = Vec::new();
    for block in blocks {
        let value: Value = serde_json::from_str(block).ok()?;
        collect_calls(&value, &mut calls)?;
    }
    if calls.is_empty() || !calls.iter().all(|c| known(&c.function.name)) {
        return None;
    }
    Some(calls)
}

fn collect_calls(value: &Value, out: &mut Vec<ToolCall>) -> Option<()> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| collect_calls(v, out)),
        Value::Object(o) if o.contains_key("tool_calls") => collect_calls(&o["tool_calls"], out),
        Value::Object(o) => {
            let f = o.get("function").filter(|f| f.is_object()).unwrap_or(value);
            let name = f
                .get("name")
                .or_else(|| o.get("tool"))?
                .as_str()?
                .to_string();
            let args = ["arguments", "parameters", "args"]
                .iter()
                .find_map(|k| f.get(*k))
                .cloned()
                .unwrap_or_else(|| json!({}));
            // Arguments may be an object or a JSON text of one.
            let args = match args {
                Value::String(s) => serde_json::from_str::<Value>(&s).ok()?,
                v => v,
            };
            if !args.is_object() {
                return None;
            }
            out.push(ToolCall {
                id: format!("call_text_{}", out.len()),
                kind: function_type(),
                function: FunctionCall {
                    name,
                    arguments: args.to_string(),
                },
            });
            Some(())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(n: &str) -> bool {
        matches!(n, "list_shortage_risks" | "get_inventory_status")
    }

    /// With tools in the prompt, the request has no `tools` field: the tools are described
    /// after the system message, an earlier call is the JSON text the model would write, and
    /// its result a user message naming the tool — so a chat template without tool support
    /// loses nothing. Natively, the same conversation goes as it is.
    #[test]
    fn tools_in_the_prompt_replace_the_tools_field_and_tool_messages() {
        let tool = ToolSpec {
            name: "get_inventory_status".into(),
            description: "Stock of a part.".into(),
            parameters: json!({"type": "object", "properties": {"part_id": {"type": "string"}}}),
        };
        let mut call = Message::assistant("");
        call.content = None;
        call.tool_calls = vec![ToolCall {
            id: "c1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "get_inventory_status".into(),
                arguments: r#"{"part_id":"P-00001"}"#.into(),
            },
        }];
        let messages = [
            Message::system("You help a factory."),
            Message::user("Stock of P-00001?"),
            call,
            Message::tool("c1", r#"{"on_hand":287}"#),
        ];
        let settings = |tools_in_prompt| LlmSettings {
            base_url: "http://127.0.0.1:9/v1".into(),
            model: "m".into(),
            api_key: None,
            stream: false,
            tools_in_prompt,
            timeout: Duration::from_secs(5),
            temperature: 0.0,
        };
        let native = Llm::new(settings(false))
            .unwrap()
            .body(&messages, std::slice::from_ref(&tool));
        assert_eq!(
            native["tools"][0]["function"]["name"],
            "get_inventory_status"
        );
        assert_eq!(native["messages"][3]["role"], "tool");

        let body = Llm::new(settings(true))
            .unwrap()
            .body(&messages, std::slice::from_ref(&tool));
        assert!(body.get("tools").is_none(), "{body:#}");
        let m = body["messages"].as_array().unwrap();
        assert_eq!(m.len(), 4);
        let system = m[0]["content"].as_str().unwrap();
        assert!(system.starts_with("You help a factory."));
        assert!(system.contains("- get_inventory_status: Stock of a part."));
        assert!(system.contains(r#""part_id""#));
        assert_eq!(m[2]["role"], "assistant");
        assert!(m[2].get("tool_calls").is_none());
        let written: Value = serde_json::from_str(m[2]["content"].as_str().unwrap()).unwrap();
        assert_eq!(
            written,
            json!({"name": "get_inventory_status", "arguments": {"part_id": "P-00001"}})
        );
        assert_eq!(m[3]["role"], "user");
        assert_eq!(
            m[3]["content"],
            r#"Result of get_inventory_status: {"on_hand":287}"#
        );
        // The call as the model writes it back is read as a call.
        let read = calls_in_text(m[2]["content"].as_str().unwrap(), &known);
        assert_eq!(read.map(|c| c.len()), Some(1));
    }

    /// The shapes small models use for calls in text are all read; arguments may be a JSON
    /// text; unknown names and ordinary answers are not mistaken for calls.
    #[test]
    fn tool_calls_written_as_text_are_read_and_answers_are_not() {
        let one = calls_in_text(
            r#"{"name": "list_shortage_risks", "arguments": {"warehouse_id": "WH-01"}}"#,
            &known,
        )
        .unwrap();
        assert_eq!(one[0].function.name, "list_shortage_risks");
        assert_eq!(one[0].function.arguments, r#"{"warehouse_id":"WH-01"}"#);

        let fenced = calls_in_text(
            "I will check.\n```json\n{\"function\": {\"name\": \"get_inventory_status\", \"arguments\": \"{\\\"part_id\\\": \\\"P-1\\\"}\"}}\n```",
            &known,
        )
        .unwrap();
        assert_eq!(fenced[0].function.arguments, r#"{"part_id":"P-1"}"#);

        let tagged = calls_in_text(
            "<tool_call>{\"name\": \"list_shortage_risks\", \"parameters\": {}}</tool_call>\n<tool_call>{\"name\": \"get_inventory_status\"}</tool_call>",
            &known,
        )
        .unwrap();
        assert_eq!(tagged.len(), 2);
        assert_ne!(tagged[0].id, tagged[1].id);

        let listed = calls_in_text(
            r#"{"tool_calls": [{"name": "list_shortage_risks", "arguments": {}}]}"#,
            &known,
        )
        .unwrap();
        assert_eq!(listed.len(), 1);

        assert!(calls_in_text(r#"{"name": "drop_tables", "arguments": {}}"#, &known).is_none());
        assert!(calls_in_text("Stock of P-1 is 40 units.", &known).is_none());
        assert!(calls_in_text(r#"{"on_hand": 40}"#, &known).is_none());
        assert!(
            calls_in_text(
                r#"{"name": "list_shortage_risks", "arguments": [1]}"#,
                &known
            )
            .is_none()
        );
    }

    /// A streamed answer is assembled from its deltas: text, tool calls split over chunks,
    /// usage from the last chunk.
    #[tokio::test]
    async fn a_streamed_answer_is_assembled_from_its_deltas() {
        use axum::routing::post;
        let chunks = [
            json!({"choices":[{"index":0,"delta":{"role":"assistant","content":"Let me "}}]}),
            json!({"choices":[{"index":0,"delta":{"content":"check."}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"list_shortage_risks","arguments":"{\"warehouse"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"_id\":\"WH-01\"}"}}]},"finish_reason":"tool_calls"}]}),
            json!({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7}}),
        ];
        let body: String = chunks
            .iter()
            .map(|c| format!("data: {c}\n\n"))
            .chain(std::iter::once("data: [DONE]\n\n".to_string()))
            .collect();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            post(move || {
                let body = body.clone();
                async move { ([("content-type", "text/event-stream")], body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let llm = Llm::new(LlmSettings {
            base_url: format!("http://{addr}/v1"),
            model: "m".into(),
            api_key: None,
            stream: true,
            tools_in_prompt: false,
            timeout: Duration::from_secs(5),
            temperature: 0.0,
        })
        .unwrap();
        let mut shown = String::new();
        let reply = llm
            .complete(&[Message::user("hi")], &[], &known, &mut |t| {
                shown.push_str(t)
            })
            .await
            .unwrap();
        assert_eq!(shown, "Let me check.");
        assert_eq!(reply.message.tool_calls.len(), 1);
        assert_eq!(reply.message.tool_calls[0].id, "c1");
        assert_eq!(
            reply.message.tool_calls[0].function.arguments,
            r#"{"warehouse_id":"WH-01"}"#
        );
        assert_eq!(reply.usage.completion_tokens, 7);
        assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
    }
}
