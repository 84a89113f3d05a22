"""Silver order lines: a Python table (the SQL models live under models/)."""

import lakeforge as lf


@lf.table(
    layer="silver",
    write=lf.Merge(keys=["order_id", "line_no"]),
    description="Order lines, typed and deduplicated, with line_amount = quantity × unit_price.",
    tags=["sales"],
    columns={
        "order_id": {"type": "BIGINT", "description": "orders.order_id", "nullable": False},
        "line_no": {"type": "INTEGER", "description": "Position in the order", "nullable": False},
        "product_id": {"type": "BIGINT", "description": "products.product_id"},
        "quantity": {"type": "INTEGER"},
        "unit_price": {"type": "DECIMAL(10,2)", "description": "Price paid per unit"},
        "line_amount": {"type": "DECIMAL(12,2)", "description": "quantity × unit_price"},
    },
    # A line that sold nothing or at a negative price is set aside in order_lines__quarantine
    # (with the rule it broke) instead of reaching revenue.
    expect={"positive_quantity": "quantity > 0", "price_not_negative": "unit_price >= 0"},
    on_violation="quarantine",
    checks=[
        {"not_null": ["order_id", "line_no", "product_id"]},
        {"type": "relationships", "column": "order_id", "to": "orders"},
        {"type": "relationships", "column": "product_id", "to": "products"},
    ],
)
def order_lines(raw_order_lines):
    """raw_order_lines arrives as a DuckDB relation over the bronze table."""
    # The feed re-sends some lines verbatim: DISTINCT drops them, so each
    # (order_id, line_no) reaches the merge once.
    return raw_order_lines.query(
        "raw",
        """
        SELECT DISTINCT
            CAST(order_id AS BIGINT) AS order_id,
            CAST(line_no AS INTEGER) AS line_no,
            CAST(product_id AS BIGINT) AS product_id,
            CAST(quantity AS INTEGER) AS quantity,
            CAST(unit_price AS DECIMAL(10, 2)) AS unit_price,
            CAST(CAST(quantity AS INTEGER) * CAST(unit_price AS DECIMAL(10, 2))
                 AS DECIMAL(12, 2)) AS line_amount
        FROM raw
        """,
    )
