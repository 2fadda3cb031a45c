//! Agent actions → events (DESIGN §1): what an order or a ticket action is, how its ids are
//! made idempotent, and the producer that sends it to `mfg.actions.*`, where the pipeline
//! materializes it exactly once. Who may act, and the checks against live data, are the MCP
//! server's ([`crate::mcp`]); this module knows nothing of the protocol.
//!
//! Idempotency: a caller's key (scoped to the principal) fixes the order or ticket id and the
//! event id ([`derived_id`]), so sending again produces an event the MERGE recognizes.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::KafkaConfig;

/// Most units one order may ask for.
pub const MAX_ORDER_QTY: i64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderPriority {
    Standard,
    Expedited,
    Rush,
}

impl OrderPriority {
    /// Lead time in days for a supplier's standard `lead_days`, and the fee rate.
    pub fn terms(self, lead_days: i64) -> (i64, f64) {
        match self {
            OrderPriority::Standard => (lead_days.max(1), 0.0),
            OrderPriority::Expedited => (((lead_days * 6) + 9) / 10, 0.10),
            OrderPriority::Rush => (((lead_days + 2) / 3).max(1), 0.25),
        }
    }
}

/// Produces actions; one per server process. Each action records the principal it was made
/// on behalf of: the caller the server answers for.
pub struct ActionProducer {
    producer: FutureProducer,
}

impl ActionProducer {
    pub fn new(kafka: &KafkaConfig, brokers: &str) -> crate::Result<Self> {
        Ok(ActionProducer {
            producer: crate::broker::producer_config(kafka, brokers).create()?,
        })
    }

    /// Sends one action and waits for Kafka's acknowledgement.
    pub async fn send(&self, topic: &str, key: &str, payload: &[u8]) -> crate::Result<()> {
        self.producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.into())
    }
}

/// A stable id from the principal and the caller's key: one key, one id, per principal.
pub fn derived_id(prefix: &str, principal: &str, key: &str) -> String {
    // 64 bits are plenty for ids scoped to one principal's keys.
    let h = crate::model::stable_hash(&[principal, key]);
    format!("{prefix}-{h:016x}")
}

/// The event id of one send of an action: unique per send. A call retried with the same
/// idempotency key is a new event of the same action (the action log keeps both; the po_id or
/// ticket_id derived from the key makes the materialization idempotent), while a producer
/// re-sending one event repeats its id and is dropped by the pipeline's event-id dedup.
pub fn send_id(prefix: &str) -> String {
    format!("{prefix}-{}", new_key())
}

pub fn new_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TicketCategory {
    Delivery,
    Quality,
    Billing,
    Technical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TicketPriority {
    Low,
    Medium,
    High,
    Urgent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    Open,
    InProgress,
    Resolved,
    Closed,
}

/// An argument enum's serde name, which is also how the tables store it (`rush`, `in_progress`).
pub fn wire_name<T: Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_shorten_lead_time_and_add_fees() {
        assert_eq!(OrderPriority::Standard.terms(14), (14, 0.0));
        assert_eq!(OrderPriority::Expedited.terms(14), (9, 0.10));
        assert_eq!(OrderPriority::Rush.terms(14), (5, 0.25));
        // Never under a day.
        assert_eq!(OrderPriority::Rush.terms(1), (1, 0.25));
        assert_eq!(OrderPriority::Expedited.terms(1), (1, 0.10));
    }

    #[test]
    fn ids_are_stable_per_principal_and_key() {
        let a = derived_id("PO", "alice", "k1");
        assert_eq!(a, derived_id("PO", "alice", "k1"));
        assert_ne!(a, derived_id("PO", "bob", "k1"));
        assert_ne!(a, derived_id("PO", "alice", "k2"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(derived_id("PO", "ab", "c"), derived_id("PO", "a", "bc"));
        assert_eq!(a.len(), "PO-".len() + 16);
    }
}
