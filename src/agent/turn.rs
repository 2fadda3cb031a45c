//! One turn of the agent: the user's message, then model steps and tool calls until the model
//! answers or the step limit is reached.
//!
//! - Model failures that may pass (timeouts, 429, 5xx) are retried with backoff; tool calls
//!   that could not reach their server too. A tool's refusal (bad arguments, not permitted) is
//!   given to the model, which may correct its call.
//! - An identical call (same tool, same arguments) in one turn runs once; the model is told it
//!   already has the result.
//! - Results longer than `tool_result_chars` are cut, saying so.
//! - A tool that changes something (not annotated read-only) runs only after the user
//!   confirms it. Once the turn has read text written by others (tickets, documents, other
//!   servers), a standing `--yes` no longer counts: only an explicit confirmation of that
//!   exact call does, so an instruction hidden in data cannot make the agent act.
//! - When the model fails for good or the steps run out, the answer says so plainly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::hub::{Hub, HubError, refusal_value};
use super::llm::{Llm, LlmError, Message, ToolSpec, Usage};

/// Most characters of a message list or tool result recorded on a span.
const TRACED_CHARS: usize = 32_000;

/// Limits of one turn.
#[derive(Debug, Clone)]
pub struct TurnLimits {
    pub max_steps: usize,
    pub tool_result_chars: usize,
    /// Further attempts after a retryable failure (model or tool).
    pub retries: u32,
    /// First backoff; doubled per attempt.
    pub backoff: Duration,
}

/// What happens during a turn, as it happens (for streaming to a terminal or a browser).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    Text {
        delta: String,
    },
    ToolCall {
        id: String,
        name: String,
        arguments: Value,
    },
    ToolResult {
        id: String,
        name: String,
        is_error: bool,
        duplicate: bool,
        result: Value,
    },
    Confirmation {
        name: String,
        arguments: Value,
        approved: bool,
    },
    Retry {
        what: String,
        attempt: u32,
        error: String,
    },
    Answer {
        text: String,
    },
}

/// An action the model wants to run, awaiting the user's word.
#[derive(Debug, Clone, Serialize)]
pub struct PendingAction {
    pub tool: String,
    pub arguments: Value,
    /// The turn has read text written by others before asking for this.
    pub after_free_text: bool,
}

/// Who confirms actions.
#[async_trait::async_trait]
pub trait Confirm: Send + Sync {
    async fn confirm(&self, action: &PendingAction) -> bool;
}

/// A standing answer for non-interactive use: `--yes` approves actions unless the turn read
/// text written by others; without it every action is declined.
pub struct Standing {
    pub yes: bool,
}

#[async_trait::async_trait]
impl Confirm for Standing {
    async fn confirm(&self, action: &PendingAction) -> bool {
        self.yes && !action.after_free_text
    }
}

/// Approvals given with a request (the console's flow): exactly these calls — tool and
/// arguments — may run, whatever the turn read before; nothing else.
pub struct Approved {
    calls: Vec<(String, String)>,
}

impl Approved {
    pub fn new(calls: Vec<(String, Value)>) -> Self {
        Approved {
            calls: calls.into_iter().map(|(t, a)| (t, canonical(&a))).collect(),
        }
    }
}

#[async_trait::async_trait]
impl Confirm for Approved {
    async fn confirm(&self, action: &PendingAction) -> bool {
        let args = canonical(&action.arguments);
        self.calls
            .iter()
            .any(|(t, a)| *t == action.tool && *a == args)
    }
}

/// One tool call of a turn, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallRecord {
    pub name: String,
    pub server: Option<String>,
    pub arguments: Value,
    pub result: Value,
    pub is_error: bool,
    /// The same call ran earlier in this turn; it was not run again.
    pub duplicate: bool,
    /// For actions: whether the user confirmed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<bool>,
    pub ms: f64,
}

/// What a turn did.
#[derive(Debug, Clone, Serialize)]
pub struct TurnReport {
    pub answer: String,
    pub tool_calls: Vec<ToolCallRecord>,
    pub tokens: Usage,
    pub latency_ms: f64,
    /// Time spent waiting for the model, and for tools.
    pub llm_ms: f64,
    pub tool_ms: f64,
    pub steps: usize,
    /// Why the turn ended without a model answer, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gave_up: Option<String>,
    /// The turn's trace (when traces are exported, `tracing.otlp_endpoint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The messages this turn added to the conversation (user first).
    #[serde(skip)]
    pub messages: Vec<Message>,
}

/// The orchestrator: a model, the MCP servers it may use, and its instructions.
pub struct Agent {
    pub(crate) llm: Llm,
    pub(crate) hub: Hub,
    pub(crate) limits: TurnLimits,
    pub(crate) system: String,
    /// Whom it answers for (recorded on its traces as `user.id`).
    pub(crate) principal: String,
}

impl Agent {
    pub fn new(llm: Llm, hub: Hub, limits: TurnLimits, system: String, principal: &str) -> Agent {
        Agent {
            llm,
            hub,
            limits,
            system,
            principal: principal.to_string(),
        }
    }

    /// Ends the MCP sessions.
    pub async fn close(self) {
        self.hub.close().await;
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn llm(&self) -> &Llm {
        &self.llm
    }

    /// Runs one turn over `history` (earlier messages, no system message) and `user`'s text.
    pub async fn turn(
        &self,
        history: &[Message],
        user: &str,
        confirm: &dyn Confirm,
        observe: &(dyn Fn(Step) + Send + Sync),
    ) -> TurnReport {
        self.turn_in(None, history, user, confirm, observe).await
    }

    /// [`Self::turn`] in conversation `session`, traced as one `invoke_agent` span (with the
    /// model's and the tools' spans under it) carrying the session and the user.
    pub async fn turn_in(
        &self,
        session: Option<&str>,
        history: &[Message],
        user: &str,
        confirm: &dyn Confirm,
        observe: &(dyn Fn(Step) + Send + Sync),
    ) -> TurnReport {
        let span = tracing::info_span!(
            "invoke_agent",
            otel.name = "invoke_agent millstream",
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = "millstream",
            gen_ai.request.model = %self.llm.model(),
            session.id = session.unwrap_or(""),
            user.id = %self.principal,
            gen_ai.input.messages = %json!([{"role": "user", "content": user}]),
            gen_ai.output.messages = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
        );
        let mut report = tracing::Instrument::instrument(
            self.run_turn(history, user, confirm, observe),
            span.clone(),
        )
        .await;
        span.record(
            "gen_ai.output.messages",
            json!([{"role": "assistant", "content": report.answer}]).to_string(),
        );
        span.record("gen_ai.usage.input_tokens", report.tokens.prompt_tokens);
        span.record(
            "gen_ai.usage.output_tokens",
            report.tokens.completion_tokens,
        );
        report.trace_id = span.in_scope(crate::telemetry::trace_id);
        report
    }

    async fn run_turn(
        &self,
        history: &[Message],
        user: &str,
        confirm: &dyn Confirm,
        observe: &(dyn Fn(Step) + Send + Sync),
    ) -> TurnReport {
        let started = Instant::now();
        let mut messages = Vec::with_capacity(history.len() + 8);
        messages.push(Message::system(self.system.clone()));
        messages.extend_from_slice(history);
        let first_new = messages.len();
        messages.push(Message::user(user));
        let mut report = TurnReport {
            answer: String::new(),
            tool_calls: Vec::new(),
            tokens: Usage::default(),
            latency_ms: 0.0,
            llm_ms: 0.0,
            tool_ms: 0.0,
            steps: 0,
            gave_up: None,
            trace_id: None,
            messages: Vec::new(),
        };
        // Results of this turn's calls, by tool and canonical arguments.
        let mut done: BTreeMap<String, String> = BTreeMap::new();
        let mut read_free_text = false;
        let mut answer = None;
        for step in 0..self.limits.max_steps {
            report.steps = step + 1;
            if let Err(e) = self.hub.refresh().await {
                tracing::warn!(error = %e, "reading the tool lists again");
            }
            let tools = self.hub.tools();
            let specs: Vec<ToolSpec> = tools
                .iter()
                .map(|t| ToolSpec {
                    name: t.name.clone(),
                    description: t.description.clone(),
                    parameters: t.parameters.clone(),
                })
                .collect();
            let known = |n: &str| tools.iter().any(|t| t.name == n);
            let t = Instant::now();
            let reply = self.complete(&messages, &specs, &known, observe).await;
            report.llm_ms += t.elapsed().as_secs_f64() * 1e3;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    report.gave_up = Some(format!("the language model failed: {e}"));
                    answer = Some(format!(
                        "I could not finish: the language model failed ({e}). Nothing was changed \
                         after the last confirmed action; please try again."
                    ));
                    break;
                }
            };
            report.tokens += reply.usage;
            let calls = reply.message.tool_calls.clone();
            messages.push(reply.message.clone());
            if calls.is_empty() {
                answer = Some(reply.message.content.unwrap_or_default());
                break;
            }
            for call in calls {
                let name = call.function.name.clone();
                let arguments: Result<Value, _> = if call.function.arguments.trim().is_empty() {
                    Ok(json!({}))
                } else {
                    serde_json::from_str(&call.function.arguments)
                };
                let shown_args = match &arguments {
                    Ok(v) => v.clone(),
                    Err(_) => Value::String(call.function.arguments.clone()),
                };
                observe(Step::ToolCall {
                    id: call.id.clone(),
                    name: name.clone(),
                    arguments: shown_args.clone(),
                });
                let t = Instant::now();
                let key = format!("{name} {}", canonical(&shown_args));
                let tool = self.hub.tool(&name);
                let mut record = ToolCallRecord {
                    name: name.clone(),
                    server: tool.as_ref().map(|t| t.server.clone()),
                    arguments: shown_args.clone(),
                    result: Value::Null,
                    is_error: true,
                    duplicate: false,
                    confirmed: None,
                    ms: 0.0,
                };
                let content: String = if let Some(earlier) = done.get(&key) {
                    record.duplicate = true;
                    record.is_error = false;
                    record.result = json!({"same_as": earlier});
                    format!(
                        "This exact call already ran in this turn (call {earlier}); use its result above instead of calling again."
                    )
                } else {
                    let (value, is_error) = match (&tool, arguments) {
                        (None, _) => (
                            json!({"error": format!("there is no tool named {name:?}"), "tools": tools.iter().map(|t| t.name.clone()).collect::<Vec<_>>()}),
                            true,
                        ),
                        (Some(_), Err(e)) => (
                            json!({"error": format!("the arguments are not a JSON object: {e}")}),
                            true,
                        ),
                        (Some(_), Ok(a)) if !a.is_object() => (
                            json!({"error": "the arguments must be a JSON object"}),
                            true,
                        ),
                        (Some(tool), Ok(a)) => {
                            let approved = if tool.action {
                                let pending = PendingAction {
                                    tool: name.clone(),
                                    arguments: a.clone(),
                                    after_free_text: read_free_text,
                                };
                                let ok = confirm.confirm(&pending).await;
                                observe(Step::Confirmation {
                                    name: name.clone(),
                                    arguments: a.clone(),
                                    approved: ok,
                                });
                                record.confirmed = Some(ok);
                                ok
                            } else {
                                true
                            };
                            if approved {
                                if tool.free_text {
                                    read_free_text = true;
                                }
                                let object = match a {
                                    Value::Object(o) => o,
                                    _ => unreachable!("checked above"),
                                };
                                let args_text = Value::Object(object.clone()).to_string();
                                let span = tracing::info_span!(
                                    "execute_tool",
                                    otel.name = %format!("execute_tool {name}"),
                                    gen_ai.operation.name = "execute_tool",
                                    gen_ai.tool.name = %name,
                                    gen_ai.tool.call.id = %call.id,
                                    gen_ai.tool.call.arguments = %args_text,
                                    gen_ai.tool.call.result = tracing::field::Empty,
                                    error.type = tracing::field::Empty,
                                );
                                let (value, is_error) = tracing::Instrument::instrument(
                                    self.call_tool(&name, object, observe),
                                    span.clone(),
                                )
                                .await;
                                if !span.is_disabled() {
                                    span.record(
                                        "gen_ai.tool.call.result",
                                        truncate(&value.to_string(), TRACED_CHARS),
                                    );
                                    if is_error {
                                        span.record("error.type", "tool_error");
                                    }
                                }
                                (value, is_error)
                            } else {
                                (
                                    json!({"error": "not confirmed by the user: the action was NOT carried out. Tell the user exactly what you would do and that it needs their confirmation."}),
                                    true,
                                )
                            }
                        }
                    };
                    record.is_error = is_error;
                    record.result = value.clone();
                    done.insert(key, call.id.clone());
                    truncate(&value.to_string(), self.limits.tool_result_chars)
                };
                record.ms = t.elapsed().as_secs_f64() * 1e3;
                report.tool_ms += record.ms;
                observe(Step::ToolResult {
                    id: call.id.clone(),
                    name,
                    is_error: record.is_error,
                    duplicate: record.duplicate,
                    result: record.result.clone(),
                });
                report.tool_calls.push(record);
                messages.push(Message::tool(&call.id, content));
            }
        }
        let answer = answer.unwrap_or_else(|| {
            report.gave_up = Some(format!("step limit ({}) reached", self.limits.max_steps));
            let used: Vec<&str> = report.tool_calls.iter().map(|c| c.name.as_str()).collect();
            format!(
                "I stopped after {} steps without a final answer (tools used: {}). Try a narrower \
                 question, or name the warehouse, customer or part.",
                self.limits.max_steps,
                if used.is_empty() {
                    "none".to_string()
                } else {
                    used.join(", ")
                }
            )
        });
        if report.gave_up.is_some() {
            // No model wrote this one: shown like an answer, remembered like one.
            observe(Step::Text {
                delta: answer.clone(),
            });
            messages.push(Message::assistant(answer.clone()));
        }
        observe(Step::Answer {
            text: answer.clone(),
        });
        report.answer = answer;
        report.messages = messages.split_off(first_new);
        report.latency_ms = started.elapsed().as_secs_f64() * 1e3;
        report
    }

    /// The model's next step, retrying failures that may pass.
    async fn complete(
        &self,
        messages: &[Message],
        specs: &[ToolSpec],
        known: &(dyn Fn(&str) -> bool + Sync),
        observe: &(dyn Fn(Step) + Send + Sync),
    ) -> Result<super::llm::Reply, LlmError> {
        let span = tracing::info_span!(
            "chat",
            otel.name = %format!("chat {}", self.llm.model()),
            gen_ai.operation.name = "chat",
            gen_ai.request.model = %self.llm.model(),
            gen_ai.input.messages = tracing::field::Empty,
            gen_ai.output.messages = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        if !span.is_disabled() {
            span.record(
                "gen_ai.input.messages",
                truncate(
                    &serde_json::to_string(messages).unwrap_or_default(),
                    TRACED_CHARS,
                ),
            );
        }
        let result = tracing::Instrument::instrument(
            self.complete_with_retries(messages, specs, known, observe),
            span.clone(),
        )
        .await;
        if !span.is_disabled() {
            match &result {
                Ok(r) => {
                    span.record(
                        "gen_ai.output.messages",
                        truncate(&json!([r.message]).to_string(), TRACED_CHARS),
                    );
                    span.record("gen_ai.usage.input_tokens", r.usage.prompt_tokens);
                    span.record("gen_ai.usage.output_tokens", r.usage.completion_tokens);
                }
                Err(e) => {
                    span.record(
                        "error.type",
                        if e.retryable {
                            "unavailable"
                        } else {
                            "refused"
                        },
                    );
                }
            }
        }
        result
    }

    async fn complete_with_retries(
        &self,
        messages: &[Message],
        specs: &[ToolSpec],
        known: &(dyn Fn(&str) -> bool + Sync),
        observe: &(dyn Fn(Step) + Send + Sync),
    ) -> Result<super::llm::Reply, LlmError> {
        let (result, _) = self
            .retrying(
                "language model",
                observe,
                |e: &LlmError| e.retryable,
                || async {
                    let mut on_text = |t: &str| {
                        observe(Step::Text {
                            delta: t.to_string(),
                        })
                    };
                    self.llm
                        .complete(messages, specs, known, &mut on_text)
                        .await
                },
            )
            .await;
        result
    }

    /// One tool call, retrying when its server could not be reached.
    async fn call_tool(
        &self,
        name: &str,
        arguments: serde_json::Map<String, Value>,
        observe: &(dyn Fn(Step) + Send + Sync),
    ) -> (Value, bool) {
        let (result, attempts) = self
            .retrying(
                &format!("tool {name}"),
                observe,
                HubError::retryable,
                || self.hub.call(name, arguments.clone()),
            )
            .await;
        match result {
            Ok(outcome) => (outcome.value, outcome.is_error),
            Err(e @ HubError::Unreachable { .. }) => (
                json!({"error": format!("{e} (after {attempts} attempts)")}),
                true,
            ),
            Err(e) => (refusal_value(&e), true),
        }
    }

    /// `attempt()` until it succeeds, fails for good, or has failed `limits.retries` more
    /// times; waits `backoff`, doubled each time, between attempts. Returns the last result and
    /// the attempts made.
    async fn retrying<T, E: std::fmt::Display, F, Fut>(
        &self,
        what: &str,
        observe: &(dyn Fn(Step) + Send + Sync),
        retryable: impl Fn(&E) -> bool,
        mut attempt: F,
    ) -> (Result<T, E>, u32)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut n = 0;
        loop {
            n += 1;
            match attempt().await {
                Err(e) if retryable(&e) && n <= self.limits.retries => {
                    observe(Step::Retry {
                        what: what.to_string(),
                        attempt: n,
                        error: e.to_string(),
                    });
                    tokio::time::sleep(self.limits.backoff * 2u32.pow(n - 1)).await;
                }
                other => return (other, n),
            }
        }
    }
}

/// `value` as text with object keys sorted, so equal arguments compare equal. serde_json's maps
/// are sorted (its `preserve_order` feature is off in this build; the test below would catch it
/// turning on).
fn canonical(value: &Value) -> String {
    value.to_string()
}

/// `text` cut to at most `max` characters, saying how much was left out.
pub fn truncate(text: &str, max: usize) -> String {
    let total = text.chars().count();
    if total <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max).collect();
    format!(
        "{kept}… [cut: {max} of {total} characters shown; ask for fewer rows or a narrower filter]"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_arguments_in_any_key_order_are_one_call() {
        let a = json!({"b": 1, "a": {"y": [1, {"q": 2, "p": 1}], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, {"p": 1, "q": 2}]}, "b": 1});
        assert_eq!(canonical(&a), canonical(&b));
        assert_ne!(canonical(&a), canonical(&json!({"b": 2, "a": {}})));
    }

    #[test]
    fn long_results_are_cut_and_say_so() {
        let t = truncate(&"é".repeat(50), 10);
        assert!(t.starts_with(&"é".repeat(10)));
        assert!(t.contains("10 of 50 characters"));
        assert_eq!(truncate("short", 10), "short");
    }
}
