//! Table definitions: `schemas/tables/<schema>.<table>.toml`, every file of the folder embedded
//! at build time (`build.rs`). Each gives what the table is ([`Role`]), its event-time column
//! and source topic where it has them, columns (Delta primitive types), partition columns and
//! the Z-order keys used by maintenance. The Delta schema and the Arrow schema both derive from
//! the definition, so writers and readers cannot disagree about a table's shape, and the
//! runner, the serving catalog and `up` read a table's role from here instead of keeping lists.

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::{DataType as DeltaType, PrimitiveType, StructField};
use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDef {
    /// `schema.table`, e.g. `iot.telemetry`.
    pub name: String,
    pub comment: String,
    pub role: Role,
    /// The column holding a row's event time (the table's watermark), if it has one.
    #[serde(default)]
    pub event_time: Option<String>,
    /// The topic a log of events is read from (bronze and action logs).
    #[serde(default)]
    pub source_topic: Option<String>,
    pub partition_by: Vec<String>,
    pub zorder_by: Vec<String>,
    pub columns: Vec<ColumnDef>,
}

/// What a table is, which decides who writes it and how it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every valid event of one source topic, appended by the pipeline.
    Bronze,
    /// Every action of one `mfg.actions.*` topic, appended by the pipeline.
    ActionLog,
    /// An operational log, appended (dead letters, audit).
    Log,
    /// A signal appended as it is detected (anomalies).
    SignalLog,
    /// A signal recomputed from its inputs (shortages, churn, maintenance alerts, alerts).
    Signal,
    /// Current state, kept by MERGE or replaced per partition (inventory, detector state,
    /// purchase orders, tickets).
    State,
    /// Reference data written by the simulator or loaded from outside.
    Reference,
}

impl Role {
    /// The role as written in the definition files.
    pub fn name(self) -> &'static str {
        match self {
            Role::Bronze => "bronze",
            Role::ActionLog => "action_log",
            Role::Log => "log",
            Role::SignalLog => "signal_log",
            Role::Signal => "signal",
            Role::State => "state",
            Role::Reference => "reference",
        }
    }

    /// Whether rows are only ever appended (so a reader can follow the table's tail).
    pub fn append_only(self) -> bool {
        matches!(
            self,
            Role::Bronze | Role::ActionLog | Role::Log | Role::SignalLog
        )
    }

    /// Whether the table is fed from a source topic.
    pub fn from_topic(self) -> bool {
        matches!(self, Role::Bronze | Role::ActionLog)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    pub nullable: bool,
    pub comment: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Long,
    Integer,
    Double,
    Boolean,
    Timestamp,
    Date,
    Binary,
    /// An embedding: [`crate::knowledge::embed::DIM`] 32-bit floats. Delta has no fixed-size
    /// list type, so it is an `array<float>` whose length the writer checks.
    Vector,
}

impl ColumnType {
    /// Columns whose min/max statistics say nothing (raw payloads, embeddings).
    pub fn is_bulk(self) -> bool {
        matches!(self, ColumnType::Binary | ColumnType::Vector)
    }

    pub fn delta(self) -> DeltaType {
        if self == ColumnType::Vector {
            return DeltaType::Array(Box::new(deltalake::kernel::ArrayType::new(
                DeltaType::Primitive(PrimitiveType::Float),
                false,
            )));
        }
        DeltaType::Primitive(match self {
            ColumnType::String => PrimitiveType::String,
            ColumnType::Long => PrimitiveType::Long,
            ColumnType::Integer => PrimitiveType::Integer,
            ColumnType::Double => PrimitiveType::Double,
            ColumnType::Boolean => PrimitiveType::Boolean,
            ColumnType::Timestamp => PrimitiveType::Timestamp,
            ColumnType::Date => PrimitiveType::Date,
            ColumnType::Binary => PrimitiveType::Binary,
            ColumnType::Vector => unreachable!("handled above"),
        })
    }

    pub fn arrow(self) -> ArrowType {
        match self {
            ColumnType::String => ArrowType::Utf8,
            ColumnType::Long => ArrowType::Int64,
            ColumnType::Integer => ArrowType::Int32,
            ColumnType::Double => ArrowType::Float64,
            ColumnType::Boolean => ArrowType::Boolean,
            ColumnType::Timestamp => {
                ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            ColumnType::Date => ArrowType::Date32,
            ColumnType::Binary => ArrowType::Binary,
            ColumnType::Vector => {
                ArrowType::List(Arc::new(Field::new("element", ArrowType::Float32, false)))
            }
        }
    }
}

/// The schema of the views (`pipelines/views/<name>.sql` → `views.<name>`).
pub const VIEWS: &str = "views";

// `TABLE_FILES`: every `schemas/tables/*.toml`, found by build.rs.
include!(concat!(env!("OUT_DIR"), "/table_files.rs"));

/// Parses and checks every embedded definition. Problems from all files are reported together.
pub fn parse_all() -> Result<Vec<TableDef>> {
    let mut defs = Vec::new();
    let mut problems = Vec::new();
    for (file, text) in TABLE_FILES {
        match toml::from_str::<TableDef>(text) {
            Ok(def) => {
                problems.extend(def.check(file));
                defs.push(def);
            }
            Err(e) => problems.push(format!("schemas/tables/{file}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(defs)
    } else {
        Err(Error::Config(problems))
    }
}

/// The catalog: all table definitions, parsed once. Panics only if the embedded files are broken,
/// which `tables::tests` catches before anything ships.
pub fn catalog() -> &'static [TableDef] {
    static CATALOG: OnceLock<Vec<TableDef>> = OnceLock::new();
    CATALOG.get_or_init(|| parse_all().expect("embedded table definitions are valid"))
}

pub fn get(name: &str) -> Result<&'static TableDef> {
    catalog()
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| Error::Invalid(format!("unknown table {name:?}")))
}

impl TableDef {
    fn check(&self, file: &str) -> Vec<String> {
        let mut p = Vec::new();
        let expected = format!("{}.toml", self.name);
        if *file != expected {
            p.push(format!(
                "schemas/tables/{file}: name {:?} does not match the file name",
                self.name
            ));
        }
        if self.name.split('.').count() != 2 {
            p.push(format!("schemas/tables/{file}: name must be schema.table"));
        }
        for key in self.partition_by.iter().chain(&self.zorder_by) {
            if self.column(key).is_none() {
                p.push(format!("schemas/tables/{file}: {key:?} is not a column"));
            }
        }
        for z in &self.zorder_by {
            if self.partition_by.contains(z) {
                p.push(format!(
                    "schemas/tables/{file}: z-order column {z:?} is a partition column"
                ));
            }
        }
        if let Some(t) = &self.event_time
            && self.column(t).is_none_or(|c| c.ty != ColumnType::Timestamp)
        {
            p.push(format!(
                "schemas/tables/{file}: event_time {t:?} is not a timestamp column"
            ));
        }
        match (&self.source_topic, self.role.from_topic()) {
            (None, true) => p.push(format!(
                "schemas/tables/{file}: a {:?} table needs source_topic",
                self.role
            )),
            (Some(t), false) => p.push(format!(
                "schemas/tables/{file}: source_topic {t:?} on a {:?} table, which no topic feeds",
                self.role
            )),
            (Some(t), true) if !crate::broker::topics::ALL.contains(&t.as_str()) => p.push(
                format!("schemas/tables/{file}: source_topic {t:?} is not a millstream topic"),
            ),
            _ => {}
        }
        p
    }

    /// The table fed from `topic`, if any.
    pub fn fed_by(topic: &str) -> Option<&'static TableDef> {
        catalog()
            .iter()
            .find(|t| t.source_topic.as_deref() == Some(topic))
    }

    /// The tables of these roles, in catalog order.
    pub fn with_role(roles: &[Role]) -> impl Iterator<Item = &'static TableDef> {
        let roles = roles.to_vec();
        catalog().iter().filter(move |t| roles.contains(&t.role))
    }

    pub fn schema_name(&self) -> &str {
        self.name
            .split_once('.')
            .map(|(s, _)| s)
            .unwrap_or(&self.name)
    }

    pub fn table_name(&self) -> &str {
        self.name
            .split_once('.')
            .map(|(_, t)| t)
            .unwrap_or(&self.name)
    }

    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn delta_fields(&self) -> Vec<StructField> {
        self.columns
            .iter()
            .map(|c| StructField::new(c.name.clone(), c.ty.delta(), c.nullable))
            .collect()
    }

    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.ty.arrow(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// The Arrow schema of only the named columns, in table order.
    pub fn arrow_projection(&self, keep: impl Fn(&str) -> bool) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .filter(|c| keep(&c.name))
                .map(|c| Field::new(&c.name, c.ty.arrow(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_definitions_parse_and_check() {
        let defs = parse_all().unwrap();
        assert_eq!(defs.len(), TABLE_FILES.len());
        for d in &defs {
            assert!(!d.columns.is_empty(), "{}", d.name);
        }
    }

    #[test]
    fn every_source_topic_feeds_one_table() {
        for topic in crate::broker::topics::ALL {
            let fed: Vec<&str> = catalog()
                .iter()
                .filter(|t| t.source_topic.as_deref() == Some(topic))
                .map(|t| t.name.as_str())
                .collect();
            assert!(fed.len() <= 1, "{topic} feeds {fed:?}");
        }
        for kind in crate::model::EventKind::ALL {
            assert_eq!(
                TableDef::fed_by(kind.topic()).map(|t| t.name.as_str()),
                Some(kind.bronze_table())
            );
        }
    }
}
