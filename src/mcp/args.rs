//! Checking a tool's arguments and turning failures into MCP errors: the caller's fault is
//! `invalid params` naming the field; ours or a dependency's is an `internal error` whose message
//! says what failed (never a secret).

use datafusion::scalar::ScalarValue;
use rmcp::ErrorData;
use serde_json::json;

/// Rows returned by a tool when the caller gives no `limit`, and the most it may ask for.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 1000;

/// A UTC timestamp parameter, typed like the tables' timestamp columns.
pub(crate) fn timestamp(t: chrono::DateTime<chrono::Utc>) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()))
}

pub(crate) fn text(v: &str) -> ScalarValue {
    ScalarValue::Utf8(Some(v.to_string()))
}

pub(crate) fn opt_text(v: &Option<String>) -> Option<ScalarValue> {
    v.as_deref().map(text)
}

/// A caller's `limit`, checked: default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`].
pub(crate) fn limit(requested: Option<u32>) -> Result<u32, ErrorData> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(invalid(
            "limit",
            format!("limit {n} is outside 1..={MAX_LIMIT}"),
        )),
    }
}

/// An id argument: non-empty, printable, at most 128 characters.
pub(crate) fn id(field: &str, v: &str) -> Result<(), ErrorData> {
    if v.trim().is_empty() {
        return Err(invalid(field, format!("{field} is empty")));
    }
    if v.len() > 128 || v.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("{field} must be at most 128 printable characters"),
        ));
    }
    Ok(())
}

pub(crate) fn opt_id(field: &str, v: &Option<String>) -> Result<(), ErrorData> {
    v.as_deref().map_or(Ok(()), |v| id(field, v))
}

/// The caller's fault, on `field`.
pub(crate) fn invalid(field: &str, message: impl Into<String>) -> ErrorData {
    ErrorData::invalid_params(message.into(), Some(json!({ "field": field })))
}

/// A query that did not answer, as an MCP error: the caller's fault (`invalid params` on the
/// SQL), too busy or out of time or memory (with what to do), or a failure whose text
/// [`crate::governed::describe`] made safe for the caller.
pub(crate) fn failed(f: &crate::governed::Failure) -> ErrorData {
    if let crate::governed::Failure::Refused(_) = f {
        return invalid("sql", f.to_string());
    }
    ErrorData::internal_error(f.to_string(), Some(json!({ "reason": f.reason() })))
}

/// Our fault or a dependency's; logged here with the full error.
pub(crate) fn internal(e: impl std::fmt::Display) -> ErrorData {
    tracing::warn!(error = %e, "tool failed");
    ErrorData::internal_error(e.to_string(), None)
}
