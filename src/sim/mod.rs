//! The simulator: reference data into Delta ([`reference`]) and event streams into Kafka
//! ([`stream`]), deterministic for a seed, on a simulated clock that can run faster than real
//! time. It stands in for the factory's devices, WMS, ERP and CRM.

pub mod bulk;
pub mod documents;
pub mod faults;
pub mod reference;
pub mod stream;
pub mod world;

use std::time::{Duration, Instant};

use deltalake::protocol::SaveMode;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;

use crate::config::{KafkaConfig, SimulateConfig};
use crate::error::{Error, Result};
use crate::lakehouse::{Lakehouse, rows_batch};
use crate::model::events::Event;
use crate::telemetry::events::EventsProduced;
use stream::{Generator, SimEvent};

/// The live stream `simulate` and `up` produce, at `rate` events a second: telemetry with
/// sensor faults (`simulate.faults_per_device_day`) drawn over a year of simulated time (the
/// world's supply and sales faults are always on, see [`world`]), the simulated suppliers
/// fulfilling agents' orders (order → shipments → receipt), technicians answering maintenance
/// alerts with incident reports, and account managers following sales up with proposals.
pub fn live_generator(
    config: &crate::config::Config,
    brokers: &str,
    run_id: &str,
    rate: u64,
) -> Result<Generator> {
    let sim = &config.simulate;
    let plan = faults::FaultPlan::draw(
        sim.seed,
        sim.devices,
        sim.start,
        chrono::Duration::days(365),
        &faults::FaultRates {
            per_device_day: sim.faults_per_device_day,
        },
    );
    let group = &config.kafka.group_id;
    let orders = order_feed(&config.kafka, brokers, &format!("{group}-sim-{run_id}"))?;
    // One technicians' group per deployment: a restarted simulator answers only the alerts it
    // has not answered yet.
    let alerts = alert_feed(&config.kafka, brokers, &format!("{group}-sim-technicians"))?;
    let authors = documents::Authors::new(sim, run_id);
    Ok(Generator::new(sim, run_id, sim.start, rate)
        .with_faults(plan)
        .with_order_feed(orders)
        .with_authors(authors, Some(alerts)))
}

/// Agent purchase orders from `mfg.actions.orders`, read by their own consumer group, for the
/// simulator to fulfil: the supplier's side of the loop (order → shipments → receipt). Invalid
/// records are skipped with a warning (the pipeline dead-letters them). Ends when the receiver
/// is dropped.
pub fn order_feed(
    kafka: &KafkaConfig,
    brokers: &str,
    group: &str,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<crate::model::events::OrderAction>> {
    feed(
        kafka,
        brokers,
        group,
        crate::broker::topics::ACTION_ORDERS,
        |p| {
            serde_json::from_slice::<crate::model::events::OrderAction>(p)
                .map_err(|e| e.to_string())
                .and_then(|o| o.validate().map(|_| o))
        },
    )
}

/// The alerts on `mfg.alerts`, read by their own consumer group, for the simulated technicians
/// to answer (see [`documents::Authors`]). Ends when the receiver is dropped.
pub fn alert_feed(
    kafka: &KafkaConfig,
    brokers: &str,
    group: &str,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<documents::Alert>> {
    feed(kafka, brokers, group, crate::broker::topics::ALERTS, |p| {
        serde_json::from_slice::<documents::Alert>(p).map_err(|e| e.to_string())
    })
}

/// The records of `topic` parsed by `parse`, from the start of the topic, as a channel. Records
/// that do not parse are skipped with a warning.
fn feed<T: Send + 'static>(
    kafka: &KafkaConfig,
    brokers: &str,
    group: &str,
    topic: &'static str,
    parse: fn(&[u8]) -> std::result::Result<T, String>,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<T>> {
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = crate::broker::client_config(kafka, brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()?;
    consumer.subscribe(&[topic])?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                m = consumer.recv() => match m {
                    Ok(m) => match m.payload().map(parse) {
                        Some(Ok(item)) => {
                            let receiver_gone = tx.send(item).is_err();
                            if receiver_gone {
                                return;
                            }
                        }
                        Some(Err(e)) => tracing::warn!(topic, offset = m.offset(), error = %e, "simulator: skipping an invalid record"),
                        None => {}
                    },
                    Err(e) => {
                        tracing::warn!(topic, error = %e, "simulator: reading");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
        }
    });
    Ok(rx)
}

/// The reference tables [`write_reference`] writes.
pub const REFERENCE_TABLES: [&str; 8] = [
    "supply_chain.suppliers",
    "supply_chain.parts",
    "supply_chain.inventory",
    "sales.customers",
    "support.tickets",
    "knowledge.sops",
    "knowledge.incidents",
    "knowledge.proposals",
];

/// Writes the reference tables. Tables that already hold data are left alone unless `reseed`.
/// Returns (table, rows written) for each table written.
pub async fn write_reference(
    lake: &Lakehouse,
    cfg: &SimulateConfig,
    reseed: bool,
) -> Result<Vec<(String, usize)>> {
    write_reference_tables(lake, cfg, reseed, &REFERENCE_TABLES).await
}

/// Like [`write_reference`], for the `names` among [`REFERENCE_TABLES`] only. The data is
/// generated only when a table needs writing (a restart over a seeded lakehouse generates none).
pub async fn write_reference_tables(
    lake: &Lakehouse,
    cfg: &SimulateConfig,
    reseed: bool,
    names: &[&str],
) -> Result<Vec<(String, usize)>> {
    let mut data: Option<reference::ReferenceData> = None;
    let mut corpus: Option<documents::Corpus> = None;
    let mut written = Vec::new();
    for &name in names {
        if !REFERENCE_TABLES.contains(&name) {
            return Err(Error::Invalid(format!("{name} is not a reference table")));
        }
        let table = lake.ensure(name).await?;
        let has_data = table
            .get_file_uris()
            .map(|mut f| f.next().is_some())
            .unwrap_or(false);
        if has_data && !reseed {
            tracing::info!(
                table = name,
                "reference data present; skipped (use --reseed to rewrite)"
            );
            continue;
        }
        let data = data.get_or_insert_with(|| reference::generate(cfg));
        let batch = match name {
            "supply_chain.suppliers" => rows_batch(name, &data.suppliers),
            "supply_chain.parts" => rows_batch(name, &data.parts),
            "supply_chain.inventory" => rows_batch(name, &data.inventory),
            "sales.customers" => rows_batch(name, &data.customers),
            "support.tickets" => rows_batch(name, &data.tickets),
            _ => {
                let corpus = corpus.get_or_insert_with(|| documents::generate(cfg, data));
                let rows = corpus
                    .table(name)
                    .ok_or_else(|| Error::Internal(format!("no generator for {name}")))?;
                rows_batch(name, rows)
            }
        }?;
        let rows = batch.num_rows();
        table
            .write(vec![batch])
            .with_save_mode(SaveMode::Overwrite)
            .await
            .map_err(|e| Error::delta(name, e))?;
        tracing::info!(table = name, rows, "reference data written");
        written.push((name.to_string(), rows));
    }
    Ok(written)
}

/// Counts of what a producer run sent.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Produced {
    pub events: u64,
    pub malformed: u64,
    pub bytes: u64,
    pub by_topic: std::collections::BTreeMap<String, u64>,
}

impl Produced {
    fn add(&mut self, e: &SimEvent) {
        self.events += 1;
        self.malformed += e.malformed as u64;
        self.bytes += e.payload.len() as u64;
        *self.by_topic.entry(e.topic.to_string()).or_default() += 1;
    }
}

/// An idempotent producer with its own polling thread.
pub struct EventProducer {
    inner: ThreadedProducer<DefaultProducerContext>,
}

impl EventProducer {
    pub fn new(kafka: &KafkaConfig, brokers: &str) -> Result<Self> {
        Ok(EventProducer {
            inner: crate::broker::producer_config(kafka, brokers).create()?,
        })
    }

    /// Enqueues one event, waiting while librdkafka's queue is full.
    pub async fn send(&self, e: &SimEvent) -> Result<()> {
        loop {
            match self
                .inner
                .send(BaseRecord::to(e.topic).key(&e.key).payload(&e.payload))
            {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    _,
                )) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Waits until everything enqueued is acknowledged by the broker.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        Ok(self.inner.flush(timeout)?)
    }
}

/// Sends `events` as fast as the broker takes them, with progress output.
pub async fn produce_all(
    producer: &EventProducer,
    events: &[SimEvent],
    label: &str,
) -> Result<Produced> {
    let mut produced = Produced::default();
    let mut progress = Progress::new(label);
    for e in events {
        producer.send(e).await?;
        produced.add(e);
        progress.tick(produced.events, None);
    }
    producer.flush(Duration::from_secs(60))?;
    record(&produced);
    progress.done(produced.events);
    Ok(produced)
}

/// Produces live events at `rate` per second until `limit` events, `stop`, or forever.
pub async fn produce_live(
    producer: &EventProducer,
    generator: &mut Generator,
    rate: u64,
    limit: Option<u64>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<Produced> {
    let mut produced = Produced::default();
    let started = Instant::now();
    let mut progress = Progress::new("live");
    let tick = Duration::from_millis(10);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => break,
        }
        // Catch up to where the rate says we should be, so the average holds under jitter.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        let due = limit.map_or(due, |l| due.min(l));
        while produced.events < due {
            let e = generator.next_event();
            producer.send(&e).await?;
            produced.add(&e);
        }
        progress.tick(produced.events, Some(generator.now()));
        if limit.is_some_and(|l| produced.events >= l) {
            break;
        }
    }
    producer.flush(Duration::from_secs(30))?;
    record(&produced);
    progress.done(produced.events);
    Ok(produced)
}

fn record(p: &Produced) {
    for (topic, n) in &p.by_topic {
        let topic: &'static str = crate::broker::topics::ALL
            .iter()
            .find(|t| **t == topic)
            .copied()
            .unwrap_or("other");
        EventsProduced { topic, count: *n }.emit();
    }
}

/// Prints a progress line every two seconds.
struct Progress {
    label: String,
    started: Instant,
    last: Instant,
    last_count: u64,
}

impl Progress {
    fn new(label: &str) -> Self {
        Progress {
            label: label.to_string(),
            started: Instant::now(),
            last: Instant::now(),
            last_count: 0,
        }
    }

    fn tick(&mut self, count: u64, sim_time: Option<chrono::DateTime<chrono::Utc>>) {
        if self.last.elapsed() < Duration::from_secs(2) {
            return;
        }
        let rate = (count - self.last_count) as f64 / self.last.elapsed().as_secs_f64();
        match sim_time {
            Some(t) => tracing::info!(
                "{}: {count} events produced ({rate:.0}/s), simulated time {}",
                self.label,
                t.format("%Y-%m-%d %H:%M")
            ),
            None => tracing::info!("{}: {count} events produced ({rate:.0}/s)", self.label),
        }
        self.last = Instant::now();
        self.last_count = count;
    }

    fn done(&self, count: u64) {
        let secs = self.started.elapsed().as_secs_f64();
        tracing::info!(
            "{}: {count} events produced in {secs:.1}s ({:.0}/s)",
            self.label,
            count as f64 / secs.max(1e-9)
        );
    }
}
