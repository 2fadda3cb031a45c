//! Bytes → Arrow. Each record is parsed and validated against its stream's Rust event type; the
//! valid ones are decoded in bulk by arrow-json into the bronze table's columns, and the rest
//! become dead letters carrying their raw bytes, source position and the reason.
//!
//! Validation and decoding agree by construction (the event type and the table definition are
//! kept in sync by a test); should arrow-json still refuse a batch, every record of it is decoded
//! alone and only the ones that fail are dead-lettered, so one bad record never blocks a batch.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Array, Int64Array, RecordBatch, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::json::ReaderBuilder;

use crate::error::{Error, Result};
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
    events: SchemaRef,
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
            events: def.arrow_projection(|c| !META_COLUMNS.contains(&c)),
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
        let mut rejected = Vec::new();
        let mut valid = Vec::with_capacity(indices.len());
        let mut unknown_fields = 0u64;
        for &i in indices {
            match records[i].payload.as_deref() {
                None => rejected.push(Rejection {
                    index: i,
                    reason: "empty payload".into(),
                }),
                Some(bytes) => match self.kind.check_fields(bytes, self.strict) {
                    Ok(unknown) => {
                        unknown_fields += unknown as u64;
                        valid.push(i);
                    }
                    Err(reason) => rejected.push(Rejection { index: i, reason }),
                },
            }
        }
        let events = match self.decode_json(records, &valid) {
            Ok(b) => b,
            Err(_) => {
                // Find the culprits one by one; keep the rest.
                let mut ok = Vec::with_capacity(valid.len());
                for &i in &valid {
                    match self.decode_json(records, &[i]) {
                        Ok(_) => ok.push(i),
                        Err(e) => rejected.push(Rejection {
                            index: i,
                            reason: format!("decode: {e}"),
                        }),
                    }
                }
                valid = ok;
                self.decode_json(records, &valid)?
            }
        };
        rejected.sort_by_key(|r| r.index);
        Ok(Decoded {
            rows: self.with_meta(events, records, &valid, ingested_at_us)?,
            rejected,
            unknown_fields,
        })
    }

    fn decode_json(&self, records: &[RawRecord], indices: &[usize]) -> Result<RecordBatch> {
        let mut decoder = ReaderBuilder::new(self.events.clone())
            .with_batch_size(indices.len().max(1))
            .build_decoder()?;
        for &i in indices {
            let bytes = records[i].payload.as_deref().unwrap_or_default();
            let mut buf = bytes;
            while !buf.is_empty() {
                let read = decoder.decode(buf)?;
                if read == 0 {
                    return Err(Error::Internal("json decoder made no progress".into()));
                }
                buf = &buf[read..];
            }
        }
        Ok(decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.events.clone())))
    }

    fn with_meta(
        &self,
        events: RecordBatch,
        records: &[RawRecord],
        valid: &[usize],
        ingested_at_us: i64,
    ) -> Result<RecordBatch> {
        let ts = events
            .column_by_name("ts")
            .ok_or_else(|| Error::Internal("bronze table without ts".into()))?;
        let event_date = arrow::compute::cast(ts, &DataType::Date32)?;
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
                name => events
                    .column_by_name(name)
                    .cloned()
                    .ok_or_else(|| Error::Internal(format!("missing column {name}"))),
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
