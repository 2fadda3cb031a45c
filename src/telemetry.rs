//! Logs, traces and metrics. Logs go to stderr (`RUST_LOG` filters, default `info`); with
//! `tracing.otlp_endpoint` set, spans are also exported over OTLP/HTTP (e.g. to MLflow): the
//! agent's turns, model and tool calls (OpenTelemetry GenAI attributes), and the MCP server's
//! request handling and queries, joined into one trace through the W3C `traceparent` the agent
//! sends in each call's `_meta`. Metrics are Prometheus, served at `/metrics`.
//!
//! Everything worth counting is a named internal event ([`events`], after vector's
//! `internal_events`): one struct both logs and counts, so logs and metrics never drift apart.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the tracing subscriber (idempotent). `RUST_LOG` replaces the default filter, which
/// keeps the Delta kernel's per-snapshot INFO lines out, and delta-rs' optimistic-concurrency
/// retries too: several workers committing to one table retry each other routinely. delta-rs
/// 1.1 also warns on every MERGE that DataFusion 55 no longer reports the scan metric it reads
/// for its own operation metrics ("Missing target skipped-file metric"); those lines (merge's
/// only other warnings are about the same metrics) are kept out, its source-filter one is not.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Without `RUST_LOG`: info, and only warnings from the Delta crates. delta-rs logs every commit
/// conflict as an error although it returns it to the caller, and millstream handles each one
/// (a merge reruns, a worker resets from the log, maintenance reports it), logging it itself: its
/// transaction module is silenced rather than printing errors for what is routine concurrency.
fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        concat!(
            "info,buoyant_kernel=warn,delta_kernel=warn,deltalake_core=warn,deltalake=warn,",
            "deltalake_core::kernel::transaction=off,",
            "deltalake_core::operations::merge=error,",
            "deltalake_core::operations::merge::source_stats=warn",
        )
        .into()
    })
}

/// Flushes and stops the trace exporter (the one [`init`] installed, if any) when dropped, at
/// the end of `main`.
pub struct TracingGuard(());

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(p) = EXPORTING.get()
            && let Err(e) = p.shutdown()
        {
            eprintln!("flushing traces: {e}");
        }
    }
}

/// Logs as [`init_logging`], plus span export over OTLP/HTTP to `{otlp_endpoint}/v1/traces`
/// when `config.otlp_endpoint` is set (headers from `config.headers`, never logged). The spans
/// of the agent, the MCP server and its queries are enabled at INFO whatever `RUST_LOG` says
/// (one filter for both: per-layer filters lost the first event of a process here).
pub fn init(config: &crate::config::TracingConfig) -> anyhow::Result<TracingGuard> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    if config.otlp_endpoint.is_empty() {
        init_logging();
        return Ok(TracingGuard(()));
    }
    let endpoint = format!("{}/v1/traces", config.otlp_endpoint.trim_end_matches('/'));
    let headers = config
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_string()))
        .collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint.clone())
        .with_headers(headers)
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| anyhow::anyhow!("tracing.otlp_endpoint {endpoint}: {e}"))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let mut filter = log_filter();
    for traced in [
        "millstream::agent",
        "millstream::mcp",
        "millstream::governed",
    ] {
        filter = filter.add_directive(format!("{traced}=info").parse()?);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .finish()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("millstream")))
        .try_init();
    tracing::info!(endpoint = %endpoint, "exporting traces over OTLP/HTTP");
    let _ = EXPORTING.set(provider);
    Ok(TracingGuard(()))
}

/// The exporter [`init`] installed, if any.
static EXPORTING: OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported ([`init`] with an endpoint).
pub fn exporting() -> bool {
    EXPORTING.get().is_some()
}

/// Exports every finished span now (blocks until the exporter answers); a no-op without an
/// exporter. For work that reads its own traces back, such as `eval agent` assessing them.
pub fn flush_traces() -> anyhow::Result<()> {
    if let Some(p) = EXPORTING.get() {
        p.force_flush()
            .map_err(|e| anyhow::anyhow!("flushing traces: {e}"))?;
    }
    Ok(())
}

/// The W3C `traceparent` of the current span, when traces are exported: written by the same
/// propagator [`set_remote_parent`] reads it with.
pub fn traceparent() -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut carrier = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.remove("traceparent")
}

/// The trace id of the current span, when traces are exported.
pub fn trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Makes `span` a child of the remote span named by `traceparent` (from a caller's `_meta` or
/// header); a malformed value is ignored.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}

/// The global allocator's own counts: bytes allocated, bytes it holds resident.
pub type HeapStats = fn() -> Option<(u64, u64)>;

static HEAP_STATS: OnceLock<HeapStats> = OnceLock::new();

/// Tells `/metrics` how to read the global allocator's counts (the binary knows its allocator;
/// the library does not).
pub fn set_heap_stats(stats: HeapStats) {
    let _ = HEAP_STATS.set(stats);
}

/// A `/proc/<process>/status` field in KiB (`VmRSS:`, `VmHWM:`), if the system has one.
pub fn proc_status_kib(process: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The metrics in Prometheus' text format, with the process's memory read now.
pub fn render() -> String {
    let handle = metrics();
    events::Memory {
        resident: proc_status_kib("self", "VmRSS:").map(|k| k << 10),
        heap: HEAP_STATS.get().and_then(|read| read()),
    }
    .emit();
    handle.render()
}

/// Installs the Prometheus recorder once and returns its handle for rendering `/metrics`.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .expect("static buckets are valid")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "millstream_mcp_answer_cache_total",
        Unit::Count,
        "Tool queries answered from a kept answer (hit) or computed (miss)"
    );
    describe_counter!(
        "millstream_events_in_total",
        Unit::Count,
        "Source records read, per topic"
    );
    describe_counter!(
        "millstream_bytes_in_total",
        Unit::Bytes,
        "Source payload bytes read"
    );
    describe_counter!(
        "millstream_rows_out_total",
        Unit::Count,
        "Rows committed, per table"
    );
    describe_counter!(
        "millstream_commits_total",
        Unit::Count,
        "Delta commits, per table"
    );
    describe_counter!(
        "millstream_dead_letters_total",
        Unit::Count,
        "Records sent to ops.dead_letters, per topic"
    );
    describe_histogram!(
        "millstream_batch_latency_seconds",
        Unit::Seconds,
        "Decode + commit time of a micro-batch"
    );
    describe_gauge!(
        "millstream_consumer_lag",
        Unit::Count,
        "Records behind the high watermark, per partition"
    );
    describe_histogram!(
        "millstream_catalog_load_seconds",
        Unit::Seconds,
        "Time for the MCP server to load a new table version, per table"
    );
    describe_gauge!(
        "millstream_process_resident_bytes",
        Unit::Bytes,
        "Resident memory of the whole process (VmRSS), when /metrics was read"
    );
    describe_gauge!(
        "millstream_heap_allocated_bytes",
        Unit::Bytes,
        "Bytes the Rust code holds allocated (jemalloc's count); the rest of the resident \
         memory is the allocator's free pages, librdkafka (the embedded broker's log, client \
         buffers), stacks and code"
    );
    describe_gauge!(
        "millstream_heap_resident_bytes",
        Unit::Bytes,
        "Resident memory of the Rust heap, allocated or not yet given back (jemalloc's count)"
    );
    describe_gauge!(
        "millstream_serve_tail_rows",
        Unit::Count,
        "Rows of a log the MCP server holds in memory (its tail), per table"
    );
    describe_gauge!(
        "millstream_serve_tail_bytes",
        Unit::Bytes,
        "Memory of a log's tail held by the MCP server, per table"
    );
    describe_gauge!(
        "millstream_mcp_answer_cache_answers",
        Unit::Count,
        "Tool answers the MCP server keeps for reuse"
    );
    describe_gauge!(
        "millstream_mcp_answer_cache_bytes",
        Unit::Bytes,
        "Memory of the tool answers the MCP server keeps (serve.answer_cache_mb bounds it)"
    );
    describe_histogram!(
        "millstream_catalog_visible_seconds",
        Unit::Seconds,
        "From a table version's commit to the MCP server serving it, per table"
    );
    describe_histogram!(
        "millstream_knowledge_searchable_seconds",
        Unit::Seconds,
        "From a document table version's commit to its changes being searchable, per table"
    );
    describe_counter!(
        "millstream_task_restarts_total",
        Unit::Count,
        "Supervised tasks restarted after a failure, per task"
    );
    describe_histogram!(
        "millstream_mcp_call_seconds",
        Unit::Seconds,
        "MCP tool calls, from request to answer, per tool and outcome"
    );
    describe_gauge!(
        "millstream_queries_running",
        Unit::Count,
        "Callers' queries (query_sql) running now"
    );
    describe_histogram!(
        "millstream_query_seconds",
        Unit::Seconds,
        "Wall time of callers' queries (query_sql)"
    );
    describe_counter!(
        "millstream_queries_failed_total",
        Unit::Count,
        "Callers' queries that did not answer, per reason"
    );
    describe_counter!(
        "millstream_mcp_session_refused_total",
        Unit::Count,
        "Requests naming another principal's MCP session"
    );
    describe_counter!(
        "millstream_events_produced_total",
        Unit::Count,
        "Events produced by the simulator, per topic"
    );
    describe_counter!(
        "millstream_offsets_out_of_range_total",
        Unit::Count,
        "Partitions whose next offset from Delta is not in the Kafka log (log behind the lakehouse)"
    );
    describe_counter!(
        "millstream_commit_conflicts_total",
        Unit::Count,
        "Delta commit conflicts handled by retrying or fencing, per table"
    );
    describe_counter!(
        "millstream_duplicates_dropped_total",
        Unit::Count,
        "Events dropped because their event_id was already ingested, per topic"
    );
    describe_counter!(
        "millstream_unknown_fields_total",
        Unit::Count,
        "Events carrying fields their type does not have, per topic"
    );
}

pub mod events {
    //! Named internal events.
    use std::collections::BTreeMap;
    use std::time::Duration;

    use metrics::{counter, gauge, histogram};

    use crate::lakehouse::commit::SourcePartition;

    /// The process's memory, read when `/metrics` is.
    pub struct Memory {
        pub resident: Option<u64>,
        /// The allocator's (allocated, resident), where it keeps them.
        pub heap: Option<(u64, u64)>,
    }

    impl Memory {
        pub fn emit(&self) {
            if let Some(r) = self.resident {
                gauge!("millstream_process_resident_bytes").set(r as f64);
            }
            if let Some((allocated, resident)) = self.heap {
                gauge!("millstream_heap_allocated_bytes").set(allocated as f64);
                gauge!("millstream_heap_resident_bytes").set(resident as f64);
            }
        }
    }

    pub struct RecordRejected<'a> {
        pub topic: &'a str,
        pub partition: i32,
        pub offset: i64,
        pub reason: &'a str,
    }

    impl RecordRejected<'_> {
        pub fn emit(&self) {
            tracing::warn!(
                topic = self.topic,
                partition = self.partition,
                offset = self.offset,
                reason = self.reason,
                "record dead-lettered"
            );
            counter!("millstream_dead_letters_total", "topic" => self.topic.to_string())
                .increment(1);
        }
    }

    pub struct TableCommitted<'a> {
        pub table: &'a str,
        pub rows: u64,
    }

    impl TableCommitted<'_> {
        pub fn emit(&self) {
            tracing::debug!(table = self.table, rows = self.rows, "table committed");
            counter!("millstream_rows_out_total", "table" => self.table.to_string())
                .increment(self.rows);
            counter!("millstream_commits_total", "table" => self.table.to_string()).increment(1);
        }
    }

    /// Knowledge search reflects a new version of a document table: how long after its commit.
    pub struct DocumentsSearchable<'a> {
        pub table: &'a str,
        pub delay: Duration,
    }

    impl DocumentsSearchable<'_> {
        pub fn emit(&self) {
            histogram!("millstream_knowledge_searchable_seconds", "table" => self.table.to_string())
                .record(self.delay.as_secs_f64());
        }
    }

    /// A derived pipeline (signals, alerts) recomputed its sink.
    pub struct PipelineDerived<'a> {
        pub pipeline: &'a str,
        pub rows: u64,
        pub millis: u64,
    }

    impl PipelineDerived<'_> {
        pub fn emit(&self) {
            tracing::debug!(
                pipeline = self.pipeline,
                rows = self.rows,
                ms = self.millis,
                "derived pipeline ran"
            );
            counter!("millstream_derived_runs_total", "pipeline" => self.pipeline.to_string())
                .increment(1);
            histogram!("millstream_derived_seconds", "pipeline" => self.pipeline.to_string())
                .record(self.millis as f64 / 1000.0);
        }
    }

    /// The MCP server's catalog started serving a new table version.
    pub struct TableServed<'a> {
        pub table: &'a str,
        pub version: i64,
        /// Time to load it (log replay, statistics, in-memory copy).
        pub load: Duration,
        /// From its commit timestamp to now, for a version committed while the catalog was
        /// following the table (a table's first load at start has none).
        pub since_commit: Option<Duration>,
        /// Rows and bytes of the log's tail held in memory (none for a table served otherwise).
        pub tail: Option<(usize, usize)>,
    }

    impl TableServed<'_> {
        pub fn emit(&self) {
            tracing::debug!(
                table = self.table,
                version = self.version,
                load_ms = self.load.as_millis() as u64,
                since_commit_ms = self.since_commit.map(|d| d.as_millis() as u64),
                tail_rows = self.tail.map(|t| t.0),
                "serving table version"
            );
            let (rows, bytes) = self.tail.unwrap_or_default();
            gauge!("millstream_serve_tail_rows", "table" => self.table.to_string())
                .set(rows as f64);
            gauge!("millstream_serve_tail_bytes", "table" => self.table.to_string())
                .set(bytes as f64);
            histogram!("millstream_catalog_load_seconds", "table" => self.table.to_string())
                .record(self.load.as_secs_f64());
            if let Some(d) = self.since_commit {
                histogram!("millstream_catalog_visible_seconds", "table" => self.table.to_string())
                    .record(d.as_secs_f64());
            }
        }
    }

    /// Alerts produced to `mfg.alerts`.
    pub struct AlertsPublished {
        pub messages: u64,
    }

    impl AlertsPublished {
        pub fn emit(&self) {
            tracing::info!(messages = self.messages, "alerts published to mfg.alerts");
            counter!("millstream_alerts_published_total").increment(self.messages);
        }
    }

    pub struct BatchCommitted {
        pub records: u64,
        pub bytes: u64,
        pub dead_letters: u64,
        pub latency: Duration,
        /// Part of `latency` spent decoding and validating; the rest is committing.
        pub decode: Duration,
        pub lag: std::collections::BTreeMap<SourcePartition, i64>,
        pub by_topic: BTreeMap<&'static str, u64>,
    }

    impl BatchCommitted {
        pub fn emit(&self) {
            let total_lag: i64 = self.lag.values().sum();
            tracing::debug!(
                records = self.records,
                bytes = self.bytes,
                dead_letters = self.dead_letters,
                latency_ms = self.latency.as_millis() as u64,
                decode_ms = self.decode.as_millis() as u64,
                lag = total_lag,
                "batch committed"
            );
            for (topic, n) in &self.by_topic {
                counter!("millstream_events_in_total", "topic" => *topic).increment(*n);
            }
            counter!("millstream_bytes_in_total").increment(self.bytes);
            histogram!("millstream_batch_latency_seconds").record(self.latency.as_secs_f64());
            for (p, lag) in &self.lag {
                gauge!("millstream_consumer_lag", "topic" => p.topic.clone(), "partition" => p.partition.to_string()).set(*lag as f64);
            }
        }
    }

    pub struct EventsProduced {
        pub topic: &'static str,
        pub count: u64,
    }

    impl EventsProduced {
        pub fn emit(&self) {
            counter!("millstream_events_produced_total", "topic" => self.topic)
                .increment(self.count);
        }
    }

    /// A supervised task failed and is being restarted.
    pub struct TaskRestarted<'a> {
        pub task: &'a str,
    }

    impl TaskRestarted<'_> {
        pub fn emit(&self) {
            counter!("millstream_task_restarts_total", "task" => self.task.to_string())
                .increment(1);
        }
    }

    /// A caller's query (`query_sql`) started.
    pub struct QueryStarted;

    impl QueryStarted {
        pub fn emit(&self) {
            gauge!("millstream_queries_running").increment(1.0);
        }
    }

    /// A caller's query ended; `failure` is why it did not answer (refused, busy, timeout,
    /// memory, failed).
    pub struct QueryFinished<'a> {
        pub seconds: f64,
        pub failure: Option<&'a str>,
    }

    impl QueryFinished<'_> {
        pub fn emit(&self) {
            gauge!("millstream_queries_running").decrement(1.0);
            histogram!("millstream_query_seconds").record(self.seconds);
            if let Some(reason) = self.failure {
                counter!("millstream_queries_failed_total", "reason" => reason.to_string())
                    .increment(1);
            }
        }
    }

    /// An MCP tool call was answered: its latency per tool and outcome (`ok`, `error`,
    /// `refused`). `tool` must be a tool the server has, never a caller's free text, or callers
    /// could mint label values without bound.
    pub struct ToolCalled<'a> {
        pub tool: &'a str,
        pub outcome: &'static str,
        pub seconds: f64,
    }

    impl ToolCalled<'_> {
        pub fn emit(&self) {
            histogram!("millstream_mcp_call_seconds", "tool" => self.tool.to_string(), "outcome" => self.outcome)
                .record(self.seconds);
        }
    }

    /// A tool query looked for a kept answer ([`crate::mcp::answers`]): reused (`hit`) or
    /// computed (`miss`: none kept, or one of its tables moved since).
    pub struct AnswerCache {
        pub hit: bool,
    }

    impl AnswerCache {
        pub fn emit(&self) {
            let outcome = if self.hit { "hit" } else { "miss" };
            counter!("millstream_mcp_answer_cache_total", "outcome" => outcome).increment(1);
        }
    }

    /// What the kept tool answers hold now ([`crate::mcp::answers`]), after a change.
    pub struct AnswerCacheHeld {
        pub answers: usize,
        pub bytes: usize,
    }

    impl AnswerCacheHeld {
        pub fn emit(&self) {
            gauge!("millstream_mcp_answer_cache_answers").set(self.answers as f64);
            gauge!("millstream_mcp_answer_cache_bytes").set(self.bytes as f64);
        }
    }

    /// A request named an MCP session another principal created, and was answered 404.
    pub struct SessionRefused<'a> {
        pub principal: &'a str,
    }

    impl SessionRefused<'_> {
        pub fn emit(&self) {
            tracing::warn!(
                principal = self.principal,
                "refused a request naming another principal's MCP session"
            );
            counter!("millstream_mcp_session_refused_total").increment(1);
        }
    }

    /// Delta's next offset for a partition is not in its Kafka log.
    pub struct LogMismatch<'a> {
        pub topic: &'a str,
        pub partition: i32,
        pub next: i64,
        pub low: i64,
        pub high: i64,
        /// Whether the partition is ingested again from its earliest offset (else the worker
        /// stops).
        pub reset: bool,
    }

    impl LogMismatch<'_> {
        pub fn emit(&self) {
            tracing::error!(
                topic = self.topic,
                partition = self.partition,
                delta_next = self.next,
                log_low = self.low,
                log_high = self.high,
                action = if self.reset {
                    "reset to earliest"
                } else {
                    "stop"
                },
                "the Kafka log does not hold what Delta says comes next"
            );
            counter!("millstream_offsets_out_of_range_total", "topic" => self.topic.to_string())
                .increment(1);
        }
    }

    /// A worker found another writer's commit on offsets it was about to write, and resets
    /// from the Delta log.
    pub struct CommitConflict<'a> {
        pub table: &'a str,
    }

    impl CommitConflict<'_> {
        pub fn emit(&self) {
            counter!("millstream_commit_conflicts_total", "table" => self.table.to_string())
                .increment(1);
        }
    }

    /// Later copies of event ids already ingested, dropped.
    pub struct DuplicatesDropped<'a> {
        pub topic: &'a str,
        pub count: u64,
    }

    impl DuplicatesDropped<'_> {
        pub fn emit(&self) {
            tracing::debug!(
                topic = self.topic,
                count = self.count,
                "duplicate events dropped"
            );
            counter!("millstream_duplicates_dropped_total", "topic" => self.topic.to_string())
                .increment(self.count);
        }
    }

    /// Fields the event type does not have, seen in valid records (ignored).
    pub struct UnknownFields<'a> {
        pub topic: &'a str,
        pub count: u64,
    }

    impl UnknownFields<'_> {
        pub fn emit(&self) {
            counter!("millstream_unknown_fields_total", "topic" => self.topic.to_string())
                .increment(self.count);
        }
    }
}
