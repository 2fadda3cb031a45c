//! Bulk stock and sales history at a chosen size, written straight into the lakehouse: what
//! `bench derive` and the incremental-derive tests run the signal pipelines over, at sizes the
//! event-by-event world ([`super::world`]) would take hours to reach.
//!
//! The reference tables are the simulator's own ([`super::reference`]), for `positions` stock
//! positions (parts × warehouses) and `customers` customers. Events go through the pipeline's
//! decoders into the bronze tables, as the pipeline would write them: 7 days of consumption per
//! position, an open or delivered shipment for one position in five, and 180 days of sales per
//! customer. All event times lie before [`Bulk::now`], the latest of each stream in the same
//! quarter hour of event time, so a later [`Bulk::change`] just before `now` leaves the
//! pipelines' clock where it was.

use std::sync::Arc;

use arrow::array::RecordBatch;
use chrono::{DateTime, Duration, DurationRound, Utc};
use deltalake::protocol::SaveMode;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::reference::{self, InventoryPosition};
use crate::config::SimulateConfig;
use crate::decode::BronzeDecoder;
use crate::error::{Error, Result};
use crate::lakehouse::Lakehouse;
use crate::model::EventKind;
use crate::model::events::*;
use crate::source::RawRecord;

/// Events decoded and written per bronze commit.
const CHUNK: usize = 250_000;

/// A seeded history and what a change needs to know of it.
pub struct Bulk {
    /// The event time every history event precedes.
    pub now: DateTime<Utc>,
    cfg: SimulateConfig,
    positions: Vec<InventoryPosition>,
    customer_ids: Vec<(String, String)>,
    rng: ChaCha8Rng,
    next_id: u64,
}

/// What [`Bulk::seed`] or [`Bulk::change`] wrote.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Written {
    pub movements: usize,
    pub shipments: usize,
    pub transactions: usize,
    pub positions_updated: usize,
}

impl Bulk {
    /// Writes the reference tables and the history for `positions` positions (in 10 warehouses,
    /// or fewer below 10 positions) and `customers` customers. `progress` hears each table.
    pub async fn seed(
        lake: &Lakehouse,
        base: &SimulateConfig,
        positions: usize,
        customers: usize,
        progress: impl Fn(&str),
    ) -> Result<(Bulk, Written)> {
        if positions == 0 || customers == 0 {
            return Err(Error::Invalid(
                "positions and customers must be at least 1".into(),
            ));
        }
        let warehouses = positions.clamp(1, 10);
        let mut cfg = base.clone();
        cfg.warehouses = warehouses;
        cfg.parts = positions.div_ceil(warehouses);
        cfg.customers = customers;
        cfg.suppliers = cfg.suppliers.clamp(1, 50);
        cfg.seed_tickets = 0;
        let data = reference::generate(&cfg);
        // Ten minutes into a quarter hour: history and changes share its clock.
        let now = cfg
            .start
            .duration_trunc(Duration::minutes(15))
            .map_err(|e| Error::Internal(format!("start time: {e}")))?
            + Duration::days(200)
            + Duration::minutes(10);
        progress("reference tables");
        for (name, batch) in [
            (
                "supply_chain.suppliers",
                rows("supply_chain.suppliers", &data.suppliers)?,
            ),
            (
                "supply_chain.parts",
                rows("supply_chain.parts", &data.parts)?,
            ),
            (
                "supply_chain.inventory",
                rows(
                    "supply_chain.inventory",
                    &data.inventory[..positions.min(data.inventory.len())],
                )?,
            ),
            ("sales.customers", rows("sales.customers", &data.customers)?),
        ] {
            lake.ensure(name)
                .await?
                .write(vec![batch])
                .with_save_mode(SaveMode::Overwrite)
                .await
                .map_err(|e| Error::delta(name, e))?;
        }
        let mut bulk = Bulk {
            now,
            positions: data.inventory[..positions.min(data.inventory.len())].to_vec(),
            customer_ids: data
                .customers
                .iter()
                .map(|c| (c.customer_id.clone(), c.region.clone()))
                .collect(),
            cfg,
            rng: ChaCha8Rng::seed_from_u64(base.seed ^ 0xb01c),
            next_id: 0,
        };
        let supplier_of: std::collections::HashMap<&str, &str> = data
            .parts
            .iter()
            .map(|p| (p.part_id.as_str(), p.supplier_id.as_str()))
            .collect();
        let mut written = Written::default();

        progress("supply_chain.inventory_movements");
        let mut out = Out::new(lake, EventKind::Inventory)?;
        for i in 0..bulk.positions.len() {
            for _ in 0..bulk.rng.random_range(2..=8) {
                let ago = Duration::seconds(bulk.rng.random_range(60..7 * 86_400));
                let e = bulk.movement(i, now - ago);
                out.push(&e, &e.part_id).await?;
            }
        }
        // The stream's latest event, in the current quarter hour.
        let e = bulk.movement(0, now - Duration::minutes(1));
        out.push(&e, &e.part_id).await?;
        written.movements = out.finish().await?;

        progress("supply_chain.shipments");
        let mut out = Out::new(lake, EventKind::Shipment)?;
        for i in (0..bulk.positions.len()).step_by(5) {
            let p = bulk.positions[i].clone();
            let supplier = supplier_of.get(p.part_id.as_str()).copied().unwrap_or("");
            let id = bulk.id("SH");
            let created = now - Duration::days(bulk.rng.random_range(2..20));
            let eta = created + Duration::days(bulk.rng.random_range(3..25));
            let ship = |status, ts, eta| ShipmentEvent {
                event_id: format!("{id}-{status:?}"),
                shipment_id: id.clone(),
                supplier_id: supplier.to_string(),
                part_id: p.part_id.clone(),
                warehouse_id: p.warehouse_id.clone(),
                quantity: 100,
                status,
                carrier: "DHL".into(),
                eta: Some(eta),
                po_id: None,
                ts,
            };
            let first = ship(ShipmentStatus::Created, created, eta);
            out.push(&first, &first.shipment_id).await?;
            if eta < now {
                let done = ship(ShipmentStatus::Delivered, eta, eta);
                out.push(&done, &done.shipment_id).await?;
            }
        }
        written.shipments = out.finish().await?;

        progress("sales.transactions");
        let mut out = Out::new(lake, EventKind::Sales)?;
        for c in 0..bulk.customer_ids.len() {
            for _ in 0..bulk.rng.random_range(3..=20) {
                let ago = Duration::seconds(bulk.rng.random_range(60..180 * 86_400));
                let e = bulk.sale(c, now - ago);
                out.push(&e, &e.customer_id).await?;
            }
        }
        let e = bulk.sale(0, now - Duration::minutes(1));
        out.push(&e, &e.customer_id).await?;
        written.transactions = out.finish().await?;
        Ok((bulk, written))
    }

    pub fn positions(&self) -> usize {
        self.positions.len()
    }

    pub fn customers(&self) -> usize {
        self.customer_ids.len()
    }

    /// Changes `share` of the positions (one or two consumption movements each, and their stock
    /// level by MERGE, as the inventory pipeline does) and of the customers (a sale each), at
    /// event times in the current quarter hour. Returns what it wrote.
    pub async fn change(&mut self, lake: &Lakehouse, share: f64) -> Result<Written> {
        let pick = |n: usize, rng: &mut ChaCha8Rng| -> Vec<usize> {
            let k = ((n as f64 * share).round() as usize).clamp(1, n);
            rand::seq::index::sample(rng, n, k).into_vec()
        };
        let mut written = Written::default();
        let chosen = pick(self.positions.len(), &mut self.rng);
        let mut out = Out::new(lake, EventKind::Inventory)?;
        let mut updated = Vec::with_capacity(chosen.len());
        for &i in &chosen {
            let mut used = 0;
            for _ in 0..self.rng.random_range(1..=2) {
                let at = self.now - Duration::seconds(self.rng.random_range(1..300));
                let e = self.movement(i, at);
                used += e.quantity;
                out.push(&e, &e.part_id).await?;
            }
            let p = &mut self.positions[i];
            p.on_hand -= used;
            p.updated_at = self.now;
            updated.push(p.clone());
        }
        written.movements = out.finish().await?;
        written.positions_updated = updated.len();
        merge_positions(lake, &updated).await?;

        let chosen = pick(self.customer_ids.len(), &mut self.rng);
        let mut out = Out::new(lake, EventKind::Sales)?;
        for c in chosen {
            let at = self.now - Duration::seconds(self.rng.random_range(1..300));
            let e = self.sale(c, at);
            out.push(&e, &e.customer_id).await?;
        }
        written.transactions = out.finish().await?;
        Ok(written)
    }

    /// A shipment to position `position` from `supplier`, promised 3 days ago and delivered
    /// now: the supplier's lateness moves, and with it every position it has inbound to.
    pub async fn deliver_late(
        &mut self,
        lake: &Lakehouse,
        position: usize,
        supplier: &str,
    ) -> Result<()> {
        let p = self.positions[position].clone();
        let id = self.id("SH");
        let promised = self.now - Duration::days(3);
        let mut out = Out::new(lake, EventKind::Shipment)?;
        for (status, ts) in [
            (ShipmentStatus::Created, self.now - Duration::days(9)),
            (ShipmentStatus::Delivered, self.now - Duration::minutes(2)),
        ] {
            let e = ShipmentEvent {
                event_id: self.id("EV"),
                shipment_id: id.clone(),
                supplier_id: supplier.to_string(),
                part_id: p.part_id.clone(),
                warehouse_id: p.warehouse_id.clone(),
                quantity: 40,
                status,
                carrier: "DHL".into(),
                eta: Some(promised),
                po_id: None,
                ts,
            };
            out.push(&e, &e.shipment_id).await?;
        }
        out.finish().await?;
        Ok(())
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-B{:09}", self.next_id)
    }

    fn movement(&mut self, position: usize, ts: DateTime<Utc>) -> InventoryMovement {
        let p = &self.positions[position];
        let (part_id, warehouse_id) = (p.part_id.clone(), p.warehouse_id.clone());
        InventoryMovement {
            event_id: self.id("EV"),
            part_id,
            warehouse_id,
            movement_type: MovementType::Consumption,
            quantity: self.rng.random_range(1..=12),
            reference: None,
            ts,
        }
    }

    fn sale(&mut self, customer: usize, ts: DateTime<Utc>) -> SalesTransaction {
        let (customer_id, region) = self.customer_ids[customer].clone();
        let quantity = self.rng.random_range(1..=50);
        let unit_price = (self.rng.random_range(5.0..400.0f64) * 100.0).round() / 100.0;
        let product = self.rng.random_range(0..self.cfg.parts.max(1));
        let channel = *[
            SalesChannel::Direct,
            SalesChannel::Distributor,
            SalesChannel::Online,
        ]
        .choose(&mut self.rng)
        .expect("channels");
        SalesTransaction {
            event_id: self.id("EV"),
            transaction_id: self.id("TX"),
            customer_id,
            product_id: reference::part_id(product),
            quantity,
            unit_price,
            amount: ((quantity as f64 * unit_price) * 100.0).round() / 100.0,
            currency: "EUR".into(),
            channel,
            region,
            ts,
        }
    }
}

/// The positions' new stock levels into `supply_chain.inventory` by key, in one MERGE.
async fn merge_positions(lake: &Lakehouse, updated: &[InventoryPosition]) -> Result<()> {
    if updated.is_empty() {
        return Ok(());
    }
    let name = "supply_chain.inventory";
    let source = datafusion::prelude::SessionContext::new().read_batch(rows(name, updated)?)?;
    lake.ensure(name)
        .await?
        .merge(
            source,
            "target.part_id = source.part_id AND target.warehouse_id = source.warehouse_id",
        )
        .with_source_alias("source")
        .with_target_alias("target")
        .when_matched_update(|u| {
            u.update("on_hand", "source.on_hand")
                .update("reserved", "source.reserved")
                .update("updated_at", "source.updated_at")
        })
        .map_err(|e| Error::delta(name, e))?
        .await
        .map_err(|e| Error::delta(name, e))?;
    Ok(())
}

fn rows<T: Serialize>(table: &str, rows: &[T]) -> Result<RecordBatch> {
    crate::lakehouse::rows_batch(table, rows)
}

/// Events of one stream through its bronze decoder into its table, a chunk per commit.
struct Out<'a> {
    lake: &'a Lakehouse,
    kind: EventKind,
    decoder: BronzeDecoder,
    pending: Vec<RawRecord>,
    offset: i64,
    written: usize,
}

impl<'a> Out<'a> {
    fn new(lake: &'a Lakehouse, kind: EventKind) -> Result<Self> {
        Ok(Out {
            lake,
            kind,
            decoder: BronzeDecoder::new(kind)?,
            pending: Vec::new(),
            offset: 0,
            written: 0,
        })
    }

    async fn push<E: Serialize>(&mut self, event: &E, key: &str) -> Result<()> {
        let payload = serde_json::to_vec(event)
            .map_err(|e| Error::Internal(format!("event does not serialize: {e}")))?;
        self.pending.push(RawRecord {
            topic: Arc::from(self.kind.topic()),
            partition: 0,
            offset: self.offset,
            key: Some(key.as_bytes().to_vec()),
            payload: Some(payload),
            timestamp_ms: None,
        });
        self.offset += 1;
        if self.pending.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let idx: Vec<usize> = (0..self.pending.len()).collect();
        let decoded = self
            .decoder
            .decode(&self.pending, &idx, Utc::now().timestamp_micros())?;
        if let Some(r) = decoded.rejected.first() {
            return Err(Error::Internal(format!(
                "bulk event rejected: {}",
                r.reason
            )));
        }
        let table = self.kind.bronze_table();
        self.lake
            .ensure(table)
            .await?
            .write(vec![decoded.rows])
            .with_save_mode(SaveMode::Append)
            .await
            .map_err(|e| Error::delta(table, e))?;
        self.written += self.pending.len();
        self.pending.clear();
        Ok(())
    }

    async fn finish(mut self) -> Result<usize> {
        self.flush().await?;
        Ok(self.written)
    }
}
