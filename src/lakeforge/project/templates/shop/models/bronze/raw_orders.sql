/* lakeforge
description: Order events as landed (NDJSON, one file per month), duplicates and late updates included.
tags: [sales]
columns:
  shipping: {description: "Nested object {method, fee}"}
  _source_file: {type: VARCHAR, description: Landing file the record came from}
*/
SELECT * EXCLUDE (filename), parse_filename(filename) AS _source_file
FROM read_json('landing/orders/*.ndjson', format = 'newline_delimited', filename = true)
