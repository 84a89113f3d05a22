"""Window assignment, as DuckDB SQL over event times in microseconds since the epoch.

Every event carries its event time as ``__lf_et`` (BIGINT microseconds, UTC). Windows are
half-open ``[start, end)``, in microseconds too:

- tumbling ``size``: one window per event, aligned to the epoch:
  ``start = et - pmod(et, size)``;
- hopping ``size``/``slide``: every window starting at a multiple of ``slide`` that holds
  the event (``ceil(size / slide)`` candidates, exploded and filtered);
- session ``gap``: per ``by`` key, in event-time order, an event ``gap`` or more after the
  previous one starts a new session; ``start`` = its first event, ``end`` = its last event
  + ``gap``.

Sizes are integers Lakeforge computed from the configuration and identifiers are quoted, so
no user text is spliced into the SQL.
"""

from __future__ import annotations

from lakeforge.storage.write import q
from lakeforge.streaming.spec import Window, micros

ET = "__lf_et"
WS = "__lf_ws"
WE = "__lf_we"


def pmod(expr: str, n: int) -> str:
    """``expr`` modulo ``n``, never negative (events before 1970 fall in the right window)."""
    return f"((({expr}) % {n}) + {n}) % {n}"


def last_window_end(window: Window | None, et: str = ET) -> str | None:
    """SQL for the end of the latest fixed window holding the event (None: sessions and no
    window, whose windows are not fixed by the event alone)."""
    if window is None or window.kind == "session":
        return None
    if window.hopping is not None:
        slide, size = micros(window.hopping.slide), micros(window.hopping.size)
        return f"({et} - {pmod(et, slide)} + {size})"
    assert window.tumbling is not None
    size = micros(window.tumbling)
    return f"({et} - {pmod(et, size)} + {size})"


def late_condition(window: Window | None, watermark: int, et: str = ET) -> str:
    """SQL true for an event that came too late for ``watermark``: all its windows are closed
    (their end at or before it). Without a fixed window (none, or sessions, which an event
    before the watermark could merge into a session already written) it is the event time
    being before the watermark."""
    end = last_window_end(window, et)
    if end is None:
        return f"{et} < {watermark}"
    return f"{end} <= {watermark}"


def assign_sql(window: Window, relation: str) -> str:
    """SELECT of ``relation``'s rows with ``__lf_ws`` / ``__lf_we``: one row per event and
    window it belongs to."""
    if window.tumbling is not None:
        size = micros(window.tumbling)
        start = f"({ET} - {pmod(ET, size)})"
        return f"SELECT *, {start} AS {WS}, {start} + {size} AS {WE} FROM {relation}"
    if window.hopping is not None:
        size, slide = micros(window.hopping.size), micros(window.hopping.slide)
        count = -(-size // slide)
        last = f"({ET} - {pmod(ET, slide)})"
        return (
            f"SELECT * EXCLUDE (__lf_hop), {last} - __lf_hop * {slide} AS {WS}, "
            f"{last} - __lf_hop * {slide} + {size} AS {WE} "
            f"FROM (SELECT *, unnest(range(0, {count})) AS __lf_hop FROM {relation}) "
            f"WHERE {last} - __lf_hop * {slide} + {size} > {ET}"
        )
    assert window.session is not None
    gap = micros(window.session.gap)
    by = ", ".join(q(c) for c in window.by)
    return (
        f"SELECT * EXCLUDE (__lf_starts, __lf_sid), min({ET}) OVER s AS {WS}, "
        f"max({ET}) OVER s + {gap} AS {WE} FROM ("
        # RANGE frame (the default): events at the same time share their session number.
        f"SELECT *, sum(__lf_starts) OVER (PARTITION BY {by} ORDER BY {ET}) AS __lf_sid FROM ("
        f"SELECT *, CASE WHEN lag({ET}) OVER w IS NULL OR {ET} - lag({ET}) OVER w >= {gap} "
        f"THEN 1 ELSE 0 END AS __lf_starts FROM {relation} "
        f"WINDOW w AS (PARTITION BY {by} ORDER BY {ET}))) "
        f"WINDOW s AS (PARTITION BY {by}, __lf_sid)"
    )
