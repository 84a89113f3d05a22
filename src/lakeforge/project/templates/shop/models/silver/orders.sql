/* lakeforge
description: >-
  Orders, typed and deduplicated: exact re-deliveries are dropped here, and late
  updates win by updated_at (the merge keeps the newest version of each order).
write: {strategy: merge, keys: [order_id], sequence_by: updated_at}
tags: [sales]
columns:
  order_id: {type: BIGINT, description: Order id, nullable: false}
  customer_id: {type: BIGINT, description: Who ordered (customers.customer_id)}
  order_ts: {type: TIMESTAMP, description: When the order was placed (UTC)}
  order_date: {type: DATE, description: UTC date of order_ts}
  status: {type: VARCHAR, description: "placed, shipped, delivered or cancelled"}
  channel: {type: VARCHAR, description: "web, app or store"}
  coupon: {type: VARCHAR, description: Coupon code; null when none was used}
  shipping_method: {type: VARCHAR}
  shipping_fee: {type: "DECIMAL(8,2)"}
  updated_at: {type: TIMESTAMP, description: Version of the record (UTC); the newest wins}
# Checked before every commit: an error-severity failure publishes nothing.
checks:
  - not_null: [order_id, customer_id, order_ts, updated_at]
  - {type: accepted_values, column: status, values: [placed, shipped, delivered, cancelled]}
  - {type: accepted_values, column: channel, values: [web, app, store]}
  - {type: range, column: shipping_fee, min: 0, max: 50}
  - {type: relationships, column: customer_id, to: customers}
  - {type: anomaly, metric: volume}
*/
SELECT DISTINCT
    CAST(order_id AS BIGINT) AS order_id,
    CAST(customer_id AS BIGINT) AS customer_id,
    CAST(order_ts AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS order_ts,
    CAST(CAST(order_ts AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS DATE) AS order_date,
    lower(trim(status)) AS status,
    lower(trim(channel)) AS channel,
    nullif(upper(trim(coupon)), '') AS coupon,
    shipping.method AS shipping_method,
    CAST(shipping.fee AS DECIMAL(8, 2)) AS shipping_fee,
    CAST(updated_at AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS updated_at
FROM raw_orders
