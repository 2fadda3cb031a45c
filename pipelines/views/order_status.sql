-- order_status: each purchase order with its live status from the shipments fulfilling it:
-- received once one of them is delivered, shipped while one is under way, else as placed.
WITH latest AS (
    SELECT po_id, status, ts,
        row_number() OVER (PARTITION BY shipment_id ORDER BY ts DESC, _offset DESC) AS rn
    FROM supply_chain.shipments
    WHERE po_id IS NOT NULL
),
fulfilment AS (
    SELECT po_id,
        count(*) AS shipments,
        bool_or(status = 'delivered') AS delivered,
        bool_or(status IN ('created', 'in_transit', 'delayed')) AS under_way,
        max(CASE WHEN status = 'delivered' THEN ts END) AS received_at
    FROM latest
    WHERE rn = 1
    GROUP BY po_id
)
SELECT o.po_id, o.part_id, o.warehouse_id, o.supplier_id, o.quantity, o.priority,
    CASE
        WHEN o.status = 'cancelled' THEN 'cancelled'
        WHEN f.delivered THEN 'received'
        WHEN f.under_way THEN 'shipped'
        ELSE o.status
    END AS status,
    o.expected_at, o.created_at, o.unit_cost, o.fee, o.total_cost, o.on_behalf_of,
    o.idempotency_key, coalesce(f.shipments, 0) AS shipments, f.received_at
FROM supply_chain.purchase_orders o
LEFT JOIN fulfilment f ON f.po_id = o.po_id
