-- Shortage risk per part × warehouse (DESIGN §4), recomputed from the tables it reads.
-- Time is event time: `as_of` is the latest stock movement, so the same inputs always give
-- the same rows.
WITH clock AS (
    SELECT max(ts) AS as_of, min(ts) AS first_seen
    FROM supply_chain.inventory_movements
),
-- Usage: the 7-day consumption rate, or the 24-hour or 3-day rate when it runs well above it
-- (twice, or 1.3 times), so a surge shows within a day while the ordinary day-to-day noise of a
-- few movements does not make flags flicker. Early on, the 7-day rate divides by the days
-- observed so far.
usage AS (
    SELECT m.part_id, m.warehouse_id,
        sum(m.quantity) / greatest(least(
            (date_part('epoch', c.as_of) - date_part('epoch', c.first_seen)) / 86400.0, 7.0), 1.0)
            AS rate_7d,
        sum(CASE WHEN m.ts > c.as_of - INTERVAL '1 day' THEN m.quantity ELSE 0 END) * 1.0
            AS rate_24h,
        count(CASE WHEN m.ts > c.as_of - INTERVAL '1 day' THEN 1 END) AS moves_24h,
        sum(CASE WHEN m.ts > c.as_of - INTERVAL '3 days' THEN m.quantity ELSE 0 END) / 3.0 AS rate_3d,
        count(CASE WHEN m.ts > c.as_of - INTERVAL '3 days' THEN 1 END) AS moves_3d
    FROM supply_chain.inventory_movements m CROSS JOIN clock c
    WHERE m.movement_type = 'consumption' AND m.ts > c.as_of - INTERVAL '7 days'
    GROUP BY m.part_id, m.warehouse_id, c.as_of, c.first_seen
),
latest_status AS (
    SELECT shipment_id, part_id, warehouse_id, supplier_id, quantity, status, eta,
        row_number() OVER (PARTITION BY shipment_id ORDER BY ts DESC, _offset DESC) AS rn
    FROM supply_chain.shipments
),
-- How late each supplier's deliveries have been against their first promised eta (90th
-- percentile over the last 90 days; shipments announced as delayed are left out, since their
-- new eta already says so).
delivered AS (
    SELECT shipment_id, supplier_id,
        min(CASE WHEN status = 'created' THEN eta END) AS promised,
        max(CASE WHEN status = 'delivered' THEN ts END) AS delivered_at,
        bool_or(status = 'delayed') AS was_delayed
    FROM supply_chain.shipments
    GROUP BY shipment_id, supplier_id
),
lateness AS (
    SELECT d.supplier_id,
        percentile_cont(0.9) WITHIN GROUP (ORDER BY greatest(
            (date_part('epoch', d.delivered_at) - date_part('epoch', d.promised)) / 86400.0, 0.0))
            AS late_days_p90,
        count(*) AS deliveries
    FROM delivered d CROSS JOIN clock c
    WHERE d.delivered_at IS NOT NULL AND d.promised IS NOT NULL AND NOT d.was_delayed
      AND d.delivered_at > c.as_of - INTERVAL '90 days'
    GROUP BY d.supplier_id
),
-- Open inbound: shipments not yet delivered or cancelled, and open purchase orders not yet shipped.
open_inbound AS (
    SELECT part_id, warehouse_id, supplier_id, quantity, eta, status = 'delayed' AS delayed
    FROM latest_status
    WHERE rn = 1 AND status IN ('created', 'in_transit', 'delayed')
    UNION ALL
    -- An order counts until its first shipment exists; from then on the shipment is the inbound.
    SELECT o.part_id, o.warehouse_id, o.supplier_id, o.quantity, o.expected_at, false
    FROM supply_chain.purchase_orders o
    WHERE o.status = 'open'
      AND NOT EXISTS (SELECT 1 FROM supply_chain.shipments sh WHERE sh.po_id = o.po_id)
),
position AS (
    SELECT i.part_id, i.warehouse_id, i.region, p.supplier_id,
        i.on_hand, i.on_hand - i.reserved AS available,
        s.lead_time_days, s.reliability, s.min_order_qty, p.safety_stock,
        -- (coalesce: DataFusion 55 mis-derives the nullability of this CASE without it)
        CASE
            WHEN u.moves_24h >= 4 AND u.rate_24h > 2.0 * u.rate_7d THEN coalesce(u.rate_24h, 0.0)
            WHEN u.moves_3d >= 6 AND u.rate_3d > 1.3 * u.rate_7d THEN coalesce(u.rate_3d, 0.0)
            ELSE coalesce(u.rate_7d, 0.0)
        END AS daily_usage
    FROM supply_chain.inventory i
    JOIN supply_chain.parts p ON p.part_id = i.part_id
    JOIN supply_chain.suppliers s ON s.supplier_id = p.supplier_id
    LEFT JOIN usage u ON u.part_id = i.part_id AND u.warehouse_id = i.warehouse_id
),
-- Inbound counts only if it is expected before the shelf runs empty without it. Expected
-- arrival: the eta, pushed back by the supplier's observed lateness (`lateness`), or by
-- (1 - reliability) × lead time until five of its deliveries are known; a delayed shipment's
-- eta is already the carrier's new estimate.
inbound AS (
    SELECT o.part_id, o.warehouse_id,
        sum(o.quantity) AS inbound_open,
        sum(CASE WHEN pos.daily_usage <= 0.0
                   OR (date_part('epoch', o.eta) - date_part('epoch', c.as_of)) / 86400.0
                      + CASE WHEN o.delayed THEN 0.0
                             WHEN l.deliveries >= 5 THEN l.late_days_p90
                             ELSE (1.0 - s.reliability) * s.lead_time_days END
                      <= greatest(pos.available, 0) / pos.daily_usage
                 THEN o.quantity ELSE 0 END) * 1.0 AS inbound_expected
    FROM open_inbound o
    JOIN position pos ON pos.part_id = o.part_id AND pos.warehouse_id = o.warehouse_id
    JOIN supply_chain.suppliers s ON s.supplier_id = o.supplier_id
    LEFT JOIN lateness l ON l.supplier_id = o.supplier_id
    CROSS JOIN clock c
    GROUP BY o.part_id, o.warehouse_id
),
scored AS (
    SELECT pos.*,
        coalesce(ib.inbound_open, 0) AS inbound_open,
        coalesce(ib.inbound_expected, 0.0) AS inbound_expected,
        predict_shortage(pos.available, pos.daily_usage, coalesce(ib.inbound_expected, 0.0),
                         pos.lead_time_days) AS prediction
    FROM position pos
    LEFT JOIN inbound ib ON ib.part_id = pos.part_id AND ib.warehouse_id = pos.warehouse_id
)
SELECT
    part_id, warehouse_id, region, supplier_id, on_hand, available,
    daily_usage, inbound_open, inbound_expected, lead_time_days,
    prediction['days_of_cover'] AS days_of_cover,
    prediction['risk_level'] AS risk_level,
    CASE WHEN prediction['days_of_cover'] < 90.0
         THEN to_timestamp_micros(CAST(date_part('epoch', c.as_of) * 1000000.0
                                       + prediction['days_of_cover'] * 86400000000.0 AS BIGINT))
    END AS predicted_shortage_date,
    CASE WHEN prediction['risk_level'] IN ('LOW') THEN 0
         ELSE greatest(
             CAST(ceil(daily_usage * (lead_time_days + 14) + safety_stock
                       - available - inbound_expected) AS BIGINT),
             min_order_qty)
    END AS suggested_order_qty,
    concat_ws('; ',
        CASE WHEN available <= 0 THEN 'out of stock' END,
        CASE WHEN daily_usage > 0.0
             THEN concat('cover ', CAST(round(prediction['days_of_cover'], 1) AS VARCHAR),
                         ' d vs lead time ', CAST(lead_time_days AS VARCHAR), ' d') END,
        CASE WHEN inbound_open > inbound_expected
             THEN concat(CAST(inbound_open - CAST(inbound_expected AS BIGINT) AS VARCHAR),
                         ' inbound units expected too late') END,
        CASE WHEN daily_usage <= 0.0 THEN 'no recent consumption' END
    ) AS reasons,
    c.as_of
FROM scored CROSS JOIN clock c
WHERE c.as_of IS NOT NULL
