//! The committed JSON Schemas are generated from the event types, and the event types match
//! the bronze table definitions.

use millstream::model::{EventKind, tables};

#[test]
fn committed_event_schemas_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/events");
    for kind in EventKind::ALL {
        let path = dir.join(format!("{}.schema.json", kind.schema_name()));
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `cargo run -- schemas`", path.display()));
        assert_eq!(
            committed,
            millstream::cli::schema_text(kind),
            "{} drifted from the Rust type; run `cargo run -- schemas` and commit the result",
            path.display()
        );
    }
}

#[test]
fn every_event_field_is_a_bronze_column_and_back() {
    for kind in EventKind::ALL {
        let schema = kind.json_schema();
        let mut fields: Vec<String> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .cloned()
            .collect();
        fields.sort();
        let def = tables::get(kind.bronze_table()).unwrap();
        let mut columns: Vec<String> = def
            .columns
            .iter()
            .map(|c| c.name.clone())
            .filter(|c| !c.starts_with('_') && c != "event_date")
            .collect();
        columns.sort();
        assert_eq!(
            fields,
            columns,
            "{}: event fields vs bronze columns",
            kind.bronze_table()
        );
        assert!(
            def.partition_by == ["event_date"],
            "{} is partitioned by event_date",
            def.name
        );
    }
}
