//! `ops.audit`: one row per MCP tool call, action, resource read and subscription, appended to
//! Delta in the background.
//!
//! Requests do not wait on the audit log: a call's record goes into a bounded queue and a writer
//! commits what has queued about once a second (and everything left on shutdown). A failed
//! commit keeps its rows for the next round. The log fails closed: when the backlog reaches its
//! bound (storage stalled or failing), new calls are refused ([`Auditor::accepting`]) until it
//! drains, rather than served unaudited. The one gap is a record queued by a call that began
//! just as the backlog filled; it is counted in `millstream_audit_dropped_total` and logged.
//! Records still queued when the process dies (at most about a second's) are lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{
    ArrayRef, Date32Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::lakehouse::Lakehouse;
use crate::model::tables;

pub const TABLE: &str = "ops.audit";
/// Arguments longer than this are truncated in the log.
const MAX_ARGUMENTS: usize = 4096;
/// Records the log holds before it refuses calls (queued plus awaiting a commit).
pub const BACKLOG: usize = 100_000;

/// One audited call.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub ts: DateTime<Utc>,
    pub principal: String,
    pub persona: String,
    /// "tool", "action", "resource" (a read) or "subscribe".
    pub kind: &'static str,
    pub name: String,
    pub arguments: Option<String>,
    /// "ok", "error" or "refused".
    pub outcome: &'static str,
    pub error: Option<String>,
    pub duration: Duration,
}

/// Where audit records go.
#[derive(Debug, Clone)]
pub struct Auditor {
    tx: mpsc::Sender<AuditRecord>,
    /// Distinguishes this process's ids from other servers'.
    instance: Arc<str>,
    dropped: Arc<AtomicU64>,
}

/// Commits queued audit records to `ops.audit` (see [`Auditor::new`]).
pub struct AuditWriter {
    lake: Lakehouse,
    every: Duration,
    half: usize,
    rx: mpsc::Receiver<AuditRecord>,
    ids: Arc<str>,
}

impl Auditor {
    /// An auditor and its writer, which flushes every `every` and, once stopped, commits what
    /// is queued and returns. At most `backlog` records wait for storage before calls are
    /// refused.
    pub fn new(lake: Lakehouse, every: Duration, backlog: usize) -> (Auditor, AuditWriter) {
        // Half waits in the queue, half in the writer's uncommitted rows.
        let half = (backlog / 2).max(1);
        let (tx, rx) = mpsc::channel::<AuditRecord>(half);
        let instance: Arc<str> =
            format!("{:x}-{}", Utc::now().timestamp_micros(), std::process::id()).into();
        let writer = AuditWriter {
            lake,
            every,
            half,
            rx,
            ids: instance.clone(),
        };
        let auditor = Auditor {
            tx,
            instance,
            dropped: Arc::default(),
        };
        (auditor, writer)
    }

    /// Whether the log can take another record. When it cannot, calls are refused.
    pub fn accepting(&self) -> bool {
        self.tx.capacity() > 0
    }

    /// Queues `record` (never waits).
    pub fn record(&self, mut record: AuditRecord) {
        if let Some(a) = &mut record.arguments
            && a.len() > MAX_ARGUMENTS
        {
            let mut cut = MAX_ARGUMENTS;
            while !a.is_char_boundary(cut) {
                cut -= 1;
            }
            a.truncate(cut);
            a.push('…');
        }
        if self.tx.try_send(record).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::counter!("millstream_audit_dropped_total").increment(1);
            tracing::warn!(instance = %self.instance, dropped, "audit queue full: a record was dropped");
        }
    }
}

impl AuditWriter {
    /// Commits every `every` until `stop`, then what is still queued, and returns. Run it as the
    /// last task to stop, so the calls of a stopping server are recorded too.
    pub async fn run(mut self, stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
        let mut seq = 0u64;
        let mut pending: Vec<(String, AuditRecord)> = Vec::new();
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.cancelled() => true,
            };
            // Taking no more than it can hold keeps the queue full while storage fails, so
            // calls are refused instead of memory growing.
            while pending.len() < self.half
                && let Ok(r) = self.rx.try_recv()
            {
                seq += 1;
                pending.push((format!("{}-{seq}", self.ids), r));
            }
            if !pending.is_empty() {
                match write(&self.lake, &pending).await {
                    Ok(()) => pending.clear(),
                    // Kept for the next round; storage may come back.
                    Err(e) => {
                        tracing::warn!(error = %e, rows = pending.len(), "writing ops.audit")
                    }
                }
            }
            if stopping {
                if !pending.is_empty() {
                    anyhow::bail!("{} audit records could not be committed", pending.len());
                }
                return Ok(());
            }
        }
    }
}

async fn write(lake: &Lakehouse, rows: &[(String, AuditRecord)]) -> crate::Result<()> {
    let def = tables::get(TABLE)?;
    let text = |f: &dyn Fn(&AuditRecord) -> Option<String>| -> ArrayRef {
        Arc::new(rows.iter().map(|(_, r)| f(r)).collect::<StringArray>())
    };
    let batch = RecordBatch::try_new(
        def.arrow_schema(),
        vec![
            Arc::new(
                rows.iter()
                    .map(|(id, _)| Some(id.clone()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(|(_, r)| r.ts.timestamp_micros()),
                )
                .with_timezone("UTC"),
            ),
            text(&|r| Some(r.principal.clone())),
            text(&|r| Some(r.persona.clone())),
            text(&|r| Some(r.kind.to_string())),
            text(&|r| Some(r.name.clone())),
            text(&|r| r.arguments.clone()),
            text(&|r| Some(r.outcome.to_string())),
            text(&|r| r.error.clone()),
            Arc::new(
                rows.iter()
                    .map(|(_, r)| r.duration.as_secs_f64() * 1000.0)
                    .collect::<Float64Array>(),
            ),
            Arc::new(Date32Array::from_iter_values(rows.iter().map(|(_, r)| {
                (r.ts.date_naive() - chrono::NaiveDate::default()).num_days() as i32
            }))),
        ],
    )?;
    let table = lake.ensure(TABLE).await?;
    crate::lakehouse::commit::append(
        table,
        TABLE,
        "mcp-audit",
        vec![batch],
        &Default::default(),
        128 << 20,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(n: usize) -> AuditRecord {
        AuditRecord {
            ts: Utc::now(),
            principal: "maria@emea".into(),
            persona: "supply_chain_manager".into(),
            kind: "tool",
            name: format!("call-{n}"),
            arguments: Some("x".repeat(MAX_ARGUMENTS + 10)),
            outcome: "ok",
            error: None,
            duration: Duration::from_millis(1),
        }
    }

    /// While storage fails, the log fills to its bound and then refuses calls instead of
    /// dropping records or growing; when storage is back, every record it took is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_log_refuses_calls_then_commits_everything_it_took() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lakehouse::new(dir.path()).unwrap();
        // A file where the table should be: every commit fails.
        let blocked = lake.table_path(TABLE).unwrap().unwrap();
        std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
        std::fs::write(&blocked, b"not a table").unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let (auditor, writer) = Auditor::new(lake.clone(), Duration::from_millis(20), 10);
        let _stop = stop.clone().drop_guard();
        tokio::spawn(writer.run(stop));
        let mut taken = 0;
        while auditor.accepting() && taken < 1000 {
            auditor.record(call(taken));
            taken += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            !auditor.accepting(),
            "took {taken} records with storage failing"
        );
        assert!(
            (5..=10).contains(&taken),
            "took {taken} with a backlog of 10"
        );
        assert_eq!(auditor.dropped.load(Ordering::Relaxed), 0);

        std::fs::remove_file(&blocked).unwrap();
        let started = std::time::Instant::now();
        loop {
            let n = lake
                .sql_i64("SELECT count(*) FROM ops.audit")
                .await
                .unwrap_or(0);
            if n == taken as i64 && auditor.accepting() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{n} of {taken} records committed after storage came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let longest = lake
            .sql_i64("SELECT max(length(arguments)) FROM ops.audit")
            .await
            .unwrap();
        assert_eq!(
            longest as usize,
            MAX_ARGUMENTS + 1,
            "arguments are cut at 4 KB (plus …)"
        );
    }
}
