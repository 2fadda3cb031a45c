-- Lead scores for the sales rep: which customers are ready to buy more. A lead is a customer
-- whose ordering quickened against their own rhythm (`score_lead`: the rate rose threefold
-- two weeks to two months ago, against a steady rate), the mirror image of
-- `churn_signals.sql`. Time is event time: `as_of` is the latest sale down to the quarter
-- hour, so the same inputs always give the same rows. Ranked by score in the tools and the console, not here.
WITH clock AS (
    SELECT date_bin(INTERVAL '15 minutes', max(ts)) AS as_of FROM sales.transactions
),
-- (a sale of the quarter hour since `as_of` is of age 0)
recent AS (
    SELECT t.customer_id, t.ts, t.amount,
        greatest((date_part('epoch', c.as_of) - date_part('epoch', t.ts)) / 86400.0, 0.0)
            AS age_days
    FROM sales.transactions t CROSS JOIN clock c
    WHERE t.ts > c.as_of - INTERVAL '180 days'
),
history AS (
    SELECT customer_id,
        max(ts) AS last_purchase,
        array_agg(age_days) AS purchase_ages,
        count(CASE WHEN age_days < 30.0 THEN 1 END) AS orders_30d,
        count(CASE WHEN age_days >= 30.0 THEN 1 END) AS orders_before,
        max(age_days) AS span_days,
        coalesce(sum(CASE WHEN age_days < 30.0 THEN amount END), 0.0) AS spend_30d,
        coalesce(sum(CASE WHEN age_days >= 30.0 AND age_days < 90.0 THEN amount END), 0.0)
            AS spend_prior_60d
    FROM recent
    GROUP BY customer_id
),
measured AS (
    SELECT cu.customer_id, cu.name, cu.segment, cu.region, cu.account_manager,
        h.last_purchase,
        coalesce(h.orders_30d, 0) AS orders_30d,
        CASE WHEN h.span_days > 30.0
            THEN round(h.orders_before * 30.0 / (h.span_days - 30.0), 1) END AS usual_orders_30d,
        coalesce(h.spend_30d, 0.0) AS spend_30d,
        CASE WHEN h.spend_prior_60d > 0.0
            THEN round(h.spend_30d / (h.spend_prior_60d / 2.0), 2) END AS spend_trend,
        h.purchase_ages,
        c.as_of
    -- (the one-row clock first: DataFusion's cross join repeats each row of its left side as
    -- a batch of its own, which for the customers was a batch per customer)
    FROM clock c
    CROSS JOIN sales.customers cu
    LEFT JOIN history h ON h.customer_id = cu.customer_id
    WHERE c.as_of IS NOT NULL
),
scored AS (
    SELECT m.*, score_lead(m.purchase_ages, m.spend_trend) AS score
    FROM measured m
)
SELECT
    customer_id, name, segment, region, account_manager, last_purchase, orders_30d,
    usual_orders_30d, spend_30d, spend_trend,
    score['lead_score'] AS lead_score,
    score['tier'] AS tier,
    score['drivers'] AS drivers,
    CASE score['tier']
        WHEN 'HOT' THEN concat('Call ', name, ' this week: ordering has picked up; propose a volume agreement')
        WHEN 'WARM' THEN concat('Check in with ', name, ': orders are coming faster than usual')
        ELSE 'No action needed'
    END AS recommendation,
    as_of
FROM scored
