//! Which documents a caller may be shown. The index holds every tenant's documents; it never
//! decides who sees what. The caller's own governed DataFusion session (its grants, row filters
//! and masks, [`crate::auth::enforce`]) lists the document ids it can read, with the version of
//! each (its `updated_at`), and a search ranks only the indexed documents that match one of them
//! exactly: a document the caller cannot read, or one the index holds at a version the caller's
//! snapshot does not (say, before an update moved it to another tenant), takes no part.

use std::collections::HashMap;

use arrow::array::AsArray;
use arrow::datatypes::TimestampMicrosecondType;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;

use super::index::DocMeta;
use super::source::{SOURCES, Source};
use crate::auth::Access;
use crate::lakehouse::query::strings;
use crate::{Error, Result};

/// The documents a search may rank.
#[derive(Debug, Clone)]
pub enum Visible {
    /// Every indexed document: for evaluation and benchmarks, which run as the operator. Never
    /// for a caller; callers get [`Visible::Rows`] from [`visible`].
    Everything,
    /// Document id → the `updated_at` (microseconds) of the version the caller reads.
    Rows(HashMap<String, i64>),
}

impl Visible {
    pub fn admits(&self, d: &DocMeta) -> bool {
        match self {
            Visible::Everything => true,
            Visible::Rows(rows) => rows.get(&d.doc_id) == Some(&d.updated_at.timestamp_micros()),
        }
    }
}

/// The sources among `kinds` (every kind when empty) that `access` may search: it reads the
/// table, and none of the table's text columns is masked for it (a masked column's text must
/// neither be shown in snippets nor move a ranking).
pub fn searchable(access: &Access, kinds: &[String]) -> Vec<&'static Source> {
    SOURCES
        .iter()
        .filter(|s| kinds.is_empty() || kinds.iter().any(|k| k == s.kind))
        .filter(|s| access.may_read(s.table))
        .filter(|s| {
            let masks = access.masks(s.table);
            !s.text_columns
                .iter()
                .any(|c| masks.iter().any(|(m, _)| m == c))
        })
        .collect()
}

/// A further condition on one source's rows: a SQL predicate over its columns with `$n`
/// parameters (`search_tickets` narrows tickets by status and category this way).
pub struct Narrow<'a> {
    pub table: &'static str,
    pub predicate: &'a str,
    pub params: Vec<ScalarValue>,
}

/// The documents of `sources` that the caller's governed session `ctx` returns.
pub async fn visible(
    ctx: &SessionContext,
    sources: &[&'static Source],
    narrow: Option<Narrow<'_>>,
) -> Result<Visible> {
    let mut rows = HashMap::new();
    for s in sources {
        let mut sql = format!("SELECT {} AS doc_id, updated_at FROM {}", s.id, s.table);
        let mut params = Vec::new();
        if let Some(n) = narrow.as_ref().filter(|n| n.table == s.table) {
            sql.push_str(" WHERE ");
            sql.push_str(n.predicate);
            params = n.params.clone();
        }
        let mut df = ctx.sql(&sql).await?;
        if !params.is_empty() {
            df = df.with_param_values(params)?;
        }
        for b in df.collect().await? {
            let ids = strings(&b, "doc_id")?;
            let at = b
                .column(1)
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(|| Error::Internal(format!("{}: updated_at type", s.table)))?;
            for row in 0..b.num_rows() {
                rows.insert(ids.value(row).to_string(), at.value(row));
            }
        }
    }
    Ok(Visible::Rows(rows))
}
