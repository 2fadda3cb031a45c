-- The newest change of each document in a micro-batch of document events (Kafka order: a
-- document's events share its key, so one partition); each pipeline that uses this file keeps
-- one kind of document with its `[input] filter`. The sink deletes on op = 'delete' and
-- otherwise inserts or replaces the document; a document new to the table was first written when
-- its first event of the batch says (the table keeps that date through later revisions).
WITH ordered AS (
    SELECT *,
        row_number() OVER (PARTITION BY doc_id ORDER BY _partition DESC, _offset DESC) AS newest,
        min(coalesce(created_at, ts)) OVER (PARTITION BY doc_id) AS first_written
    FROM batch
)
SELECT doc_id, op, kind, title, body, plant_id, warehouse_id, region, customer_id,
    account_manager, machine_id, machine_type, sensor_type, part_id, supplier_id,
    first_written AS created_at, ts AS updated_at
FROM ordered
WHERE newest = 1
