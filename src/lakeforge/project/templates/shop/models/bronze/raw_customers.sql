/* lakeforge
description: Customer files exactly as landed (initial snapshot and later change files), all text.
tags: [customers]
columns:
  email: {type: VARCHAR, pii: true, description: "As sent: may be null, padded or mixed case"}
  first_name: {type: VARCHAR, pii: true}
  last_name: {type: VARCHAR, pii: true}
  street: {type: VARCHAR, pii: true}
  _source_file: {type: VARCHAR, description: Landing file the row came from}
*/
SELECT * EXCLUDE (filename), parse_filename(filename) AS _source_file
FROM read_csv('landing/customers/*.csv', header = true, all_varchar = true, filename = true)
