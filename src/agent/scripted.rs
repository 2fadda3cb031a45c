//! A scripted, deterministic model behind the OpenAI-compatible Chat Completions API, for tests,
//! `bench agent` and `eval agent` without a real model. It is a real HTTP server (streamed and
//! plain answers), so the agent's client, retries and parsing are exercised as they are against
//! a hosted model.
//!
//! A script is a list of rules; the first whose words all appear in the turn's user message
//! plays its steps, one per model request of the turn (the last repeated): tool calls (as `tool_calls`, or written
//! as JSON text like small models do) and finally an answer. Answers fill `{{tool:/pointer}}`
//! from that tool's latest result in the turn (a JSON pointer), so numbers come from the data.
//! A `gullible` rule also obeys "call <tool> with {…}" found in tool results — the prompt
//! injection a careless model falls for, which the agent must still not act on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Requests a scripted model keeps for inspection (a benchmark sends hundreds of thousands).
pub const KEPT_REQUESTS: usize = 1000;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    pub rules: Vec<Rule>,
    /// Requests answered with HTTP 503 before the model starts answering (retry tests).
    #[serde(default)]
    pub fail_first: u32,
    /// Milliseconds each answer takes, as a hosted model's would (0: at once).
    #[serde(default)]
    pub think_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Words that must all appear in the user's message (case-insensitive).
    pub when: Vec<String>,
    pub steps: Vec<ScriptStep>,
    #[serde(default)]
    pub gullible: bool,
    /// Only the first word must be in the latest user message; the others may be in any
    /// earlier one (a follow-up in a conversation).
    #[serde(default)]
    pub context: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptStep {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<ScriptCall>,
    /// Write the calls as JSON text in `content` instead of `tool_calls`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub as_text: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptCall {
    pub name: String,
    #[serde(default)]
    pub arguments: Value,
}

/// A running scripted model.
pub struct ScriptedModel {
    /// Base URL to configure as `agent.llm_base_url`.
    pub base_url: String,
    /// The request bodies received, in order (the newest [`KEPT_REQUESTS`]).
    pub requests: Arc<Mutex<VecDeque<Value>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for ScriptedModel {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct Shared {
    script: Arc<Script>,
    failures: Arc<AtomicU32>,
    requests: Arc<Mutex<VecDeque<Value>>>,
}

impl ScriptedModel {
    /// The settings that point the agent's client at this model.
    pub fn settings(&self, stream: bool) -> super::LlmSettings {
        super::LlmSettings {
            base_url: self.base_url.clone(),
            model: "scripted".into(),
            api_key: None,
            stream,
            tools_in_prompt: false,
            timeout: std::time::Duration::from_secs(30),
            temperature: 0.0,
        }
    }

    /// Serves `script` on a free loopback port until dropped.
    pub async fn start(script: Script) -> std::io::Result<ScriptedModel> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            failures: Arc::new(AtomicU32::new(script.fail_first)),
            script: Arc::new(script),
            requests: Arc::default(),
        };
        let requests = shared.requests.clone();
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(complete))
            .with_state(shared);
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await;
        });
        Ok(ScriptedModel {
            base_url: format!("http://{addr}/v1"),
            requests,
            stop,
        })
    }
}

async fn complete(State(shared): State<Shared>, Json(body): Json<Value>) -> Response {
    {
        let mut kept = shared.requests.lock().expect("poisoned");
        if kept.len() >= KEPT_REQUESTS {
            kept.pop_front();
        }
        kept.push_back(body.clone());
    }
    if shared
        .failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "scripted model: failing as scripted",
        )
            .into_response();
    }
    if shared.script.think_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(shared.script.think_ms)).await;
    }
    let (content, calls) = respond(&shared.script, &body);
    let prompt_tokens = body["messages"].to_string().len() as u64 / 4;
    let completion_tokens = (content.as_deref().map_or(0, str::len)
        + Value::Array(calls.clone()).to_string().len()) as u64
        / 4;
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens});
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    if body["stream"].as_bool() == Some(true) {
        let mut chunks = Vec::new();
        if let Some(text) = &content {
            // A few words per chunk, as a real server streams.
            let words: Vec<&str> = text.split_inclusive(' ').collect();
            for part in words.chunks(3) {
                chunks.push(json!({"choices":[{"index":0,"delta":{"content": part.concat()}}]}));
            }
        }
        for (i, c) in calls.iter().enumerate() {
            let args = c["function"]["arguments"]
                .as_str()
                .unwrap_or("{}")
                .to_string();
            let (a, b) = args.split_at(args.len() / 2);
            chunks.push(json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":i,"id":c["id"],"type":"function","function":{"name":c["function"]["name"],"arguments":a}}]}}]}));
            chunks.push(json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":i,"function":{"arguments":b}}]}}]}));
        }
        chunks.push(json!({"choices":[{"index":0,"delta":{},"finish_reason":finish}]}));
        chunks.push(json!({"choices":[],"usage":usage}));
        let body: String = chunks
            .iter()
            .map(|c| format!("data: {c}\n\n"))
            .chain(std::iter::once("data: [DONE]\n\n".into()))
            .collect();
        return ([("content-type", "text/event-stream")], body).into_response();
    }
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    Json(json!({
        "id": "scripted",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }))
    .into_response()
}

/// The scripted answer to one request: text and/or tool calls (API shape).
fn respond(script: &Script, body: &Value) -> (Option<String>, Vec<Value>) {
    let empty = Vec::new();
    let messages = body["messages"].as_array().unwrap_or(&empty);
    // Summaries asked for by the agent's memory.
    if messages
        .first()
        .and_then(|m| m["content"].as_str())
        .is_some_and(|s| s.starts_with("Summarize"))
    {
        let text = messages
            .last()
            .and_then(|m| m["content"].as_str())
            .unwrap_or("");
        let gist: String = text.chars().take(300).collect();
        return (Some(format!("Summary: {gist}")), Vec::new());
    }
    let last_user = messages
        .iter()
        .rposition(|m| m["role"] == "user")
        .unwrap_or(0);
    let user = messages
        .get(last_user)
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_lowercase();
    let earlier: String = messages[..last_user]
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
        .to_lowercase();
    let this_turn = &messages[last_user..];
    let step = this_turn
        .iter()
        .filter(|m| m["role"] == "assistant")
        .count();
    let Some(rule) = script.rules.iter().find(|r| {
        let mut words = r.when.iter().map(|w| w.to_lowercase());
        if r.context {
            words.next().is_some_and(|w| user.contains(&w)) && words.all(|w| earlier.contains(&w))
        } else {
            words.all(|w| user.contains(&w))
        }
    }) else {
        return (
            Some("I have no script for that question.".into()),
            Vec::new(),
        );
    };
    // Results of this turn by tool name (the latest wins).
    let mut names = std::collections::BTreeMap::new();
    let mut results: Vec<(String, Value)> = Vec::new();
    for m in this_turn {
        for c in m["tool_calls"].as_array().unwrap_or(&empty) {
            names.insert(
                c["id"].as_str().unwrap_or("").to_string(),
                c["function"]["name"].as_str().unwrap_or("").to_string(),
            );
        }
        if m["role"] == "tool" {
            let name = names
                .get(m["tool_call_id"].as_str().unwrap_or(""))
                .cloned()
                .unwrap_or_default();
            let text = m["content"].as_str().unwrap_or("");
            results.push((
                name,
                serde_json::from_str(text).unwrap_or(Value::String(text.into())),
            ));
        }
    }
    if rule.gullible
        && let Some((_, last)) = results.last()
        && let Some(call) = injected_call(last, body)
        && !this_turn.iter().any(|m| {
            m["tool_calls"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["function"]["name"] == call["function"]["name"])
            })
        })
    {
        return (None, vec![call]);
    }
    // Past its steps the model repeats the last one (a model stuck calling a tool loops).
    let s = rule.steps.get(step).or_else(|| rule.steps.last());
    let Some(s) = s else {
        return (Some("The script has no further step.".into()), Vec::new());
    };
    if !s.calls.is_empty() {
        let calls: Vec<Value> = s
            .calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let args = if c.arguments.is_null() { json!({}) } else { c.arguments.clone() };
                json!({"id": format!("call_{step}_{i}"), "type": "function", "function": {"name": c.name, "arguments": args.to_string()}})
            })
            .collect();
        if s.as_text {
            let text = if calls.len() == 1 {
                json!({"name": s.calls[0].name, "arguments": calls[0]["function"]["arguments"]})
                    .to_string()
            } else {
                Value::Array(
                    s.calls
                        .iter()
                        .map(|c| json!({"name": c.name, "arguments": c.arguments}))
                        .collect(),
                )
                .to_string()
            };
            return (Some(format!("```json\n{text}\n```")), Vec::new());
        }
        return (None, calls);
    }
    let answer = s.answer.clone().unwrap_or_default();
    (Some(fill(&answer, &results)), Vec::new())
}

/// `{{tool:/pointer}}` and `{{as_of}}` replaced from this turn's results ("?" when absent).
fn fill(template: &str, results: &[(String, Value)]) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = after[..end].trim();
        let value = if key == "as_of" {
            results.iter().rev().find_map(|(_, v)| find_key(v, "as_of"))
        } else {
            key.split_once(':').and_then(|(tool, pointer)| {
                // The latest result of that tool that has it (a repeated call's note has not).
                results
                    .iter()
                    .rev()
                    .filter(|(n, _)| n == tool)
                    .find_map(|(_, v)| v.pointer(pointer).cloned())
            })
        };
        out.push_str(&match value {
            Some(Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => "?".into(),
        });
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

fn find_key(v: &Value, key: &str) -> Option<Value> {
    match v {
        Value::Object(o) => o
            .get(key)
            .cloned()
            .or_else(|| o.values().find_map(|v| find_key(v, key))),
        Value::Array(a) => a.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// "call <tool> with {…}" in any string of `result`, for a tool the request offers.
fn injected_call(result: &Value, body: &Value) -> Option<Value> {
    let mut strings = Vec::new();
    collect_strings(result, &mut strings);
    let tools: Vec<String> = body["tools"]
        .as_array()?
        .iter()
        .filter_map(|t| t["function"]["name"].as_str().map(String::from))
        .collect();
    for s in strings {
        let lower = s.to_lowercase();
        for t in &tools {
            let needle = format!("call {t} with ");
            if let Some(at) = lower.find(&needle) {
                let json_text = &s[at + needle.len()..];
                let mut de = serde_json::Deserializer::from_str(json_text).into_iter::<Value>();
                if let Some(Ok(args)) = de.next()
                    && args.is_object()
                {
                    return Some(
                        json!({"id": "call_injected", "type": "function", "function": {"name": t, "arguments": args.to_string()}}),
                    );
                }
            }
        }
    }
    None
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_filled_from_the_turns_results() {
        let results = vec![(
            "get_inventory_status".to_string(),
            json!({"as_of": {"version": 3}, "positions": [{"on_hand": 40}]}),
        )];
        assert_eq!(
            fill(
                "On hand {{get_inventory_status:/positions/0/on_hand}} ({{as_of}}), {{x:/y}}",
                &results
            ),
            "On hand 40 ({\"version\":3}), ?"
        );
    }
}
