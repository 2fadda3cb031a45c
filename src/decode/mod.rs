//! Bytes → Arrow. Each record is parsed once, into its stream's Rust event type, which validates
//! it; the valid events' fields become the bronze table's columns directly
//! ([`events::BronzeColumns`]), and the rest become dead letters carrying their raw bytes,
//! source position and the reason.
//!
//! A record that parses and validates always fits its columns: the event type and the table
//! definition are kept in sync by a test, so one bad record never blocks a batch. (Until
//! 2026-12 the valid records were parsed a second time, by arrow-json: that was half of
//! decoding's time.)

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Array, Int64Array, RecordBatch, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, SchemaRef};

use crate::error::{Error, Result};
use crate::model::events::{self, Event};
use crate::model::{EventKind, TableDef, tables};
use crate::source::RawRecord;

/// The table rejected records go to, with their raw bytes and why.
pub const DEAD_LETTERS: &str = "ops.dead_letters";

/// Bronze columns that are not event fields.
pub const META_COLUMNS: [&str; 4] = ["event_date", "_partition", "_offset", "_ingested_at"];

/// A rejected record: index into the batch and reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub index: usize,
    pub reason: String,
}

pub struct BronzeDecoder {
    kind: EventKind,
    table: SchemaRef,
    /// Reject records with fields the event type does not have (else count and ignore them).
    strict: bool,
}

/// One chunk decoded: the bronze rows, the records rejected, and how many fields of the valid
/// records the event type does not have.
pub struct Decoded {
    pub rows: RecordBatch,
    pub rejected: Vec<Rejection>,
    pub unknown_fields: u64,
}

impl BronzeDecoder {
    pub fn new(kind: EventKind) -> Result<Self> {
        let def: &TableDef = tables::get(kind.bronze_table())?;
        Ok(BronzeDecoder {
            kind,
            table: def.arrow_schema(),
            strict: false,
        })
    }

    /// Fields an event type does not have reject the record (`pipeline.strict_fields`).
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// Decodes `records[i]` for every `i` in `indices` into one bronze batch. Records that fail
    /// are returned as rejections instead.
    pub fn decode(
        &self,
        records: &[RawRecord],
        indices: &[usize],
        ingested_at_us: i64,
    ) -> Result<Decoded> {
        crate::with_event_type!(self.kind, T => self.decode_as::<T>(records, indices, ingested_at_us))
    }

    /// Each record is parsed once, into `T` (which validates it); the valid events' fields
    /// become the columns ([`events::BronzeColumns`]).
    fn decode_as<T: Event>(
        &self,
        records: &[RawRecord],
        indices: &[usize],
        ingested_at_us: i64,
    ) -> Result<Decoded> {
        let mut rejected = Vec::new();
        let mut events = Vec::with_capacity(indices.len());
        let mut valid = Vec::with_capacity(indices.len());
        let mut unknown_fields = 0u64;
        for &i in indices {
            let Some(bytes) = records[i].payload.as_deref() else {
                rejected.push(Rejection {
                    index: i,
                    reason: "empty payload".into(),
                });
                continue;
            };
            match events::parse::<T>(bytes, self.strict) {
                Ok((event, unknown)) => {
                    unknown_fields += unknown as u64;
                    events.push(event);
                    valid.push(i);
                }
                Err(reason) => rejected.push(Rejection { index: i, reason }),
            }
        }
        rejected.sort_by_key(|r| r.index);
        Ok(Decoded {
            rows: self.with_meta(T::columns(&events), records, &valid, ingested_at_us)?,
            rejected,
            unknown_fields,
        })
    }

    /// The bronze batch: the event columns, in the table's order, and the metadata columns.
    fn with_meta(
        &self,
        events: Vec<(&'static str, ArrayRef)>,
        records: &[RawRecord],
        valid: &[usize],
        ingested_at_us: i64,
    ) -> Result<RecordBatch> {
        let column = |name: &str| {
            events
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| c.clone())
                .ok_or_else(|| {
                    Error::Internal(format!("{} has no field {name}", self.kind.schema_name()))
                })
        };
        let event_date = arrow::compute::cast(&column("ts")?, &DataType::Date32)?;
        let partition: ArrayRef = Arc::new(Int32Array::from_iter_values(
            valid.iter().map(|&i| records[i].partition),
        ));
        let offset: ArrayRef = Arc::new(Int64Array::from_iter_values(
            valid.iter().map(|&i| records[i].offset),
        ));
        let ingested: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(
                ingested_at_us,
                valid.len(),
            ))
            .with_timezone("UTC"),
        );
        let columns = self
            .table
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "event_date" => Ok(event_date.clone()),
                "_partition" => Ok(partition.clone()),
                "_offset" => Ok(offset.clone()),
                "_ingested_at" => Ok(ingested.clone()),
                name => column(name),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(self.table.clone(), columns)?)
    }
}

/// Builds the `ops.dead_letters` rows for `rejections` of `records`.
pub fn dead_letters(
    pipeline: &str,
    records: &[RawRecord],
    rejections: &[Rejection],
    received_at_us: i64,
) -> Result<RecordBatch> {
    let schema = tables::get("ops.dead_letters")?.arrow_schema();
    let n = rejections.len();
    let mut pipe = StringBuilder::new();
    let mut topic = StringBuilder::new();
    let mut key = BinaryBuilder::new();
    let mut payload = BinaryBuilder::new();
    let mut reason = StringBuilder::new();
    let mut partition = Vec::with_capacity(n);
    let mut offset = Vec::with_capacity(n);
    let mut kts = Vec::with_capacity(n);
    for r in rejections {
        let rec = &records[r.index];
        pipe.append_value(pipeline);
        topic.append_value(&*rec.topic);
        key.append_option(rec.key.as_deref());
        payload.append_option(rec.payload.as_deref());
        reason.append_value(&r.reason);
        partition.push(rec.partition);
        offset.push(rec.offset);
        kts.push(rec.timestamp_ms.map(|ms| ms * 1000));
    }
    let received =
        TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(received_at_us, n))
            .with_timezone("UTC");
    let date = arrow::compute::cast(&received, &DataType::Date32)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(pipe.finish()),
        Arc::new(topic.finish()),
        Arc::new(Int32Array::from(partition)),
        Arc::new(Int64Array::from(offset)),
        Arc::new(key.finish()),
        Arc::new(payload.finish()),
        Arc::new(reason.finish()),
        Arc::new(TimestampMicrosecondArray::from(kts).with_timezone("UTC")),
        Arc::new(received),
        date,
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Date32Array;

    fn rec(offset: i64, payload: &str) -> RawRecord {
        RawRecord {
            topic: Arc::from(EventKind::Telemetry.topic()),
            partition: 3,
            offset,
            key: Some(b"d1".to_vec()),
            payload: Some(payload.as_bytes().to_vec()),
            timestamp_ms: Some(1_700_000_000_000),
        }
    }

    /// One event of every stream, every field set (optional ones too, to catch a column filled
    /// from the wrong field or left empty).
    fn sample(kind: EventKind) -> &'static str {
        match kind {
            EventKind::Telemetry => {
                r#"{"event_id":"e1","device_id":"d1","machine_id":"m1","plant_id":"p1","sensor_type":"vibration","value":2.5,"unit":"mm/s","ts":"2026-11-02T10:00:00.123456Z"}"#
            }
            EventKind::Shipment => {
                r#"{"event_id":"e2","shipment_id":"s1","supplier_id":"sup1","part_id":"pt1","warehouse_id":"w1","quantity":40,"status":"in_transit","carrier":"DHL","eta":"2026-11-05T08:00:00Z","po_id":"po1","ts":"2026-11-02T10:00:01Z"}"#
            }
            EventKind::Inventory => {
                r#"{"event_id":"e3","part_id":"pt1","warehouse_id":"w1","movement_type":"transfer_out","quantity":7,"reference":"r1","ts":"2026-11-02T10:00:02Z"}"#
            }
            EventKind::Sales => {
                r#"{"event_id":"e4","transaction_id":"t1","customer_id":"c1","product_id":"pr1","quantity":3,"unit_price":9.5,"amount":28.5,"currency":"EUR","channel":"distributor","region":"EMEA","ts":"2026-11-02T10:00:03Z"}"#
            }
            EventKind::OrderAction => {
                r#"{"event_id":"e5","po_id":"po1","idempotency_key":"k1","part_id":"pt1","warehouse_id":"w1","supplier_id":"sup1","quantity":100,"priority":"expedited","unit_cost":2.0,"fee":10.0,"total_cost":210.0,"expected_at":"2026-11-09T00:00:00Z","on_behalf_of":"u1","ts":"2026-11-02T10:00:04Z"}"#
            }
            EventKind::TicketAction => {
                r#"{"event_id":"e6","ticket_id":"tk1","idempotency_key":"k2","action":"create","customer_id":"c1","subject":"late","description":"where is it","category":"delivery","priority":"high","status":"open","resolution":"none yet","on_behalf_of":"u2","ts":"2026-11-02T10:00:05Z"}"#
            }
            EventKind::Document => {
                r#"{"event_id":"e7","doc_id":"doc1","op":"upsert","kind":"incident","title":"T","body":"B","plant_id":"p1","warehouse_id":"w1","region":"EMEA","customer_id":"c1","account_manager":"am1","machine_id":"m1","machine_type":"press","sensor_type":"power","part_id":"pt1","supplier_id":"sup1","created_at":"2026-11-01T09:00:00Z","ts":"2026-11-02T10:00:06Z"}"#
            }
        }
    }

    #[test]
    fn every_field_of_every_stream_lands_in_its_own_bronze_column() {
        for kind in EventKind::ALL {
            let json = sample(kind);
            let mut record = rec(4, json);
            record.topic = Arc::from(kind.topic());
            let decoded = BronzeDecoder::new(kind)
                .unwrap()
                .decode(&[record], &[0], 0)
                .unwrap();
            assert!(
                decoded.rejected.is_empty(),
                "{kind:?}: {:?}",
                decoded.rejected
            );
            assert_eq!(decoded.unknown_fields, 0);
            let rows = decoded.rows;
            assert_eq!(
                rows.schema(),
                tables::get(kind.bronze_table()).unwrap().arrow_schema()
            );
            // Back to JSON by an independent writer: the event columns say what the record said.
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            writer
                .write(&rows.project(&event_columns(&rows)).unwrap())
                .unwrap();
            writer.finish().unwrap();
            let written: Vec<serde_json::Value> =
                serde_json::from_slice(&writer.into_inner()).unwrap();
            let sent: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(written, vec![normalise(sent)], "{kind:?}");
        }

        fn event_columns(rows: &RecordBatch) -> Vec<usize> {
            let schema = rows.schema();
            (0..schema.fields().len())
                .filter(|&i| !META_COLUMNS.contains(&schema.field(i).name().as_str()))
                .collect()
        }

        /// Times as the JSON writer prints microsecond timestamps in UTC.
        fn normalise(mut v: serde_json::Value) -> serde_json::Value {
            for (_, field) in v.as_object_mut().unwrap() {
                if let Some(t) = field
                    .as_str()
                    .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
                {
                    *field = t
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                        .into();
                }
            }
            v
        }
    }

    #[test]
    fn good_records_decode_and_bad_ones_are_rejected_with_reason() {
        let good = r#"{"event_id":"e1","device_id":"d1","machine_id":"m","plant_id":"p","sensor_type":"power","value":2.5,"unit":"kW","ts":"2026-11-02T10:00:00Z"}"#;
        let records = vec![
            rec(10, good),
            rec(11, "garbage"),
            rec(12, &good.replace("e1", "e2")),
        ];
        let d = BronzeDecoder::new(EventKind::Telemetry).unwrap();
        let decoded = d.decode(&records, &[0, 1, 2], 0).unwrap();
        let (batch, rejected) = (decoded.rows, decoded.rejected);
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].index, 1);
        assert!(rejected[0].reason.contains("invalid json"));
        let offsets = batch
            .column_by_name("_offset")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(offsets.values(), &[10, 12]);
        let dates = batch
            .column_by_name("event_date")
            .unwrap()
            .as_any()
            .downcast_ref::<Date32Array>()
            .unwrap();
        assert_eq!(dates.value_as_date(0).unwrap().to_string(), "2026-11-02");
        let dl = dead_letters("p", &records, &rejected, 5).unwrap();
        assert_eq!(dl.num_rows(), 1);
        assert_eq!(
            dl.schema(),
            tables::get("ops.dead_letters").unwrap().arrow_schema()
        );
    }
}
