-- Churn risk per customer from recency, frequency and monetary value (RFM) of live sales
-- (DESIGN §4). Time is event time: `as_of` is the latest sale down to the quarter hour, so the
-- same inputs always give the same rows. `predict_churn` judges the customer's purchases of the last 180 days against
-- their own rhythm (a break in the rate, not a fixed silence): a customer who buys weekly and
-- has been silent for a month is at risk; one who buys monthly is not, and neither is a recent
-- order enough when orders have thinned out.
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
rfm AS (
    SELECT customer_id,
        max(ts) AS last_purchase,
        min(age_days) AS recency_days,
        count(*) AS purchases,
        max(age_days) - min(age_days) AS span_days,
        array_agg(age_days) AS purchase_ages,
        count(CASE WHEN age_days < 90.0 THEN 1 END) AS frequency_90d,
        coalesce(sum(CASE WHEN age_days < 90.0 THEN amount END), 0.0) AS monetary_90d,
        coalesce(sum(CASE WHEN age_days < 30.0 THEN amount END), 0.0) AS spend_30d,
        coalesce(sum(CASE WHEN age_days >= 30.0 AND age_days < 90.0 THEN amount END), 0.0)
            AS spend_prior_60d
    FROM recent
    GROUP BY customer_id
),
measured AS (
    SELECT cu.customer_id, cu.name, cu.segment, cu.region, cu.account_manager,
        r.last_purchase,
        r.recency_days,
        coalesce(r.frequency_90d, 0) AS frequency_90d,
        coalesce(r.monetary_90d, 0.0) AS monetary_90d,
        CASE WHEN r.purchases >= 2 THEN r.span_days / (r.purchases - 1) END AS avg_interval_days,
        r.purchase_ages,
        CASE WHEN r.spend_prior_60d > 0.0 THEN r.spend_30d / (r.spend_prior_60d / 2.0) END
            AS spend_trend,
        c.as_of
    -- (the one-row clock first: DataFusion's cross join repeats each row of its left side as
    -- a batch of its own, which for the customers was a batch per customer)
    FROM clock c
    CROSS JOIN sales.customers cu
    LEFT JOIN rfm r ON r.customer_id = cu.customer_id
    WHERE c.as_of IS NOT NULL
),
scored AS (
    SELECT m.*, predict_churn(m.purchase_ages, m.spend_trend) AS prediction
    FROM measured m
)
SELECT
    customer_id, name, segment, region, account_manager, last_purchase, recency_days,
    frequency_90d, monetary_90d, avg_interval_days, spend_trend,
    prediction['churn_probability'] AS churn_probability,
    prediction['risk_level'] AS risk_level,
    prediction['factors'] AS factors,
    CASE prediction['risk_level']
        WHEN 'CRITICAL' THEN concat('Call ', name, ' this week: no order for ',
            CAST(CAST(recency_days AS BIGINT) AS VARCHAR), ' days; offer a retention deal')
        WHEN 'HIGH' THEN concat('Reach out to ', name, ': ordering has slowed; review open quotes')
        WHEN 'MEDIUM' THEN concat('Keep ', name, ' warm: share new products or pricing')
        ELSE 'No action needed'
    END AS recommendation,
    as_of
FROM scored
