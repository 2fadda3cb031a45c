//! `ops.audit`: one row per MCP tool call and action, appended to Delta in the background.
//!
//! Requests never wait on the audit log: a call's record goes into a bounded queue and a writer
//! commits what has queued about once a second (and everything left on shutdown). If the queue
//! is full, because storage is stalled, the record is counted in
//! `millstream_audit_dropped_total` and logged instead of slowing the server down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{
    ArrayRef, Date32Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use crate::lakehouse::Lakehouse;
use crate::model::tables;

pub const TABLE: &str = "ops.audit";
/// Arguments longer than this are truncated in the log.
const MAX_ARGUMENTS: usize = 4096;
const QUEUE: usize = 100_000;

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

impl Auditor {
    /// Starts the writer; it flushes every `every` and finishes when `stop` turns true.
    pub fn start(lake: Lakehouse, every: Duration, mut stop: watch::Receiver<bool>) -> Auditor {
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(QUEUE);
        let instance: Arc<str> =
            format!("{:x}-{}", Utc::now().timestamp_micros(), std::process::id()).into();
        let ids = instance.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            let mut pending: Vec<(String, AuditRecord)> = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stop.wait_for(|s| *s) => true,
                };
                while let Ok(r) = rx.try_recv() {
                    seq += 1;
                    pending.push((format!("{ids}-{seq}"), r));
                }
                if !pending.is_empty() {
                    match write(&lake, &pending).await {
                        Ok(()) => pending.clear(),
                        // Kept for the next round; storage may come back.
                        Err(e) => {
                            tracing::warn!(error = %e, rows = pending.len(), "writing ops.audit")
                        }
                    }
                }
                if stopping {
                    return;
                }
            }
        });
        Auditor {
            tx,
            instance,
            dropped: Arc::default(),
        }
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
