-- Maintenance alerts: a machine whose anomalies persist, i.e. show up in at least three of the
-- six 10-minute windows of an hour (a lone spike does not page anyone). CRITICAL when a
-- critical anomaly is among them or five windows are hit. Recomputed from iot.anomalies, so a
-- machine's sensors may come from any Kafka partition.
WITH buckets AS (
    SELECT machine_id, plant_id, sensor_type, severity, ts,
        date_bin(INTERVAL '1 hour', ts, TIMESTAMP '2000-01-01T00:00:00Z') AS window_start,
        date_bin(INTERVAL '10 minutes', ts, TIMESTAMP '2000-01-01T00:00:00Z') AS slot
    FROM iot.anomalies
),
hours AS (
    SELECT machine_id, window_start,
        min(plant_id) AS plant_id,
        count(*) AS anomalies,
        count(DISTINCT slot) AS active_windows,
        array_to_string(array_sort(array_agg(DISTINCT sensor_type)), ',') AS sensors,
        max(CASE WHEN severity = 'CRITICAL' THEN 1 ELSE 0 END) AS has_critical,
        min(ts) AS first_ts,
        max(ts) AS last_ts
    FROM buckets
    GROUP BY machine_id, window_start
)
SELECT
    concat(machine_id, '@', to_char(window_start, '%Y-%m-%dT%H:%M')) AS alert_id,
    machine_id, plant_id, window_start,
    window_start + INTERVAL '1 hour' AS window_end,
    anomalies, active_windows, sensors,
    CASE WHEN has_critical = 1 OR active_windows >= 5 THEN 'CRITICAL' ELSE 'HIGH' END AS severity,
    first_ts, last_ts
FROM hours
WHERE active_windows >= 3
