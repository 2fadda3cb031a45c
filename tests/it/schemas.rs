//! The committed JSON Schemas are generated from the event types, and the event types match
//! the bronze table definitions. A table written under an older definition gains the nullable
//! columns its definition has since added.

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
            kind.schema_text(),
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

/// `ops.alerts` as an earlier release wrote it, without the columns `keep` rejects, holding
/// one row.
async fn older_alerts_table(lake: &millstream::lakehouse::Lakehouse, keep: impl Fn(&str) -> bool) {
    use std::sync::Arc;
    let def = tables::get("ops.alerts").unwrap();
    let fields: Vec<_> = def
        .delta_fields()
        .into_iter()
        .filter(|f| keep(f.name()))
        .collect();
    let path = lake.table_path("ops.alerts").unwrap().unwrap();
    std::fs::create_dir_all(&path).unwrap();
    let table = deltalake::operations::create::CreateBuilder::new()
        .with_location(url::Url::from_directory_path(&path).unwrap().to_string())
        .with_columns(fields)
        .with_partition_columns(def.partition_by.clone())
        .with_configuration_property(deltalake::TableProperty::EnableChangeDataFeed, Some("true"))
        .await
        .unwrap();
    let schema = Arc::new(arrow::datatypes::Schema::new(
        def.arrow_schema()
            .fields()
            .iter()
            .filter(|f| keep(f.name()))
            .cloned()
            .collect::<Vec<_>>(),
    ));
    let row = r#"{"alert_id": "old", "source": "supply_chain.shortage_signals", "signal_key": "P-1@WH-01", "severity": "HIGH", "title": "t", "detail": "d", "signal_ts": "2026-11-08T00:00:00Z", "alert_date": "2026-11-08"}"#;
    let batch = crate::support::json_batch(schema, row);
    table.write(vec![batch]).await.unwrap();
}

#[tokio::test]
async fn an_older_table_gains_the_nullable_columns_its_definition_added() {
    const ADDED: [&str; 5] = [
        "warehouse_id",
        "plant_id",
        "region",
        "customer_id",
        "account_manager",
    ];
    let dir = tempfile::tempdir().unwrap();
    let lake = millstream::lakehouse::Lakehouse::new(dir.path()).unwrap();
    older_alerts_table(&lake, |c| !ADDED.contains(&c)).await;

    let table = lake.ensure("ops.alerts").await.unwrap();
    let schema = table.snapshot().unwrap().schema();
    for c in ADDED {
        assert!(
            schema.field(c).is_some_and(|f| f.is_nullable()),
            "{c} not added"
        );
    }
    // Old rows read the new columns as NULL; new rows carry them.
    let row = r#"{"alert_id": "new", "source": "supply_chain.shortage_signals", "signal_key": "P-1@WH-02", "severity": "HIGH", "title": "t", "detail": "d", "signal_ts": "2026-11-08T00:00:00Z", "alert_date": "2026-11-08", "warehouse_id": "WH-02"}"#;
    let batch = crate::support::json_batch(tables::get("ops.alerts").unwrap().arrow_schema(), row);
    table.write(vec![batch]).await.unwrap();
    assert_eq!(
        crate::support::rows(
            &lake,
            "SELECT alert_id, coalesce(warehouse_id, '-') FROM ops.alerts"
        )
        .await,
        vec!["new|WH-02", "old|-"]
    );
    // Ensuring again changes nothing.
    let version = lake.ensure("ops.alerts").await.unwrap().version();
    assert_eq!(lake.ensure("ops.alerts").await.unwrap().version(), version);
}

#[tokio::test]
async fn a_missing_required_column_is_named_not_invented() {
    let dir = tempfile::tempdir().unwrap();
    let lake = millstream::lakehouse::Lakehouse::new(dir.path()).unwrap();
    older_alerts_table(&lake, |c| c != "title").await;
    let e = lake.ensure("ops.alerts").await.unwrap_err().to_string();
    assert!(e.contains("non-nullable column title"), "{e}");
}
