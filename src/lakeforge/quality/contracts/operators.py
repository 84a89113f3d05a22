"""ODCS comparison operators (``mustBe``, ``mustBeLessThan`` …) and the numbers they compare.

A quality rule's operator is read as the threshold on the measured value that makes the
rule *fail*, which is how Lakeforge checks spell it (``error_if: ">= 5"``).
"""

from __future__ import annotations

from decimal import Decimal

# ODCS operator → the threshold on the measured value that makes the rule FAIL.
FAILS_WHEN = {
    "must_be": "!=",
    "must_not_be": "==",
    "must_be_greater_than": "<=",
    "must_be_greater_or_equal_to": "<",
    "must_be_less_than": ">=",
    "must_be_less_or_equal_to": ">",
}
OPERATORS = (*FAILS_WHEN, "must_be_between", "must_not_be_between")


def plain_number(value: float) -> str:
    """A number as a threshold understands it: ``5``, ``0.5`` (never ``5e-07``)."""
    text = format(Decimal(repr(float(value))).normalize(), "f")
    return text.removesuffix(".0") if "." in text else text
