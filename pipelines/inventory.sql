-- Net stock change per part × warehouse in one micro-batch of movements; merged into
-- supply_chain.inventory by key (see inventory.toml). Adjustments carry their sign in quantity.
SELECT
    b.part_id,
    b.warehouse_id,
    coalesce(w.region, 'unknown') AS region,
    sum(CASE b.movement_type
            WHEN 'receipt' THEN b.quantity
            WHEN 'transfer_in' THEN b.quantity
            WHEN 'consumption' THEN -b.quantity
            WHEN 'transfer_out' THEN -b.quantity
            ELSE b.quantity
        END) AS delta_on_hand,
    max(b.ts) AS updated_at
FROM batch b
LEFT JOIN (SELECT DISTINCT warehouse_id, region FROM supply_chain.inventory) w
    ON w.warehouse_id = b.warehouse_id
GROUP BY b.part_id, b.warehouse_id, w.region
