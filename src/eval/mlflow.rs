//! `eval agent --mlflow URI`: the evaluation logged to an MLflow 3 tracking server as an
//! evaluation run, the way `mlflow.genai.evaluate` records one, over MLflow's REST API:
//! - a run tagged `mlflow.runType = genai_evaluate`, with the model and datasets as params;
//! - each dataset file as a run input (digest, source, row count; context `evaluation`);
//! - the aggregate scores as metrics named like MLflow's (`tool_selection/mean`, …);
//! - when the turns' traces were exported to the same server (`tracing.otlp_endpoint`), the
//!   traces linked to the run, each with one feedback per deterministic scorer (source `CODE`,
//!   the problems as rationale), and each multi-turn case's `multi_turn_success` as a session
//!   feedback on its first trace (`mlflow.trace.session` = the case id);
//! - the per-turn results table as the artifact `eval_results_table.json`, when the server
//!   proxies artifacts (`mlflow-artifacts:`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use super::agent::{Case, Scored};

/// Where the run goes: an experiment by id (e.g. the one traces are exported to) or by name
/// (created if absent).
#[derive(Debug, Clone)]
pub enum Experiment {
    Id(String),
    Name(String),
}

impl Experiment {
    /// `name` if given; else the experiment traces are exported to
    /// (`tracing.headers.x-mlflow-experiment-id`), so runs and traces sit together; else
    /// "millstream-agent-eval".
    pub fn choose(name: Option<String>, tracing: &crate::config::TracingConfig) -> Experiment {
        let traced_to = tracing
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-mlflow-experiment-id"))
            .map(|(_, v)| v.expose().to_string());
        match (name, traced_to) {
            (Some(name), _) => Experiment::Name(name),
            (None, Some(id)) => Experiment::Id(id),
            (None, None) => Experiment::Name("millstream-agent-eval".into()),
        }
    }
}

/// An MLflow tracking server.
pub struct Tracking {
    http: reqwest::Client,
    base: String,
    experiment_id: String,
}

/// One `eval agent` run to log: `scored` are the turns of `cases` (read from `datasets`),
/// `summary` what `eval agent` prints, `llm` how the model was chosen and `model` its name.
pub struct Evaluation<'a> {
    pub datasets: &'a Path,
    pub cases: &'a [Case],
    pub scored: &'a [Scored],
    pub summary: &'a Value,
    pub llm: &'a str,
    pub model: &'a str,
}

/// What [`Tracking::log`] wrote.
#[derive(Debug, serde::Serialize)]
pub struct Logged {
    pub experiment_id: String,
    pub run_id: String,
    pub url: String,
    pub metrics: usize,
    pub traces_linked: usize,
    pub assessments: usize,
    /// Why the results table is not an artifact of the run, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_skipped: Option<String>,
}

/// The deterministic scorers, as (assessment name, value of a turn or None when the turn has
/// nothing to score).
fn scorers(s: &Scored) -> [(&'static str, Option<Value>); 6] {
    let frac = |(n, d): (usize, usize)| (d > 0).then(|| json!(n as f64 / d as f64));
    [
        ("tool_selection", Some(json!(s.tools_ok))),
        ("argument_accuracy", frac(s.args)),
        ("fact_accuracy", frac(s.facts)),
        ("groundedness", Some(json!(s.grounded))),
        ("refusal_correctness", Some(json!(s.refusal_ok))),
        ("safety", Some(json!(s.safe))),
    ]
}

impl Tracking {
    /// Reaches the server at `uri` and resolves `experiment` (creating it by name if needed),
    /// so a wrong URI fails before any case runs.
    pub async fn connect(uri: &str, experiment: &Experiment) -> anyhow::Result<Tracking> {
        let url = url::Url::parse(uri).with_context(|| format!("--mlflow {uri:?}"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "--mlflow must be an http(s) tracking server, not {uri:?}"
        );
        let mut t = Tracking {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            base: uri.trim_end_matches('/').to_string(),
            experiment_id: String::new(),
        };
        t.experiment_id = match experiment {
            Experiment::Id(id) => {
                t.get("/api/2.0/mlflow/experiments/get", &[("experiment_id", id)])
                    .await?;
                id.clone()
            }
            Experiment::Name(name) => {
                let found = t
                    .request(
                        reqwest::Method::GET,
                        "/api/2.0/mlflow/experiments/get-by-name",
                        &[("experiment_name", name)],
                        None,
                    )
                    .await;
                match found {
                    Ok(v) => str_at(&v, "/experiment/experiment_id")?,
                    Err(e) if e.to_string().contains("RESOURCE_DOES_NOT_EXIST") => {
                        let v = t
                            .post("/api/2.0/mlflow/experiments/create", json!({"name": name}))
                            .await?;
                        str_at(&v, "/experiment_id")?
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(t)
    }

    /// Logs `eval` as one run; the run is FAILED (and the error returned) if any part of it
    /// could not be logged.
    pub async fn log(&self, eval: &Evaluation<'_>) -> anyhow::Result<Logged> {
        let now = chrono::Utc::now();
        let run = self
            .post(
                "/api/2.0/mlflow/runs/create",
                json!({
                    "experiment_id": self.experiment_id,
                    "run_name": format!("eval agent {} {}", eval.model, now.format("%Y-%m-%d %H:%M:%S")),
                    "start_time": now.timestamp_millis(),
                    "tags": [
                        {"key": "mlflow.runType", "value": "genai_evaluate"},
                        {"key": "mlflow.source.name", "value": "millstream eval agent"},
                        {"key": "mlflow.source.type", "value": "LOCAL"},
                    ],
                }),
            )
            .await?;
        let run_id = str_at(&run, "/run/info/run_id")?;
        let artifact_uri = str_at(&run, "/run/info/artifact_uri").unwrap_or_default();
        let mut logged = Logged {
            url: format!(
                "{}/#/experiments/{}/runs/{run_id}",
                self.base, self.experiment_id
            ),
            experiment_id: self.experiment_id.clone(),
            run_id,
            metrics: 0,
            traces_linked: 0,
            assessments: 0,
            artifact_skipped: None,
        };
        let filled = self.fill(&mut logged, &artifact_uri, eval).await;
        let status = if filled.is_ok() { "FINISHED" } else { "FAILED" };
        self.post(
            "/api/2.0/mlflow/runs/update",
            json!({"run_id": logged.run_id, "status": status, "end_time": chrono::Utc::now().timestamp_millis()}),
        )
        .await?;
        filled.map(|()| logged)
    }

    /// The run's inputs, params, metrics, trace feedback and results table, counted in `logged`.
    async fn fill(
        &self,
        logged: &mut Logged,
        artifact_uri: &str,
        eval: &Evaluation<'_>,
    ) -> anyhow::Result<()> {
        let run_id = logged.run_id.as_str();
        self.post(
            "/api/2.0/mlflow/runs/log-inputs",
            json!({"run_id": run_id, "datasets": dataset_inputs(eval.datasets, eval.cases)?}),
        )
        .await?;
        let params = [
            ("llm", eval.llm.to_string()),
            ("llm_model", eval.model.to_string()),
            ("datasets", eval.datasets.display().to_string()),
            ("cases", eval.cases.len().to_string()),
        ];
        let metrics = metrics(eval.summary);
        let ts = chrono::Utc::now().timestamp_millis();
        self.post(
            "/api/2.0/mlflow/runs/log-batch",
            json!({
                "run_id": run_id,
                "params": params.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
                "metrics": metrics.iter().map(|(k, v)| json!({"key": k, "value": v, "timestamp": ts, "step": 0})).collect::<Vec<_>>(),
            }),
        )
        .await?;
        logged.metrics = metrics.len();
        (logged.traces_linked, logged.assessments) =
            self.assess(run_id, eval.cases, eval.scored).await?;
        logged.artifact_skipped = self
            .upload_table(artifact_uri, eval.cases, eval.scored)
            .await?;
        Ok(())
    }

    /// Links the turns' traces to the run and writes the scorers' feedback on them. Traces are
    /// exported in batches: flush, then wait (up to 30 s) until the server holds the last one.
    async fn assess(
        &self,
        run_id: &str,
        cases: &[Case],
        scored: &[Scored],
    ) -> anyhow::Result<(usize, usize)> {
        let traced: Vec<(&Scored, String)> = scored
            .iter()
            .filter_map(|s| s.trace_id.as_ref().map(|t| (s, format!("tr-{t}"))))
            .collect();
        let Some((_, last)) = traced.last() else {
            return Ok((0, 0));
        };
        tokio::task::spawn_blocking(crate::telemetry::flush_traces).await??;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self
            .get(&format!("/api/3.0/mlflow/traces/{last}"), &[])
            .await
            .is_err()
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the turns' traces did not reach MLflow at {} within 30 s: is \
                 tracing.otlp_endpoint the same server?",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let ids: Vec<&str> = traced.iter().map(|(_, t)| t.as_str()).collect();
        for chunk in ids.chunks(100) {
            self.post(
                "/api/2.0/mlflow/traces/link-to-run",
                json!({"trace_ids": chunk, "run_id": run_id}),
            )
            .await?;
        }
        fn source_run(
            run_id: &str,
            extra: Vec<(&'static str, String)>,
        ) -> BTreeMap<&'static str, String> {
            let mut m: BTreeMap<_, _> = extra.into_iter().collect();
            m.insert("mlflow.assessment.sourceRunId", run_id.to_string());
            m
        }
        let mut feedback = Vec::new();
        for (s, trace) in &traced {
            let rationale = s.problems.join("; ");
            for (name, value) in scorers(s) {
                let Some(value) = value else { continue };
                feedback.push(assessment(
                    trace,
                    name,
                    value,
                    &rationale,
                    source_run(
                        run_id,
                        vec![("case", s.case.clone()), ("turn", s.turn.to_string())],
                    ),
                ));
            }
        }
        for case in cases.iter().filter(|c| c.turns.len() > 1) {
            let turns: Vec<&(&Scored, String)> =
                traced.iter().filter(|(s, _)| s.case == case.id).collect();
            let Some((_, first)) = turns.first() else {
                continue;
            };
            let failed: Vec<String> = turns
                .iter()
                .filter(|(s, _)| !s.passed())
                .map(|(s, _)| format!("turn {}: {}", s.turn, s.problems.join("; ")))
                .collect();
            feedback.push(assessment(
                first,
                "multi_turn_success",
                json!(failed.is_empty() && turns.len() == case.turns.len()),
                &failed.join(" | "),
                source_run(run_id, vec![("mlflow.trace.session", case.id.clone())]),
            ));
        }
        let written = feedback.len();
        futures::stream::iter(feedback)
            .map(|(trace, body)| async move {
                self.post(&format!("/api/3.0/mlflow/traces/{trace}/assessments"), body)
                    .await
            })
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?;
        Ok((ids.len(), written))
    }

    /// Uploads the per-turn table through the server's artifact proxy; says why not otherwise.
    async fn upload_table(
        &self,
        artifact_uri: &str,
        cases: &[Case],
        scored: &[Scored],
    ) -> anyhow::Result<Option<String>> {
        let Some(path) = artifact_uri.strip_prefix("mlflow-artifacts:") else {
            return Ok(Some(format!(
                "the run's artifact store {artifact_uri:?} is not served by the tracking server \
                 (start it with --artifacts-destination)"
            )));
        };
        let path = path.trim_start_matches('/');
        let table = results_table(cases, scored);
        let resp = self
            .http
            .put(format!(
                "{}/api/2.0/mlflow-artifacts/artifacts/{path}/eval_results_table.json",
                self.base
            ))
            .body(serde_json::to_vec(&table)?)
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "MLflow artifact upload: {}",
            resp.status()
        );
        Ok(None)
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.request(reqwest::Method::POST, path, &[], Some(body))
            .await
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        self.request(reqwest::Method::GET, path, query, None).await
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .query(query);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("MLflow at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await?;
        anyhow::ensure!(
            status.is_success(),
            "MLflow {path}: {status}: {}",
            text.chars().take(300).collect::<String>()
        );
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn str_at(v: &Value, pointer: &str) -> anyhow::Result<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("MLflow answered without {pointer}: {v}"))
}

/// A feedback assessment of `trace`, as (trace, CreateAssessment body).
fn assessment(
    trace: &str,
    name: &str,
    value: Value,
    rationale: &str,
    metadata: BTreeMap<&str, String>,
) -> (String, Value) {
    let mut a = json!({
        "assessment_name": name,
        "trace_id": trace,
        "source": {"source_type": "CODE", "source_id": format!("millstream.eval.{name}")},
        "feedback": {"value": value},
        "metadata": metadata,
    });
    if !rationale.is_empty() {
        a["rationale"] = json!(rationale);
    }
    (trace.to_string(), json!({ "assessment": a }))
}

/// Each dataset file the cases came from, as an MLflow dataset input.
fn dataset_inputs(dir: &Path, cases: &[Case]) -> anyhow::Result<Vec<Value>> {
    use sha2::Digest;
    let mut rows: BTreeMap<&str, usize> = BTreeMap::new();
    for c in cases {
        *rows.entry(c.category.as_str()).or_default() += 1;
    }
    rows.into_iter()
        .map(|(category, n)| {
            let file = dir.join(format!("{category}.jsonl"));
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let digest = hex::encode(&sha2::Sha256::digest(&bytes)[..8]);
            let source = std::path::absolute(&file)?;
            Ok(json!({
                "dataset": {
                    "name": category,
                    "digest": digest,
                    "source_type": "local",
                    "source": json!({"uri": source}).to_string(),
                    "profile": json!({"num_rows": n}).to_string(),
                },
                "tags": [{"key": "mlflow.data.context", "value": "evaluation"}],
            }))
        })
        .collect()
}

/// The summary's numbers as metrics: each score as `<scorer>/mean` (MLflow's name for an
/// aggregated scorer), pass rates per category, latency percentiles and tokens.
fn metrics(summary: &Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let num = |p: &str| summary.pointer(p).and_then(Value::as_f64);
    for (key, name) in [
        ("tool_selection_accuracy", "tool_selection"),
        ("argument_accuracy", "argument_accuracy"),
        ("fact_accuracy", "fact_accuracy"),
        ("groundedness", "groundedness"),
        ("refusal_correctness", "refusal_correctness"),
        ("safety", "safety"),
        ("multi_turn_success", "multi_turn_success"),
        ("turn_pass_rate", "turn_pass_rate"),
    ] {
        if let Some(v) = num(&format!("/{key}")) {
            out.push((format!("{name}/mean"), v));
        }
    }
    if let Some(by) = summary["pass_rate_by_category"].as_object() {
        for (k, v) in by {
            if let Some(v) = v.as_f64() {
                out.push((format!("pass_rate/{k}"), v));
            }
        }
    }
    for p in ["p50_ms", "p95_ms", "p99_ms"] {
        if let Some(v) = num(&format!("/latency_ms/{p}")) {
            out.push((format!("latency/{p}"), v));
        }
    }
    for k in ["tokens", "cases", "turns"] {
        if let Some(v) = num(&format!("/{k}")) {
            out.push((k.to_string(), v));
        }
    }
    out
}

/// The per-turn results in the `{columns, data}` layout of MLflow's `eval_results_table.json`.
fn results_table(cases: &[Case], scored: &[Scored]) -> Value {
    let by_id: BTreeMap<&str, &Case> = cases.iter().map(|c| (c.id.as_str(), c)).collect();
    let columns = [
        "case",
        "turn",
        "category",
        "principal",
        "request",
        "response",
        "trace_id",
        "tool_selection",
        "argument_accuracy",
        "fact_accuracy",
        "groundedness",
        "refusal_correctness",
        "safety",
        "passed",
        "latency_ms",
        "tokens",
        "problems",
    ];
    let data: Vec<Value> = scored
        .iter()
        .map(|s| {
            let case = by_id.get(s.case.as_str());
            let mut row = vec![
                json!(s.case),
                json!(s.turn),
                json!(s.category),
                json!(case.map(|c| c.principal.as_str())),
                json!(
                    case.and_then(|c| c.turns.get(s.turn))
                        .map(|t| t.user.as_str())
                ),
                json!(s.answer),
                json!(s.trace_id.as_ref().map(|t| format!("tr-{t}"))),
            ];
            row.extend(
                scorers(s)
                    .into_iter()
                    .map(|(_, v)| v.unwrap_or(Value::Null)),
            );
            row.extend([
                json!(s.passed()),
                json!(s.latency_ms),
                json!(s.tokens),
                json!(s.problems.join("; ")),
            ]);
            Value::Array(row)
        })
        .collect();
    json!({ "columns": columns, "data": data })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every score of the summary becomes a metric under MLflow's aggregate name; a score with
    /// nothing to score (null) is left out rather than logged as 0.
    #[test]
    fn scores_become_mean_metrics_and_unscored_ones_are_left_out() {
        let summary = json!({
            "cases": 3, "turns": 4, "tool_selection_accuracy": 0.5, "argument_accuracy": 1.0,
            "fact_accuracy": null, "groundedness": 0.75, "refusal_correctness": 1.0,
            "safety": 1.0, "multi_turn_success": 0.0, "turn_pass_rate": 0.25,
            "pass_rate_by_category": {"sales": 0.5, "edge": null},
            "latency_ms": {"n": 4, "p50_ms": 12.5, "p95_ms": 40.0, "p99_ms": 41.0, "max_ms": 41.0},
            "tokens": 900,
        });
        let m: BTreeMap<String, f64> = metrics(&summary).into_iter().collect();
        assert_eq!(m["tool_selection/mean"], 0.5);
        assert_eq!(m["multi_turn_success/mean"], 0.0);
        assert_eq!(m["pass_rate/sales"], 0.5);
        assert_eq!(m["latency/p95_ms"], 40.0);
        assert_eq!(m["tokens"], 900.0);
        assert!(!m.contains_key("fact_accuracy/mean"));
        assert!(!m.contains_key("pass_rate/edge"));
    }
}
