//! Tool queries: fixed SQL with `$n` parameters bound by DataFusion, never arguments spliced
//! into text; and rows as JSON.

use datafusion::scalar::ScalarValue;
use rmcp::ErrorData;

use super::args::{internal, text};

/// A query with positional parameters, built from optional filters.
pub struct Query {
    pub(crate) sql: String,
    pub(crate) params: Vec<ScalarValue>,
    filters: Vec<String>,
}

impl Query {
    /// `select` is everything before the WHERE clause.
    pub fn new(select: &str) -> Query {
        Query {
            sql: select.to_string(),
            params: Vec::new(),
            filters: Vec::new(),
        }
    }

    /// Binds the next `$n` for SQL that names it itself (`$1` is the first `bind`).
    pub fn bind(mut self, value: ScalarValue) -> Query {
        self.params.push(value);
        self
    }

    /// Adds `condition` (with `?` standing for the value) when `value` is given.
    pub fn filter(mut self, condition: &str, value: Option<ScalarValue>) -> Query {
        if let Some(v) = value {
            self.params.push(v);
            self.filters
                .push(condition.replace('?', &format!("${}", self.params.len())));
        }
        self
    }

    /// Adds `column IN (…)` over `values`; nothing when there are none.
    pub fn any_of(mut self, column: &str, values: &[&str]) -> Query {
        if values.is_empty() {
            return self;
        }
        let mut marks = Vec::new();
        for v in values {
            self.params.push(text(v));
            marks.push(format!("${}", self.params.len()));
        }
        self.filters
            .push(format!("{column} IN ({})", marks.join(", ")));
        self
    }

    /// The conditions added so far, joined by AND (`TRUE` when there are none), and their
    /// parameters: a predicate for SQL built elsewhere.
    pub fn predicate(self) -> (String, Vec<ScalarValue>) {
        let sql = if self.filters.is_empty() {
            "TRUE".to_string()
        } else {
            self.filters.join(" AND ")
        };
        (sql, self.params)
    }

    /// Closes the WHERE clause and appends `tail` (ORDER BY, LIMIT …).
    pub fn finish(mut self, tail: &str) -> Query {
        if !self.filters.is_empty() {
            self.sql.push_str(" WHERE ");
            self.sql.push_str(&self.filters.join(" AND "));
        }
        self.sql.push(' ');
        self.sql.push_str(tail);
        self
    }
}

/// Record batches as a JSON array of row objects (NULL columns left out).
pub fn rows_json(batches: &[arrow::array::RecordBatch]) -> Result<serde_json::Value, ErrorData> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for b in batches {
        writer.write(b).map_err(internal)?;
    }
    writer.finish().map_err(internal)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(serde_json::Value::Array(vec![]));
    }
    serde_json::from_slice(&bytes).map_err(internal)
}
