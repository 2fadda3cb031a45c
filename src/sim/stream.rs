//! Live event streams on a simulated clock, deterministic for (seed, run id): the n-th event is
//! the same whatever the wall-clock rate. Event time advances `speed / rate` simulated seconds
//! per event, so a run can cover days of factory time in minutes.
//!
//! A share of events is deliberately malformed (bad JSON, wrong types, failed validation); the
//! generator says which, so tests and `eval` know exactly how many dead letters to expect.

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::documents::{Alert, Authors, Document};
use super::faults::{FaultPlan, InjectorState, Normal};
use super::reference::{REGIONS, customer_id, device_id, part_id, supplier_id, warehouse_id};
use super::world::{GroundTruth, Happening, World, WorldRates};
use crate::broker::topics;
use crate::config::SimulateConfig;
use crate::model::events::*;

/// One record to produce.
#[derive(Debug, Clone)]
pub struct SimEvent {
    pub topic: &'static str,
    pub key: String,
    pub payload: Vec<u8>,
    /// True when the payload was deliberately corrupted.
    pub malformed: bool,
}

struct Shipment {
    id: String,
    supplier: usize,
    part: usize,
    warehouse: usize,
    quantity: i64,
    stage: u8,
}

pub struct Generator {
    rng: ChaCha8Rng,
    cfg: SimulateConfig,
    run_id: String,
    seq: u64,
    now: DateTime<Utc>,
    step: Duration,
    baselines: Vec<f64>,
    shipments: Vec<Shipment>,
    shipment_seq: u64,
    malformed_ratio: f64,
    faults: Option<Faults>,
    world: World,
    telemetry: bool,
    /// Agent purchase orders already placed with the world (a retried action repeats one).
    orders: std::collections::HashSet<String>,
    /// Where agent orders arrive from (see [`super::order_feed`]).
    order_feed: Option<tokio::sync::mpsc::UnboundedReceiver<crate::model::events::OrderAction>>,
    /// Who writes documents as the stream runs, and the alerts they answer.
    authors: Option<Authors>,
    alert_feed: Option<tokio::sync::mpsc::UnboundedReceiver<Alert>>,
    /// Events due before anything else (documents written in response to something).
    pending: std::collections::VecDeque<SimEvent>,
}

/// Fault injection attached to a generator, with its own RNG so the event stream stays the same.
struct Faults {
    plan: FaultPlan,
    state: InjectorState,
    rng: ChaCha8Rng,
}

const UNITS: [(&str, f64, f64); 4] = [
    ("C", 65.0, 1.5),
    ("mm/s", 4.0, 0.4),
    ("bar", 6.0, 0.15),
    ("kW", 30.0, 1.2),
];

impl Generator {
    /// `run_id` makes event ids unique across runs; keep it fixed to reproduce a run exactly.
    pub fn new(cfg: &SimulateConfig, run_id: &str, start: DateTime<Utc>, rate: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let baselines = (0..cfg.devices)
            .map(|d| UNITS[d % 4].1 * rng.random_range(0.9..1.1))
            .collect();
        let step = Duration::microseconds(((cfg.speed / rate.max(1) as f64) * 1e6) as i64);
        Generator {
            rng,
            cfg: cfg.clone(),
            run_id: run_id.to_string(),
            seq: 0,
            now: start,
            step,
            baselines,
            shipments: Vec::new(),
            shipment_seq: 0,
            malformed_ratio: cfg.malformed_ratio,
            faults: None,
            world: World::new(
                cfg,
                run_id,
                start,
                Duration::days(365),
                &WorldRates::default(),
            ),
            telemetry: true,
            orders: std::collections::HashSet::new(),
            order_feed: None,
            authors: None,
            alert_feed: None,
            pending: Default::default(),
        }
    }

    /// Documents written live on `mfg.knowledge.documents`: a proposal after some sales, an
    /// incident report for each maintenance alert arriving on `alerts` (about the injected fault
    /// behind it, when [`Self::with_faults`] injects faults).
    pub fn with_authors(
        mut self,
        authors: Authors,
        alerts: Option<tokio::sync::mpsc::UnboundedReceiver<Alert>>,
    ) -> Self {
        self.authors = Some(authors);
        self.alert_feed = alerts;
        self
    }

    /// Queues `doc` as an upsert on the documents topic, to go out next.
    fn publish(&mut self, doc: Document) {
        let event = doc.upsert(self.event_id("doc"));
        self.pending.push_back(SimEvent {
            topic: topics::DOCUMENTS,
            key: event.doc_id.clone(),
            payload: json(&event),
            malformed: false,
        });
    }

    /// Places the agents' orders that arrived since the last look.
    fn place_arrived_orders(&mut self) {
        let Some(feed) = &mut self.order_feed else {
            return;
        };
        let mut arrived = Vec::new();
        while let Ok(order) = feed.try_recv() {
            arrived.push(order);
        }
        for order in arrived {
            if self.place_order(&order) {
                tracing::info!(po_id = %order.po_id, part = %order.part_id, warehouse = %order.warehouse_id, "simulator: supplier accepted the order");
            }
        }
    }

    /// Incident reports for the alerts that arrived since the last look.
    fn answer_alerts(&mut self) {
        let (Some(authors), Some(feed)) = (&mut self.authors, &mut self.alert_feed) else {
            return;
        };
        let faults = self.faults.as_ref().map(|f| &f.plan);
        let mut reports = Vec::new();
        while let Ok(alert) = feed.try_recv() {
            reports.extend(authors.answer_alert(&alert, faults));
        }
        for doc in reports {
            tracing::info!(doc_id = %doc.doc_id, "simulator: a technician filed an incident report");
            self.publish(doc);
        }
    }

    /// Fulfils the agent orders arriving on `feed` as the stream runs.
    pub fn with_order_feed(
        mut self,
        feed: tokio::sync::mpsc::UnboundedReceiver<crate::model::events::OrderAction>,
    ) -> Self {
        self.order_feed = Some(feed);
        self
    }

    /// Places an agent's purchase order with the world, which ships it from the part's supplier
    /// (shipments carry the `po_id`) and receives it at the warehouse. Each order once; false
    /// for a repeat or a part × warehouse the world does not stock.
    pub fn place_order(&mut self, order: &crate::model::events::OrderAction) -> bool {
        let (Some(part), Some(warehouse)) = (
            super::reference::part_index(&order.part_id),
            super::reference::warehouse_index(&order.warehouse_id),
        ) else {
            return false;
        };
        if self.orders.contains(&order.po_id) {
            return false;
        }
        let placed = self.world.place_order(
            self.now,
            part,
            warehouse,
            order.quantity,
            order.expected_at,
            &order.po_id,
        );
        if placed {
            self.orders.insert(order.po_id.clone());
        }
        placed
    }

    /// Replaces the world with one whose faults are drawn at `rates` over `horizon`.
    pub fn with_world(mut self, rates: &WorldRates, horizon: Duration) -> Self {
        self.world = World::new(&self.cfg, &self.run_id, self.now, horizon, rates);
        self
    }

    /// Only the world's streams (inventory, shipments, sales): time jumps from one world event
    /// to the next. For evaluations that do not need telemetry.
    pub fn without_telemetry(mut self) -> Self {
        self.telemetry = false;
        self
    }

    /// What the world injected and what happened so far.
    pub fn truth(&self) -> &GroundTruth {
        self.world.truth()
    }

    /// Injects the faults of `plan` into telemetry (see [`super::faults`]).
    pub fn with_faults(mut self, plan: FaultPlan) -> Self {
        self.faults = Some(Faults {
            state: InjectorState::new(self.cfg.devices),
            rng: ChaCha8Rng::seed_from_u64(self.cfg.seed ^ 0x7370_696b_6573),
            plan,
        });
        self
    }

    pub fn with_malformed_ratio(mut self, ratio: f64) -> Self {
        self.malformed_ratio = ratio;
        self
    }

    /// Simulated time of the next event.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    fn event_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}-{}-{}", self.run_id, self.seq)
    }

    /// The next live event: the world's next due event (a stock movement, shipment status or
    /// sale) if one is due, else a telemetry reading one step later.
    pub fn next_event(&mut self) -> SimEvent {
        // What arrived from outside (agents' orders, alerts) is looked at every 256 events.
        if self.seq.is_multiple_of(256) {
            self.place_arrived_orders();
            self.answer_alerts();
        }
        let mut ev = loop {
            if let Some(e) = self.pending.pop_front() {
                break e;
            }
            if let Some((at, h)) = self.world.pop_due(self.now) {
                break self.happening(at, h);
            }
            if self.telemetry {
                self.now += self.step;
                break self.telemetry();
            }
            let next = self.world.next_due().expect("the world always has work");
            self.now = self.now.max(next);
        };
        if self.malformed_ratio > 0.0 && self.rng.random_bool(self.malformed_ratio) {
            ev.payload = self.corrupt(&ev.payload);
            ev.malformed = true;
        }
        ev
    }

    fn happening(&mut self, at: DateTime<Utc>, h: Happening) -> SimEvent {
        match h {
            Happening::Movement {
                part,
                warehouse,
                receipt,
                quantity,
                reference,
            } => {
                let m = InventoryMovement {
                    event_id: self.event_id("mov"),
                    part_id: part_id(part),
                    warehouse_id: warehouse_id(warehouse),
                    movement_type: if receipt {
                        MovementType::Receipt
                    } else {
                        MovementType::Consumption
                    },
                    quantity,
                    reference: Some(reference),
                    ts: at,
                };
                SimEvent {
                    topic: topics::INVENTORY,
                    key: format!("{}@{}", m.part_id, m.warehouse_id),
                    payload: json(&m),
                    malformed: false,
                }
            }
            Happening::Shipment {
                id,
                supplier,
                part,
                warehouse,
                quantity,
                stage,
                eta,
                po_id,
            } => {
                let e = ShipmentEvent {
                    event_id: self.event_id("shp"),
                    shipment_id: id,
                    supplier_id: supplier_id(supplier),
                    part_id: part_id(part),
                    warehouse_id: warehouse_id(warehouse),
                    quantity,
                    status: match stage {
                        0 => ShipmentStatus::Created,
                        1 => ShipmentStatus::InTransit,
                        2 => ShipmentStatus::Delayed,
                        _ => ShipmentStatus::Delivered,
                    },
                    carrier: ["DHL", "Kuehne+Nagel", "Maersk", "UPS"][supplier % 4].to_string(),
                    eta,
                    po_id,
                    ts: at,
                };
                SimEvent {
                    topic: topics::SHIPMENTS,
                    key: e.shipment_id.clone(),
                    payload: json(&e),
                    malformed: false,
                }
            }
            Happening::Sale { customer } => {
                let saved = std::mem::replace(&mut self.now, at);
                let e = self.sale_for(customer);
                self.now = saved;
                if let Some(doc) = self
                    .authors
                    .as_mut()
                    .and_then(|a| a.after_sale(customer, at))
                {
                    self.publish(doc);
                }
                e
            }
        }
    }

    fn corrupt(&mut self, payload: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(payload).to_string();
        match self.rng.random_range(0..4) {
            0 => payload[..payload.len() / 2].to_vec(),
            1 => text
                .replacen("\"ts\":\"", "\"ts\":\"not-a-time ", 1)
                .into_bytes(),
            2 => text
                .replacen("\"event_id\":\"", "\"event_id\":\"\",\"x\":\"", 1)
                .into_bytes(),
            _ => b"\x00\xffbinary garbage".to_vec(),
        }
    }

    pub fn telemetry(&mut self) -> SimEvent {
        let d = self.rng.random_range(0..self.cfg.devices);
        let (unit, _, sd) = UNITS[d % 4];
        let noise: f64 = (0..3)
            .map(|_| self.rng.random_range(-1.0..1.0))
            .sum::<f64>()
            * sd
            / 1.7;
        let sensor_type = SensorType::ALL[d % 4];
        let mut value = self.baselines[d] + noise;
        // Real sensors have benign transients (a door opens, a load starts): rare excursions of
        // 2.5–4.5 noise scales (≈ 4–8 σ of the noise) that are not faults and that a detector
        // should not flag.
        if self.rng.random_bool(0.002) {
            let sign = if self.rng.random_bool(0.5) { 1.0 } else { -1.0 };
            value += sign * self.rng.random_range(2.5..4.5) * sd;
        }
        if let Some(f) = &mut self.faults {
            let normal = Normal {
                baseline: self.baselines[d],
                sd,
                upper_limit: sensor_type.operating_range().1,
            };
            let draw = f.rng.random();
            value = f.state.apply(&f.plan, d, self.now, value, &normal, draw);
        }
        let reading = TelemetryReading {
            event_id: self.event_id("tel"),
            device_id: device_id(d),
            machine_id: super::reference::machine_id(super::reference::machine_of(d)),
            plant_id: super::reference::plant_id(super::reference::machine_of(d)),
            sensor_type,
            value: (value * 1000.0).round() / 1000.0,
            unit: unit.to_string(),
            ts: self.now,
        };
        SimEvent {
            topic: topics::TELEMETRY,
            key: reading.device_id.clone(),
            payload: json(&reading),
            malformed: false,
        }
    }

    /// The world's purchase history over `[end − span, end)` as sale events, oldest first.
    pub fn sales_history(&mut self, end: DateTime<Utc>, span: Duration) -> Vec<SimEvent> {
        let now = self.now;
        let sales = self
            .world
            .purchase_history(end, span)
            .into_iter()
            .map(|(at, c)| {
                self.now = at;
                self.sale_for(c)
            })
            .collect();
        self.now = now;
        sales
    }

    pub fn sale_for(&mut self, c: usize) -> SimEvent {
        let qty = self.rng.random_range(1..50i64);
        let price = (self.rng.random_range(2.0..800.0f64) * 100.0).round() / 100.0;
        let t = SalesTransaction {
            event_id: self.event_id("sale"),
            transaction_id: format!("TX-{}-{}", self.run_id, self.seq),
            customer_id: customer_id(c),
            product_id: part_id(self.rng.random_range(0..self.cfg.parts)),
            quantity: qty,
            unit_price: price,
            amount: ((qty as f64 * price) * 100.0).round() / 100.0,
            currency: "EUR".into(),
            channel: [
                SalesChannel::Direct,
                SalesChannel::Distributor,
                SalesChannel::Online,
            ][self.rng.random_range(0..3)],
            region: REGIONS[c % REGIONS.len()].to_string(),
            ts: self.now,
        };
        SimEvent {
            topic: topics::SALES,
            key: t.customer_id.clone(),
            payload: json(&t),
            malformed: false,
        }
    }

    fn open_shipment(&mut self) {
        self.shipment_seq += 1;
        self.shipments.push(Shipment {
            id: format!("SH-{}-{}", self.run_id, self.shipment_seq),
            supplier: self.rng.random_range(0..self.cfg.suppliers),
            part: self.rng.random_range(0..self.cfg.parts),
            warehouse: self.rng.random_range(0..self.cfg.warehouses),
            quantity: self.rng.random_range(10..500),
            stage: 0,
        });
    }

    fn advance_shipment(&mut self, i: usize) -> SimEvent {
        let delayed = self.rng.random_bool(0.1);
        let status = match self.shipments[i].stage {
            0 => ShipmentStatus::Created,
            1 => ShipmentStatus::InTransit,
            2 if delayed => ShipmentStatus::Delayed,
            _ => ShipmentStatus::Delivered,
        };
        let eta = (status != ShipmentStatus::Delivered)
            .then(|| self.now + Duration::days(self.rng.random_range(1..10)));
        let event_id = self.event_id("shp");
        let s = &self.shipments[i];
        let e = ShipmentEvent {
            event_id,
            shipment_id: s.id.clone(),
            supplier_id: supplier_id(s.supplier),
            part_id: part_id(s.part),
            warehouse_id: warehouse_id(s.warehouse),
            quantity: s.quantity,
            status,
            carrier: ["DHL", "Kuehne+Nagel", "Maersk", "UPS"][s.supplier % 4].to_string(),
            eta,
            po_id: None,
            ts: self.now,
        };
        if status == ShipmentStatus::Delivered {
            self.shipments.swap_remove(i);
        } else if status != ShipmentStatus::Delayed {
            self.shipments[i].stage += 1;
        }
        SimEvent {
            topic: topics::SHIPMENTS,
            key: e.shipment_id.clone(),
            payload: json(&e),
            malformed: false,
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("events serialize")
}

/// Days of sales history before `cfg.start`: enough for every customer's rhythm to show.
pub const SALES_HISTORY_DAYS: i64 = 180;

/// History to seed a fresh system at the brief's scale: every customer's purchases over the
/// [`SALES_HISTORY_DAYS`] before `cfg.start` at the customer's own rhythm (the live world
/// continues it), and over the 30 days before, `seed_shipments` complete shipment lifecycles
/// and `seed_telemetry` readings. Never malformed.
pub fn history(cfg: &SimulateConfig, run_id: &str) -> Vec<SimEvent> {
    let span = Duration::days(30);
    let start = cfg.start - span;
    let mut g = Generator::new(cfg, &format!("{run_id}h"), start, 1).with_malformed_ratio(0.0);
    let mut out = g.sales_history(cfg.start, Duration::days(SALES_HISTORY_DAYS));
    out.reserve(cfg.seed_shipments * 4 + cfg.seed_telemetry);
    for _ in 0..cfg.seed_shipments {
        g.now = start + Duration::seconds(g.rng.random_range(0..span.num_seconds() - 10 * 86_400));
        g.open_shipment();
        let i = g.shipments.len() - 1;
        while g.shipments.len() > i {
            out.push(g.advance_shipment(i));
            g.now += Duration::hours(g.rng.random_range(6..72));
        }
    }
    g.now = start;
    g.step = Duration::microseconds(
        span.num_microseconds().unwrap_or(0) / cfg.seed_telemetry.max(1) as i64,
    );
    for _ in 0..cfg.seed_telemetry {
        g.now += g.step;
        out.push(g.telemetry());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SimulateConfig {
        crate::config::Config::defaults().simulate
    }

    #[test]
    fn same_seed_same_events_and_every_event_is_valid_unless_marked() {
        let c = SimulateConfig {
            malformed_ratio: 0.05,
            ..cfg()
        };
        let a: Vec<_> = {
            let mut g = Generator::new(&c, "r", c.start, 1000);
            (0..5000).map(|_| g.next_event()).collect()
        };
        let b: Vec<_> = {
            let mut g = Generator::new(&c, "r", c.start, 1000);
            (0..5000).map(|_| g.next_event()).collect()
        };
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.payload == y.payload && x.key == y.key)
        );
        let mut bad = 0;
        for e in &a {
            let kind = crate::model::EventKind::from_topic(e.topic).unwrap();
            assert_eq!(
                kind.check(&e.payload).is_err(),
                e.malformed,
                "{}",
                String::from_utf8_lossy(&e.payload)
            );
            bad += e.malformed as usize;
        }
        assert!(bad > 150 && bad < 350, "about 5 % malformed, got {bad}");
    }

    #[test]
    fn history_is_at_brief_scale() {
        let c = SimulateConfig {
            seed_telemetry: 1000,
            ..cfg()
        };
        let h = history(&c, "r");
        let count = |t| h.iter().filter(|e| e.topic == t).count();
        let sales: Vec<crate::model::events::SalesTransaction> = h
            .iter()
            .filter(|e| e.topic == topics::SALES)
            .map(|e| serde_json::from_slice(&e.payload).unwrap())
            .collect();
        let buyers: std::collections::HashSet<_> = sales.iter().map(|s| &s.customer_id).collect();
        assert_eq!(
            buyers.len(),
            c.customers,
            "every customer has purchase history"
        );
        let first = c.start - Duration::days(SALES_HISTORY_DAYS);
        assert!(sales.iter().all(|s| s.ts >= first && s.ts < c.start));
        // Customers buy every 2–12 days (mean of 180 / interval: 180 ln 6 / 10 ≈ 32).
        let per_customer = sales.len() as f64 / c.customers as f64;
        assert!(
            (20.0..45.0).contains(&per_customer),
            "{per_customer} purchases per customer"
        );
        assert!(count(topics::SHIPMENTS) >= c.seed_shipments * 3);
        assert_eq!(count(topics::TELEMETRY), 1000);
        let delivered = h
            .iter()
            .filter(|e| {
                e.topic == topics::SHIPMENTS
                    && String::from_utf8_lossy(&e.payload).contains("\"delivered\"")
            })
            .count();
        assert_eq!(
            delivered, c.seed_shipments,
            "every seeded shipment completes"
        );
        assert!(h.iter().all(|e| {
            crate::model::EventKind::from_topic(e.topic)
                .unwrap()
                .check(&e.payload)
                .is_ok()
        }));
    }
}
