//! Table definitions: `schemas/tables/<schema>.<table>.toml`, embedded at build time. Each gives
//! columns (Delta primitive types), partition columns and the Z-order keys used by maintenance.
//! The Delta schema and the Arrow schema both derive from the definition, so writers and
//! readers cannot disagree about a table's shape.

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
    pub partition_by: Vec<String>,
    pub zorder_by: Vec<String>,
    pub columns: Vec<ColumnDef>,
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
}

impl ColumnType {
    pub fn delta(self) -> DeltaType {
        DeltaType::Primitive(match self {
            ColumnType::String => PrimitiveType::String,
            ColumnType::Long => PrimitiveType::Long,
            ColumnType::Integer => PrimitiveType::Integer,
            ColumnType::Double => PrimitiveType::Double,
            ColumnType::Boolean => PrimitiveType::Boolean,
            ColumnType::Timestamp => PrimitiveType::Timestamp,
            ColumnType::Date => PrimitiveType::Date,
            ColumnType::Binary => PrimitiveType::Binary,
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
        }
    }
}

/// The embedded definition files, in a fixed order.
const SOURCES: &[(&str, &str)] = &[
    (
        "iot.telemetry.toml",
        include_str!("../../schemas/tables/iot.telemetry.toml"),
    ),
    (
        "supply_chain.shipments.toml",
        include_str!("../../schemas/tables/supply_chain.shipments.toml"),
    ),
    (
        "supply_chain.inventory_movements.toml",
        include_str!("../../schemas/tables/supply_chain.inventory_movements.toml"),
    ),
    (
        "sales.transactions.toml",
        include_str!("../../schemas/tables/sales.transactions.toml"),
    ),
    (
        "iot.sensor_state.toml",
        include_str!("../../schemas/tables/iot.sensor_state.toml"),
    ),
    (
        "iot.anomalies.toml",
        include_str!("../../schemas/tables/iot.anomalies.toml"),
    ),
    (
        "ops.dead_letters.toml",
        include_str!("../../schemas/tables/ops.dead_letters.toml"),
    ),
    (
        "supply_chain.suppliers.toml",
        include_str!("../../schemas/tables/supply_chain.suppliers.toml"),
    ),
    (
        "supply_chain.parts.toml",
        include_str!("../../schemas/tables/supply_chain.parts.toml"),
    ),
    (
        "supply_chain.inventory.toml",
        include_str!("../../schemas/tables/supply_chain.inventory.toml"),
    ),
    (
        "sales.customers.toml",
        include_str!("../../schemas/tables/sales.customers.toml"),
    ),
    (
        "support.tickets.toml",
        include_str!("../../schemas/tables/support.tickets.toml"),
    ),
    (
        "supply_chain.purchase_orders.toml",
        include_str!("../../schemas/tables/supply_chain.purchase_orders.toml"),
    ),
    (
        "supply_chain.order_actions.toml",
        include_str!("../../schemas/tables/supply_chain.order_actions.toml"),
    ),
    (
        "support.ticket_actions.toml",
        include_str!("../../schemas/tables/support.ticket_actions.toml"),
    ),
    (
        "supply_chain.shortage_signals.toml",
        include_str!("../../schemas/tables/supply_chain.shortage_signals.toml"),
    ),
    (
        "sales.churn_signals.toml",
        include_str!("../../schemas/tables/sales.churn_signals.toml"),
    ),
    (
        "iot.maintenance_alerts.toml",
        include_str!("../../schemas/tables/iot.maintenance_alerts.toml"),
    ),
    (
        "ops.alerts.toml",
        include_str!("../../schemas/tables/ops.alerts.toml"),
    ),
    (
        "ops.audit.toml",
        include_str!("../../schemas/tables/ops.audit.toml"),
    ),
];

/// Parses and checks every embedded definition. Problems from all files are reported together.
pub fn parse_all() -> Result<Vec<TableDef>> {
    let mut defs = Vec::new();
    let mut problems = Vec::new();
    for (file, text) in SOURCES {
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
        p
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
        assert_eq!(defs.len(), SOURCES.len());
        for d in &defs {
            assert!(!d.columns.is_empty(), "{}", d.name);
        }
    }

    #[test]
    fn every_definition_file_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/tables");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = SOURCES.iter().map(|(f, _)| f.to_string()).collect();
        embedded.sort();
        assert_eq!(
            on_disk, embedded,
            "add new files in schemas/tables to SOURCES"
        );
    }
}
