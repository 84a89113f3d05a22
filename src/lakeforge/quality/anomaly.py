"""Anomaly scoring of a metric against its trailing history.

Robust z-score: ``0.6745 · (x − median) / MAD`` (Iglewicz & Hoaglin), which a single past
spike cannot inflate the way a mean and standard deviation would. A history with no spread
(MAD = 0, e.g. a table that always loads exactly 1,000 rows) falls back to the mean absolute
deviation, and when that is zero too, to the relative change from the median — so a
perfectly stable metric is not flagged for an insignificant wobble, nor ignored when it moves.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

_Z_SCALE = 0.6745


@dataclass(frozen=True)
class AnomalyScore:
    """The verdict on one value."""

    anomalous: bool
    score: float
    baseline: float
    explanation: str


def score_value(
    value: float,
    history: list[float],
    *,
    method: str,
    sensitivity: float,
    max_change: float,
) -> AnomalyScore:
    """Score ``value`` against ``history`` (earlier values, any order)."""
    median = statistics.median(history)
    if method == "relative":
        change = _relative_change(value, median)
        return AnomalyScore(
            change > max_change,
            change,
            median,
            f"{_pct(change)} change from the trailing median {median:g} (limit {_pct(max_change)})",
        )
    mad = statistics.median(abs(h - median) for h in history)
    if mad > 0:
        z = _Z_SCALE * (value - median) / mad
    else:
        spread = statistics.fmean(abs(h - median) for h in history)
        if spread > 0:
            z = (value - median) / (1.2533 * spread)  # MeanAD-based z (same scale as σ)
        else:
            change = _relative_change(value, median)
            return AnomalyScore(
                change > max_change,
                change,
                median,
                f"history is constant at {median:g}; {_pct(change)} change "
                f"(limit {_pct(max_change)})",
            )
    return AnomalyScore(
        abs(z) > sensitivity,
        z,
        median,
        f"robust z-score {z:+.2f} against the trailing median {median:g} (limit ±{sensitivity:g})",
    )


def _relative_change(value: float, baseline: float) -> float:
    if baseline == 0:
        return 0.0 if value == 0 else math.inf
    return abs(value - baseline) / abs(baseline)


def _pct(change: float) -> str:
    return "∞" if math.isinf(change) else f"{100 * change:.1f}%"
