-- One row per purchase order of a micro-batch of order actions: the first send of each po_id
-- (a retry repeats it). Orders already in the table are matched by key and left alone.
SELECT * EXCEPT (rn)
FROM (
    SELECT *, row_number() OVER (PARTITION BY po_id ORDER BY _partition, _offset) AS rn
    FROM batch
) ranked
WHERE rn = 1
