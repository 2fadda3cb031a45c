//! `millstream status`: what a scaled-out deployment is doing, from the outside. Per worker of
//! the consumer group, the partitions it owns and how far behind it is; per table, the last
//! committed version and when. Lag is measured against what is durable — the offsets the Delta
//! commits carry — not the offsets committed to Kafka, which are only a hint.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use crate::config::Config;
use crate::lakehouse::Lakehouse;
use crate::lakehouse::commit::{SourcePartition, txn_versions};
use crate::model::{EventKind, tables};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub group: super::GroupArgs,
}

#[derive(Debug, Serialize)]
struct Status {
    group: String,
    /// The group's state as the coordinator says (Stable, PreparingRebalance, Empty, …).
    state: String,
    workers: Vec<Worker>,
    /// Partitions no worker owns (none while the group is stable).
    unassigned: BTreeMap<String, Vec<i32>>,
    /// Said when the broker describes the members without their assignments (tansu 0.6 does):
    /// then which worker owns what is unknown, and `unassigned` stays empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// Records not yet durable in Delta, over every partition.
    total_lag: i64,
    tables: Vec<TableStatus>,
}

#[derive(Debug, Serialize)]
struct Worker {
    member_id: String,
    client_id: String,
    host: String,
    partitions: BTreeMap<String, Vec<i32>>,
    /// Records in its partitions not yet durable in Delta.
    lag: i64,
}

#[derive(Debug, Serialize)]
struct TableStatus {
    table: String,
    version: Option<u64>,
    committed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How long each broker request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(mut config: Config, args: StatusArgs) -> anyhow::Result<()> {
    let brokers = args.group.apply(&mut config, "status")?;
    let lake = Lakehouse::from_config(&config.lakehouse)?;
    super::check_dependencies(&config, Some(&brokers), None).await?;
    let status = status(&config, &brokers, &lake).await?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}

async fn status(config: &Config, brokers: &str, lake: &Lakehouse) -> anyhow::Result<Status> {
    let group = config.kafka.group_id.clone();
    let client = crate::broker::client_config(&config.kafka, brokers);
    let consumer: BaseConsumer = client.create().context("kafka client")?;
    let (state, members) = {
        let group = group.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let list = consumer
                .fetch_group_list(Some(&group), TIMEOUT)
                .with_context(|| format!("describing consumer group {group}"))?;
            let info = list.groups().iter().find(|g| g.name() == group);
            let state = info.map_or_else(|| "Unknown".to_string(), |g| g.state().to_string());
            let members: Vec<(String, String, String, Vec<SourcePartition>)> = info
                .map(|g| {
                    g.members()
                        .iter()
                        .map(|m| {
                            let owned = m.assignment().map(assignment).unwrap_or_default();
                            (
                                m.id().to_string(),
                                m.client_id().to_string(),
                                m.client_host().to_string(),
                                owned,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok((state, members))
        })
        .await??
    };
    let progress = durable_progress(config, brokers, lake).await?;
    let lag_of = |p: &SourcePartition| progress.get(p).map_or(0, Progress::lag);

    let mut owned_anywhere = std::collections::BTreeSet::new();
    let workers: Vec<Worker> = members
        .into_iter()
        .map(|(member_id, client_id, host, owned)| {
            let lag = owned.iter().map(lag_of).sum();
            let mut partitions: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for p in owned {
                partitions
                    .entry(p.topic.clone())
                    .or_default()
                    .push(p.partition);
                owned_anywhere.insert(p);
            }
            Worker {
                member_id,
                client_id,
                host,
                partitions,
                lag,
            }
        })
        .collect();
    let mut unassigned: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let unreported = !workers.is_empty() && owned_anywhere.is_empty();
    let note = unreported
        .then(|| "the broker described the group's members without their assignments".to_string());
    if note.is_none() {
        for p in progress.keys().filter(|p| !owned_anywhere.contains(*p)) {
            unassigned
                .entry(p.topic.clone())
                .or_default()
                .push(p.partition);
        }
    }
    let total_lag = progress.values().map(Progress::lag).sum();

    let mut tables_out = Vec::new();
    for def in tables::catalog() {
        let (version, committed_at) = if lake.exists(&def.name).await? {
            let t = lake.open(&def.name).await?;
            let v = t.version();
            let at = match v {
                Some(v) => crate::lakehouse::commit_time(&def.name, &t, i64::try_from(v)?).await?,
                None => None,
            };
            (v, at)
        } else {
            (None, None)
        };
        tables_out.push(TableStatus {
            table: def.name.clone(),
            version,
            committed_at,
        });
    }
    Ok(Status {
        group,
        state,
        workers,
        unassigned,
        note,
        total_lag,
        tables: tables_out,
    })
}

/// A source partition's log and how much of it is durable in Delta.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The first offset the broker still has.
    pub low: i64,
    /// The offset the next record will get.
    pub high: i64,
    /// The offset after the last one durable in Delta (the offsets the commits carry); `None`
    /// before the first commit.
    pub next: Option<i64>,
}

impl Progress {
    /// Records in the log not yet durable in Delta.
    pub fn lag(&self) -> i64 {
        (self.high - self.next.unwrap_or(0).max(self.low)).max(0)
    }
}

/// Every source partition's [`Progress`]: the broker's watermarks against the offsets committed
/// to the bronze tables (by the pipeline `config.pipeline.name`).
pub async fn durable_progress(
    config: &Config,
    brokers: &str,
    lake: &Lakehouse,
) -> anyhow::Result<BTreeMap<SourcePartition, Progress>> {
    ProgressReader::new(config, brokers, lake.clone())
        .read()
        .await
}

/// Reads [`Progress`] again and again, keeping the bronze tables open so each read loads only
/// the commits since the last (`bench ingest --workers` polls it while workers commit).
pub struct ProgressReader {
    client: rdkafka::ClientConfig,
    lake: Lakehouse,
    pipeline: String,
    tables: BTreeMap<&'static str, deltalake::DeltaTable>,
}

impl ProgressReader {
    pub fn new(config: &Config, brokers: &str, lake: Lakehouse) -> ProgressReader {
        ProgressReader {
            client: crate::broker::client_config(&config.kafka, brokers),
            lake,
            pipeline: config.pipeline.name.clone(),
            tables: BTreeMap::new(),
        }
    }

    pub async fn read(&mut self) -> anyhow::Result<BTreeMap<SourcePartition, Progress>> {
        let client = self.client.clone();
        let marks = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut marks = BTreeMap::new();
            for kind in EventKind::ALL {
                for (p, low, high) in crate::broker::watermarks(&client, kind.topic(), TIMEOUT)? {
                    marks.insert(SourcePartition::new(kind.topic(), p), (low, high));
                }
            }
            Ok(marks)
        })
        .await??;
        let mut durable: BTreeMap<SourcePartition, i64> = BTreeMap::new();
        for kind in EventKind::ALL {
            let table = kind.bronze_table();
            let t = match self.tables.entry(table) {
                std::collections::btree_map::Entry::Occupied(e) => {
                    let t = e.into_mut();
                    crate::lakehouse::advance(t).await?;
                    t
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    if !self.lake.exists(table).await? {
                        continue;
                    }
                    e.insert(self.lake.open(table).await?)
                }
            };
            let parts: Vec<SourcePartition> = marks
                .keys()
                .filter(|p| p.topic == kind.topic())
                .cloned()
                .collect();
            durable.extend(txn_versions(t, table, &self.pipeline, parts).await?);
        }
        Ok(marks
            .into_iter()
            .map(|(p, (low, high))| {
                let next = durable.get(&p).map(|last| last + 1);
                (p, Progress { low, high, next })
            })
            .collect())
    }
}

/// The partitions in a member's assignment, as the Kafka consumer protocol encodes it: version
/// (i16), then topics (i32 count; each an i16-length name and an i32 count of i32 partitions),
/// then user data. Anything that does not parse yields what was read so far.
fn assignment(bytes: &[u8]) -> Vec<SourcePartition> {
    struct Reader<'a>(&'a [u8]);
    impl Reader<'_> {
        fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
            let (head, rest) = self.0.split_first_chunk::<N>()?;
            self.0 = rest;
            Some(*head)
        }
        fn i16(&mut self) -> Option<i16> {
            self.take::<2>().map(i16::from_be_bytes)
        }
        fn i32(&mut self) -> Option<i32> {
            self.take::<4>().map(i32::from_be_bytes)
        }
        fn string(&mut self) -> Option<String> {
            let n = usize::try_from(self.i16()?).ok()?;
            let s = self.0.get(..n)?;
            self.0 = &self.0[n..];
            Some(String::from_utf8_lossy(s).into_owned())
        }
    }
    let mut r = Reader(bytes);
    let mut out = Vec::new();
    let Some(_version) = r.i16() else { return out };
    let Some(topics) = r.i32() else { return out };
    for _ in 0..topics.max(0) {
        let Some(topic) = r.string() else { return out };
        let Some(n) = r.i32() else { return out };
        for _ in 0..n.max(0) {
            let Some(p) = r.i32() else { return out };
            out.push(SourcePartition::new(&topic, p));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An assignment as a broker sends it (two topics, user data after) reads back as its
    /// partitions; a truncated one yields what precedes the cut.
    #[test]
    fn consumer_protocol_assignments_parse() {
        let mut b = Vec::new();
        b.extend(1i16.to_be_bytes());
        b.extend(2i32.to_be_bytes());
        for (topic, parts) in [("a", vec![0, 3]), ("bb", vec![5])] {
            b.extend(i16::try_from(topic.len()).unwrap().to_be_bytes());
            b.extend(topic.as_bytes());
            b.extend(i32::try_from(parts.len()).unwrap().to_be_bytes());
            for p in parts {
                b.extend(i32::to_be_bytes(p));
            }
        }
        b.extend((-1i32).to_be_bytes()); // null user data
        let want = vec![
            SourcePartition::new("a", 0),
            SourcePartition::new("a", 3),
            SourcePartition::new("bb", 5),
        ];
        assert_eq!(assignment(&b), want);
        assert_eq!(assignment(&b[..b.len() - 8]), want[..2].to_vec());
        assert!(assignment(&[]).is_empty());
    }
}
