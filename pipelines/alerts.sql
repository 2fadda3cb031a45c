-- HIGH and CRITICAL signals become alerts in ops.alerts (and from there go to mfg.alerts).
-- One alert per signal key, severity and day: a risk that persists is re-raised once a day, an
-- escalation from HIGH to CRITICAL is raised at once. Alerts already raised are left out, so
-- rerunning this query after a restart adds nothing twice. Each alert carries the tenant
-- columns of its signal (the others NULL), which scope who may see it.
WITH candidates AS (
    SELECT 'supply_chain.shortage_signals' AS source,
        concat(part_id, '@', warehouse_id) AS signal_key,
        risk_level AS severity,
        concat('Shortage risk ', risk_level, ': ', part_id, ' at ', warehouse_id) AS title,
        concat(reasons, '; suggested order ', CAST(suggested_order_qty AS VARCHAR), ' units',
               CASE WHEN predicted_shortage_date IS NOT NULL
                    THEN concat('; runs out ', to_char(predicted_shortage_date, '%Y-%m-%d %H:%M'))
                    ELSE '' END) AS detail,
        as_of AS signal_ts,
        warehouse_id, CAST(NULL AS VARCHAR) AS plant_id, region,
        CAST(NULL AS VARCHAR) AS customer_id, CAST(NULL AS VARCHAR) AS account_manager
    FROM supply_chain.shortage_signals
    WHERE risk_level IN ('HIGH', 'CRITICAL')
    UNION ALL
    SELECT 'sales.churn_signals', customer_id AS signal_key, risk_level,
        concat('Churn risk ', risk_level, ': ', name, ' (', account_manager, ')'),
        concat(factors, '; ', recommendation),
        as_of,
        CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR), region, customer_id, account_manager
    FROM sales.churn_signals
    WHERE risk_level IN ('HIGH', 'CRITICAL')
    UNION ALL
    SELECT 'iot.maintenance_alerts', machine_id, severity,
        concat('Maintenance ', severity, ': machine ', machine_id, ' at ', plant_id),
        concat(CAST(anomalies AS VARCHAR), ' anomalies in ', CAST(active_windows AS VARCHAR),
               ' of 6 ten-minute windows (', sensors, ')'),
        last_ts,
        CAST(NULL AS VARCHAR), plant_id, CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR),
        CAST(NULL AS VARCHAR)
    FROM iot.maintenance_alerts
),
keyed AS (
    SELECT concat(source, ':', signal_key, ':', severity, ':', to_char(signal_ts, '%Y-%m-%d'))
            AS alert_id,
        *
    FROM candidates
)
SELECT k.alert_id, k.source, k.signal_key, k.severity, k.title, k.detail, k.signal_ts,
    CAST(k.signal_ts AS DATE) AS alert_date,
    k.warehouse_id, k.plant_id, k.region, k.customer_id, k.account_manager
FROM keyed k
WHERE k.alert_id NOT IN (SELECT alert_id FROM ops.alerts)
