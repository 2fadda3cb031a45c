//! `millstream bench agent`: agent sessions turning back to back against the scripted model
//! (a real OpenAI-compatible HTTP server, so client and parsing costs count) and millstream's
//! MCP server in-process, over a scratch lakehouse with the reference data. Each turn makes two
//! tool calls (governed SQL), answers from their results and is remembered in
//! `ops.conversations` (write-behind, as under `serve`), as a chat turn is. Reports turns/s and
//! the agent's overhead per turn and per tool call excluding the model's time: orchestration,
//! MCP, the queries, memory.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::agent::scripted::{Script, ScriptedModel};
use crate::agent::{self, Chat, Memory, Standing};
use crate::config::Config;
use crate::lakehouse::Lakehouse;
use crate::supervise::Supervisor;

fn script(think_ms: u64) -> Script {
    serde_json::from_value(json!({"think_ms": think_ms, "rules": [{"when": ["customers"], "steps": [
        {"calls": [
            {"name": "query_sql", "arguments": {"sql": "SELECT count(*) AS n FROM sales.customers"}},
            {"name": "query_sql", "arguments": {"sql": "SELECT region, count(*) AS n FROM sales.customers GROUP BY region ORDER BY region"}}
        ]},
        {"answer": "You have {{query_sql:/rows/0/n}} customers; the first region is {{query_sql:/rows/0/region}}."}
    ]}]}))
    .expect("a valid script")
}

pub async fn run(
    mut config: Config,
    sessions: usize,
    seconds: u64,
    think_ms: u64,
) -> anyhow::Result<()> {
    let scratch = super::Scratch::new()?;
    let lake = Lakehouse::new(scratch.0.join("lakehouse"))?;
    lake.ensure_all().await?;
    crate::sim::write_reference(&lake, &config.simulate, false).await?;
    config.knowledge.enabled = false;
    let model = ScriptedModel::start(script(think_ms)).await?;
    let mut sup = Supervisor::new();
    let serving = sup.stage("serve");
    let last = sup.stage("audit");
    let server = crate::mcp::start(
        &config,
        lake.clone(),
        None,
        &mut sup,
        crate::mcp::Stages {
            serving: &serving,
            last: &last,
        },
    )
    .await?;
    let principal = config.serve.principal.clone();
    let settings = model.settings(true);
    eprintln!(
        "bench agent: {sessions} sessions for {seconds} s as {principal}, the model taking \
         {think_ms} ms per answer"
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    // One memory for every session, as under `serve`: turns committed together.
    let memory = Memory::buffered(lake.clone());
    for s in 0..sessions {
        let llm = agent::Llm::new(settings.clone())?;
        let agent = agent::in_process(llm, &server, &principal, &config.agent).await?;
        let memory = memory.clone();
        let conversation = memory.load(&principal, &format!("bench-{s}")).await?;
        let budget = config.agent.memory_tokens;
        // Users do not all press enter in the same instant: with a thinking model, sessions
        // start spread over one answer's time instead of in lockstep.
        let start_after = Duration::from_millis(think_ms * s as u64 / sessions as u64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(start_after).await;
            // (overhead per turn, per tool call, model time) in ms, and failures
            let mut out: Vec<(f64, f64, f64)> = Vec::new();
            let mut failed = 0u64;
            let mut first_error: Option<String> = None;
            let mut chat = Chat {
                agent: &agent,
                memory,
                conversation,
                budget,
            };
            while Instant::now() < deadline {
                let t = Instant::now();
                match chat
                    .say(
                        "How many customers do we have?",
                        &Standing { yes: false },
                        &|_| {},
                    )
                    .await
                {
                    Ok(r) if r.gave_up.is_none() && !r.tool_calls.iter().any(|c| c.is_error) => {
                        let wall = t.elapsed().as_secs_f64() * 1e3;
                        let overhead = wall - r.llm_ms;
                        out.push((
                            overhead,
                            overhead / r.tool_calls.len().max(1) as f64,
                            r.llm_ms,
                        ));
                    }
                    Ok(r) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| {
                            r.gave_up.clone().unwrap_or_else(|| {
                                r.tool_calls
                                    .iter()
                                    .find(|c| c.is_error)
                                    .map(|c| c.result.to_string())
                                    .unwrap_or_default()
                            })
                        });
                    }
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            agent.close().await;
            (out, failed, first_error)
        }));
    }
    let mut all = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    for t in tasks {
        let (out, f, e) = t.await?;
        all.extend(out);
        failed += f;
        first_error = first_error.or(e);
    }
    let elapsed = started.elapsed().as_secs_f64();
    memory.flush().await?;
    let remembered = lake.count_rows(crate::agent::memory::TABLE).await?;
    sup.shutdown().await;
    let turns = all.len();
    let pick = |f: fn(&(f64, f64, f64)) -> f64| super::percentiles(all.iter().map(f).collect());
    let report = json!({
        "bench": "agent",
        "sessions": sessions,
        "seconds": seconds,
        "think_ms": think_ms,
        "turns": turns,
        "failed_turns": failed,
        "first_failure": first_error,
        "turns_per_s": (turns as f64 / elapsed * 10.0).round() / 10.0,
        "tool_calls_per_turn": 2,
        "overhead_per_turn_ms": pick(|x| x.0),
        "overhead_per_tool_call_ms": pick(|x| x.1),
        "model_ms": pick(|x| x.2),
        "messages_remembered": remembered,
        "peak_rss_mb": super::peak_rss_mb().round(),
    });
    println!("{report}");
    drop(scratch);
    Ok(())
}
