-- track_shipments: each shipment's latest status, with when it was created and how many
-- status events it has had.
WITH ranked AS (
    SELECT *,
        row_number() OVER (PARTITION BY shipment_id ORDER BY ts DESC, _offset DESC) AS rn,
        count(*) OVER (PARTITION BY shipment_id) AS status_events,
        min(ts) OVER (PARTITION BY shipment_id) AS created_at
    FROM supply_chain.shipments
)
SELECT shipment_id, supplier_id, part_id, warehouse_id, quantity, status, carrier, eta, po_id,
    created_at, ts AS last_update, status_events,
    status NOT IN ('delivered', 'cancelled') AS is_open
FROM ranked
WHERE rn = 1
