"""Durations written the way people write them: ``90s``, ``30m``, ``168h``, ``7d``, ``1h30m``."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """Parse a duration; raises ``ValueError`` with the accepted forms when it cannot."""
    compact = text.strip().lower().replace(" ", "")
    pos, seconds = 0, 0.0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not compact or pos != len(compact):
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 30m, 168h, 7d or 1h30m")
    return timedelta(seconds=seconds)
