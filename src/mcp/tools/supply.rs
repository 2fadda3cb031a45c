//! Supply-chain tools: stock and its outlook, shortage risks, shipments, purchase orders.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{ErrorData, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{RISK_ORDER, Risk};
use crate::mcp::actions::{OrderReceipt, OrderRequest};
use crate::mcp::args::{id, invalid, limit, opt_id, opt_text, text};
use crate::mcp::catalog::AsOf;
use crate::mcp::query::Query;
use crate::mcp::server::Millstream;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InventoryArgs {
    /// Only this part (e.g. "P-00042").
    pub part_id: Option<String>,
    /// Only this warehouse (e.g. "WH-01").
    pub warehouse_id: Option<String>,
    /// Only positions whose shortage risk is at least this.
    pub min_risk: Option<Risk>,
    /// Rows to return (default 50, at most 1000).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct InventoryPosition {
    pub part_id: String,
    pub part_name: String,
    pub category: String,
    pub warehouse_id: String,
    pub region: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub reorder_point: i64,
    pub safety_stock: i64,
    pub supplier_id: String,
    /// Units used per day (from the shortage signal).
    pub daily_usage: Option<f64>,
    /// Units on open shipments and purchase orders.
    pub inbound_open: Option<i64>,
    pub days_of_cover: Option<f64>,
    pub risk_level: Option<Risk>,
    pub predicted_shortage_date: Option<String>,
    pub suggested_order_qty: Option<i64>,
    pub reasons: Option<String>,
    pub updated_at: String,
    /// Event time the shortage signal was computed at.
    pub signal_as_of: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct InventoryAnswer {
    pub positions: Vec<InventoryPosition>,
    pub as_of: AsOf,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipmentArgs {
    pub shipment_id: Option<String>,
    pub part_id: Option<String>,
    pub supplier_id: Option<String>,
    pub warehouse_id: Option<String>,
    /// Shipments fulfilling this purchase order.
    pub po_id: Option<String>,
    /// Only shipments not yet delivered or cancelled.
    pub open_only: Option<bool>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Shipment {
    pub shipment_id: String,
    pub supplier_id: String,
    pub part_id: String,
    pub warehouse_id: String,
    pub quantity: i64,
    /// created | in_transit | delayed | delivered | cancelled
    pub status: String,
    pub carrier: String,
    pub eta: Option<String>,
    pub po_id: Option<String>,
    pub created_at: String,
    pub last_update: String,
    pub status_events: i64,
    pub is_open: bool,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentsAnswer {
    pub shipments: Vec<Shipment>,
    pub as_of: AsOf,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictShortageArgs {
    pub part_id: String,
    /// One warehouse; every warehouse holding the part when absent.
    pub warehouse_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ShortageSignal {
    pub part_id: String,
    pub warehouse_id: String,
    pub region: String,
    pub supplier_id: String,
    pub on_hand: i64,
    pub available: i64,
    pub daily_usage: f64,
    pub inbound_open: i64,
    pub inbound_expected: f64,
    pub lead_time_days: i32,
    pub days_of_cover: Option<f64>,
    pub risk_level: Risk,
    pub predicted_shortage_date: Option<String>,
    pub suggested_order_qty: i64,
    pub reasons: String,
    /// Event-time watermark the signal was computed at.
    pub as_of: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ShortageAnswer {
    pub signals: Vec<ShortageSignal>,
    pub as_of: AsOf,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShortageRisksArgs {
    /// Lowest risk level to list (default HIGH).
    pub min_risk: Option<Risk>,
    pub warehouse_id: Option<String>,
    pub supplier_id: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderStatusArgs {
    pub po_id: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct PurchaseOrder {
    pub po_id: String,
    pub part_id: String,
    pub warehouse_id: String,
    pub supplier_id: String,
    pub quantity: i64,
    /// standard | expedited | rush
    pub priority: String,
    /// open (placed, nothing shipped yet) | shipped | received | cancelled, from its shipments.
    pub status: String,
    pub expected_at: Option<String>,
    pub created_at: String,
    /// When the delivery arrived (event time), once received.
    pub received_at: Option<String>,
    pub unit_cost: f64,
    pub fee: f64,
    pub total_cost: f64,
    pub on_behalf_of: String,
    pub idempotency_key: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct OrderStatusAnswer {
    pub order: PurchaseOrder,
    /// Shipments fulfilling it.
    pub shipments: Vec<Shipment>,
    pub as_of: AsOf,
}

const SHORTAGE_COLUMNS: &str = "part_id, warehouse_id, region, supplier_id, on_hand, available, \
     daily_usage, inbound_open, inbound_expected, lead_time_days, days_of_cover, risk_level, \
     predicted_shortage_date, suggested_order_qty, reasons, as_of";

#[tool_router(router = supply_router, vis = "pub(crate)")]
impl Millstream {
    #[tool(
        description = "Stock per part and warehouse: on hand, reserved, available, reorder policy, \
                       and the shortage outlook (usage, inbound, days of cover, risk, predicted \
                       shortage date, suggested order). Filter by part, warehouse or minimum risk.",
        annotations(read_only_hint = true)
    )]
    pub async fn get_inventory_status(
        &self,
        Parameters(a): Parameters<InventoryArgs>,
    ) -> Result<Json<InventoryAnswer>, ErrorData> {
        opt_id("part_id", &a.part_id)?;
        opt_id("warehouse_id", &a.warehouse_id)?;
        let n = limit(a.limit)?;
        let q = Query::new("SELECT * FROM views.get_inventory_status")
            .filter("part_id = ?", opt_text(&a.part_id))
            .filter("warehouse_id = ?", opt_text(&a.warehouse_id))
            .any_of(
                "risk_level",
                &a.min_risk.map(Risk::at_least).unwrap_or_default(),
            )
            .finish(&format!(
                "ORDER BY {RISK_ORDER}, days_of_cover NULLS LAST, part_id, warehouse_id LIMIT {n}"
            ));
        let (positions, as_of) = self.fetch(q).await?;
        if positions.is_empty() {
            self.known_part_and_warehouse(&a.part_id, &a.warehouse_id)
                .await?;
        }
        Ok(Json(InventoryAnswer { positions, as_of }))
    }

    #[tool(
        description = "Shipments with their latest status, ETA and purchase order. Filter by \
                       shipment, part, supplier, warehouse or purchase order; open_only leaves out \
                       delivered and cancelled ones. Most recently updated first.",
        annotations(read_only_hint = true)
    )]
    pub async fn track_shipments(
        &self,
        Parameters(a): Parameters<ShipmentArgs>,
    ) -> Result<Json<ShipmentsAnswer>, ErrorData> {
        for (f, v) in [
            ("shipment_id", &a.shipment_id),
            ("part_id", &a.part_id),
            ("supplier_id", &a.supplier_id),
            ("warehouse_id", &a.warehouse_id),
            ("po_id", &a.po_id),
        ] {
            opt_id(f, v)?;
        }
        let n = limit(a.limit)?;
        let q = Query::new("SELECT * FROM views.track_shipments")
            .filter("shipment_id = ?", opt_text(&a.shipment_id))
            .filter("part_id = ?", opt_text(&a.part_id))
            .filter("supplier_id = ?", opt_text(&a.supplier_id))
            .filter("warehouse_id = ?", opt_text(&a.warehouse_id))
            .filter("po_id = ?", opt_text(&a.po_id))
            .filter(
                "is_open = ?",
                a.open_only
                    .filter(|o| *o)
                    .map(|_| datafusion::scalar::ScalarValue::Boolean(Some(true))),
            )
            .finish(&format!("ORDER BY last_update DESC, shipment_id LIMIT {n}"));
        let (shipments, as_of): (Vec<Shipment>, _) = self.fetch(q).await?;
        if shipments.is_empty()
            && let Some(s) = &a.shipment_id
        {
            return Err(invalid("shipment_id", format!("unknown shipment_id {s:?}")));
        }
        Ok(Json(ShipmentsAnswer { shipments, as_of }))
    }

    #[tool(
        description = "The shortage prediction for a part (per warehouse, or one warehouse): \
                       days of cover counting expected inbound, risk level against the supplier \
                       lead time, predicted shortage date and suggested order quantity, with reasons.",
        annotations(read_only_hint = true)
    )]
    pub async fn predict_shortage(
        &self,
        Parameters(a): Parameters<PredictShortageArgs>,
    ) -> Result<Json<ShortageAnswer>, ErrorData> {
        id("part_id", &a.part_id)?;
        opt_id("warehouse_id", &a.warehouse_id)?;
        self.known_part_and_warehouse(&Some(a.part_id.clone()), &a.warehouse_id)
            .await?;
        let q = Query::new(&format!(
            "SELECT {SHORTAGE_COLUMNS} FROM supply_chain.shortage_signals"
        ))
        .filter("part_id = ?", Some(text(&a.part_id)))
        .filter("warehouse_id = ?", opt_text(&a.warehouse_id))
        .finish("ORDER BY warehouse_id");
        let (signals, as_of) = self.fetch(q).await?;
        Ok(Json(ShortageAnswer { signals, as_of }))
    }

    #[tool(
        description = "Part × warehouse positions at or above a shortage risk (default HIGH), \
                       most urgent first (risk, then days of cover).",
        annotations(read_only_hint = true)
    )]
    pub async fn list_shortage_risks(
        &self,
        Parameters(a): Parameters<ShortageRisksArgs>,
    ) -> Result<Json<ShortageAnswer>, ErrorData> {
        opt_id("warehouse_id", &a.warehouse_id)?;
        opt_id("supplier_id", &a.supplier_id)?;
        let n = limit(a.limit)?;
        let q = Query::new(&format!(
            "SELECT {SHORTAGE_COLUMNS} FROM supply_chain.shortage_signals"
        ))
        .any_of("risk_level", &a.min_risk.unwrap_or(Risk::High).at_least())
        .filter("warehouse_id = ?", opt_text(&a.warehouse_id))
        .filter("supplier_id = ?", opt_text(&a.supplier_id))
        .finish(&format!(
            "ORDER BY {RISK_ORDER}, days_of_cover NULLS LAST, part_id, warehouse_id LIMIT {n}"
        ));
        let (signals, as_of) = self.fetch(q).await?;
        Ok(Json(ShortageAnswer { signals, as_of }))
    }

    #[tool(
        description = "Place a purchase order for a part into a warehouse. Checked against the \
                       part's supplier: quantity at least the supplier's minimum order; priority \
                       standard (supplier lead time, no fee), expedited (60% of the lead time, +10% \
                       fee) or rush (a third of the lead time, at least 1 day, +25% fee). The order \
                       is produced to mfg.actions.orders and materialized into \
                       supply_chain.purchase_orders by the pipeline; the same idempotency_key \
                       always yields the same single order.",
        annotations(
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true
        )
    )]
    pub async fn create_order(
        &self,
        Parameters(a): Parameters<OrderRequest>,
    ) -> Result<Json<OrderReceipt>, ErrorData> {
        crate::mcp::actions::create_order(self, a).await.map(Json)
    }

    #[tool(
        description = "A purchase order's status (open, shipped, received, cancelled), expected \
                       arrival, cost, who placed it, and the shipments fulfilling it.",
        annotations(read_only_hint = true)
    )]
    pub async fn get_order_status(
        &self,
        Parameters(a): Parameters<OrderStatusArgs>,
    ) -> Result<Json<OrderStatusAnswer>, ErrorData> {
        id("po_id", &a.po_id)?;
        let q = Query::new(
            "SELECT po_id, part_id, warehouse_id, supplier_id, quantity, priority, status, \
             expected_at, created_at, unit_cost, fee, total_cost, on_behalf_of, idempotency_key, \
             received_at FROM views.order_status",
        )
        .filter("po_id = ?", Some(text(&a.po_id)))
        .finish("");
        let (mut orders, order_as_of): (Vec<PurchaseOrder>, AsOf) = self.fetch(q).await?;
        let Some(order) = orders.pop() else {
            return Err(invalid(
                "po_id",
                format!(
                    "unknown po_id {:?} (an order just placed appears once the pipeline has \
                     materialized it, usually within seconds)",
                    a.po_id
                ),
            ));
        };
        let q = Query::new("SELECT * FROM views.track_shipments")
            .filter("po_id = ?", Some(text(&a.po_id)))
            .finish("ORDER BY created_at");
        let (shipments, mut as_of): (Vec<Shipment>, AsOf) = self.fetch(q).await?;
        as_of.tables.extend(order_as_of.tables);
        Ok(Json(OrderStatusAnswer {
            order,
            shipments,
            as_of,
        }))
    }
}

impl Millstream {
    /// `invalid params` naming the part or warehouse that does not exist.
    async fn known_part_and_warehouse(
        &self,
        part: &Option<String>,
        warehouse: &Option<String>,
    ) -> Result<(), ErrorData> {
        if let Some(p) = part {
            self.must_exist(
                "part_id",
                p,
                "SELECT 1 FROM supply_chain.parts WHERE part_id = $1",
            )
            .await?;
        }
        if let Some(w) = warehouse {
            self.must_exist(
                "warehouse_id",
                w,
                "SELECT 1 FROM supply_chain.inventory WHERE warehouse_id = $1 LIMIT 1",
            )
            .await?;
        }
        Ok(())
    }
}
