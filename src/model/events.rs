//! The events that arrive on the source topics. One Rust type per stream is the single source of
//! truth: it validates incoming JSON, generates `schemas/events/*.schema.json` (kept in sync by a
//! test), and its fields are the event columns of the stream's bronze table.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One reading from a machine sensor (`mfg.iot.telemetry`, key = device_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TelemetryReading {
    /// Globally unique event id (idempotency key).
    pub event_id: String,
    pub device_id: String,
    pub machine_id: String,
    pub plant_id: String,
    pub sensor_type: SensorType,
    /// Measured value in `unit`; must be finite.
    pub value: f64,
    pub unit: String,
    /// Event time at the device.
    #[serde(deserialize_with = "event_time::required")]
    pub ts: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SensorType {
    Temperature,
    Vibration,
    Pressure,
    Power,
}

impl SensorType {
    /// In device order: device `d` measures `ALL[d % 4]`.
    pub const ALL: [SensorType; 4] = [
        SensorType::Temperature,
        SensorType::Vibration,
        SensorType::Pressure,
        SensorType::Power,
    ];

    /// The safe operating range of the machines' sensors (°C, mm/s, bar, kW). A reading outside
    /// it is an anomaly whatever the sensor's own history says.
    pub fn operating_range(self) -> (f64, f64) {
        match self {
            SensorType::Temperature => (20.0, 90.0),
            SensorType::Vibration => (0.0, 8.0),
            SensorType::Pressure => (2.0, 9.0),
            SensorType::Power => (0.0, 50.0),
        }
    }

    pub fn parse(s: &str) -> Option<SensorType> {
        Some(match s {
            "temperature" => SensorType::Temperature,
            "vibration" => SensorType::Vibration,
            "pressure" => SensorType::Pressure,
            "power" => SensorType::Power,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SensorType::Temperature => "temperature",
            SensorType::Vibration => "vibration",
            SensorType::Pressure => "pressure",
            SensorType::Power => "power",
        }
    }
}

/// A shipment status change from the WMS or a carrier (`mfg.scm.shipments`, key = shipment_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentEvent {
    pub event_id: String,
    pub shipment_id: String,
    pub supplier_id: String,
    pub part_id: String,
    pub warehouse_id: String,
    /// Units shipped; positive.
    pub quantity: i64,
    pub status: ShipmentStatus,
    pub carrier: String,
    /// Expected arrival, when known.
    #[serde(default, deserialize_with = "event_time::optional")]
    pub eta: Option<DateTime<Utc>>,
    /// Purchase order this shipment fulfils, when it came from one.
    #[serde(default)]
    pub po_id: Option<String>,
    #[serde(deserialize_with = "event_time::required")]
    pub ts: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentStatus {
    Created,
    InTransit,
    Delayed,
    Delivered,
    Cancelled,
}

impl ShipmentStatus {
    /// The name on the wire and in the bronze table.
    pub fn as_str(self) -> &'static str {
        match self {
            ShipmentStatus::Created => "created",
            ShipmentStatus::InTransit => "in_transit",
            ShipmentStatus::Delayed => "delayed",
            ShipmentStatus::Delivered => "delivered",
            ShipmentStatus::Cancelled => "cancelled",
        }
    }
}

/// A stock movement for a part at a warehouse (`mfg.scm.inventory`, key = part_id@warehouse_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InventoryMovement {
    pub event_id: String,
    pub part_id: String,
    pub warehouse_id: String,
    pub movement_type: MovementType,
    /// Units moved; positive (the direction is in `movement_type`), except adjustments, which
    /// may be negative but not zero.
    pub quantity: i64,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(deserialize_with = "event_time::required")]
    pub ts: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MovementType {
    Receipt,
    Consumption,
    Adjustment,
    TransferIn,
    TransferOut,
}

impl MovementType {
    /// The name on the wire and in the bronze table.
    pub fn as_str(self) -> &'static str {
        match self {
            MovementType::Receipt => "receipt",
            MovementType::Consumption => "consumption",
            MovementType::Adjustment => "adjustment",
            MovementType::TransferIn => "transfer_in",
            MovementType::TransferOut => "transfer_out",
        }
    }
}

/// A sale to a customer (`mfg.sales.transactions`, key = customer_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SalesTransaction {
    pub event_id: String,
    pub transaction_id: String,
    pub customer_id: String,
    pub product_id: String,
    /// Units sold; positive.
    pub quantity: i64,
    /// Price per unit; non-negative.
    pub unit_price: f64,
    /// quantity × unit_price, within a cent.
    pub amount: f64,
    /// ISO 4217 code, three upper-case letters.
    pub currency: String,
    pub channel: SalesChannel,
    pub region: String,
    #[serde(deserialize_with = "event_time::required")]
    pub ts: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SalesChannel {
    Direct,
    Distributor,
    Online,
}

impl SalesChannel {
    /// The name on the wire and in the bronze table.
    pub fn as_str(self) -> &'static str {
        match self {
            SalesChannel::Direct => "direct",
            SalesChannel::Distributor => "distributor",
            SalesChannel::Online => "online",
        }
    }
}

/// An agent's purchase order (`mfg.actions.orders`, key = po_id), produced by the MCP server's
/// `create_order` after validation and materialized into `supply_chain.purchase_orders`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderAction {
    /// Unique per send ([`crate::actions::send_id`]); the order is `po_id`.
    pub event_id: String,
    /// Derived from the caller and their idempotency key: one key, one order.
    pub po_id: String,
    pub idempotency_key: String,
    pub part_id: String,
    pub warehouse_id: String,
    pub supplier_id: String,
    /// Units; at least the supplier's minimum order quantity.
    pub quantity: i64,
    /// standard | expedited | rush
    pub priority: String,
    pub unit_cost: f64,
    /// Priority surcharge.
    pub fee: f64,
    pub total_cost: f64,
    #[serde(deserialize_with = "event_time::required")]
    pub expected_at: DateTime<Utc>,
    /// The principal the order was placed for.
    pub on_behalf_of: String,
    /// Event time the order was placed (the pipeline's event-time clock).
    #[serde(deserialize_with = "event_time::required")]
    pub ts: DateTime<Utc>,
}

/// An agent's ticket action (`mfg.actions.tickets`, key = ticket_id): a new ticket, or a
/// status/resolution change; materialized into `support.tickets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TicketAction {
    pub event_id: String,
    pub ticket_id: String,
    pub idempotency_key: String,
    /// create | update
    pub action: String,
    /// For `create`: the ticket's fields.
    pub customer_id: Option<String>,
    pub subject: Option<String>,
    pub description: Option<String>,
    /// delivery | quality | billing | technical
    pub category: Option<String>,
    /// low | medium | high | urgent
    pub priority: Option<String>,
    /// open | in_progress | resolved | closed
    pub status: String,
    pub resolution: Option<String>,
    pub on_behalf_of: String,
    #[serde(deserialize_with = "event_time::required")]
    pub ts: DateTime<Utc>,
}

/// A document written, revised or withdrawn in an authoring system — the maintenance system's
/// incident reports, the CRM's sales proposals (`mfg.knowledge.documents`, key = doc_id);
/// materialized into `knowledge.incidents` and `knowledge.proposals` by
/// `pipelines/incident_documents` and `pipelines/proposal_documents` (one SQL file, filtered by
/// kind), where knowledge search
/// picks them up from the Change Data Feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DocumentEvent {
    pub event_id: String,
    pub doc_id: String,
    /// upsert (insert or replace the whole document) | delete
    pub op: String,
    /// incident | proposal
    pub kind: String,
    /// For `upsert`: the document. At most 512 characters.
    #[serde(default)]
    pub title: Option<String>,
    /// For `upsert`: the full text. At most [`MAX_DOCUMENT_BYTES`] bytes.
    #[serde(default)]
    pub body: Option<String>,
    /// Tenant columns: an incident needs its plant, a proposal its customer, region and
    /// account manager (who may read a document depends on them).
    #[serde(default)]
    pub plant_id: Option<String>,
    #[serde(default)]
    pub warehouse_id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub customer_id: Option<String>,
    #[serde(default)]
    pub account_manager: Option<String>,
    /// Entities the document concerns.
    #[serde(default)]
    pub machine_id: Option<String>,
    #[serde(default)]
    pub machine_type: Option<String>,
    #[serde(default)]
    pub sensor_type: Option<String>,
    #[serde(default)]
    pub part_id: Option<String>,
    #[serde(default)]
    pub supplier_id: Option<String>,
    /// When the document was first written (default: `ts`).
    #[serde(default, deserialize_with = "event_time::optional")]
    pub created_at: Option<DateTime<Utc>>,
    /// Event time of the change.
    #[serde(deserialize_with = "event_time::required")]
    pub ts: DateTime<Utc>,
}

/// The largest document body one event may carry: longer texts belong in several documents
/// (and would hold up the embedding of everything behind them).
/// `$body` with `$T` naming the event type of the stream `$kind` (an [`EventKind`]): one place
/// maps streams to types, for their schemas, checks and decoding.
#[macro_export]
macro_rules! with_event_type {
    ($kind:expr, $T:ident => $body:expr) => {{
        use $crate::model::events as ev;
        match $kind {
            ev::EventKind::Telemetry => {
                type $T = ev::TelemetryReading;
                $body
            }
            ev::EventKind::Shipment => {
                type $T = ev::ShipmentEvent;
                $body
            }
            ev::EventKind::Inventory => {
                type $T = ev::InventoryMovement;
                $body
            }
            ev::EventKind::Sales => {
                type $T = ev::SalesTransaction;
                $body
            }
            ev::EventKind::OrderAction => {
                type $T = ev::OrderAction;
                $body
            }
            ev::EventKind::TicketAction => {
                type $T = ev::TicketAction;
                $body
            }
            ev::EventKind::Document => {
                type $T = ev::DocumentEvent;
                $body
            }
        }
    }};
}

pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// The source streams, with everything the pipeline needs to route and check them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Telemetry,
    Shipment,
    Inventory,
    Sales,
    OrderAction,
    TicketAction,
    Document,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Telemetry,
        EventKind::Shipment,
        EventKind::Inventory,
        EventKind::Sales,
        EventKind::OrderAction,
        EventKind::TicketAction,
        EventKind::Document,
    ];

    /// The factory's streams (not the agents' actions).
    pub const FACTORY: [EventKind; 4] = [
        EventKind::Telemetry,
        EventKind::Shipment,
        EventKind::Inventory,
        EventKind::Sales,
    ];

    pub fn topic(self) -> &'static str {
        match self {
            EventKind::Telemetry => crate::broker::topics::TELEMETRY,
            EventKind::Shipment => crate::broker::topics::SHIPMENTS,
            EventKind::Inventory => crate::broker::topics::INVENTORY,
            EventKind::Sales => crate::broker::topics::SALES,
            EventKind::OrderAction => crate::broker::topics::ACTION_ORDERS,
            EventKind::TicketAction => crate::broker::topics::ACTION_TICKETS,
            EventKind::Document => crate::broker::topics::DOCUMENTS,
        }
    }

    pub fn from_topic(topic: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.topic() == topic)
    }

    /// The bronze table (or action log) this stream lands in: the table whose definition
    /// names this stream's topic as its source.
    pub fn bronze_table(self) -> &'static str {
        crate::model::tables::TableDef::fed_by(self.topic())
            .map(|t| t.name.as_str())
            .expect("every event stream feeds a table (model::tables tests check it)")
    }

    /// File stem under `schemas/events/`.
    pub fn schema_name(self) -> &'static str {
        match self {
            EventKind::Telemetry => "telemetry_reading",
            EventKind::Shipment => "shipment_event",
            EventKind::Inventory => "inventory_movement",
            EventKind::Sales => "sales_transaction",
            EventKind::OrderAction => "order_action",
            EventKind::TicketAction => "ticket_action",
            EventKind::Document => "document_event",
        }
    }

    /// The exact text of `schemas/events/<name>.schema.json`.
    pub fn schema_text(self) -> String {
        serde_json::to_string_pretty(&self.json_schema()).expect("schema serializes") + "\n"
    }

    pub fn json_schema(self) -> serde_json::Value {
        let schema = with_event_type!(self, T => schemars::schema_for!(T));
        serde_json::to_value(schema).expect("schemas serialize")
    }

    /// Parses and validates one raw record. `Err` carries the reason that goes to the
    /// dead-letter table.
    pub fn check(self, bytes: &[u8]) -> Result<(), String> {
        self.check_fields(bytes, false).map(|_| ())
    }

    /// [`EventKind::check`], also counting fields the event type does not have (they are
    /// ignored); with `strict`, such a field rejects the record instead.
    pub fn check_fields(self, bytes: &[u8], strict: bool) -> Result<usize, String> {
        with_event_type!(self, T => parse::<T>(bytes, strict).map(|(_, unknown)| unknown))
    }
}

/// The event type of a source stream: parsed from a record's JSON, checked, and written as the
/// event columns of the stream's bronze table.
pub trait Event: DeserializeOwned + BronzeColumns {
    /// What JSON's types cannot say: non-empty ids, finite values, sane times.
    fn validate(&self) -> Result<(), String>;
}

/// An event type's fields as the event columns of its bronze table (by `event_columns!`).
pub trait BronzeColumns: Sized {
    /// The event columns of `events`, by name, as the stream's bronze table types them.
    fn columns(events: &[Self]) -> Vec<(&'static str, ArrayRef)>;
}

/// Implements [`BronzeColumns`] from a field list: `str` (a `String` or a label enum's
/// `as_str`), `opt_str`, `long`, `double`, `ts`, `opt_ts`. A field left out, or typed unlike its
/// table column, fails the bronze batch (`decode` tests build one of every stream).
macro_rules! event_columns {
    ($ty:ty { $($field:ident: $kind:ident),* $(,)? }) => {
        impl BronzeColumns for $ty {
            fn columns(events: &[Self]) -> Vec<(&'static str, ArrayRef)> {
                vec![$((stringify!($field), event_columns!(@$kind events, $field))),*]
            }
        }
    };
    (@str $events:ident, $f:ident) => {
        Arc::new(StringArray::from_iter_values($events.iter().map(|e| e.$f.as_str()))) as ArrayRef
    };
    (@opt_str $events:ident, $f:ident) => {
        Arc::new(StringArray::from_iter($events.iter().map(|e| e.$f.as_deref()))) as ArrayRef
    };
    (@long $events:ident, $f:ident) => {
        Arc::new(Int64Array::from_iter_values($events.iter().map(|e| e.$f))) as ArrayRef
    };
    (@double $events:ident, $f:ident) => {
        Arc::new(Float64Array::from_iter_values($events.iter().map(|e| e.$f))) as ArrayRef
    };
    (@ts $events:ident, $f:ident) => {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                $events.iter().map(|e| e.$f.timestamp_micros()),
            )
            .with_timezone("UTC"),
        ) as ArrayRef
    };
    (@opt_ts $events:ident, $f:ident) => {
        Arc::new(
            TimestampMicrosecondArray::from_iter(
                $events.iter().map(|e| e.$f.map(|t| t.timestamp_micros())),
            )
            .with_timezone("UTC"),
        ) as ArrayRef
    };
}

event_columns!(TelemetryReading {
    event_id: str,
    device_id: str,
    machine_id: str,
    plant_id: str,
    sensor_type: str,
    value: double,
    unit: str,
    ts: ts,
});
event_columns!(ShipmentEvent {
    event_id: str,
    shipment_id: str,
    supplier_id: str,
    part_id: str,
    warehouse_id: str,
    quantity: long,
    status: str,
    carrier: str,
    eta: opt_ts,
    po_id: opt_str,
    ts: ts,
});
event_columns!(InventoryMovement {
    event_id: str,
    part_id: str,
    warehouse_id: str,
    movement_type: str,
    quantity: long,
    reference: opt_str,
    ts: ts,
});
event_columns!(SalesTransaction {
    event_id: str,
    transaction_id: str,
    customer_id: str,
    product_id: str,
    quantity: long,
    unit_price: double,
    amount: double,
    currency: str,
    channel: str,
    region: str,
    ts: ts,
});
event_columns!(OrderAction {
    event_id: str,
    po_id: str,
    idempotency_key: str,
    part_id: str,
    warehouse_id: str,
    supplier_id: str,
    quantity: long,
    priority: str,
    unit_cost: double,
    fee: double,
    total_cost: double,
    expected_at: ts,
    on_behalf_of: str,
    ts: ts,
});
event_columns!(TicketAction {
    event_id: str,
    ticket_id: str,
    idempotency_key: str,
    action: str,
    customer_id: opt_str,
    subject: opt_str,
    description: opt_str,
    category: opt_str,
    priority: opt_str,
    status: str,
    resolution: opt_str,
    on_behalf_of: str,
    ts: ts,
});
event_columns!(DocumentEvent {
    event_id: str,
    doc_id: str,
    op: str,
    kind: str,
    title: opt_str,
    body: opt_str,
    plant_id: opt_str,
    warehouse_id: opt_str,
    region: opt_str,
    customer_id: opt_str,
    account_manager: opt_str,
    machine_id: opt_str,
    machine_type: opt_str,
    sensor_type: opt_str,
    part_id: opt_str,
    supplier_id: opt_str,
    created_at: opt_ts,
    ts: ts,
});

/// Event times, parsed by chrono's RFC 3339 parser; a time only its relaxed general parser reads
/// (as before this one, the one `DateTime::from_str` uses) still parses. The general parser was a
/// fifth of decoding's time.
mod event_time {
    use chrono::{DateTime, Utc};
    use serde::Deserializer;
    use serde::de::{self, Visitor};

    struct Rfc3339;

    impl Visitor<'_> for Rfc3339 {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an RFC 3339 date-time")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.to_utc())
                .or_else(|_| s.parse::<DateTime<Utc>>())
                .map_err(E::custom)
        }
    }

    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        d.deserialize_str(Rfc3339)
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        struct Optional;
        impl<'de> Visitor<'de> for Optional {
            type Value = Option<DateTime<Utc>>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an RFC 3339 date-time or null")
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                required(d).map(Some)
            }
        }
        d.deserialize_option(Optional)
    }
}

/// Parses and validates one raw record as `T`, counting the fields `T` does not have (ignored,
/// or with `strict` the reason the record is rejected). `Err` carries the reason that goes to the
/// dead-letter table.
pub fn parse<T: Event>(bytes: &[u8], strict: bool) -> Result<(T, usize), String> {
    let mut unknown = unknown_keys::Tally::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = T::deserialize(unknown_keys::Counting::new(&mut de, &mut unknown))
        .map_err(|e| format!("invalid json: {e}"))?;
    de.end().map_err(|e| format!("invalid json: {e}"))?;
    if let (Some(field), true) = (&unknown.first, strict) {
        return Err(format!(
            "unknown field {field:?} (pipeline.strict_fields is on)"
        ));
    }
    value.validate()?;
    Ok((value, unknown.count))
}

/// Counting the keys of an event's JSON object that its type has no field for, as the derived
/// `Deserialize` meets them. An event type is a flat struct, so its keys are the only place an
/// unknown field can be: the field names are the ones the derive hands to `deserialize_struct`,
/// and each key is compared with them as it passes, borrowed. (`serde_ignored`, used before,
/// tracks a path through any nesting and copies every key into a `String` to do it: a tenth of
/// decoding's time.)
mod unknown_keys {
    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    /// How many keys matched no field, and the first of them.
    #[derive(Debug, Default)]
    pub struct Tally {
        pub count: usize,
        pub first: Option<String>,
    }

    impl Tally {
        /// Checks the key at position `at` of its object. Producers mostly write the fields in
        /// the type's order, so the field at the same position is compared first.
        fn see(&mut self, fields: &[&str], at: usize, key: &str) {
            if fields.get(at) != Some(&key) && !fields.contains(&key) {
                self.count += 1;
                self.first.get_or_insert_with(|| key.to_owned());
            }
        }
    }

    /// A deserializer that passes everything through to `D`, tallying a struct's unknown keys.
    pub struct Counting<'t, D> {
        inner: D,
        tally: &'t mut Tally,
    }

    impl<'t, D> Counting<'t, D> {
        pub fn new(inner: D, tally: &'t mut Tally) -> Self {
            Counting { inner, tally }
        }
    }

    impl<'de, D: Deserializer<'de>> Deserializer<'de> for Counting<'_, D> {
        type Error = D::Error;

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            let tally = self.tally;
            self.inner.deserialize_struct(
                name,
                fields,
                Struct {
                    visitor,
                    fields,
                    tally,
                },
            )
        }

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.deserialize_any(visitor)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    struct Struct<'t, V> {
        visitor: V,
        fields: &'static [&'static str],
        tally: &'t mut Tally,
    }

    impl<'de, V: Visitor<'de>> Visitor<'de> for Struct<'_, V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            self.visitor.expecting(f)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
            self.visitor.visit_map(Keys {
                map,
                fields: self.fields,
                tally: self.tally,
                at: 0,
            })
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
            self.visitor.visit_seq(seq)
        }
    }

    struct Keys<'t, A> {
        map: A,
        fields: &'static [&'static str],
        tally: &'t mut Tally,
        /// Keys read so far.
        at: usize,
    }

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for Keys<'_, A> {
        type Error = A::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            let at = self.at;
            self.at += 1;
            self.map.next_key_seed(Key {
                inner: seed,
                fields: self.fields,
                tally: self.tally,
                at,
            })
        }

        fn next_value_seed<S: DeserializeSeed<'de>>(
            &mut self,
            seed: S,
        ) -> Result<S::Value, A::Error> {
            self.map.next_value_seed(seed)
        }

        fn size_hint(&self) -> Option<usize> {
            self.map.size_hint()
        }
    }

    /// A key on its way to the derive's field identifier: seed, deserializer and visitor in turn
    /// pass through (`inner` is each in turn), and the visitor sees the key's text.
    struct Key<'a, X> {
        inner: X,
        fields: &'static [&'static str],
        tally: &'a mut Tally,
        at: usize,
    }

    impl<'a, X> Key<'a, X> {
        /// What this step wraps, and the key's context around `next`, the step it hands to.
        fn pass_on<Y>(self, next: Y) -> (X, Key<'a, Y>) {
            let key = Key {
                inner: next,
                fields: self.fields,
                tally: self.tally,
                at: self.at,
            };
            (self.inner, key)
        }

        fn see(&mut self, key: &str) {
            self.tally.see(self.fields, self.at, key);
        }
    }

    impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Key<'_, S> {
        type Value = S::Value;

        fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
            let (seed, key) = self.pass_on(de);
            seed.deserialize(key)
        }
    }

    impl<'de, D: Deserializer<'de>> Deserializer<'de> for Key<'_, D> {
        type Error = D::Error;

        fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let (de, key) = self.pass_on(visitor);
            de.deserialize_identifier(key)
        }

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let (de, key) = self.pass_on(visitor);
            de.deserialize_any(key)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
            ignored_any
        }
    }

    impl<'de, V: Visitor<'de>> Visitor<'de> for Key<'_, V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            self.inner.expecting(f)
        }

        fn visit_str<E: de::Error>(mut self, key: &str) -> Result<V::Value, E> {
            self.see(key);
            self.inner.visit_str(key)
        }

        fn visit_borrowed_str<E: de::Error>(mut self, key: &'de str) -> Result<V::Value, E> {
            self.see(key);
            self.inner.visit_borrowed_str(key)
        }

        fn visit_string<E: de::Error>(mut self, key: String) -> Result<V::Value, E> {
            self.see(&key);
            self.inner.visit_string(key)
        }

        fn visit_bytes<E: de::Error>(mut self, key: &[u8]) -> Result<V::Value, E> {
            self.see(&String::from_utf8_lossy(key));
            self.inner.visit_bytes(key)
        }

        fn visit_u64<E: de::Error>(self, index: u64) -> Result<V::Value, E> {
            self.inner.visit_u64(index)
        }
    }
}

fn non_empty(field: &str, v: &str) -> Result<(), String> {
    if v.trim().is_empty() {
        Err(format!("{field} is empty"))
    } else {
        Ok(())
    }
}

/// Event times outside this window are rejected: they are clock faults, and they would create
/// absurd partitions.
fn sane_time(ts: &DateTime<Utc>) -> Result<(), String> {
    let year = chrono::Datelike::year(ts);
    if (2000..=2100).contains(&year) {
        Ok(())
    } else {
        Err(format!("ts {ts} outside 2000..2100"))
    }
}

impl Event for TelemetryReading {
    fn validate(&self) -> Result<(), String> {
        non_empty("event_id", &self.event_id)?;
        non_empty("device_id", &self.device_id)?;
        non_empty("machine_id", &self.machine_id)?;
        non_empty("plant_id", &self.plant_id)?;
        if !self.value.is_finite() {
            return Err("value is not finite".into());
        }
        sane_time(&self.ts)
    }
}

/// The most units one event may carry. Far above any real movement, and low enough that
/// summing quantities cannot overflow `i64`: a position would need 9.2 billion movements of
/// this size (and `+` in the inventory MERGE is checked, an error instead of a sign flip).
pub const MAX_QUANTITY: i64 = 1_000_000_000;

/// `quantity` as a positive count (or, with `signed`, any non-zero count) within
/// [`MAX_QUANTITY`].
fn quantity(q: i64, signed: bool) -> Result<(), String> {
    if q.unsigned_abs() > MAX_QUANTITY as u64 {
        return Err(format!(
            "quantity {q} is beyond ±{MAX_QUANTITY}, the most one event may carry"
        ));
    }
    if signed && q == 0 {
        return Err("adjustment quantity is zero".into());
    }
    if !signed && q <= 0 {
        return Err(format!("quantity {q} must be positive"));
    }
    Ok(())
}

impl Event for ShipmentEvent {
    fn validate(&self) -> Result<(), String> {
        non_empty("event_id", &self.event_id)?;
        non_empty("shipment_id", &self.shipment_id)?;
        non_empty("part_id", &self.part_id)?;
        non_empty("warehouse_id", &self.warehouse_id)?;
        quantity(self.quantity, false)?;
        sane_time(&self.ts)
    }
}

impl Event for InventoryMovement {
    fn validate(&self) -> Result<(), String> {
        non_empty("event_id", &self.event_id)?;
        non_empty("part_id", &self.part_id)?;
        non_empty("warehouse_id", &self.warehouse_id)?;
        quantity(
            self.quantity,
            self.movement_type == MovementType::Adjustment,
        )?;
        sane_time(&self.ts)
    }
}

impl Event for SalesTransaction {
    fn validate(&self) -> Result<(), String> {
        non_empty("event_id", &self.event_id)?;
        non_empty("transaction_id", &self.transaction_id)?;
        non_empty("customer_id", &self.customer_id)?;
        non_empty("product_id", &self.product_id)?;
        quantity(self.quantity, false)?;
        if !(self.unit_price.is_finite() && self.unit_price >= 0.0) {
            return Err("unit_price must be a non-negative number".into());
        }
        if !self.amount.is_finite()
            || (self.amount - self.quantity as f64 * self.unit_price).abs() > 0.01
        {
            return Err(format!("amount {} != quantity × unit_price", self.amount));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "currency {:?} is not an ISO 4217 code",
                self.currency
            ));
        }
        sane_time(&self.ts)
    }
}

impl Event for OrderAction {
    fn validate(&self) -> Result<(), String> {
        for (f, v) in [
            ("event_id", &self.event_id),
            ("po_id", &self.po_id),
            ("idempotency_key", &self.idempotency_key),
            ("part_id", &self.part_id),
            ("warehouse_id", &self.warehouse_id),
            ("supplier_id", &self.supplier_id),
            ("on_behalf_of", &self.on_behalf_of),
        ] {
            non_empty(f, v)?;
        }
        quantity(self.quantity, false)?;
        if !["standard", "expedited", "rush"].contains(&self.priority.as_str()) {
            return Err(format!("unknown priority {:?}", self.priority));
        }
        if ![self.unit_cost, self.fee, self.total_cost]
            .iter()
            .all(|c| c.is_finite() && *c >= 0.0)
        {
            return Err("costs must be non-negative numbers".into());
        }
        sane_time(&self.expected_at)?;
        sane_time(&self.ts)
    }
}

impl Event for TicketAction {
    fn validate(&self) -> Result<(), String> {
        for (f, v) in [
            ("event_id", &self.event_id),
            ("ticket_id", &self.ticket_id),
            ("idempotency_key", &self.idempotency_key),
            ("on_behalf_of", &self.on_behalf_of),
        ] {
            non_empty(f, v)?;
        }
        if !["open", "in_progress", "resolved", "closed"].contains(&self.status.as_str()) {
            return Err(format!("unknown status {:?}", self.status));
        }
        match self.action.as_str() {
            "create" => {
                for (f, v) in [
                    ("customer_id", &self.customer_id),
                    ("subject", &self.subject),
                    ("description", &self.description),
                    ("category", &self.category),
                    ("priority", &self.priority),
                ] {
                    non_empty(f, v.as_deref().unwrap_or(""))?;
                }
            }
            "update" => {}
            other => return Err(format!("unknown ticket action {other:?}")),
        }
        sane_time(&self.ts)
    }
}

impl Event for DocumentEvent {
    fn validate(&self) -> Result<(), String> {
        non_empty("event_id", &self.event_id)?;
        non_empty("doc_id", &self.doc_id)?;
        if self.doc_id.len() > 128 || self.doc_id.chars().any(char::is_control) {
            return Err("doc_id must be at most 128 printable characters".into());
        }
        // Which tenant column scopes a document of this kind (row filters read it; a NULL there
        // would make the document visible to everyone).
        let tenant: &[(&str, &Option<String>)] = match self.kind.as_str() {
            "incident" => &[("plant_id", &self.plant_id)],
            "proposal" => &[
                ("customer_id", &self.customer_id),
                ("region", &self.region),
                ("account_manager", &self.account_manager),
            ],
            other => {
                return Err(format!(
                    "unknown document kind {other:?} (incident | proposal)"
                ));
            }
        };
        match self.op.as_str() {
            "upsert" => {
                non_empty("title", self.title.as_deref().unwrap_or(""))?;
                non_empty("body", self.body.as_deref().unwrap_or(""))?;
                for (f, v) in tenant {
                    non_empty(f, v.as_deref().unwrap_or(""))?;
                }
                if self.title.as_ref().is_some_and(|t| t.chars().count() > 512) {
                    return Err("title is longer than 512 characters".into());
                }
                let body = self.body.as_ref().map_or(0, String::len);
                if body > MAX_DOCUMENT_BYTES {
                    return Err(format!(
                        "body is {body} bytes, more than the {MAX_DOCUMENT_BYTES} a document may have"
                    ));
                }
            }
            "delete" => {}
            other => return Err(format!("unknown document op {other:?} (upsert | delete)")),
        }
        if let Some(c) = &self.created_at {
            sane_time(c)?;
        }
        sane_time(&self.ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_the_fault() {
        let k = EventKind::Telemetry;
        assert!(
            k.check(b"{not json")
                .unwrap_err()
                .starts_with("invalid json")
        );
        let ok = br#"{"event_id":"e1","device_id":"d","machine_id":"m","plant_id":"p","sensor_type":"vibration","value":1.5,"unit":"mm/s","ts":"2026-11-01T00:00:00Z"}"#;
        assert_eq!(k.check(ok), Ok(()));
        let empty = br#"{"event_id":"","device_id":"d","machine_id":"m","plant_id":"p","sensor_type":"vibration","value":1.5,"unit":"mm/s","ts":"2026-11-01T00:00:00Z"}"#;
        assert_eq!(k.check(empty), Err("event_id is empty".into()));
        let bad_enum = br#"{"event_id":"e","device_id":"d","machine_id":"m","plant_id":"p","sensor_type":"smell","value":1.5,"unit":"mm/s","ts":"2026-11-01T00:00:00Z"}"#;
        assert!(k.check(bad_enum).unwrap_err().contains("unknown variant"));
        let old = br#"{"event_id":"e","device_id":"d","machine_id":"m","plant_id":"p","sensor_type":"power","value":1.5,"unit":"kW","ts":"1970-01-01T00:00:00Z"}"#;
        assert!(k.check(old).unwrap_err().contains("outside"));
    }

    /// Event times: RFC 3339 at any offset (stored in UTC), the relaxed forms chrono's general
    /// parser accepted before the fast one, and a clear reason for anything else.
    #[test]
    fn event_times_parse_as_before_and_bad_ones_say_so() {
        let at = |ts: &str| {
            let json = format!(
                r#"{{"event_id":"e","part_id":"P","warehouse_id":"W","movement_type":"receipt","quantity":1,"ts":"{ts}"}}"#
            );
            parse::<InventoryMovement>(json.as_bytes(), false).map(|(m, _)| m.ts.to_rfc3339())
        };
        let utc = "2026-11-01T10:00:00+00:00";
        assert_eq!(at("2026-11-01T10:00:00Z").unwrap(), utc);
        assert_eq!(at("2026-11-01T12:00:00+02:00").unwrap(), utc);
        assert_eq!(at("2026-11-01 10:00:00 +00:00").unwrap(), utc);
        assert_eq!(
            at("2026-11-01 10:00:00 +00:00").unwrap(),
            "2026-11-01 10:00:00 +00:00"
                .parse::<DateTime<Utc>>()
                .unwrap()
                .to_rfc3339()
        );
        for bad in ["2026-11-01T10:00:00", "yesterday", "2026-13-01T10:00:00Z"] {
            assert!(at(bad).unwrap_err().starts_with("invalid json"), "{bad}");
        }
        let null_eta = br#"{"event_id":"e","shipment_id":"s","supplier_id":"x","part_id":"p","warehouse_id":"w","quantity":1,"status":"created","carrier":"c","eta":null,"ts":"2026-11-01T00:00:00Z"}"#;
        assert_eq!(parse::<ShipmentEvent>(null_eta, false).unwrap().0.eta, None);
    }

    /// The labels the bronze columns hold are the names on the wire.
    #[test]
    fn enum_labels_are_their_serde_names() {
        fn wire<T: Serialize>(v: T) -> String {
            serde_json::to_value(v)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        }
        use MovementType::*;
        for m in [Receipt, Consumption, Adjustment, TransferIn, TransferOut] {
            assert_eq!(m.as_str(), wire(m));
        }
        use ShipmentStatus::*;
        for s in [Created, InTransit, Delayed, Delivered, Cancelled] {
            assert_eq!(s.as_str(), wire(s));
        }
        for c in [
            SalesChannel::Direct,
            SalesChannel::Distributor,
            SalesChannel::Online,
        ] {
            assert_eq!(c.as_str(), wire(c));
        }
        for t in SensorType::ALL {
            assert_eq!(t.as_str(), wire(t));
        }
    }

    #[test]
    fn sales_amount_must_match() {
        let bad = br#"{"event_id":"e","transaction_id":"t","customer_id":"c","product_id":"p","quantity":2,"unit_price":10.0,"amount":25.0,"currency":"EUR","channel":"online","region":"EMEA","ts":"2026-11-01T00:00:00Z"}"#;
        assert!(EventKind::Sales.check(bad).unwrap_err().contains("amount"));
    }

    /// A quantity that could overflow a sum is refused (so dead-lettered), at either sign;
    /// the largest allowed one passes.
    #[test]
    fn quantities_are_bounded() {
        let movement = |q: i64, kind: &str| {
            format!(
                r#"{{"event_id":"e","part_id":"P","warehouse_id":"W","movement_type":"{kind}","quantity":{q},"reference":"r","ts":"2026-11-01T00:00:00Z"}}"#
            )
        };
        let check = |q: i64, kind: &str| EventKind::Inventory.check(movement(q, kind).as_bytes());
        assert!(check(MAX_QUANTITY, "receipt").is_ok());
        assert!(check(-MAX_QUANTITY, "adjustment").is_ok());
        for (q, kind) in [
            (MAX_QUANTITY + 1, "receipt"),
            (i64::MAX, "consumption"),
            (i64::MIN, "adjustment"),
            (-(MAX_QUANTITY + 1), "adjustment"),
        ] {
            let e = check(q, kind).unwrap_err();
            assert!(e.contains("beyond"), "{q}: {e}");
        }
    }

    /// Fields the event type lacks are counted and ignored, or, strict, reject the record.
    #[test]
    fn unknown_fields_are_counted_or_refused() {
        let movement = br#"{"event_id":"e","part_id":"P","warehouse_id":"W","movement_type":"receipt","quantity":3,"reference":"r","ts":"2026-11-01T00:00:00Z","colour":"red","size":2}"#;
        assert_eq!(EventKind::Inventory.check_fields(movement, false), Ok(2));
        let e = EventKind::Inventory
            .check_fields(movement, true)
            .unwrap_err();
        assert!(e.contains("unknown field \"colour\""), "{e}");
        assert!(EventKind::Inventory.check(movement).is_ok());
        // An unknown key counts once, whatever its value holds; an escaped key is read as its
        // text (serde_json hands it over as an owned string, not borrowed); known keys never
        // count, on any stream.
        let reading = br#"{"event_id":"e","device_id":"D","machine_id":"M","plant_id":"P","sensor_type":"power","value":1.5,"unit":"kW","ts":"2026-11-01T00:00:00Z","meta":{"a":{"b":[1,{"c":2}]},"d":3},"col\u006fur":"red"}"#;
        assert_eq!(EventKind::Telemetry.check_fields(reading, false), Ok(2));
        let e = EventKind::Telemetry
            .check_fields(reading, true)
            .unwrap_err();
        assert!(e.contains("unknown field \"meta\""), "{e}");
        let colour_only = br#"{"event_id":"e","device_id":"D","machine_id":"M","plant_id":"P","sensor_type":"power","value":1.5,"unit":"kW","ts":"2026-11-01T00:00:00Z","col\u006fur":"red"}"#;
        let e = EventKind::Telemetry
            .check_fields(colour_only, true)
            .unwrap_err();
        assert!(e.contains("unknown field \"colour\""), "{e}");
        let mut g = crate::sim::stream::Generator::new(
            &crate::config::Config::defaults().simulate,
            "fields",
            crate::config::Config::defaults().simulate.start,
            1000,
        );
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100_000 {
            if seen.len() == 4 {
                break;
            }
            let e = g.next_event();
            if e.malformed {
                continue;
            }
            let kind = EventKind::from_topic(e.topic).expect("a source topic");
            assert_eq!(kind.check_fields(&e.payload, true), Ok(0), "{kind:?}");
            seen.insert(kind);
        }
        assert_eq!(seen.len(), 4, "the simulator's streams: {seen:?}");
    }

    #[test]
    fn document_events_need_their_tenant_columns_and_bounded_text() {
        let doc = |extra: &str| {
            format!(
                r#"{{"event_id":"e1","doc_id":"INC-1","kind":"incident","ts":"2026-01-01T00:00:00Z"{extra}}}"#
            )
        };
        let check = |extra: &str| EventKind::Document.check(doc(extra).as_bytes());
        let full = r#","op":"upsert","title":"Pump leak","body":"It leaked.","plant_id":"PLANT-1""#;
        assert_eq!(check(full), Ok(()));
        // An incident without its plant would be visible to every plant's readers.
        let e = check(r#","op":"upsert","title":"Pump leak","body":"It leaked.""#).unwrap_err();
        assert!(e.contains("plant_id"), "{e}");
        let e = check(r#","op":"upsert","body":"x","plant_id":"PLANT-1""#).unwrap_err();
        assert!(e.contains("title"), "{e}");
        // A delete needs only the id.
        assert_eq!(check(r#","op":"delete""#), Ok(()));
        assert!(check(r#","op":"purge""#).unwrap_err().contains("purge"));
        let big = format!(
            r#","op":"upsert","title":"t","body":"{}","plant_id":"PLANT-1""#,
            "x".repeat(MAX_DOCUMENT_BYTES + 1)
        );
        assert!(check(&big).unwrap_err().contains("bytes"));
        let proposal = r#"{"event_id":"e1","doc_id":"P-1","op":"upsert","kind":"proposal","title":"t","body":"b","customer_id":"C-0001","region":"EMEA","ts":"2026-01-01T00:00:00Z"}"#;
        let e = EventKind::Document.check(proposal.as_bytes()).unwrap_err();
        assert!(e.contains("account_manager"), "{e}");
        let sop = doc(r#","op":"delete""#).replace("incident", "sop");
        assert!(
            EventKind::Document
                .check(sop.as_bytes())
                .unwrap_err()
                .contains("sop")
        );
    }
}
