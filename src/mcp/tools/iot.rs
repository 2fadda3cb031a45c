//! IoT tools: raw readings, anomalies, maintenance alerts, per-sensor statistics. Time windows
//! end at the telemetry's event-time watermark, so they mean the same under the simulator.

use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{ErrorData, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Anomaly and maintenance severities have the levels of signal risks.
pub use super::Risk as Severity;
use crate::mcp::args::{invalid, limit, opt_id, opt_text, text, timestamp};
use crate::mcp::catalog::{AsOf, rfc3339};
use crate::mcp::query::Query;
use crate::mcp::server::Millstream;
pub use crate::model::events::SensorType;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorDataArgs {
    /// One device (e.g. "DEV-0007"); or give machine_id.
    pub device_id: Option<String>,
    /// Every device of one machine.
    pub machine_id: Option<String>,
    pub sensor_type: Option<SensorType>,
    /// Trailing window in minutes before the watermark (default 60, at most 10080).
    pub minutes: Option<u32>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Reading {
    pub device_id: String,
    pub machine_id: String,
    pub plant_id: String,
    pub sensor_type: String,
    pub value: f64,
    pub unit: String,
    pub ts: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ReadingsAnswer {
    pub window_start: String,
    pub window_end: String,
    /// Newest first.
    pub readings: Vec<Reading>,
    pub as_of: AsOf,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnomalyArgs {
    pub plant_id: Option<String>,
    pub machine_id: Option<String>,
    pub device_id: Option<String>,
    pub sensor_type: Option<SensorType>,
    /// Lowest severity to list (default all).
    pub min_severity: Option<Severity>,
    /// Trailing window in hours before the watermark (default 24, at most 720).
    pub hours: Option<u32>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Anomaly {
    pub event_id: String,
    pub device_id: String,
    pub machine_id: String,
    pub plant_id: String,
    pub sensor_type: String,
    pub ts: String,
    pub value: f64,
    pub expected: f64,
    /// z_score | rate_of_change | stuck | out_of_range | drift
    pub rule: String,
    pub score: f64,
    pub severity: Severity,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct AnomaliesAnswer {
    pub window_start: String,
    pub window_end: String,
    /// Newest first.
    pub anomalies: Vec<Anomaly>,
    pub as_of: AsOf,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceArgs {
    pub plant_id: Option<String>,
    pub machine_id: Option<String>,
    pub min_severity: Option<Severity>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct MaintenanceAlert {
    pub alert_id: String,
    pub machine_id: String,
    pub plant_id: String,
    pub window_start: String,
    pub window_end: String,
    pub anomalies: i64,
    pub active_windows: i64,
    pub sensors: String,
    pub severity: Severity,
    pub first_ts: String,
    pub last_ts: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct MaintenanceAnswer {
    /// Newest hour first.
    pub alerts: Vec<MaintenanceAlert>,
    pub as_of: AsOf,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorStatsArgs {
    pub device_id: Option<String>,
    pub machine_id: Option<String>,
    pub plant_id: Option<String>,
    pub sensor_type: Option<SensorType>,
    /// Trailing window in minutes before the watermark (default 60, at most 10080).
    pub minutes: Option<u32>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SensorStats {
    pub device_id: String,
    pub machine_id: String,
    pub plant_id: String,
    pub sensor_type: String,
    pub readings: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub stddev: Option<f64>,
    pub last_ts: String,
    pub anomalies: i64,
    /// The detector's learned baseline (EWMA mean) for the sensor.
    pub baseline_mean: Option<f64>,
    /// Whether the detector currently sees the sensor drifting.
    pub drifting: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SensorStatsAnswer {
    pub window_start: String,
    pub window_end: String,
    pub sensors: Vec<SensorStats>,
    pub as_of: AsOf,
}

fn window(field: &str, given: Option<u32>, default: u32, max: u32) -> Result<i64, ErrorData> {
    let v = given.unwrap_or(default);
    if !(1..=max).contains(&v) {
        return Err(invalid(field, format!("{field} {v} is outside 1..={max}")));
    }
    Ok(i64::from(v))
}

#[tool_router(router = iot_router, vis = "pub(crate)")]
impl Millstream {
    #[tool(
        description = "Raw sensor readings of one device or one machine over a trailing window \
                       (minutes before the telemetry watermark), newest first.",
        annotations(read_only_hint = true)
    )]
    pub async fn query_sensor_data(
        &self,
        Parameters(a): Parameters<SensorDataArgs>,
    ) -> Result<Json<ReadingsAnswer>, ErrorData> {
        opt_id("device_id", &a.device_id)?;
        opt_id("machine_id", &a.machine_id)?;
        if a.device_id.is_none() && a.machine_id.is_none() {
            return Err(invalid("device_id", "give device_id or machine_id"));
        }
        let minutes = window("minutes", a.minutes, 60, 7 * 24 * 60)?;
        let n = limit(a.limit)?;
        let end = self.window_end("iot.telemetry");
        let start = end - chrono::Duration::minutes(minutes);
        let q = Query::new(
            "SELECT device_id, machine_id, plant_id, sensor_type, value, unit, ts FROM iot.telemetry",
        )
        .filter("ts > ?", Some(timestamp(start)))
        .filter("ts <= ?", Some(timestamp(end)))
        .filter("device_id = ?", opt_text(&a.device_id))
        .filter("machine_id = ?", opt_text(&a.machine_id))
        .filter(
            "sensor_type = ?",
            a.sensor_type.map(|s| text(s.as_str())),
        )
        .finish(&format!("ORDER BY ts DESC, device_id LIMIT {n}"));
        let (readings, as_of): (Vec<Reading>, _) = self.fetch(q).await?;
        if readings.is_empty() {
            if let Some(d) = &a.device_id {
                self.must_exist(
                    "device_id",
                    d,
                    "SELECT 1 FROM iot.sensor_state WHERE device_id = $1 LIMIT 1",
                )
                .await?;
            }
            if let Some(m) = &a.machine_id {
                self.must_exist(
                    "machine_id",
                    m,
                    "SELECT 1 FROM iot.sensor_state WHERE machine_id = $1 LIMIT 1",
                )
                .await?;
            }
        }
        Ok(Json(ReadingsAnswer {
            window_start: rfc3339(start),
            window_end: rfc3339(end),
            readings,
            as_of,
        }))
    }

    #[tool(
        description = "Anomalous sensor readings (z-score, rate of change, stuck, out of range, \
                       drift) over a trailing window of hours, newest first; filter by plant, \
                       machine, device, sensor type and minimum severity.",
        annotations(read_only_hint = true)
    )]
    pub async fn list_anomalies(
        &self,
        Parameters(a): Parameters<AnomalyArgs>,
    ) -> Result<Json<AnomaliesAnswer>, ErrorData> {
        opt_id("plant_id", &a.plant_id)?;
        opt_id("machine_id", &a.machine_id)?;
        opt_id("device_id", &a.device_id)?;
        let hours = window("hours", a.hours, 24, 720)?;
        let n = limit(a.limit)?;
        let end = self.window_end("iot.telemetry");
        let start = end - chrono::Duration::hours(hours);
        let q = Query::new(
            "SELECT event_id, device_id, machine_id, plant_id, sensor_type, ts, value, expected, \
             rule, score, severity FROM iot.anomalies",
        )
        .filter("ts > ?", Some(timestamp(start)))
        .filter("ts <= ?", Some(timestamp(end)))
        .filter("plant_id = ?", opt_text(&a.plant_id))
        .filter("machine_id = ?", opt_text(&a.machine_id))
        .filter("device_id = ?", opt_text(&a.device_id))
        .filter("sensor_type = ?", a.sensor_type.map(|s| text(s.as_str())))
        .any_of(
            "severity",
            &a.min_severity.map(Severity::at_least).unwrap_or_default(),
        )
        .finish(&format!("ORDER BY ts DESC, event_id LIMIT {n}"));
        let (anomalies, as_of) = self.fetch(q).await?;
        Ok(Json(AnomaliesAnswer {
            window_start: rfc3339(start),
            window_end: rfc3339(end),
            anomalies,
            as_of,
        }))
    }

    #[tool(
        description = "Machines whose anomalies persist (several 10-minute windows of an hour), \
                       newest hour first: a machine to inspect. Filter by plant, machine, severity.",
        annotations(read_only_hint = true)
    )]
    pub async fn maintenance_alerts(
        &self,
        Parameters(a): Parameters<MaintenanceArgs>,
    ) -> Result<Json<MaintenanceAnswer>, ErrorData> {
        opt_id("plant_id", &a.plant_id)?;
        opt_id("machine_id", &a.machine_id)?;
        let n = limit(a.limit)?;
        let q = Query::new(
            "SELECT alert_id, machine_id, plant_id, window_start, window_end, anomalies, \
             active_windows, sensors, severity, first_ts, last_ts FROM iot.maintenance_alerts",
        )
        .filter("plant_id = ?", opt_text(&a.plant_id))
        .filter("machine_id = ?", opt_text(&a.machine_id))
        .any_of(
            "severity",
            &a.min_severity.map(Severity::at_least).unwrap_or_default(),
        )
        .finish(&format!("ORDER BY window_start DESC, machine_id LIMIT {n}"));
        let (alerts, as_of) = self.fetch(q).await?;
        Ok(Json(MaintenanceAnswer { alerts, as_of }))
    }

    #[tool(
        description = "Per-sensor statistics over a trailing window (readings, min, max, mean, \
                       standard deviation, anomalies) with the detector's learned baseline and \
                       drift flag. Filter by device, machine, plant, sensor type.",
        annotations(read_only_hint = true)
    )]
    pub async fn sensor_stats(
        &self,
        Parameters(a): Parameters<SensorStatsArgs>,
    ) -> Result<Json<SensorStatsAnswer>, ErrorData> {
        opt_id("device_id", &a.device_id)?;
        opt_id("machine_id", &a.machine_id)?;
        opt_id("plant_id", &a.plant_id)?;
        let minutes = window("minutes", a.minutes, 60, 7 * 24 * 60)?;
        let n = limit(a.limit)?;
        let end = self.window_end("iot.telemetry");
        let start = end - chrono::Duration::minutes(minutes);
        let q = Query::new(
            "WITH w AS (SELECT * FROM iot.telemetry WHERE ts > $1 AND ts <= $2), \
             stats AS (SELECT device_id, machine_id, plant_id, sensor_type, count(*) AS readings, \
               min(value) AS min, max(value) AS max, avg(value) AS mean, stddev(value) AS stddev, \
               max(ts) AS last_ts FROM w GROUP BY device_id, machine_id, plant_id, sensor_type), \
             anomalies AS (SELECT device_id, count(*) AS anomalies FROM iot.anomalies \
               WHERE ts > $1 AND ts <= $2 GROUP BY device_id) \
             SELECT s.*, coalesce(a.anomalies, 0) AS anomalies, st.mean AS baseline_mean, \
               st.drifting FROM stats s \
             LEFT JOIN anomalies a ON a.device_id = s.device_id \
             LEFT JOIN iot.sensor_state st ON st.device_id = s.device_id",
        )
        .bind(timestamp(start))
        .bind(timestamp(end))
        .filter("s.device_id = ?", opt_text(&a.device_id))
        .filter("s.machine_id = ?", opt_text(&a.machine_id))
        .filter("s.plant_id = ?", opt_text(&a.plant_id))
        .filter("s.sensor_type = ?", a.sensor_type.map(|s| text(s.as_str())))
        .finish(&format!("ORDER BY anomalies DESC, s.device_id LIMIT {n}"));
        let (sensors, as_of) = self.fetch(q).await?;
        Ok(Json(SensorStatsAnswer {
            window_start: rfc3339(start),
            window_end: rfc3339(end),
            sensors,
            as_of,
        }))
    }
}
