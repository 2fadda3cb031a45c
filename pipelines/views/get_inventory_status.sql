-- get_inventory_status: stock, reorder policy and shortage outlook per part × warehouse.
SELECT i.part_id, p.name AS part_name, p.category, i.warehouse_id, i.region,
    i.on_hand, i.reserved, i.on_hand - i.reserved AS available,
    p.reorder_point, p.safety_stock, p.supplier_id,
    s.daily_usage, s.inbound_open, s.days_of_cover, s.risk_level,
    s.predicted_shortage_date, s.suggested_order_qty, s.reasons,
    i.updated_at, s.as_of AS signal_as_of
FROM supply_chain.inventory i
JOIN supply_chain.parts p ON p.part_id = i.part_id
LEFT JOIN supply_chain.shortage_signals s
    ON s.part_id = i.part_id AND s.warehouse_id = i.warehouse_id
