//! `millstream eval signals`: signal quality against the simulator's ground truth
//! ([`crate::eval`]), as JSON.

use clap::Subcommand;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Simulated telemetry with injected faults through the anomaly detector, and a simulated
    /// world with supplier delays, demand surges, quiet and growing customers through the
    /// shortage, churn and lead-scoring pipelines (`pipeline.definitions`, so your own SQL can be
    /// scored); prints precision, recall and detection delay per signal type as JSON.
    Signals {
        /// Simulated hours to evaluate.
        #[arg(long, default_value_t = 24.0)]
        hours: f64,
        /// Seed (overrides simulate.seed).
        #[arg(long)]
        seed: Option<u64>,
        /// Simulated days for the shortage, churn and lead evaluation (0 skips it).
        #[arg(long, default_value_t = 60.0)]
        days: f64,
        /// Simulated hours between the shortage checkpoints (the pipeline itself recomputes on
        /// every commit: a finer grid measures first flags sooner, and flags more episodes).
        #[arg(long, default_value_t = 12)]
        checkpoint_hours: u32,
    },
    /// Knowledge search against the corpus's labelled questions (paraphrased from what each
    /// document answers): recall@5, recall@10 and MRR@10 for keyword-only, vector-only and
    /// hybrid retrieval, as JSON. Uses the lakehouse (`--lakehouse`): the corpus is written if
    /// absent, and embeddings stored there by an earlier run are reused.
    Search {
        /// Also write the questions each mode missed (not all answers in the top 5) to this
        /// file as JSON lines: the question, its answers and the top 10 found instead.
        #[arg(long)]
        misses: Option<std::path::PathBuf>,
    },
    /// The agent against the labelled cases of `evals/agent/*.jsonl`, each as its principal,
    /// over the lakehouse (`millstream up` or `simulate` wrote it): tool selection, argument
    /// accuracy, facts (read at each answer's as_of), groundedness, refusals, safety,
    /// multi-turn success, latency and tokens, as JSON.
    Agent {
        /// "config": the model of agent.llm_*; "scripted": each case's scripted model steps
        /// (exercises the harness and the tools without a model).
        #[arg(long, default_value = "config")]
        llm: String,
        /// Folder of the datasets.
        #[arg(long, default_value = "evals/agent")]
        datasets: std::path::PathBuf,
        /// Only write the datasets (from the simulator's reference data) into this folder.
        #[arg(long)]
        write_datasets: Option<std::path::PathBuf>,
        /// Only the cases whose id starts with this (repeatable).
        #[arg(long = "case")]
        only: Vec<String>,
        /// Log the evaluation to this MLflow tracking server as an evaluation run (metrics,
        /// dataset inputs, results table; feedback on each turn's trace when traces are
        /// exported there through `tracing.otlp_endpoint`).
        #[arg(long, env = "MLFLOW_TRACKING_URI")]
        mlflow: Option<String>,
        /// The MLflow experiment (by name, created if absent). Default: the experiment traces
        /// are exported to (`tracing.headers.x-mlflow-experiment-id`), else
        /// "millstream-agent-eval".
        #[arg(long)]
        experiment: Option<String>,
    },
}

pub async fn run(config: Config, command: EvalCommand) -> anyhow::Result<()> {
    let (hours, seed, days, checkpoint_hours) = match command {
        EvalCommand::Signals {
            hours,
            seed,
            days,
            checkpoint_hours,
        } => (hours, seed, days, checkpoint_hours),
        EvalCommand::Search { misses } => return search(config, misses.as_deref()).await,
        EvalCommand::Agent {
            llm,
            datasets,
            write_datasets,
            only,
            mlflow,
            experiment,
        } => {
            if let Some(dir) = write_datasets {
                let counts = crate::eval::agent::write_datasets(&config.simulate, &dir)?;
                println!("{}", serde_json::to_string(&counts)?);
                return Ok(());
            }
            let mlflow = mlflow.filter(|u| !u.is_empty());
            return agent(
                config,
                &llm,
                &datasets,
                &only,
                mlflow.as_deref(),
                experiment,
            )
            .await;
        }
    };
    anyhow::ensure!((0.0..=365.0).contains(&days), "--days must be in [0, 365]");
    // Divisors of a day only, so the weekly churn and lead checkpoints fall on the same times.
    anyhow::ensure!(
        (1..=24).contains(&checkpoint_hours) && 24 % checkpoint_hours == 0,
        "--checkpoint-hours must divide 24 (1, 2, 3, 4, 6, 8, 12 or 24)"
    );
    anyhow::ensure!(
        hours > 0.0 && hours <= 24.0 * 90.0,
        "--hours must be in (0, 2160]"
    );
    let mut sim = config.simulate.clone();
    if let Some(seed) = seed {
        sim.seed = seed;
    }
    let anomaly_sim = sim.clone();
    let params = config.signals.anomaly.clone();
    let anomalies = tokio::task::spawn_blocking(move || {
        crate::eval::anomalies::anomalies(&anomaly_sim, &params, hours, |h| {
            eprintln!("eval anomalies: {h:.0}/{hours:.0} simulated hours")
        })
    })
    .await?;
    // The report names the operating point it scored (`[signals]` as configured).
    let mut report = serde_json::json!({ "thresholds": config.signals, "anomalies": anomalies });
    if days > 0.0 {
        let defs =
            crate::pipeline::definition::Definitions::from_config(&config.pipeline.definitions)
                .await?;
        let step = chrono::Duration::hours(checkpoint_hours.into());
        let r = crate::eval::supply::supply_and_sales(&sim, &defs, days, step, |d| {
            if d.fract() == 0.0 && (d as i64) % 5 == 0 {
                eprintln!("eval shortages/churn/leads: {d:.0}/{days:.0} simulated days")
            }
        })
        .await?;
        report["shortages"] = serde_json::to_value(r.shortages)?;
        report["churn"] = serde_json::to_value(r.churn)?;
        report["leads"] = serde_json::to_value(r.leads)?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// The document tables (and the customers tickets belong to) as `simulate` writes them, unless
/// they exist; the corpus with its ground truth.
pub async fn write_corpus(
    lake: &crate::lakehouse::Lakehouse,
    config: &Config,
) -> anyhow::Result<crate::sim::documents::Corpus> {
    crate::sim::write_reference_tables(
        lake,
        &config.simulate,
        false,
        &[
            "sales.customers",
            "support.tickets",
            "knowledge.sops",
            "knowledge.incidents",
            "knowledge.proposals",
        ],
    )
    .await?;
    Ok(crate::sim::documents::generate(
        &config.simulate,
        &crate::sim::reference::generate(&config.simulate),
    ))
}

/// The knowledge index over `lake` for a command that people wait on (`who` names it in the
/// progress lines): opened with embedding on every core ([`all_cores`]) and synced once, which
/// embeds what `knowledge.chunks` does not hold yet.
pub async fn indexed(
    lake: crate::lakehouse::Lakehouse,
    cfg: &crate::config::KnowledgeConfig,
    who: &str,
) -> anyhow::Result<(
    std::sync::Arc<crate::knowledge::Knowledge>,
    crate::knowledge::SyncStats,
)> {
    use anyhow::Context;
    let knowledge = crate::knowledge::Knowledge::open(lake, &all_cores(cfg))?;
    eprintln!("{who}: indexing the documents (vectors stored by earlier runs are reused)");
    let synced = knowledge.sync().await.context("indexing the documents")?;
    eprintln!(
        "{who}: {} documents, {} chunks ({} embedded, {} reused) in {:.1}s",
        synced.documents, synced.chunks, synced.embedded, synced.reused, synced.seconds
    );
    Ok((knowledge, synced))
}

/// Knowledge settings for a command that people wait on: embedding uses every core.
pub fn all_cores(cfg: &crate::config::KnowledgeConfig) -> crate::config::KnowledgeConfig {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    crate::config::KnowledgeConfig {
        embed_threads: cfg.embed_threads.max(cores),
        ..cfg.clone()
    }
}

async fn search(config: Config, misses: Option<&std::path::Path>) -> anyhow::Result<()> {
    use crate::knowledge::Mode;
    use std::io::Write;
    let lake = crate::lakehouse::Lakehouse::from_config(&config.lakehouse)?;
    let corpus = write_corpus(&lake, &config).await?;
    let (knowledge, synced) = indexed(lake, &config.knowledge, "eval search").await?;
    let mut report = serde_json::json!({
        "questions": corpus.questions.len(),
        "documents": synced.documents,
        "chunks": synced.chunks,
    });
    let mut missed = match misses {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("--misses {}: {e}", path.display()))?,
        )),
        None => None,
    };
    for (name, mode) in [
        ("keyword", Mode::Keyword),
        ("vector", Mode::Vector),
        ("hybrid", Mode::Hybrid),
    ] {
        for (suffix, within_kind) in [("", false), ("_within_kind", true)] {
            let started = std::time::Instant::now();
            let scores =
                crate::eval::search::score(&knowledge, &corpus.questions, mode, within_kind)
                    .await?;
            eprintln!(
                "eval search: {name}{suffix} in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            if let Some(out) = missed.as_mut() {
                for m in &scores.misses {
                    let mut line = serde_json::to_value(m)?;
                    line["mode"] = format!("{name}{suffix}").into();
                    writeln!(out, "{line}")?;
                }
            }
            report[format!("{name}{suffix}")] = serde_json::to_value(scores)?;
        }
    }
    if let Some(mut out) = missed {
        out.flush()?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn agent(
    mut config: Config,
    llm: &str,
    datasets: &std::path::Path,
    only: &[String],
    mlflow: Option<&str>,
    experiment: Option<String>,
) -> anyhow::Result<()> {
    use crate::eval::agent as eval;
    use crate::eval::mlflow::{Evaluation, Experiment, Tracking};
    let mut cases = eval::load(datasets)?;
    if !only.is_empty() {
        cases.retain(|c| only.iter().any(|p| c.id.starts_with(p.as_str())));
        anyhow::ensure!(!cases.is_empty(), "no case id starts with {only:?}");
    }
    // Reach MLflow before minutes of cases, not after.
    let tracking = match mlflow {
        None => None,
        Some(uri) => {
            let experiment = Experiment::choose(experiment, &config.tracing);
            if !crate::telemetry::exporting() {
                eprintln!(
                    "eval agent: traces are not exported (tracing.otlp_endpoint is empty): the \
                     MLflow run gets metrics, inputs and the results table, no feedback on traces"
                );
            }
            Some(Tracking::connect(uri, &experiment).await?)
        }
    };
    let (settings, _scripted) = match llm {
        "config" => (crate::agent::llm_settings(&config.agent)?, None),
        "scripted" => {
            let model = crate::agent::scripted::ScriptedModel::start(eval::script(&cases)).await?;
            (model.settings(config.agent.llm_stream), Some(model))
        }
        other => anyhow::bail!("--llm must be \"config\" or \"scripted\", not {other:?}"),
    };
    let lake = crate::lakehouse::Lakehouse::from_config(&config.lakehouse)?;
    anyhow::ensure!(
        lake.exists("sales.customers").await?,
        "{} has no data: run `millstream up` (or `simulate`) first",
        config.lakehouse.root.display()
    );
    // Cases about documents would wait for an index of the whole corpus: off unless asked.
    config.knowledge.enabled = config.knowledge.enabled && llm == "config";
    let mut sup = crate::supervise::Supervisor::new();
    let serving = sup.stage("serve");
    let last = sup.stage("audit");
    let brokers = config.kafka.brokers_or(None);
    let server = crate::mcp::start(
        &config,
        lake.clone(),
        brokers.as_deref(),
        &mut sup,
        crate::mcp::Stages {
            serving: &serving,
            last: &last,
        },
    )
    .await?;
    let agent_config = config.agent.clone();
    let result = eval::run_cases(
        &lake,
        &cases,
        |principal| {
            let (server, settings, agent_config) =
                (server.clone(), settings.clone(), agent_config.clone());
            async move {
                let llm = crate::agent::Llm::new(settings)?;
                crate::agent::in_process(llm, &server, &principal, &agent_config).await
            }
        },
        |n, total| {
            if n % 20 == 0 {
                eprintln!("eval agent: case {n}/{total}");
            }
        },
    )
    .await;
    sup.shutdown().await;
    let scored = result?;
    let mut summary = eval::summary(&scored, &cases);
    let mut failed = None;
    if let Some(t) = tracking {
        let logged = t
            .log(&Evaluation {
                datasets,
                cases: &cases,
                scored: &scored,
                summary: &summary,
                llm,
                model: &settings.model,
            })
            .await;
        match logged {
            Ok(logged) => {
                eprintln!("eval agent: logged to MLflow: {}", logged.url);
                summary["mlflow"] = serde_json::to_value(logged)?;
            }
            Err(e) => {
                summary["mlflow"] = serde_json::json!({"error": format!("{e:#}")});
                failed = Some(e);
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    match failed {
        Some(e) => Err(e.context("logging the evaluation to MLflow")),
        None => Ok(()),
    }
}
