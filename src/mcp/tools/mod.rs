//! The tools, one file per family. Each tool takes a typed argument struct (its JSON Schema is
//! the tool's input schema) and returns a typed answer (its schema is the output schema) that
//! always carries `as_of`.

pub mod analytics;
pub mod iot;
pub mod knowledge;
pub mod sales;
pub mod supply;
pub mod tickets;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Signal risk levels, in rising order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Risk {
    Low,
    Medium,
    High,
    Critical,
}

impl Risk {
    const ALL: [Risk; 4] = [Risk::Low, Risk::Medium, Risk::High, Risk::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "LOW",
            Risk::Medium => "MEDIUM",
            Risk::High => "HIGH",
            Risk::Critical => "CRITICAL",
        }
    }

    /// This level and every level above it.
    pub fn at_least(self) -> Vec<&'static str> {
        Risk::ALL
            .into_iter()
            .filter(|r| *r >= self)
            .map(Risk::as_str)
            .collect()
    }
}

/// SQL ranking risk levels, highest first, for ORDER BY.
pub(crate) const RISK_ORDER: &str = "CASE risk_level WHEN 'CRITICAL' THEN 0 WHEN 'HIGH' THEN 1 \
     WHEN 'MEDIUM' THEN 2 ELSE 3 END";
