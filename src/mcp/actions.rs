//! Agent actions as MCP tools: validated here against the caller's live view, produced to
//! `mfg.actions.*` ([`crate::actions`]), materialized by the pipeline.
//!
//! An action is accepted once Kafka has acknowledged it (idempotent producer, `acks=all`); the
//! pipeline then writes it to `supply_chain.purchase_orders` or `support.tickets` exactly once,
//! usually within a second or two. Idempotency: the caller's `idempotency_key` (scoped to the
//! principal) fixes the order id and the event id, so sending again (a retry, or a second call
//! with the same key) produces an event the MERGE recognizes and leaves alone. A key already
//! materialized is answered from the table without producing anything.
//!
//! Order rules (`create_order`): the part must exist and the warehouse must stock parts; the
//! supplier defaults to the part's primary supplier and may not be another one; the quantity is
//! at least the supplier's minimum order quantity and at most 1,000,000. Priority sets lead
//! time and fee: standard = the supplier's lead time, no fee; expedited = 60 % of it (rounded
//! up), +10 % of the goods; rush = a third of it (at least one day), +25 %. Times are on the
//! pipeline's event-time clock (the newest event time it has seen), so orders fit the
//! simulated clock as well as a real one.

use chrono::DateTime;
use rmcp::ErrorData;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::args::{id, internal, invalid, text};
use super::catalog::AsOf;
use super::query::Query;
use super::server::Millstream;
use crate::actions::{
    ActionProducer, MAX_ORDER_QTY, OrderPriority, TicketCategory, TicketPriority, TicketStatus,
    derived_id, new_key, send_id, wire_name,
};
use crate::broker::topics;
use crate::model::events::{Event, OrderAction, TicketAction};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub part_id: String,
    /// Destination warehouse.
    pub warehouse_id: String,
    /// Units; at least the supplier's minimum order quantity.
    pub quantity: i64,
    /// standard (default), expedited or rush.
    pub priority: Option<OrderPriority>,
    /// The part's primary supplier when absent (the only one accepted).
    pub supplier_id: Option<String>,
    /// Repeat it to retry safely: one key, one order. Generated when absent.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct OrderReceipt {
    pub po_id: String,
    pub idempotency_key: String,
    /// accepted: produced to mfg.actions.orders, the pipeline will materialize it;
    /// exists: this key's order is already in supply_chain.purchase_orders (nothing sent).
    pub outcome: String,
    pub part_id: String,
    pub warehouse_id: String,
    pub supplier_id: String,
    pub quantity: i64,
    pub priority: OrderPriority,
    pub unit_cost: f64,
    pub fee: f64,
    pub total_cost: f64,
    pub lead_time_days: i64,
    pub expected_at: String,
    pub on_behalf_of: String,
    /// Where the order will appear.
    pub table: String,
    /// The table versions the order was checked against (part, supplier terms, warehouse,
    /// earlier orders).
    pub as_of: AsOf,
}

#[derive(Debug, Deserialize)]
struct PartTerms {
    supplier_id: String,
    unit_cost: f64,
    lead_time_days: i64,
    min_order_qty: i64,
}

fn checked_key(key: Option<String>) -> Result<String, ErrorData> {
    match key {
        None => Ok(new_key()),
        Some(k) => {
            id("idempotency_key", &k)?;
            Ok(k)
        }
    }
}

impl Millstream {
    fn producer(&self) -> Result<&ActionProducer, ErrorData> {
        self.actions.as_deref().ok_or_else(|| {
            ErrorData::internal_error(
                "actions are disabled: this server has no Kafka broker (set kafka.brokers or \
                 pass --brokers)",
                None,
            )
        })
    }
}

pub async fn create_order(server: &Millstream, a: OrderRequest) -> Result<OrderReceipt, ErrorData> {
    id("part_id", &a.part_id)?;
    id("warehouse_id", &a.warehouse_id)?;
    if let Some(s) = &a.supplier_id {
        id("supplier_id", s)?;
    }
    let key = checked_key(a.idempotency_key)?;
    let producer = server.producer()?;
    let principal = server.principal().to_string();
    let po_id = derived_id("PO", &principal, &key);

    // Already materialized: answer from the table, send nothing.
    let q = Query::new(
        "SELECT po_id, part_id, warehouse_id, supplier_id, quantity, priority, unit_cost, fee, \
         total_cost, expected_at, on_behalf_of, created_at FROM supply_chain.purchase_orders",
    )
    .filter("po_id = ?", Some(text(&po_id)))
    .finish("");
    let (existing, as_of) = server.fetch::<serde_json::Value>(q).await?;
    if let Some(row) = existing.into_iter().next() {
        return existing_receipt(row, &key, as_of);
    }

    let q = Query::new(
        "SELECT p.supplier_id, p.unit_cost, CAST(s.lead_time_days AS BIGINT) AS lead_time_days, \
         s.min_order_qty FROM supply_chain.parts p \
         JOIN supply_chain.suppliers s ON s.supplier_id = p.supplier_id",
    )
    .filter("p.part_id = ?", Some(text(&a.part_id)))
    .finish("");
    let (terms, terms_as_of) = server.fetch::<PartTerms>(q).await?;
    let as_of = as_of.merge(terms_as_of);
    let Some(terms) = terms.into_iter().next() else {
        return Err(invalid(
            "part_id",
            format!("unknown part_id {:?}", a.part_id),
        ));
    };
    let as_of = as_of.merge(
        server
            .must_exist(
                "warehouse_id",
                &a.warehouse_id,
                "SELECT 1 FROM supply_chain.inventory WHERE warehouse_id = $1 LIMIT 1",
            )
            .await?,
    );
    if let Some(s) = &a.supplier_id
        && *s != terms.supplier_id
    {
        return Err(invalid(
            "supplier_id",
            format!(
                "part {} is supplied by {}, not {s}",
                a.part_id, terms.supplier_id
            ),
        ));
    }
    if a.quantity < terms.min_order_qty || a.quantity > MAX_ORDER_QTY {
        return Err(invalid(
            "quantity",
            format!(
                "quantity {} is outside {}..={MAX_ORDER_QTY} (supplier {} minimum order is {})",
                a.quantity, terms.min_order_qty, terms.supplier_id, terms.min_order_qty
            ),
        ));
    }
    let priority = a.priority.unwrap_or(OrderPriority::Standard);
    let (lead, fee_rate) = priority.terms(terms.lead_time_days);
    let goods = a.quantity as f64 * terms.unit_cost;
    let fee = (goods * fee_rate * 100.0).round() / 100.0;
    let now = server.catalog.event_clock();
    let expected_at = now + chrono::Duration::days(lead);
    let action = OrderAction {
        event_id: send_id("ORDER"),
        po_id: po_id.clone(),
        idempotency_key: key.clone(),
        part_id: a.part_id.clone(),
        warehouse_id: a.warehouse_id.clone(),
        supplier_id: terms.supplier_id.clone(),
        quantity: a.quantity,
        priority: wire_name(priority),
        unit_cost: terms.unit_cost,
        fee,
        total_cost: ((goods + fee) * 100.0).round() / 100.0,
        expected_at,
        on_behalf_of: principal.clone(),
        ts: now,
    };
    action.validate().map_err(internal)?;
    let payload = serde_json::to_vec(&action).map_err(internal)?;
    producer
        .send(topics::ACTION_ORDERS, &action.po_id, &payload)
        .await
        .map_err(|e| internal(format!("producing to {}: {e}", topics::ACTION_ORDERS)))?;
    tracing::info!(po_id = %action.po_id, part = %action.part_id, qty = action.quantity, on_behalf_of = %principal, "order accepted");
    Ok(OrderReceipt {
        po_id,
        idempotency_key: key,
        outcome: "accepted".into(),
        part_id: action.part_id,
        warehouse_id: action.warehouse_id,
        supplier_id: action.supplier_id,
        quantity: action.quantity,
        priority,
        unit_cost: action.unit_cost,
        fee: action.fee,
        total_cost: action.total_cost,
        lead_time_days: lead,
        expected_at: super::catalog::rfc3339(expected_at),
        on_behalf_of: principal,
        table: "supply_chain.purchase_orders".into(),
        as_of,
    })
}

fn existing_receipt(
    row: serde_json::Value,
    key: &str,
    as_of: AsOf,
) -> Result<OrderReceipt, ErrorData> {
    #[derive(Deserialize)]
    struct Row {
        po_id: String,
        part_id: String,
        warehouse_id: String,
        supplier_id: String,
        quantity: i64,
        priority: OrderPriority,
        unit_cost: f64,
        fee: f64,
        total_cost: f64,
        expected_at: Option<String>,
        on_behalf_of: String,
        created_at: String,
    }
    let r: Row = serde_json::from_value(row).map_err(internal)?;
    let lead = match (&r.expected_at, DateTime::parse_from_rfc3339(&r.created_at)) {
        (Some(e), Ok(c)) => DateTime::parse_from_rfc3339(e)
            .map(|e| (e - c).num_days())
            .unwrap_or(0),
        _ => 0,
    };
    Ok(OrderReceipt {
        po_id: r.po_id,
        idempotency_key: key.to_string(),
        outcome: "exists".into(),
        part_id: r.part_id,
        warehouse_id: r.warehouse_id,
        supplier_id: r.supplier_id,
        quantity: r.quantity,
        priority: r.priority,
        unit_cost: r.unit_cost,
        fee: r.fee,
        total_cost: r.total_cost,
        lead_time_days: lead,
        expected_at: r.expected_at.unwrap_or_default(),
        on_behalf_of: r.on_behalf_of,
        table: "supply_chain.purchase_orders".into(),
        as_of,
    })
}

// ---------------------------------------------------------------------------------------------
// Tickets

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    pub customer_id: String,
    /// One line, at most 200 characters.
    pub subject: String,
    /// At most 5000 characters.
    pub description: String,
    pub category: TicketCategory,
    /// medium when absent.
    pub priority: Option<TicketPriority>,
    /// Repeat it to retry safely: one key, one ticket. Generated when absent.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolutionRequest {
    pub ticket_id: String,
    /// New status: in_progress, resolved or closed.
    pub status: TicketStatus,
    /// What was done; required for resolved and closed. At most 5000 characters.
    pub resolution: Option<String>,
    /// Repeat it to retry safely. Generated when absent.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct TicketReceipt {
    pub ticket_id: String,
    pub idempotency_key: String,
    /// accepted: produced to mfg.actions.tickets; the pipeline will materialize it.
    pub outcome: String,
    pub status: TicketStatus,
    pub on_behalf_of: String,
    pub table: String,
    /// The table versions the action was checked against (the customer or the ticket).
    pub as_of: AsOf,
}

fn bounded(field: &str, v: &str, max: usize) -> Result<(), ErrorData> {
    if v.trim().is_empty() {
        return Err(invalid(field, format!("{field} is empty")));
    }
    if v.chars().count() > max {
        return Err(invalid(
            field,
            format!("{field} is longer than {max} characters"),
        ));
    }
    Ok(())
}

pub async fn create_ticket(
    server: &Millstream,
    a: TicketRequest,
) -> Result<TicketReceipt, ErrorData> {
    id("customer_id", &a.customer_id)?;
    bounded("subject", &a.subject, 200)?;
    if a.subject.contains('\n') {
        return Err(invalid("subject", "subject must be one line"));
    }
    bounded("description", &a.description, 5000)?;
    let key = checked_key(a.idempotency_key)?;
    let producer = server.producer()?;
    let as_of = server
        .must_exist(
            "customer_id",
            &a.customer_id,
            "SELECT 1 FROM sales.customers WHERE customer_id = $1",
        )
        .await?;
    let principal = server.principal().to_string();
    let ticket_id = derived_id("TKT", &principal, &key);
    let action = TicketAction {
        event_id: send_id("TICKET"),
        ticket_id: ticket_id.clone(),
        idempotency_key: key.clone(),
        action: "create".into(),
        customer_id: Some(a.customer_id),
        subject: Some(a.subject),
        description: Some(a.description),
        category: Some(wire_name(a.category)),
        priority: Some(wire_name(a.priority.unwrap_or(TicketPriority::Medium))),
        status: "open".into(),
        resolution: None,
        on_behalf_of: principal.clone(),
        ts: server.catalog.event_clock(),
    };
    send_ticket(producer, &action).await?;
    Ok(TicketReceipt {
        ticket_id,
        idempotency_key: key,
        outcome: "accepted".into(),
        status: TicketStatus::Open,
        on_behalf_of: principal,
        table: "support.tickets".into(),
        as_of,
    })
}

pub async fn update_ticket_resolution(
    server: &Millstream,
    a: ResolutionRequest,
) -> Result<TicketReceipt, ErrorData> {
    id("ticket_id", &a.ticket_id)?;
    if a.status == TicketStatus::Open {
        return Err(invalid(
            "status",
            "status must be in_progress, resolved or closed",
        ));
    }
    match (&a.resolution, a.status) {
        (Some(r), _) => bounded("resolution", r, 5000)?,
        (None, TicketStatus::Resolved | TicketStatus::Closed) => {
            return Err(invalid(
                "resolution",
                "a resolution is required to resolve or close a ticket",
            ));
        }
        (None, _) => {}
    }
    let key = checked_key(a.idempotency_key)?;
    let producer = server.producer()?;
    let as_of = server
        .must_exist(
            "ticket_id",
            &a.ticket_id,
            "SELECT 1 FROM support.tickets WHERE ticket_id = $1",
        )
        .await?;
    let principal = server.principal().to_string();
    let action = TicketAction {
        event_id: send_id("TICKET"),
        ticket_id: a.ticket_id.clone(),
        idempotency_key: key.clone(),
        action: "update".into(),
        customer_id: None,
        subject: None,
        description: None,
        category: None,
        priority: None,
        status: wire_name(a.status),
        resolution: a.resolution,
        on_behalf_of: principal.clone(),
        ts: server.catalog.event_clock(),
    };
    send_ticket(producer, &action).await?;
    Ok(TicketReceipt {
        ticket_id: a.ticket_id,
        idempotency_key: key,
        outcome: "accepted".into(),
        status: a.status,
        on_behalf_of: principal,
        table: "support.tickets".into(),
        as_of,
    })
}

async fn send_ticket(producer: &ActionProducer, action: &TicketAction) -> Result<(), ErrorData> {
    action.validate().map_err(internal)?;
    let payload = serde_json::to_vec(action).map_err(internal)?;
    producer
        .send(topics::ACTION_TICKETS, &action.ticket_id, &payload)
        .await
        .map_err(|e| internal(format!("producing to {}: {e}", topics::ACTION_TICKETS)))?;
    tracing::info!(ticket_id = %action.ticket_id, action = %action.action, on_behalf_of = %action.on_behalf_of, "ticket action accepted");
    Ok(())
}
