//! `millstream agent ask "…"` (one turn) and `millstream agent chat` (a conversation): the
//! agent answering for a principal, through millstream's MCP tools with that principal's
//! rights. Without a model configured it says which setting is missing before doing anything
//! else.
//!
//! Millstream is reached at `--mcp URL` (or `agent.mcp_url`) with the user's own bearer token,
//! or, when neither is set, in-process over the lakehouse as the `--as` principal: the same
//! server, grants, row filters and audit as `/mcp`.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use tokio::sync::Mutex;

use crate::agent::{self, Chat, Confirm, Connect, Memory, PendingAction, Standing, Step};
use crate::config::{Config, Secret};
use crate::lakehouse::Lakehouse;
use crate::supervise::Supervisor;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// One question, one answer (with the tool calls it made). Actions need --yes.
    Ask(AskArgs),
    /// A conversation in the terminal: answers stream as they are written; actions ask
    /// for confirmation. `--resume ID` continues an earlier one.
    Chat(ChatArgs),
}

#[derive(Debug, Args)]
pub struct Common {
    /// Answer as this principal of the policies (default: serve.principal).
    #[arg(long = "as")]
    pub principal: Option<String>,
    /// MCP endpoint of a running millstream (`serve`/`up`), e.g. http://127.0.0.1:9464/mcp
    /// (default: agent.mcp_url; when both are empty, in-process over the lakehouse).
    #[arg(long)]
    pub mcp: Option<String>,
    /// Your bearer token for --mcp (default: the --as principal's entry in auth.dev_tokens).
    #[arg(long, env = "MILLSTREAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Kafka bootstrap servers for actions when in-process (overrides kafka.brokers).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Confirm actions (orders, tickets) in advance. It does not count once the turn has read
    /// text written by others (tickets, documents): such actions are declined.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    pub question: String,
    #[command(flatten)]
    pub common: Common,
    /// Continue this conversation (default: a new one, whose id is printed).
    #[arg(long)]
    pub conversation: Option<String>,
    /// Print the answer, the tool calls with arguments and results, tokens and latency as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: Common,
    /// Continue the conversation with this id.
    #[arg(long)]
    pub resume: Option<String>,
}

pub async fn run(config: Config, command: AgentCommand) -> anyhow::Result<()> {
    // The model first: without one there is nothing to start.
    let settings = agent::llm_settings(&config.agent)?;
    let llm = agent::Llm::new(settings)?;
    let common = match &command {
        AgentCommand::Ask(a) => &a.common,
        AgentCommand::Chat(c) => &c.common,
    };
    let principal = common
        .principal
        .clone()
        .unwrap_or_else(|| config.serve.principal.clone());
    let lake = Lakehouse::from_config(&config.lakehouse)?;
    let mut sup = Supervisor::new();
    let connected = connect(&config, common, &principal, &lake, &mut sup, llm).await;
    let result = match connected {
        Ok(agent) => {
            let memory = Memory::new(lake.clone());
            let r = match command {
                AgentCommand::Ask(a) => ask(&config, &agent, memory, &principal, a).await,
                AgentCommand::Chat(c) => chat(&config, &agent, memory, &principal, c).await,
            };
            agent.close().await;
            r
        }
        Err(e) => Err(e),
    };
    sup.shutdown().await;
    result
}

/// The agent for `principal`, connected to millstream (over HTTP or in-process) and to the
/// servers of `[agent.servers]`.
async fn connect(
    config: &Config,
    common: &Common,
    principal: &str,
    lake: &Lakehouse,
    sup: &mut Supervisor,
    llm: agent::Llm,
) -> anyhow::Result<agent::Agent> {
    let url = common
        .mcp
        .clone()
        .or_else(|| Some(config.agent.mcp_url.clone()).filter(|u| !u.is_empty()));
    let millstream =
        match url {
            Some(url) => {
                let bearer = match (&common.token, &common.principal) {
                (Some(t), _) => Some(Secret::new(t.clone())),
                (None, Some(p)) => Some(config.auth.dev_tokens.get(p).cloned().with_context(|| {
                    format!(
                        "no token for {p}: pass --token (or MILLSTREAM_TOKEN), or give {p} an \
                         entry in auth.dev_tokens"
                    )
                })?),
                // The server's own principal (auth.mode = "none").
                (None, None) => None,
            };
                Connect::Http { url, bearer }
            }
            None => {
                let brokers = config.kafka.brokers_or(common.brokers.clone());
                let serving = sup.stage("serve");
                let last = sup.stage("audit");
                let server = crate::mcp::start(
                    config,
                    lake.clone(),
                    brokers.as_deref(),
                    sup,
                    crate::mcp::Stages {
                        serving: &serving,
                        last: &last,
                    },
                )
                .await
                .context("starting millstream's MCP server in-process")?;
                Connect::InProcess(Box::new(server.as_principal(principal)?))
            }
        };
    agent::connect(
        llm,
        agent::servers(millstream, &config.agent),
        agent::limits(&config.agent),
        principal,
    )
    .await
    .context("connecting to the MCP servers")
}

async fn ask(
    config: &Config,
    agent: &agent::Agent,
    memory: Memory,
    principal: &str,
    args: AskArgs,
) -> anyhow::Result<()> {
    let id = args
        .conversation
        .clone()
        .unwrap_or_else(agent::memory::new_id);
    let conversation = memory.load(principal, &id).await?;
    let mut chat = Chat {
        agent,
        memory,
        conversation,
        budget: config.agent.memory_tokens,
    };
    let streaming = !args.json;
    let print = move |s: Step| {
        if streaming {
            show(&s)
        }
    };
    let confirm = Standing {
        yes: args.common.yes,
    };
    let report = chat.say(&args.question, &confirm, &print).await?;
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["conversation_id"] = id.clone().into();
        v["principal"] = principal.into();
        v["model"] = agent.llm().model().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!();
        eprintln!(
            "[conversation {id} · {} tool calls · {} tokens · {:.1}s]",
            report.tool_calls.len(),
            report.tokens.prompt_tokens + report.tokens.completion_tokens,
            report.latency_ms / 1e3
        );
    }
    Ok(())
}

/// Asks on the terminal before each action.
struct Terminal {
    lines: Arc<Mutex<Lines<BufReader<Stdin>>>>,
    yes: bool,
}

#[async_trait::async_trait]
impl Confirm for Terminal {
    async fn confirm(&self, action: &PendingAction) -> bool {
        if self.yes && !action.after_free_text {
            return true;
        }
        eprintln!();
        if action.after_free_text {
            eprintln!(
                "  (this turn read text written by others — tickets or documents; make sure this is what YOU asked for)"
            );
        }
        eprint!("  run {} {}? [y/N] ", action.tool, action.arguments);
        let _ = std::io::stderr().flush();
        let line = self.lines.lock().await.next_line().await.ok().flatten();
        matches!(line.as_deref().map(str::trim), Some("y" | "Y" | "yes"))
    }
}

async fn chat(
    config: &Config,
    agent: &agent::Agent,
    memory: Memory,
    principal: &str,
    args: ChatArgs,
) -> anyhow::Result<()> {
    let id = args.resume.clone().unwrap_or_else(agent::memory::new_id);
    let conversation = memory.load(principal, &id).await?;
    if args.resume.is_some() && conversation.last_turn == 0 {
        anyhow::bail!("{principal} has no conversation {id}");
    }
    eprintln!(
        "millstream agent · {principal} · conversation {id} ({} earlier turns) · model {} · /exit to leave",
        conversation.last_turn,
        agent.llm().model()
    );
    let lines = Arc::new(Mutex::new(BufReader::new(tokio::io::stdin()).lines()));
    let confirm = Terminal {
        lines: lines.clone(),
        yes: args.common.yes,
    };
    let mut chat = Chat {
        agent,
        memory,
        conversation,
        budget: config.agent.memory_tokens,
    };
    loop {
        eprint!("\n> ");
        let _ = std::io::stderr().flush();
        let Some(line) = lines.lock().await.next_line().await? else {
            break;
        };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if text == "/exit" || text == "/quit" {
            break;
        }
        chat.say(text, &confirm, &|s| show(&s)).await?;
        println!();
    }
    eprintln!("conversation {id} saved; continue it with `millstream agent chat --resume {id}`");
    Ok(())
}

/// A step as the terminal shows it: the answer on stdout as it streams, the rest on stderr.
fn show(step: &Step) {
    match step {
        Step::Text { delta } => {
            print!("{delta}");
            let _ = std::io::stdout().flush();
        }
        Step::ToolCall {
            name, arguments, ..
        } => eprintln!("  → {name} {arguments}"),
        Step::ToolResult {
            name,
            is_error: true,
            result,
            ..
        } => eprintln!(
            "  ✗ {name}: {}",
            agent::turn::truncate(&result.to_string(), 300)
        ),
        Step::ToolResult {
            duplicate: true,
            name,
            ..
        } => eprintln!("  = {name}: same call as before, not repeated"),
        Step::ToolResult { .. } => {}
        Step::Confirmation { name, approved, .. } => {
            eprintln!(
                "  {} {name}",
                if *approved {
                    "confirmed"
                } else {
                    "not confirmed:"
                }
            )
        }
        Step::Retry {
            what,
            attempt,
            error,
        } => eprintln!("  retrying {what} (attempt {attempt}): {error}"),
        // Streamed already; a non-streaming model's answer arrives as one text step.
        Step::Answer { .. } => {}
    }
}
