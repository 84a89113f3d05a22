/* lakeforge
description: Order lines as landed (CSV, one file per month), duplicated lines included, all text.
tags: [sales]
columns:
  _source_file: {type: VARCHAR, description: Landing file the row came from}
*/
SELECT * EXCLUDE (filename), parse_filename(filename) AS _source_file
FROM read_csv('landing/order_lines/*.csv', header = true, all_varchar = true, filename = true)
