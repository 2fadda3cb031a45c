//! Topic names. Sources carry factory events and documents; `actions` carry agent actions back
//! into the pipeline; `alerts` carries signals out.

pub const TELEMETRY: &str = "mfg.iot.telemetry";
pub const SHIPMENTS: &str = "mfg.scm.shipments";
pub const INVENTORY: &str = "mfg.scm.inventory";
pub const SALES: &str = "mfg.sales.transactions";
pub const ACTION_ORDERS: &str = "mfg.actions.orders";
pub const ACTION_TICKETS: &str = "mfg.actions.tickets";
pub const ALERTS: &str = "mfg.alerts";
/// Documents from the authoring systems (incident reports, sales proposals).
pub const DOCUMENTS: &str = "mfg.knowledge.documents";

/// Topics the bronze pipeline consumes.
pub const SOURCES: [&str; 4] = [TELEMETRY, SHIPMENTS, INVENTORY, SALES];
/// Every topic millstream uses.
pub const ALL: [&str; 8] = [
    TELEMETRY,
    SHIPMENTS,
    INVENTORY,
    SALES,
    ACTION_ORDERS,
    ACTION_TICKETS,
    ALERTS,
    DOCUMENTS,
];
