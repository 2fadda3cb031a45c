-- Shortage risk per part × warehouse (DESIGN §4), recomputed from the tables it reads.
-- Time is event time: `as_of` is the latest stock movement down to the quarter hour, so the
-- same inputs always give the same rows. Every term that reads time reads `clock`: within a
-- quarter hour a change recomputes only the positions it touches ([incremental] in the .toml);
-- windows reach from the quarter hour back, and take in the events of the quarter hour since.
WITH clock AS (
    SELECT date_bin(INTERVAL '15 minutes', max(ts)) AS as_of, min(ts) AS first_seen
    FROM supply_chain.inventory_movements
),
-- Consumption over the last 7 days, 3 days, 24 hours and 12 hours: units and movements.
usage AS (
    SELECT m.part_id, m.warehouse_id,
        greatest(least(
            (date_part('epoch', c.as_of) - date_part('epoch', c.first_seen)) / 86400.0, 7.0), 1.0)
            AS days_7d,
        sum(m.quantity) * 1.0 AS units_7d,
        count(*) AS moves_7d,
        sum(CASE WHEN m.ts > c.as_of - INTERVAL '1 day' THEN m.quantity ELSE 0 END) * 1.0
            AS units_24h,
        count(CASE WHEN m.ts > c.as_of - INTERVAL '1 day' THEN 1 END) AS moves_24h,
        sum(CASE WHEN m.ts > c.as_of - INTERVAL '12 hours' THEN m.quantity ELSE 0 END) * 1.0
            AS units_12h,
        count(CASE WHEN m.ts > c.as_of - INTERVAL '12 hours' THEN 1 END) AS moves_12h,
        sum(CASE WHEN m.ts > c.as_of - INTERVAL '3 days' THEN m.quantity ELSE 0 END) * 1.0
            AS units_3d,
        count(CASE WHEN m.ts > c.as_of - INTERVAL '3 days' THEN 1 END) AS moves_3d
    FROM supply_chain.inventory_movements m CROSS JOIN clock c
    WHERE m.movement_type = 'consumption' AND m.ts > c.as_of - INTERVAL '7 days'
    GROUP BY m.part_id, m.warehouse_id, c.as_of, c.first_seen
),
-- The usage rate. The planned demand, which the part's reorder point and safety stock were set
-- from (reorder point = demand x lead time + safety stock), is the prior; the last 7 days'
-- consumption updates it as 14 days' worth of evidence would (a gamma-Poisson posterior mean),
-- so a few movements more or less do not swing the cover by days (the 7-day rate alone made 5 of
-- 6 flags false). A surge is a 12-hour, 24-hour or 3-day rate well above that (2.5, 2 or 1.5
-- times) on more movements than chance gives (3 sigma of a Poisson count at the 7-day movement
-- rate); then the short-window rate is the usage, so a surge shows within half a day.
rates AS (
    SELECT u.*, pl.planned,
        CASE WHEN pl.planned IS NULL THEN u.units_7d / u.days_7d
             ELSE (u.units_7d + 14.0 * pl.planned) / (u.days_7d + 14.0) END AS baseline,
        u.moves_7d / u.days_7d AS moves_per_day
    FROM usage u
    JOIN (
        SELECT p.part_id,
            CASE WHEN s.lead_time_days > 0 AND p.reorder_point > p.safety_stock
                 THEN (p.reorder_point - p.safety_stock) * 1.0 / s.lead_time_days END AS planned
        FROM supply_chain.parts p JOIN supply_chain.suppliers s ON s.supplier_id = p.supplier_id
    ) pl ON pl.part_id = u.part_id
),
latest_status AS (
    SELECT shipment_id, part_id, warehouse_id, supplier_id, quantity, status, eta,
        row_number() OVER (PARTITION BY shipment_id ORDER BY ts DESC, _offset DESC) AS rn
    FROM supply_chain.shipments
),
-- How late each supplier's deliveries have been against their first promised eta: the mean
-- over the last 90 days, early deliveries counting as early (a 90th percentile that floored
-- them at 0 pushed nearly every order past the shelf's cover); shipments announced as delayed
-- are left out, since their new eta already says so.
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
        avg((date_part('epoch', d.delivered_at) - date_part('epoch', d.promised)) / 86400.0)
            AS late_days_mean,
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
            WHEN u.units_12h > 2.5 * 0.5 * u.baseline
             AND u.moves_12h >= 0.5 * u.moves_per_day + 3.0 * sqrt(0.5 * u.moves_per_day) + 1.0
                THEN coalesce(u.units_12h * 2.0, 0.0)
            WHEN u.units_24h > 2.0 * u.baseline
             AND u.moves_24h >= u.moves_per_day + 3.0 * sqrt(u.moves_per_day) + 1.0
                THEN coalesce(u.units_24h, 0.0)
            WHEN u.units_3d > 1.5 * 3.0 * u.baseline
             AND u.moves_3d >= 3.0 * u.moves_per_day + 3.0 * sqrt(3.0 * u.moves_per_day) + 1.0
                THEN coalesce(u.units_3d / 3.0, 0.0)
            ELSE coalesce(u.baseline, 0.0)
        END AS daily_usage
    FROM supply_chain.inventory i
    JOIN supply_chain.parts p ON p.part_id = i.part_id
    JOIN supply_chain.suppliers s ON s.supplier_id = p.supplier_id
    LEFT JOIN rates u ON u.part_id = i.part_id AND u.warehouse_id = i.warehouse_id
),
-- Inbound counts only if it is expected before the shelf runs empty without it. Expected
-- arrival: the eta, moved by the supplier's mean lateness (`lateness`), or, until five of its
-- deliveries are known, pushed back by (1 - reliability) × 3 days (its late share times a few
-- days' lateness); a delayed shipment's eta is already the carrier's new estimate.
inbound AS (
    SELECT o.part_id, o.warehouse_id,
        sum(o.quantity) AS inbound_open,
        sum(CASE WHEN pos.daily_usage <= 0.0
                   OR (date_part('epoch', o.eta) - date_part('epoch', c.as_of)) / 86400.0
                      + CASE WHEN o.delayed THEN 0.0
                             WHEN l.deliveries >= 5 THEN l.late_days_mean
                             ELSE (1.0 - s.reliability) * 3.0 END
                      <= greatest(pos.available, 0) / pos.daily_usage
                 THEN o.quantity ELSE 0 END) * 1.0 AS inbound_expected
    FROM clock c
    CROSS JOIN open_inbound o
    JOIN position pos ON pos.part_id = o.part_id AND pos.warehouse_id = o.warehouse_id
    JOIN supply_chain.suppliers s ON s.supplier_id = o.supplier_id
    LEFT JOIN lateness l ON l.supplier_id = o.supplier_id
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
-- The one-row clock first: DataFusion's cross join repeats each row of its left side as a
-- batch of its own. With the positions on the left, a full run built 10,500 one-row batches
-- (an 8 KiB string block for each long text value) and held ~200 MB until it was written.
FROM clock c CROSS JOIN scored
WHERE c.as_of IS NOT NULL
