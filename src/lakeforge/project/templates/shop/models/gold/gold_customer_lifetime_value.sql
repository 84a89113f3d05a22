/* lakeforge
description: >-
  Per customer (its current SCD2 version): first and last order date, order count
  and lifetime revenue; cancelled orders excluded.
tags: [customers, reporting]
columns:
  customer_id: {type: BIGINT, nullable: false}
  email: {type: VARCHAR, pii: true}
  city: {type: VARCHAR, description: Current city}
  country: {type: VARCHAR, description: Current country}
  first_order_date: {type: DATE, description: Null when the customer never ordered}
  last_order_date: {type: DATE}
  order_count: {type: BIGINT}
  lifetime_revenue_amount: {type: "DECIMAL(38,2)", description: Sum of the customer's order amounts}
*/
WITH order_amounts AS (
    SELECT o.order_id, o.customer_id, o.order_date, sum(l.line_amount) AS order_amount
    FROM orders AS o
    JOIN order_lines AS l ON l.order_id = o.order_id
    WHERE o.status <> 'cancelled'
    GROUP BY o.order_id, o.customer_id, o.order_date
)
SELECT
    c.customer_id,
    c.email,
    c.city,
    c.country,
    min(a.order_date) AS first_order_date,
    max(a.order_date) AS last_order_date,
    count(a.order_id) AS order_count,
    coalesce(sum(a.order_amount), 0) AS lifetime_revenue_amount
FROM customers AS c
LEFT JOIN order_amounts AS a ON a.customer_id = c.customer_id
WHERE c.is_current
GROUP BY c.customer_id, c.email, c.city, c.country
