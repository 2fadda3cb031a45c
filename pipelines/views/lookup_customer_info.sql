-- lookup_customer_info: the account, its churn outlook and its support history.
WITH tickets AS (
    SELECT customer_id,
        count(*) AS tickets_total,
        count(CASE WHEN status IN ('open', 'in_progress') THEN 1 END) AS tickets_open
    FROM support.tickets
    GROUP BY customer_id
)
SELECT c.customer_id, c.name, c.segment, c.region, c.account_manager, c.email, c.since,
    ch.last_purchase, ch.recency_days, ch.frequency_90d, ch.monetary_90d,
    ch.churn_probability, ch.risk_level AS churn_risk, ch.factors AS churn_factors,
    ch.recommendation,
    coalesce(t.tickets_total, 0) AS tickets_total,
    coalesce(t.tickets_open, 0) AS tickets_open
FROM sales.customers c
LEFT JOIN sales.churn_signals ch ON ch.customer_id = c.customer_id
LEFT JOIN tickets t ON t.customer_id = c.customer_id
