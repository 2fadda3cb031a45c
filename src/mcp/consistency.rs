//! Consistent answers across replicas. Several `serve` processes over one lakehouse each follow
//! it on their own, so one may serve a table a version or two behind another. A client whose
//! consecutive calls land on different replicas (any load balancer, no sticky sessions: protocol
//! 2026-07-28 is stateless) sends the table versions it has seen in the request's `_meta`:
//!
//! ```json
//! "_meta": { "millstream/seen": { "supply_chain.shortage_signals": 41, "ops.alerts": 7 } }
//! ```
//!
//! (the `as_of.tables` of its earlier answers, or the `_meta` of a resource notification; the
//! newest version per table). A replica behind any of them loads the newer versions before it
//! answers, waiting at most `serve.catch_up_ms`, so no answer is older than one the client has
//! already had. The same token resumes a subscription on another replica without missing a
//! change ([`super::resources::listen`]).
//!
//! The token is hostile input: only tables the caller may read count, and naming another is an
//! error that says the same whether the table exists or not.

use std::collections::BTreeMap;

use rmcp::ErrorData;
use rmcp::model::JsonObject;
use serde_json::json;

use super::args::invalid;
use super::server::Millstream;

/// The `_meta` key of the versions a client has seen.
pub const SEEN: &str = "millstream/seen";

/// At most this many tables in one token (there are fewer tables than this).
const MAX_TABLES: usize = 256;

/// The versions in `meta`'s [`SEEN`], checked against what `server`'s caller may read;
/// empty when the client sent none.
pub fn seen(server: &Millstream, meta: &JsonObject) -> Result<BTreeMap<String, i64>, ErrorData> {
    let Some(value) = meta.get(SEEN) else {
        return Ok(BTreeMap::new());
    };
    let field = "_meta.millstream/seen";
    let Some(tables) = value.as_object() else {
        return Err(invalid(
            field,
            format!("_meta.{SEEN} must be an object of table name to Delta version"),
        ));
    };
    if tables.len() > MAX_TABLES {
        return Err(invalid(
            field,
            format!("_meta.{SEEN} names more than {MAX_TABLES} tables"),
        ));
    }
    let known = crate::model::tables::catalog();
    let mut seen = BTreeMap::new();
    for (table, version) in tables {
        let readable =
            known.iter().any(|t| t.name == *table) && server.access.may_read(table.as_str());
        if !readable {
            return Err(invalid(
                field,
                format!(
                    "_meta.{SEEN} names {table:?}, which is not a table you may read (describe_tables lists them)"
                ),
            ));
        }
        let Some(version) = version.as_i64().filter(|v| *v >= 0) else {
            return Err(invalid(
                field,
                format!("_meta.{SEEN}.{table} must be a Delta version (an integer >= 0)"),
            ));
        };
        seen.insert(table.clone(), version);
    }
    Ok(seen)
}

impl Millstream {
    /// Waits until this replica serves at least the versions the caller has seen
    /// (`_meta` [`SEEN`] of `meta`), or says which table it could not catch up on.
    pub(crate) async fn catch_up(&self, meta: &JsonObject) -> Result<(), ErrorData> {
        self.catch_up_to(&seen(self, meta)?).await
    }

    /// [`Self::catch_up`] to versions already read from a request ([`seen`]).
    pub(crate) async fn catch_up_to(&self, seen: &BTreeMap<String, i64>) -> Result<(), ErrorData> {
        if seen.is_empty() {
            return Ok(());
        }
        let Err(behind) = self.catalog.catch_up(seen, self.catch_up_wait).await else {
            return Ok(());
        };
        let (table, want, have) = &behind[0];
        let served = have.map_or("does not serve it yet".to_string(), |v| {
            format!("serves version {v}")
        });
        Err(ErrorData::internal_error(
            format!(
                "this replica {served} of {table}, older than version {want} you have seen, \
                 and did not load it within {} ms; retry (another replica may have it)",
                self.catch_up_wait.as_millis()
            ),
            Some(json!({ "retry": true, "table": table, "seen": want, "served": have })),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_token_names_readable_tables_and_versions_only() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::defaults();
        let catalog = crate::mcp::LiveCatalog::open(
            crate::lakehouse::Lakehouse::new(dir.path()).unwrap(),
            crate::pipeline::definition::Definitions::from_config(&config.pipeline.definitions)
                .await
                .unwrap(),
            crate::mcp::CatalogOptions::from_config(&config.serve),
        )
        .await
        .unwrap();
        let policies = std::sync::Arc::new(crate::auth::Policies::load("").unwrap());
        let server = Millstream::new(
            catalog,
            None,
            std::time::Duration::from_secs(5),
            policies,
            "alice@emea",
        )
        .unwrap();
        let meta = |v: serde_json::Value| v.as_object().cloned().unwrap();
        assert!(seen(&server, &meta(json!({}))).unwrap().is_empty());
        let ok = seen(
            &server,
            &meta(json!({ SEEN: { "sales.churn_signals": 4 } })),
        )
        .unwrap();
        assert_eq!(ok.get("sales.churn_signals"), Some(&4));
        // alice (sales) may not read supply chain tables: the same answer as for a table that
        // does not exist, so the token is no oracle for either.
        let hidden = seen(
            &server,
            &meta(json!({ SEEN: { "supply_chain.shortage_signals": 1 } })),
        )
        .unwrap_err();
        let missing = seen(&server, &meta(json!({ SEEN: { "no.such": 1 } }))).unwrap_err();
        assert_eq!(
            hidden.message.replace("supply_chain.shortage_signals", "X"),
            missing.message.replace("no.such", "X")
        );
        for bad in [
            json!({ SEEN: [1] }),
            json!({ SEEN: { "sales.churn_signals": -1 } }),
            json!({ SEEN: { "sales.churn_signals": "4" } }),
            json!({ SEEN: { "sales.churn_signals": 1.5 } }),
        ] {
            let e = seen(&server, &meta(bad.clone())).unwrap_err();
            assert!(e.message.contains(SEEN), "{bad}: {}", e.message);
        }
    }
}
