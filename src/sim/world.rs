//! The supply and sales world behind the inventory, shipment and sales streams, on the simulated
//! clock, with the faults it injects and the ground truth it records.
//!
//! - **Stock**: every part × warehouse position is consumed at its own daily demand (derived from
//!   the reference data: `reorder_point = demand × (lead time + 7 days)`), in movements of a few
//!   hours' worth. Stock never goes below zero; a demand that finds the shelf empty is a
//!   **stockout** (recorded once per episode, until a receipt restocks the position).
//! - **Replenishment**: when available stock falls to the reorder point, the position's supplier
//!   ships its lead time plus two weeks of demand (at least its minimum order). A shipment is `created`, goes
//!   `in_transit`, maybe `delayed` (with the new eta), then `delivered`, and a `receipt` movement
//!   adds it to stock. Suppliers are late by 1–4 days now and then, by their reliability.
//! - **Sales**: each customer buys at its own mean interval (2–12 days, exponential gaps).
//!
//! Faults, drawn up front from their own seeded RNG:
//! - **demand surge**: a position's demand ×3–5 for 5–10 days;
//! - **supplier delay**: shipments a supplier creates during a 10-day window arrive 6–14 days
//!   late, announced by a `delayed` event with the new eta a day after leaving;
//! - **customer going quiet**: from a moment on, the customer buys ten times less often;
//! - **customer growing** (a lead for the sales rep): from a moment on, the customer buys
//!   2.5–4 times more often.
//!
//! Normal operation never runs out (the reorder point covers lead time plus a week), so the
//! stockouts are the faults' doing; [`GroundTruth`] records each with its cause.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::reference::{self, customer_id, part_id, warehouse_id};
use crate::config::SimulateConfig;

/// How often faults happen.
#[derive(Debug, Clone)]
pub struct WorldRates {
    /// Demand surges per position and simulated year.
    pub surges_per_position_year: f64,
    /// Delay windows per supplier and simulated year.
    pub delays_per_supplier_year: f64,
    /// Share of customers that go quiet within the horizon.
    pub quiet_share: f64,
    /// Share of the other customers that start buying more often within the horizon.
    pub growing_share: f64,
}

impl Default for WorldRates {
    fn default() -> Self {
        WorldRates {
            surges_per_position_year: 1.5,
            delays_per_supplier_year: 4.0,
            quiet_share: 0.15,
            growing_share: 0.15,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Surge {
    pub position: usize,
    pub part_id: String,
    pub warehouse_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub factor: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SupplierDelay {
    pub supplier: usize,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub extra_days: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stockout {
    pub position: usize,
    pub part_id: String,
    pub warehouse_id: String,
    pub at: DateTime<Utc>,
    /// `demand_surge`, `supplier_delay`, `late_supplier` (ordinary unreliability) or `other`.
    pub cause: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuietCustomer {
    pub customer: usize,
    pub customer_id: String,
    pub since: DateTime<Utc>,
    /// Mean days between the customer's orders before going quiet.
    pub usual_interval_days: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrowingCustomer {
    pub customer: usize,
    pub customer_id: String,
    pub since: DateTime<Utc>,
    /// Mean days between the customer's orders before growing.
    pub usual_interval_days: f64,
    /// How many times more often the customer orders since.
    pub factor: f64,
}

/// What the world injected and what happened, for `millstream eval signals`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GroundTruth {
    pub surges: Vec<Surge>,
    pub delays: Vec<SupplierDelay>,
    pub quiet: Vec<QuietCustomer>,
    pub growing: Vec<GrowingCustomer>,
    pub stockouts: Vec<Stockout>,
}

struct Position {
    part: usize,
    warehouse: usize,
    supplier: usize,
    demand: f64,
    /// Consumption movements per day: up to [`MOVES_PER_DAY`], each at least one unit.
    moves_per_day: f64,
    stock: i64,
    reorder_point: i64,
    order_qty: i64,
    open_order: bool,
    out: bool,
    /// Why the open order is late, if it is.
    late: Option<&'static str>,
}

struct Customer {
    interval_days: f64,
    quiet_since: Option<DateTime<Utc>>,
    /// Since when, and by how much, the customer orders more often.
    growing: Option<(DateTime<Utc>, f64)>,
}

/// A world event due at a simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Task {
    Consume(usize),
    Purchase(usize),
    /// Shipment index, stage (1 in transit, 2 delayed, 3 delivered).
    Ship(usize, u8),
}

struct Shipment {
    position: usize,
    /// The purchase order it fulfils: an agent's order (`mfg.actions.orders`). The world's own
    /// replenishment orders have none.
    po_id: Option<String>,
    quantity: i64,
    nominal_eta: DateTime<Utc>,
    arrival: DateTime<Utc>,
}

/// What the world emits; the generator turns it into an event.
pub enum Happening {
    Movement {
        part: usize,
        warehouse: usize,
        receipt: bool,
        quantity: i64,
        reference: String,
    },
    Shipment {
        id: String,
        supplier: usize,
        part: usize,
        warehouse: usize,
        quantity: i64,
        stage: u8,
        eta: Option<DateTime<Utc>>,
        po_id: Option<String>,
    },
    Sale {
        customer: usize,
    },
}

/// Consumption movements per position and day (each a few hours' demand).
const MOVES_PER_DAY: f64 = 6.0;

pub struct World {
    rng: ChaCha8Rng,
    /// Seeds [`World::purchase_history`].
    history_seed: u64,
    run_id: String,
    positions: Vec<Position>,
    customers: Vec<Customer>,
    lead_days: Vec<f64>,
    reliability: Vec<f64>,
    min_order: Vec<i64>,
    shipments: Vec<Shipment>,
    queue: BinaryHeap<Reverse<(i64, u64, Task)>>,
    seq: u64,
    truth: GroundTruth,
    /// Surge windows per position, sorted by start.
    surges: Vec<Windows>,
    /// Delay windows per supplier, sorted by start.
    delays: Vec<Windows>,
}

/// Fault windows: (start, end, size), sorted by start.
type Windows = Vec<(DateTime<Utc>, DateTime<Utc>, f64)>;

fn at_us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn days(d: f64) -> Duration {
    Duration::microseconds((d * 86_400e6) as i64)
}

impl World {
    /// The world from the reference data of `cfg` (so stock starts where the inventory table
    /// does), with faults drawn over `[start, start + horizon)`.
    pub fn new(
        cfg: &SimulateConfig,
        run_id: &str,
        start: DateTime<Utc>,
        horizon: Duration,
        rates: &WorldRates,
    ) -> World {
        let data = reference::generate(cfg);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x0077_6f72_6c64);
        let lead_days: Vec<f64> = data
            .suppliers
            .iter()
            .map(|s| s.lead_time_days as f64)
            .collect();
        let supplier_of = |id: &str| {
            data.suppliers
                .iter()
                .position(|s| s.supplier_id == id)
                .unwrap_or(0)
        };
        let part_supplier: Vec<usize> = data
            .parts
            .iter()
            .map(|p| supplier_of(&p.supplier_id))
            .collect();
        let positions: Vec<Position> = data
            .inventory
            .iter()
            .enumerate()
            .map(|(i, inv)| {
                let part = i / cfg.warehouses;
                let supplier = part_supplier[part];
                let rop = data.parts[part].reorder_point;
                let demand = reference::daily_demand(rop, data.suppliers[supplier].lead_time_days);
                Position {
                    part,
                    warehouse: i % cfg.warehouses,
                    supplier,
                    demand,
                    moves_per_day: demand.clamp(0.5, MOVES_PER_DAY),
                    stock: inv.on_hand - inv.reserved,
                    reorder_point: rop,
                    order_qty: reference::order_quantity(
                        demand,
                        data.suppliers[supplier].lead_time_days,
                    )
                    .max(data.suppliers[supplier].min_order_qty),
                    open_order: false,
                    out: false,
                    late: None,
                }
            })
            .collect();
        let customers: Vec<Customer> = (0..cfg.customers)
            .map(|_| Customer {
                interval_days: rng.random_range(2.0..12.0),
                quiet_since: None,
                growing: None,
            })
            .collect();
        let mut w = World {
            run_id: run_id.to_string(),
            history_seed: cfg.seed ^ 0x6869_7374,
            lead_days,
            reliability: data.suppliers.iter().map(|s| s.reliability).collect(),
            min_order: data.suppliers.iter().map(|s| s.min_order_qty).collect(),
            shipments: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            truth: GroundTruth::default(),
            surges: vec![Vec::new(); positions.len()],
            delays: vec![Vec::new(); data.suppliers.len()],
            positions,
            customers,
            rng,
        };
        w.draw_faults(start, horizon, rates);
        for p in 0..w.positions.len() {
            let first = start + days(w.rng.random_range(0.0..1.0 / w.positions[p].moves_per_day));
            w.schedule(first, Task::Consume(p));
        }
        for c in 0..w.customers.len() {
            let first = start + days(w.rng.random_range(0.0..w.customers[c].interval_days));
            w.schedule(first, Task::Purchase(c));
        }
        w
    }

    fn draw_faults(&mut self, start: DateTime<Utc>, horizon: Duration, rates: &WorldRates) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.random::<u64>() ^ 0x6661_756c);
        let span = horizon.num_seconds() as f64 / 86_400.0;
        let years = span / 365.0;
        for p in 0..self.positions.len() {
            let n = poisson(&mut rng, rates.surges_per_position_year * years);
            let windows = draw_windows(
                &mut rng,
                n,
                start,
                span,
                |r| r.random_range(5.0..10.0),
                3.0..5.0,
            );
            let (part, warehouse) = (self.positions[p].part, self.positions[p].warehouse);
            self.truth
                .surges
                .extend(windows.iter().map(|(s, e, f)| Surge {
                    position: p,
                    part_id: part_id(part),
                    warehouse_id: warehouse_id(warehouse),
                    start: *s,
                    end: *e,
                    factor: *f,
                }));
            self.surges[p] = windows;
        }
        for s in 0..self.delays.len() {
            let n = poisson(&mut rng, rates.delays_per_supplier_year * years);
            let windows = draw_windows(&mut rng, n, start, span, |_| 10.0, 6.0..14.0);
            self.truth
                .delays
                .extend(windows.iter().map(|(a, b, x)| SupplierDelay {
                    supplier: s,
                    start: *a,
                    end: *b,
                    extra_days: *x,
                }));
            self.delays[s] = windows;
        }
        let quiet_until = span.clamp(1.0, 60.0);
        for c in 0..self.customers.len() {
            if rng.random_bool(rates.quiet_share) {
                let since = start + days(rng.random_range(0.0..quiet_until));
                self.customers[c].quiet_since = Some(since);
                self.truth.quiet.push(QuietCustomer {
                    customer: c,
                    customer_id: customer_id(c),
                    since,
                    usual_interval_days: self.customers[c].interval_days,
                });
            }
        }
        // Growth from a generator of its own, so the faults above stay as they were drawn.
        let mut rng = ChaCha8Rng::seed_from_u64(rng.random::<u64>() ^ 0x6772_6f77);
        for c in 0..self.customers.len() {
            if self.customers[c].quiet_since.is_none() && rng.random_bool(rates.growing_share) {
                let since = start + days(rng.random_range(0.0..quiet_until));
                let factor = rng.random_range(2.5..4.0);
                self.customers[c].growing = Some((since, factor));
                self.truth.growing.push(GrowingCustomer {
                    customer: c,
                    customer_id: customer_id(c),
                    since,
                    usual_interval_days: self.customers[c].interval_days,
                    factor,
                });
            }
        }
    }

    fn schedule(&mut self, at: DateTime<Utc>, task: Task) {
        self.seq += 1;
        self.queue.push(Reverse((at_us(at), self.seq, task)));
    }

    /// When the next world event is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.queue
            .peek()
            .and_then(|Reverse((t, _, _))| DateTime::from_timestamp_micros(*t))
    }

    /// Purchases over `[end − span, end)` at each customer's usual rhythm (nobody quiet yet),
    /// as the sales history a live world continues from: every customer has at least one.
    /// Drawn from its own generator, so the live world is the same with or without it.
    pub fn purchase_history(
        &self,
        end: DateTime<Utc>,
        span: Duration,
    ) -> Vec<(DateTime<Utc>, usize)> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.history_seed);
        let span_days = span.num_seconds() as f64 / 86_400.0;
        let mut out = Vec::new();
        for (c, customer) in self.customers.iter().enumerate() {
            let first = out.len();
            let mut t = exponential(&mut rng, customer.interval_days);
            while t < span_days {
                out.push((end - span + days(t), c));
                t += exponential(&mut rng, customer.interval_days);
            }
            if out.len() == first {
                out.push((end - span + days(rng.random_range(0.0..span_days)), c));
            }
        }
        out.sort();
        out
    }

    pub fn truth(&self) -> &GroundTruth {
        &self.truth
    }

    fn surge(&self, p: usize, t: DateTime<Utc>) -> f64 {
        self.surges[p]
            .iter()
            .find(|(s, e, _)| t >= *s && t < *e)
            .map_or(1.0, |w| w.2)
    }

    /// A surge active now or over within one replenishment cycle (lead time plus two weeks):
    /// the stock it drained has not been made good yet.
    fn recent_surge(&self, p: usize, t: DateTime<Utc>) -> bool {
        let cycle = days(self.lead_days[self.positions[p].supplier] + 14.0);
        self.surges[p]
            .iter()
            .any(|(s, e, _)| t >= *s && t < *e + cycle)
    }

    fn delay(&self, s: usize, t: DateTime<Utc>) -> Option<f64> {
        self.delays[s]
            .iter()
            .find(|(a, b, _)| t >= *a && t < *b)
            .map(|w| w.2)
    }

    /// The next event due at or before `now`, with its event time.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, Happening)> {
        loop {
            let Reverse((t, _, _)) = *self.queue.peek()?;
            if t > at_us(now) {
                return None;
            }
            let Reverse((t, _, task)) = self.queue.pop().expect("peeked");
            let at = DateTime::from_timestamp_micros(t).expect("valid time");
            if let Some(h) = self.run(at, task) {
                return Some((at, h));
            }
        }
    }

    fn run(&mut self, at: DateTime<Utc>, task: Task) -> Option<Happening> {
        match task {
            Task::Consume(p) => self.consume(at, p),
            Task::Purchase(c) => {
                let customer = &self.customers[c];
                let mean = match (customer.quiet_since, customer.growing) {
                    (Some(q), _) if at >= q => customer.interval_days * 10.0,
                    (_, Some((g, factor))) if at >= g => customer.interval_days / factor,
                    _ => customer.interval_days,
                };
                let gap = exponential(&mut self.rng, mean);
                self.schedule(at + days(gap), Task::Purchase(c));
                Some(Happening::Sale { customer: c })
            }
            Task::Ship(s, stage) => Some(self.ship(at, s, stage)),
        }
    }

    fn consume(&mut self, at: DateTime<Utc>, p: usize) -> Option<Happening> {
        let surge = self.surge(p, at);
        let per_day = self.positions[p].moves_per_day;
        let gap = exponential(&mut self.rng, 1.0 / (per_day * surge));
        self.schedule(at + days(gap), Task::Consume(p));
        let pos = &self.positions[p];
        let want = ((pos.demand / per_day) * self.rng.random_range(0.5..1.5))
            .round()
            .max(1.0) as i64;
        let qty = want.min(pos.stock);
        if qty < want && !pos.out {
            let cause = if self.recent_surge(p, at) {
                "demand_surge"
            } else {
                pos.late.unwrap_or("other")
            };
            self.truth.stockouts.push(Stockout {
                position: p,
                part_id: part_id(pos.part),
                warehouse_id: warehouse_id(pos.warehouse),
                at,
                cause,
            });
            self.positions[p].out = true;
        }
        let pos = &mut self.positions[p];
        pos.stock -= qty;
        let (part, warehouse) = (pos.part, pos.warehouse);
        if pos.stock <= pos.reorder_point && !pos.open_order {
            self.order(at, p);
        }
        (qty > 0).then(|| Happening::Movement {
            part,
            warehouse,
            receipt: false,
            quantity: qty,
            reference: format!("WO-{}", self.rng.random_range(10000..99999)),
        })
    }

    /// The position's supplier ships lead time plus two weeks of demand.
    fn order(&mut self, at: DateTime<Utc>, p: usize) {
        let s = self.positions[p].supplier;
        let lead = self.lead_days[s];
        let nominal = at + days(lead);
        let mut arrival = at + days(lead * self.rng.random_range(0.9..1.05));
        let mut late = None;
        let mut announced = false;
        if let Some(extra) = self.delay(s, at) {
            arrival += days(extra);
            late = Some("supplier_delay");
            announced = true;
        } else if !self.rng.random_bool(self.reliability[s]) {
            arrival += days(self.rng.random_range(1.0..4.0));
            late = Some("late_supplier");
        }
        let pos = &mut self.positions[p];
        pos.open_order = true;
        pos.late = late;
        let quantity = pos.order_qty.max(self.min_order[s]);
        self.shipments.push(Shipment {
            position: p,
            po_id: None,
            quantity,
            nominal_eta: nominal,
            arrival,
        });
        let i = self.shipments.len() - 1;
        self.schedule(at, Task::Ship(i, 0));
        let leaves = at + days((lead * 0.2).min(1.0));
        self.schedule(leaves, Task::Ship(i, 1));
        if announced {
            self.schedule(leaves + days(1.0), Task::Ship(i, 2));
        }
        self.schedule(arrival, Task::Ship(i, 3));
    }

    /// Fulfils an agent's purchase order: the part's supplier ships it now and delivers it at
    /// `expected_at`, a day or so later when the supplier is unreliable or under a delay, with
    /// the receipt right behind. False when no position holds the part in that warehouse.
    pub fn place_order(
        &mut self,
        at: DateTime<Utc>,
        part: usize,
        warehouse: usize,
        quantity: i64,
        expected_at: DateTime<Utc>,
        po_id: &str,
    ) -> bool {
        let Some(p) = self
            .positions
            .iter()
            .position(|pos| pos.part == part && pos.warehouse == warehouse)
        else {
            return false;
        };
        let s = self.positions[p].supplier;
        let expected_at = expected_at.max(at);
        let mut arrival = expected_at;
        let mut announced = false;
        if let Some(extra) = self.delay(s, at) {
            arrival += days(extra);
            announced = true;
        } else if !self.rng.random_bool(self.reliability[s]) {
            arrival += days(self.rng.random_range(0.5..2.0));
        }
        self.shipments.push(Shipment {
            position: p,
            po_id: Some(po_id.to_string()),
            quantity,
            nominal_eta: expected_at,
            arrival,
        });
        let i = self.shipments.len() - 1;
        self.schedule(at, Task::Ship(i, 0));
        let lead = (expected_at - at).num_seconds() as f64 / 86_400.0;
        let leaves = at + days((lead * 0.2).min(1.0));
        self.schedule(leaves, Task::Ship(i, 1));
        if announced {
            self.schedule(leaves + days(0.5), Task::Ship(i, 2));
        }
        self.schedule(arrival, Task::Ship(i, 3));
        true
    }

    /// Stage 0–3 of shipment `i` (created, in transit, delayed, delivered); stage 4 is the
    /// receipt movement that lands right behind the delivery.
    fn ship(&mut self, at: DateTime<Utc>, i: usize, stage: u8) -> Happening {
        let (p, quantity) = (self.shipments[i].position, self.shipments[i].quantity);
        let reference = format!("SH-{}-{}", self.run_id, i + 1);
        if stage == 4 {
            let agent = self.shipments[i].po_id.is_some();
            let pos = &mut self.positions[p];
            pos.stock += quantity;
            pos.out = false;
            // An agent's order arrives on top of the world's own replenishment, which is still
            // open if it was.
            if !agent {
                pos.open_order = false;
                pos.late = None;
            }
            return Happening::Movement {
                part: pos.part,
                warehouse: pos.warehouse,
                receipt: true,
                quantity,
                reference,
            };
        }
        if stage == 3 {
            self.schedule(at, Task::Ship(i, 4));
        }
        let sh = &self.shipments[i];
        let pos = &self.positions[p];
        Happening::Shipment {
            id: reference,
            supplier: pos.supplier,
            part: pos.part,
            warehouse: pos.warehouse,
            quantity,
            stage,
            eta: match stage {
                0 | 1 => Some(sh.nominal_eta),
                2 => Some(sh.arrival),
                _ => None,
            },
            po_id: sh.po_id.clone(),
        }
    }
}

/// Fault windows `(start, end, size)`: `n` tries, each starting within `span` days of `start`,
/// lasting `length(rng)` days with a size drawn from `size`; a try overlapping an earlier window
/// is dropped. Sorted by start.
fn draw_windows(
    rng: &mut ChaCha8Rng,
    n: usize,
    start: DateTime<Utc>,
    span: f64,
    length: impl Fn(&mut ChaCha8Rng) -> f64,
    size: std::ops::Range<f64>,
) -> Windows {
    let mut windows: Windows = Vec::new();
    for _ in 0..n {
        let s = start + days(rng.random_range(0.0..span));
        let e = s + days(length(rng));
        let x = rng.random_range(size.clone());
        if windows.iter().all(|(a, b, _)| e < *a || s > *b) {
            windows.push((s, e, x));
        }
    }
    windows.sort_by_key(|w| w.0);
    windows
}

fn exponential(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    -u.ln() * mean
}

fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> usize {
    // Knuth's method; lambda is small here.
    let l = (-lambda).exp();
    let (mut k, mut p) = (0, 1.0);
    loop {
        p *= rng.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SimulateConfig {
        crate::config::Config::defaults().simulate
    }

    /// Without faults nearly nothing runs out (the reorder point covers lead time plus a week);
    /// surges make shelves run empty, and every stockout is attributed to a cause.
    #[test]
    fn without_faults_stock_never_runs_out_and_with_surges_it_does() {
        let c = SimulateConfig {
            parts: 100,
            ..cfg()
        };
        let run = |rates: WorldRates| {
            let mut w = World::new(&c, "t", c.start, Duration::days(60), &rates);
            let end = c.start + Duration::days(60);
            let (mut moves, mut receipts) = (0, 0);
            while let Some(t) = w.next_due() {
                if t >= end {
                    break;
                }
                if let Some((_, h)) = w.pop_due(t)
                    && let Happening::Movement { receipt, .. } = h
                {
                    moves += 1;
                    receipts += receipt as usize;
                }
            }
            (w.truth().clone(), moves, receipts)
        };
        let none = WorldRates {
            surges_per_position_year: 0.0,
            delays_per_supplier_year: 0.0,
            quiet_share: 0.0,
            growing_share: 0.0,
        };
        let (truth, moves, receipts) = run(none);
        assert!(moves > 500 * 50, "about 6 movements per position and day");
        assert!(receipts > 300, "positions get replenished: {receipts}");
        // Only a supplier's ordinary lateness (1–4 days past a lead time + 7 days of cover) can
        // empty a shelf, and rarely.
        assert!(
            truth.stockouts.iter().all(|s| s.cause == "late_supplier"),
            "{:?}",
            truth.stockouts
        );
        assert!(truth.stockouts.len() <= 5, "{}", truth.stockouts.len());
        let (truth, _, _) = run(WorldRates {
            surges_per_position_year: 6.0,
            ..WorldRates::default()
        });
        assert!(truth.stockouts.len() > 20, "{}", truth.stockouts.len());
        assert!(
            truth.stockouts.iter().all(|s| s.cause != "other"),
            "every stockout has a cause: {:?}",
            truth
                .stockouts
                .iter()
                .filter(|s| s.cause == "other")
                .collect::<Vec<_>>()
        );
    }

    /// Growing customers (the sales rep's leads) buy `factor` times more often from `since`;
    /// quiet ones ten times less; no customer is both.
    #[test]
    fn growing_customers_buy_more_often_from_the_moment_they_grow() {
        let c = cfg();
        let rates = WorldRates {
            quiet_share: 0.2,
            growing_share: 0.5,
            ..WorldRates::default()
        };
        let span = Duration::days(90);
        let mut w = World::new(&c, "t", c.start, span, &rates);
        let end = c.start + span;
        let mut sales: Vec<Vec<DateTime<Utc>>> = vec![Vec::new(); c.customers];
        while let Some(t) = w.next_due() {
            if t >= end {
                break;
            }
            if let Some((at, Happening::Sale { customer })) = w.pop_due(t) {
                sales[customer].push(at);
            }
        }
        let truth = w.truth().clone();
        assert!(
            truth.growing.len() > c.customers / 4,
            "{}",
            truth.growing.len()
        );
        assert!(
            truth
                .growing
                .iter()
                .all(|g| truth.quiet.iter().all(|q| q.customer != g.customer))
        );
        // Observed over expected sales after growth, at the usual and at the grown rate.
        let (mut observed, mut usual, mut grown) = (0.0, 0.0, 0.0);
        for g in &truth.growing {
            let after = (end - g.since).num_seconds() as f64 / 86_400.0;
            observed += sales[g.customer].iter().filter(|t| **t >= g.since).count() as f64;
            usual += after / g.usual_interval_days;
            grown += after * g.factor / g.usual_interval_days;
        }
        assert!(
            (observed - grown).abs() < grown * 0.15 && observed > usual * 2.0,
            "{observed} sales after growth, {grown:.0} expected ({usual:.0} at the usual rate)"
        );
    }
}
