/* lakeforge
description: >-
  Customers, typed and cleaned, with the history of their address changes (SCD2):
  one row per customer version; valid_from/valid_to/is_current are added by the write.
write:
  strategy: scd2
  keys: [customer_id]
  sequence_by: updated_at
  track_columns: [first_name, last_name, email, street, postal_code, city, country]
tags: [customers]
columns:
  customer_id: {type: BIGINT, description: Customer id, nullable: false}
  first_name: {type: VARCHAR, pii: true}
  last_name: {type: VARCHAR, pii: true}
  email: {type: VARCHAR, pii: true, description: Trimmed and lower-cased; null when unknown}
  street: {type: VARCHAR, pii: true}
  postal_code: {type: VARCHAR, description: Text (keeps leading zeros)}
  city: {type: VARCHAR}
  country: {type: VARCHAR, description: ISO 3166 alpha-2 code in upper case}
  signup_date: {type: DATE}
  updated_at: {type: TIMESTAMP, description: When the source last changed the customer (UTC)}
checks:
  - not_null: [customer_id, country]
  # Some customers never gave an email: tolerated up to 5%, an error above 10%.
  - {type: not_null, column: email, warn_if: "> 5%", error_if: "> 10%"}
  - {type: regex, column: email, pattern: '[^@ ]+@[^@ ]+\.[a-z]{2,}'}
  - {type: regex, column: country, pattern: '[A-Z]{2}'}
*/
SELECT DISTINCT
    CAST(customer_id AS BIGINT) AS customer_id,
    trim(first_name) AS first_name,
    trim(last_name) AS last_name,
    nullif(lower(trim(email)), '') AS email,
    trim(street) AS street,
    trim(postal_code) AS postal_code,
    trim(city) AS city,
    upper(trim(country)) AS country,
    CAST(signup_date AS DATE) AS signup_date,
    CAST(updated_at AS TIMESTAMP) AS updated_at
FROM raw_customers
