-- Churn risk per customer from recency, frequency and monetary value (RFM) of live sales
-- (DESIGN §4). Time is event time: `as_of` is the latest sale, so the same inputs always give
-- the same rows. Recency is judged against the customer's own rhythm (mean days between
-- purchases): a customer who buys weekly and has been silent for a month is at risk; one who
-- buys monthly is not, and neither is a recent order enough when orders have thinned out.
WITH clock AS (
    SELECT max(ts) AS as_of FROM sales.transactions
),
rfm AS (
    SELECT t.customer_id,
        max(t.ts) AS last_purchase,
        count(*) AS purchases,
        (date_part('epoch', max(t.ts)) - date_part('epoch', min(t.ts))) / 86400.0 AS span_days,
        count(CASE WHEN t.ts > c.as_of - INTERVAL '90 days' THEN 1 END) AS frequency_90d,
        count(CASE WHEN t.ts > c.as_of - INTERVAL '30 days' THEN 1 END) AS purchases_30d,
        -- The usual rhythm from orders before the last 30 days, so a recent slowdown does not
        -- stretch the yardstick it is measured with.
        count(CASE WHEN t.ts <= c.as_of - INTERVAL '30 days' THEN 1 END) AS purchases_before,
        (date_part('epoch', max(CASE WHEN t.ts <= c.as_of - INTERVAL '30 days' THEN t.ts END))
            - date_part('epoch', min(t.ts))) / 86400.0 AS span_before_days,
        coalesce(sum(CASE WHEN t.ts > c.as_of - INTERVAL '90 days' THEN t.amount END), 0.0)
            AS monetary_90d,
        coalesce(sum(CASE WHEN t.ts > c.as_of - INTERVAL '30 days' THEN t.amount END), 0.0)
            AS spend_30d,
        coalesce(sum(CASE WHEN t.ts <= c.as_of - INTERVAL '30 days'
                           AND t.ts > c.as_of - INTERVAL '90 days' THEN t.amount END), 0.0)
            AS spend_prior_60d
    FROM sales.transactions t CROSS JOIN clock c
    GROUP BY t.customer_id
),
measured AS (
    SELECT cu.customer_id, cu.name, cu.segment, cu.region, cu.account_manager,
        r.last_purchase,
        (date_part('epoch', c.as_of) - date_part('epoch', r.last_purchase)) / 86400.0
            AS recency_days,
        coalesce(r.frequency_90d, 0) AS frequency_90d,
        coalesce(r.monetary_90d, 0.0) AS monetary_90d,
        CASE WHEN r.purchases_before >= 3 THEN r.span_before_days / (r.purchases_before - 1)
             WHEN r.purchases >= 2 THEN r.span_days / (r.purchases - 1)
        END AS avg_interval_days,
        coalesce(r.purchases_30d, 0) AS purchases_30d,
        CASE WHEN r.spend_prior_60d > 0.0 THEN r.spend_30d / (r.spend_prior_60d / 2.0) END
            AS spend_trend,
        c.as_of
    FROM sales.customers cu
    LEFT JOIN rfm r ON r.customer_id = cu.customer_id
    CROSS JOIN clock c
    WHERE c.as_of IS NOT NULL
),
scored AS (
    SELECT m.*,
        predict_churn(m.recency_days, m.avg_interval_days, m.purchases_30d, m.spend_trend)
            AS prediction
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
