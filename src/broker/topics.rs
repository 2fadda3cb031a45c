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

/// Topics whose live traffic is a trickle beside telemetry's. Under `up --rate 20000`: about 50
/// inventory movements a second against 20,000 readings, and fewer shipments, actions, alerts
/// and documents. Telemetry and sales carry the seed history as well.
pub const LOW_VOLUME: [&str; 6] = [
    SHIPMENTS,
    INVENTORY,
    ACTION_ORDERS,
    ACTION_TICKETS,
    ALERTS,
    DOCUMENTS,
];

/// The partitions of each topic on a long-running embedded broker (`up`, `bench mcp`, `bench
/// freshness`): `partitions` for telemetry and sales, one for the [`LOW_VOLUME`] topics.
///
/// librdkafka's mock cluster keeps the last 5 MB of every partition in memory, whatever the
/// topic's traffic. Six partitions of a topic with a trickle of traffic fill towards 30 MB over
/// the first half hour and more, so the process grew for as long as the quiet topics
/// did; at one partition each stops at 5 MB within minutes. One consumer reads them all under
/// `up`, so nothing is lost in parallelism. Short bursts that must all stay in the log (`bench
/// ingest`'s preload, the tests) keep `partitions` everywhere.
pub fn embedded_layout(partitions: i32) -> Vec<(&'static str, i32)> {
    let of = |t: &str| {
        if LOW_VOLUME.contains(&t) {
            1
        } else {
            partitions
        }
    };
    ALL.iter().map(|t| (*t, of(t))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_layout_gives_every_topic_once_and_the_quiet_ones_one_partition() {
        let layout = embedded_layout(6);
        let names: Vec<&str> = layout.iter().map(|(t, _)| *t).collect();
        assert_eq!(names, ALL.to_vec());
        for (topic, partitions) in layout {
            let quiet = LOW_VOLUME.contains(&topic);
            assert_eq!(partitions, if quiet { 1 } else { 6 }, "{topic}");
        }
        assert!(!LOW_VOLUME.contains(&TELEMETRY) && !LOW_VOLUME.contains(&SALES));
    }
}
