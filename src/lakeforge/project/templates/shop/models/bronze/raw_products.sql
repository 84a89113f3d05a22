/* lakeforge
description: The product catalogue file exactly as landed, all text.
tags: [catalogue]
columns:
  _source_file: {type: VARCHAR, description: Landing file the row came from}
*/
SELECT * EXCLUDE (filename), parse_filename(filename) AS _source_file
FROM read_csv('landing/products/*.csv', header = true, all_varchar = true, filename = true)
