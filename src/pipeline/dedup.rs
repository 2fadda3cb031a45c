//! Event-level idempotency: the same `event_id` produced twice (a producer retry without
//! idempotence) lands once.
//!
//! Exactly-once is per Kafka record; a duplicate is another record. So, per source partition,
//! the worker keeps the event ids of its last `window` records with the offset each was first
//! seen at. A record whose id was first seen at an *earlier* offset is a duplicate and is
//! dropped (its offset still counts as handled); a record whose id was seen at its *own* offset
//! is the same record replayed after a crash, and is kept. The window is restored on assignment
//! from the bronze table itself (the ids and offsets of the partition's newest rows), so it is
//! exact across restarts and needs no state of its own. Producer retries land within moments of
//! the original, far inside a window of thousands of records.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use hashbrown::hash_map::EntryRef;

use arrow::array::{Array, BooleanArray, Int32Array, Int64Array, RecordBatch};

use crate::error::{Error, Result};
use crate::lakehouse::commit::SourcePartition;

/// The recent event ids of one source partition. Each id is stored once, shared by the map and
/// the queue, and hashed with hashbrown's seeded default hasher (foldhash): ids come from
/// producers, so the hash must not be predictable, but SipHash was a tenth of the ingest loop.
#[derive(Debug, Default)]
struct Window {
    first_seen: hashbrown::HashMap<Arc<str>, i64>,
    /// Ids in the order they were seen, oldest first, with their offset.
    order: VecDeque<(i64, Arc<str>)>,
}

impl Window {
    /// The offset `id` was first seen at, remembering `offset` for it if it is new (the oldest
    /// id leaves once more than `capacity` are held).
    fn see(&mut self, id: &str, offset: i64, capacity: usize) -> i64 {
        let id = match self.first_seen.entry_ref(id) {
            EntryRef::Occupied(first) => return *first.get(),
            EntryRef::Vacant(new) => new.insert_entry(offset).key().clone(),
        };
        self.order.push_back((offset, id));
        while self.order.len() > capacity {
            if let Some((_, old)) = self.order.pop_front() {
                self.first_seen.remove(&old);
            }
        }
        offset
    }
}

/// Windows of every source partition this worker owns.
#[derive(Debug)]
pub struct Dedup {
    capacity: usize,
    windows: BTreeMap<SourcePartition, Window>,
}

impl Dedup {
    /// `capacity` ids per partition; 0 turns dedup off.
    pub fn new(capacity: usize) -> Dedup {
        Dedup {
            capacity,
            windows: BTreeMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// How many newest rows of a partition to restore on assignment.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Starts the windows of `partitions` (of `topic`) from `rows` (`event_id`, `_partition`,
    /// `_offset`), e.g. the bronze table's newest rows of each.
    pub fn restore(
        &mut self,
        topic: &str,
        partitions: &[SourcePartition],
        rows: &[RecordBatch],
    ) -> Result<()> {
        let mut seen: Vec<(i32, i64, String)> = Vec::new();
        for b in rows {
            let (ids, offsets) = id_columns(b)?;
            let parts = partition_column(b)?;
            for i in 0..b.num_rows() {
                if ids.is_valid(i) {
                    seen.push((parts.value(i), offsets.value(i), ids.value(i).to_string()));
                }
            }
        }
        seen.sort();
        for p in partitions {
            self.windows.insert(p.clone(), Window::default());
        }
        for (partition, offset, id) in seen {
            if let Some(window) = self
                .windows
                .get_mut(&SourcePartition::new(topic, partition))
            {
                window.see(&id, offset, self.capacity);
            }
        }
        Ok(())
    }

    /// Forgets `p` (revoked, or its log starts over).
    pub fn forget(&mut self, p: &SourcePartition) {
        self.windows.remove(p);
    }

    /// `batch` (bronze rows of `topic`, in offset order per partition) without its duplicates,
    /// remembering the rest; and how many it dropped.
    pub fn filter(&mut self, topic: &str, batch: &RecordBatch) -> Result<(RecordBatch, u64)> {
        if !self.enabled() || batch.num_rows() == 0 {
            return Ok((batch.clone(), 0));
        }
        let (ids, offsets) = id_columns(batch)?;
        let partitions = partition_column(batch)?;
        let mut dropped = 0u64;
        let mut keep = Vec::with_capacity(batch.num_rows());
        let capacity = self.capacity;
        // Rows come in runs of one partition: one window lookup per run.
        let mut start = 0;
        while start < batch.num_rows() {
            let partition = partitions.value(start);
            let mut end = start;
            while end < batch.num_rows() && partitions.value(end) == partition {
                end += 1;
            }
            let window = self
                .windows
                .entry(SourcePartition::new(topic, partition))
                .or_default();
            for i in start..end {
                if !ids.is_valid(i) {
                    keep.push(true);
                    continue;
                }
                let offset = offsets.value(i);
                // Seen first at an earlier offset: a duplicate. At its own offset: the same
                // record replayed, kept.
                let first = window.see(ids.value(i), offset, capacity);
                if first < offset {
                    dropped += 1;
                }
                keep.push(first >= offset);
            }
            start = end;
        }
        if dropped == 0 {
            return Ok((batch.clone(), 0));
        }
        let mask = BooleanArray::from(keep);
        Ok((arrow::compute::filter_record_batch(batch, &mask)?, dropped))
    }
}

fn partition_column(b: &RecordBatch) -> Result<&Int32Array> {
    b.column_by_name("_partition")
        .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
        .ok_or_else(|| Error::Internal("bronze rows lack _partition".into()))
}

/// A batch's `event_id` (as text) and `_offset` columns.
fn id_columns(b: &RecordBatch) -> Result<(arrow::array::StringArray, Int64Array)> {
    let ids = crate::lakehouse::query::strings(b, "event_id")?;
    let offsets = b
        .column_by_name("_offset")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .ok_or_else(|| Error::Internal("rows lack _offset".into()))?
        .clone();
    Ok((ids, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn rows(rows: &[(i32, i64, &str)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("_partition", DataType::Int32, false),
            Field::new("_offset", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(arrow::array::StringArray::from_iter_values(
                    rows.iter().map(|r| r.2),
                )),
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    fn ids(b: &RecordBatch) -> Vec<String> {
        let (ids, _) = id_columns(b).unwrap();
        ids.iter().map(|v| v.unwrap().to_string()).collect()
    }

    /// A later copy of an id is dropped, in the same batch or a later one; the same record
    /// replayed (same offset) is kept; ids are per partition; past the window, an id is new.
    #[test]
    fn later_copies_drop_and_replays_stay() {
        let mut d = Dedup::new(3);
        let (b, n) = d
            .filter(
                "t",
                &rows(&[(0, 1, "a"), (0, 2, "b"), (0, 3, "a"), (1, 1, "a")]),
            )
            .unwrap();
        assert_eq!((ids(&b), n), (vec!["a".into(), "b".into(), "a".into()], 1));
        // Replay of offsets 1..2 after a crash: kept. A copy of b at 4: dropped.
        let (b, n) = d
            .filter("t", &rows(&[(0, 1, "a"), (0, 2, "b"), (0, 4, "b")]))
            .unwrap();
        assert_eq!((ids(&b), n), (vec!["a".into(), "b".into()], 1));
        // The window holds 3 ids: a, b, then c, d push a and b out.
        d.filter("t", &rows(&[(0, 5, "c"), (0, 6, "d"), (0, 7, "e")]))
            .unwrap();
        let (b, n) = d.filter("t", &rows(&[(0, 8, "a")])).unwrap();
        assert_eq!((ids(&b), n), (vec!["a".to_string()], 0));
    }

    /// Restored from the table's rows, the window drops a copy arriving after a restart.
    #[test]
    fn a_restored_window_catches_copies_across_restarts() {
        let mut d = Dedup::new(10);
        let p = SourcePartition::new("t", 0);
        d.restore("t", &[p], &[rows(&[(0, 1, "a"), (0, 2, "b")])])
            .unwrap();
        let (b, n) = d.filter("t", &rows(&[(0, 3, "b"), (0, 4, "c")])).unwrap();
        assert_eq!((ids(&b), n), (vec!["c".to_string()], 1));
        let mut off = Dedup::new(0);
        let (b, n) = off.filter("t", &rows(&[(0, 3, "b"), (0, 4, "b")])).unwrap();
        assert_eq!((b.num_rows(), n), (2, 0));
    }
}
