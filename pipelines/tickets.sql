-- One row per ticket touched by a micro-batch of ticket actions. A ticket created in this batch
-- takes its fields from the create; status and resolution come from the batch's last action
-- (Kafka order within the ticket's partition). `changes` says whether any update action came:
-- a create alone never overwrites a ticket already in the table (a retried create).
-- Updates for tickets that exist nowhere (not in the table, not created here) are dropped: the
-- server checks the ticket before producing an update, so only a forged event gets here.
WITH ordered AS (
    SELECT *,
        row_number() OVER (PARTITION BY ticket_id ORDER BY _partition DESC, _offset DESC) AS newest
    FROM batch
),
creates AS (
    SELECT ticket_id, customer_id, subject, description, category, priority,
        row_number() OVER (PARTITION BY ticket_id ORDER BY _partition, _offset) AS first,
        ts AS created_at
    FROM batch
    WHERE action = 'create'
),
summary AS (
    SELECT ticket_id,
        max(ts) AS updated_at,
        bool_or(action = 'update') AS changes
    FROM batch
    GROUP BY ticket_id
)
SELECT l.ticket_id, c.customer_id, c.subject, c.description, c.category, c.priority,
    l.status, l.resolution, coalesce(c.created_at, s.updated_at) AS created_at, s.updated_at,
    s.changes
FROM ordered l
JOIN summary s ON s.ticket_id = l.ticket_id
LEFT JOIN creates c ON c.ticket_id = l.ticket_id AND c.first = 1
WHERE l.newest = 1
  AND (c.ticket_id IS NOT NULL
       OR l.ticket_id IN (SELECT ticket_id FROM support.tickets))
