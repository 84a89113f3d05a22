/* lakeforge
description: Revenue, orders and items sold per day and product category (cancelled orders excluded).
tags: [sales, reporting]
columns:
  order_date: {type: DATE, description: UTC order date}
  category: {type: VARCHAR, description: Product category}
  order_count: {type: BIGINT, description: Orders with at least one line in the category}
  item_count: {type: BIGINT, description: Units sold}
  revenue_amount: {type: "DECIMAL(38,2)", description: Sum of line_amount}
*/
SELECT
    o.order_date,
    p.category,
    count(DISTINCT o.order_id) AS order_count,
    CAST(sum(l.quantity) AS BIGINT) AS item_count,
    sum(l.line_amount) AS revenue_amount
FROM orders AS o
JOIN order_lines AS l ON l.order_id = o.order_id
JOIN products AS p ON p.product_id = l.product_id
WHERE o.status <> 'cancelled'
GROUP BY o.order_date, p.category
