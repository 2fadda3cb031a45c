//! `ops.alerts` out to the `mfg.alerts` topic for alerting consumers, each alert once, across
//! restarts (DESIGN §4).
//!
//! The publisher follows the table's Change Data Feed version by version. A version's new
//! alerts are sorted by `alert_id` and produced (idempotent producer, key = `signal_key`, value =
//! the alert row as JSON) with three headers — the table version, the alert's index in the
//! version and the version's alert count — and the next version starts only once every message
//! of this one is acknowledged. So at most one version is ever in flight, and the topic itself
//! says where publishing stopped: on start the publisher reads the last message of each
//! partition, takes the highest version found, reads that version's messages back (they are the
//! last `count` of each partition at most) and produces only the indices that are missing. No
//! offsets are kept anywhere else, so nothing can disagree with the topic.
//!
//! Assumptions, checked or documented: only millstream writes `mfg.alerts`, one publisher runs
//! per lakehouse (with the derived pipelines; `--no-derive` turns both off), and the topic keeps
//! its latest messages (`cleanup.policy=compact` is the natural setting: keys are unique per
//! alert, and the last message of a partition is never compacted away).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use deltalake::DeltaTable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::broker::topics;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::lakehouse::Lakehouse;

pub const ALERTS_TABLE: &str = "ops.alerts";
/// Header: the `ops.alerts` version the alert was committed in.
pub const HEADER_VERSION: &str = "millstream-alerts-version";
/// Header: the alert's index among its version's alerts, in `alert_id` order.
pub const HEADER_INDEX: &str = "millstream-alerts-index";
/// Header: how many alerts the version has.
pub const HEADER_COUNT: &str = "millstream-alerts-count";

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// One alert as a message.
#[derive(Debug, Clone)]
pub struct AlertMessage {
    pub version: u64,
    pub index: u64,
    pub count: u64,
    pub alert_id: String,
    pub key: String,
    pub payload: Vec<u8>,
}

impl AlertMessage {
    /// The version, index and count headers that let a publisher resume from the topic.
    pub fn headers(&self) -> OwnedHeaders {
        let (version, index, count) = (
            self.version.to_string(),
            self.index.to_string(),
            self.count.to_string(),
        );
        OwnedHeaders::new()
            .insert(Header {
                key: HEADER_VERSION,
                value: Some(&version),
            })
            .insert(Header {
                key: HEADER_INDEX,
                value: Some(&index),
            })
            .insert(Header {
                key: HEADER_COUNT,
                value: Some(&count),
            })
    }
}

/// Where publishing stands, as read from the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The highest version found on the topic, if any.
    pub version: Option<u64>,
    /// Indices of that version already on the topic.
    pub delivered: BTreeSet<u64>,
}

pub struct AlertPublisher {
    lake: Lakehouse,
    producer: FutureProducer,
    reader: ClientConfig,
    topic: String,
    table: Option<DeltaTable>,
    /// The first version not yet known to be on the topic; `None` until read from the topic
    /// (at start, and again after a failed send, since some of its messages may have landed).
    next: Option<u64>,
}

impl AlertPublisher {
    pub fn new(lake: Lakehouse, kafka: &KafkaConfig, brokers: &str) -> Result<Self> {
        let mut reader = crate::broker::client_config(kafka, brokers);
        reader
            .set("group.id", "millstream-alerts-publisher")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        Ok(AlertPublisher {
            lake,
            producer: crate::broker::producer_config(kafka, brokers).create()?,
            reader,
            topic: topics::ALERTS.to_string(),
            table: None,
            next: None,
        })
    }

    /// Produces every alert committed since the last call (since the topic's last one, on the
    /// first call). Returns how many messages were produced.
    pub async fn publish_new(&mut self) -> Result<usize> {
        let Some(table) = self.table().await? else {
            return Ok(0);
        };
        let latest = table.version().unwrap_or(0);
        let mut produced = 0;
        let next = match self.next {
            Some(n) => n,
            None => {
                let resume = self.read_resume().await?;
                match resume.version {
                    None => 0,
                    Some(v) => {
                        let missing: Vec<AlertMessage> = self
                            .messages(v, v)
                            .await?
                            .into_iter()
                            .filter(|m| !resume.delivered.contains(&m.index))
                            .collect();
                        if !missing.is_empty() {
                            tracing::info!(
                                version = v,
                                missing = missing.len(),
                                "finishing an interrupted alerts version"
                            );
                        }
                        produced += self.send(&missing).await?;
                        v + 1
                    }
                }
            }
        };
        self.next = Some(next);
        if next > latest {
            return Ok(produced);
        }
        let messages = self.messages(next, latest).await?;
        for version in messages.chunk_by(|a, b| a.version == b.version) {
            produced += self.send(version).await?;
            self.next = Some(version[0].version + 1);
        }
        self.next = Some(latest + 1);
        Ok(produced)
    }

    async fn table(&mut self) -> Result<Option<&DeltaTable>> {
        if self.table.is_none() {
            if !self.lake.exists(ALERTS_TABLE).await? {
                return Ok(None);
            }
            self.table = Some(self.lake.open(ALERTS_TABLE).await?);
        }
        let table = self.table.as_mut().expect("opened");
        table
            .update_state()
            .await
            .map_err(|e| Error::delta(ALERTS_TABLE, e))?;
        Ok(Some(table))
    }

    /// The alerts versions `from..=to` inserted, as messages in (version, alert_id) order.
    async fn messages(&self, from: u64, to: u64) -> Result<Vec<AlertMessage>> {
        let table = self
            .table
            .clone()
            .expect("table opened before reading changes");
        let changes =
            crate::lakehouse::cdf::read_changes(table, ALERTS_TABLE, from, Some(to)).await?;
        alert_messages(&changes)
    }

    /// Sends `messages` and waits until every one is acknowledged. On failure the position is
    /// forgotten, so the next call reads it back from the topic and sends only what is missing.
    async fn send(&mut self, messages: &[AlertMessage]) -> Result<usize> {
        let sends = messages.iter().map(|m| {
            let record = FutureRecord::to(&self.topic)
                .key(&m.key)
                .payload(&m.payload)
                .headers(m.headers());
            self.producer.send(record, KAFKA_TIMEOUT)
        });
        let results = futures::future::join_all(sends).await;
        if let Some((e, _)) = results.into_iter().find_map(|r| r.err()) {
            self.next = None;
            return Err(e.into());
        }
        Ok(messages.len())
    }

    /// Reads where publishing stopped from the topic's tail.
    pub async fn read_resume(&self) -> Result<Resume> {
        let reader = self.reader.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || read_resume(&reader, &topic))
            .await
            .map_err(|e| Error::Internal(format!("reading mfg.alerts: {e}")))?
    }
}

fn read_resume(reader: &ClientConfig, topic: &str) -> Result<Resume> {
    let consumer: BaseConsumer = reader.create()?;
    let ranges: HashMap<i32, (i64, i64)> = crate::broker::watermarks(reader, topic, KAFKA_TIMEOUT)?
        .into_iter()
        .filter(|&(_, low, high)| high > low)
        .map(|(p, low, high)| (p, (low, high)))
        .collect();
    // The last message of every partition: the highest version among them is the one that may
    // be incomplete (versions start only after the previous one is fully acknowledged).
    let mut last = None;
    let mut counts = HashMap::new();
    for (&p, &(_, high)) in &ranges {
        for h in read_range(&consumer, topic, p, high - 1, high)? {
            counts.insert(h.version, h.count);
            last = last.max(Some(h.version));
        }
    }
    let Some(version) = last else {
        return Ok(Resume {
            version: None,
            delivered: BTreeSet::new(),
        });
    };
    let count = counts[&version] as i64;
    let mut delivered = BTreeSet::new();
    for (&p, &(low, high)) in &ranges {
        for h in read_range(&consumer, topic, p, (high - count).max(low), high)? {
            if h.version == version {
                delivered.insert(h.index);
            }
        }
    }
    Ok(Resume {
        version: Some(version),
        delivered,
    })
}

struct Stamp {
    version: u64,
    index: u64,
    count: u64,
}

/// The stamps of the messages at offsets `from..to` of one partition (messages without
/// millstream's headers are skipped).
fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> Result<Vec<Stamp>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + KAFKA_TIMEOUT;
    let mut next = from;
    while next < to {
        if std::time::Instant::now() > deadline {
            return Err(Error::Invalid(format!(
                "reading {topic}[{partition}] offsets {from}..{to} timed out at {next}"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                next = m.offset() + 1;
                if let Some(s) = m.headers().and_then(stamp) {
                    out.push(s);
                }
            }
        }
    }
    Ok(out)
}

fn stamp(headers: &rdkafka::message::BorrowedHeaders) -> Option<Stamp> {
    let get = |name: &str| -> Option<u64> {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
    };
    Some(Stamp {
        version: get(HEADER_VERSION)?,
        index: get(HEADER_INDEX)?,
        count: get(HEADER_COUNT)?,
    })
}

/// The inserted rows of a Change Data Feed read of `ops.alerts` as messages: grouped by
/// version, sorted by `alert_id` within it, the row (without the CDF columns) as JSON.
pub fn alert_messages(changes: &[RecordBatch]) -> Result<Vec<AlertMessage>> {
    let mut rows: Vec<(u64, String, String, Vec<u8>)> = Vec::new();
    for batch in changes {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| Error::Internal(format!("{ALERTS_TABLE} changes lack {name}")))
        };
        let change = column("_change_type")?;
        let change = arrow::compute::cast(change, &arrow::datatypes::DataType::Utf8)?;
        let change = change.as_string::<i32>();
        let version = arrow::compute::cast(
            column("_commit_version")?,
            &arrow::datatypes::DataType::Int64,
        )?;
        let version = version.as_primitive::<arrow::datatypes::Int64Type>();
        let ids = arrow::compute::cast(column("alert_id")?, &arrow::datatypes::DataType::Utf8)?;
        let keys = arrow::compute::cast(column("signal_key")?, &arrow::datatypes::DataType::Utf8)?;
        let (ids, keys) = (ids.as_string::<i32>(), keys.as_string::<i32>());
        let alert_columns: Vec<usize> = batch
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.name().starts_with('_'))
            .map(|(i, _)| i)
            .collect();
        let alerts = batch.project(&alert_columns)?;
        let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
        writer.write(&alerts)?;
        writer.finish()?;
        let json = writer.into_inner();
        let lines = json.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        for (i, line) in lines.enumerate() {
            if change.value(i) != "insert" || change.is_null(i) {
                continue;
            }
            rows.push((
                version.value(i) as u64,
                ids.value(i).to_string(),
                keys.value(i).to_string(),
                line.to_vec(),
            ));
        }
    }
    rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for r in &rows {
        *counts.entry(r.0).or_default() += 1;
    }
    let mut index = 0;
    let mut previous = None;
    Ok(rows
        .into_iter()
        .map(|(version, alert_id, key, payload)| {
            if previous != Some(version) {
                index = 0;
                previous = Some(version);
            }
            index += 1;
            AlertMessage {
                version,
                index: index - 1,
                count: counts[&version],
                alert_id,
                key,
                payload,
            }
        })
        .collect())
}
