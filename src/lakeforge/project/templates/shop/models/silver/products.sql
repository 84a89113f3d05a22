/* lakeforge
description: The product catalogue, typed; categories normalized to trimmed lower case.
tags: [catalogue]
columns:
  product_id: {type: BIGINT, description: Product id, nullable: false}
  sku: {type: VARCHAR, description: Stock keeping unit}
  product_name: {type: VARCHAR}
  category: {type: VARCHAR, description: "Lower case, e.g. electronics, home & kitchen"}
  price: {type: "DECIMAL(10,2)", description: List price}
*/
SELECT DISTINCT
    CAST(product_id AS BIGINT) AS product_id,
    trim(sku) AS sku,
    trim(product_name) AS product_name,
    lower(trim(category)) AS category,
    CAST(price AS DECIMAL(10, 2)) AS price
FROM raw_products
