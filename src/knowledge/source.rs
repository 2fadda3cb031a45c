//! The tables whose rows are searchable documents, and how their rows become [`DocMeta`]s: from
//! a snapshot (a start, or a rebuild after the Change Data Feed is gone) or from the Change Data
//! Feed of new versions (what changed, and nothing else).

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use chrono::DateTime;

use super::index::{DocMeta, Links};
use crate::lakehouse::query::{batches_sql, snapshot_sql, strings};
use crate::{Error, Result};

/// A table of documents: what kind they are, which column is their id, which columns are their
/// text (a caller for whom one of these is masked cannot search the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub table: &'static str,
    pub kind: &'static str,
    pub id: &'static str,
    pub text_columns: &'static [&'static str],
}

pub const SOURCES: [Source; 4] = [
    Source {
        table: "knowledge.sops",
        kind: "sop",
        id: "doc_id",
        text_columns: &["title", "body"],
    },
    Source {
        table: "knowledge.incidents",
        kind: "incident",
        id: "doc_id",
        text_columns: &["title", "body"],
    },
    Source {
        table: "knowledge.proposals",
        kind: "proposal",
        id: "doc_id",
        text_columns: &["title", "body"],
    },
    Source {
        table: "support.tickets",
        kind: "ticket",
        id: "ticket_id",
        text_columns: &["subject", "description", "resolution"],
    },
];

/// The entity columns of a document table, in [`Links`]' order.
pub const LINK_COLUMNS: [&str; 8] = [
    "plant_id",
    "warehouse_id",
    "customer_id",
    "machine_id",
    "machine_type",
    "sensor_type",
    "part_id",
    "supplier_id",
];

impl Source {
    /// The select list that reads a row of this table as a document (over table `t`).
    fn select(&self) -> String {
        if self.table == "support.tickets" {
            "ticket_id AS doc_id, subject AS title, \
             concat(description, CASE WHEN resolution IS NULL THEN '' \
             ELSE concat('\n\nResolution: ', resolution) END) AS body, \
             CAST(NULL AS VARCHAR) AS plant_id, CAST(NULL AS VARCHAR) AS warehouse_id, customer_id, \
             CAST(NULL AS VARCHAR) AS machine_id, CAST(NULL AS VARCHAR) AS machine_type, \
             CAST(NULL AS VARCHAR) AS sensor_type, CAST(NULL AS VARCHAR) AS part_id, \
             CAST(NULL AS VARCHAR) AS supplier_id, updated_at"
                .to_string()
        } else {
            format!(
                "doc_id, title, body, {}, updated_at",
                LINK_COLUMNS.join(", ")
            )
        }
    }

    /// Every document of a table version.
    pub async fn snapshot(&self, table: &deltalake::DeltaTable) -> Result<Vec<(DocMeta, String)>> {
        let batches = snapshot_sql(table, &format!("SELECT {} FROM t", self.select())).await?;
        let mut out = Vec::new();
        for b in &batches {
            self.parse(b, |doc, body, _| out.push((doc, body)))?;
        }
        Ok(out)
    }

    /// What the Change Data Feed rows `changes` (of one or more versions) leave: the documents
    /// inserted or updated, at their last state, and the ids deleted.
    pub async fn changes(&self, changes: Vec<RecordBatch>) -> Result<Changed> {
        let sql = format!(
            "SELECT {}, CAST(_change_type AS VARCHAR) AS change_type, \
             CAST(_commit_version AS BIGINT) AS commit_version FROM t",
            self.select()
        );
        let mut last: HashMap<String, Latest> = HashMap::new();
        for b in &batches_sql(changes, &sql).await? {
            let kinds = strings(b, "change_type")?;
            let versions = b
                .column_by_name("commit_version")
                .and_then(|c| c.as_primitive_opt::<Int64Type>())
                .ok_or_else(|| Error::Internal("CDF rows without a commit version".into()))?
                .clone();
            self.parse(b, |doc, body, row| {
                // Within a commit, the row's new state wins over its old one.
                let (order, state) = match kinds.value(row) {
                    "update_preimage" => return,
                    "delete" => (0, None),
                    _ => (1, Some((doc.clone(), body))),
                };
                let at = (versions.value(row), order);
                match last.get(&doc.doc_id) {
                    Some((v, o, _)) if (*v, *o) > at => {}
                    _ => {
                        last.insert(doc.doc_id, (at.0, at.1, state));
                    }
                }
            })?;
        }
        let mut changed = Changed::default();
        for (id, (_, _, state)) in last {
            match state {
                Some(doc) => changed.upserted.push(doc),
                None => changed.removed.push(id),
            }
        }
        Ok(changed)
    }

    /// Calls `each` with every row of `b` (read with [`Self::select`]) as a document.
    fn parse(&self, b: &RecordBatch, mut each: impl FnMut(DocMeta, String, usize)) -> Result<()> {
        let column = |name: &str| strings(b, name);
        let (id, title, body) = (column("doc_id")?, column("title")?, column("body")?);
        let links: Vec<StringArray> = LINK_COLUMNS
            .iter()
            .map(|c| column(c))
            .collect::<Result<_>>()?;
        let at = b
            .column_by_name("updated_at")
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .ok_or_else(|| {
                Error::Internal(format!("{}: updated_at is not a timestamp", self.table))
            })?;
        for row in 0..b.num_rows() {
            let link = |i: usize| {
                links[i]
                    .is_valid(row)
                    .then(|| links[i].value(row).to_string())
            };
            let (title, body) = (title.value(row).to_string(), body.value(row).to_string());
            let doc = DocMeta {
                doc_id: id.value(row).to_string(),
                source: self.table,
                kind: self.kind,
                content_hash: crate::model::stable_hash(&[&title, &body]),
                title,
                links: Links {
                    plant_id: link(0),
                    warehouse_id: link(1),
                    customer_id: link(2),
                    machine_id: link(3),
                    machine_type: link(4),
                    sensor_type: link(5),
                    part_id: link(6),
                    supplier_id: link(7),
                },
                updated_at: DateTime::from_timestamp_micros(at.value(row)).unwrap_or_default(),
            };
            each(doc, body, row);
        }
        Ok(())
    }
}

/// A document's latest change: (commit version, order within the commit, its state or None
/// when deleted).
type Latest = (i64, u8, Option<(DocMeta, String)>);

/// What a range of versions changed in one source.
#[derive(Debug, Default)]
pub struct Changed {
    pub upserted: Vec<(DocMeta, String)>,
    pub removed: Vec<String>,
}
