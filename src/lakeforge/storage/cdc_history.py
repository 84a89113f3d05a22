"""SCD2 history of a change feed: the SQL turning a batch of changes and the versions a table
holds into the versions to write. The rules are in :mod:`lakeforge.storage.cdc_apply`; this
module is its ``scd_type: 2`` half.

The events of a key, in sequence order, are its current version (kind 0), truncates (1),
deletes (2) and upserts (3). A **version** is a run of events that starts with an upsert (or
is the current version) and continues while the next upserts leave every tracked column
unchanged; its row holds the run's last change (a change of untracked columns updates the
version in place), ``valid_from`` the run's first sequence and ``valid_to`` the sequence of
the event that ends it: an upsert changing a tracked column, a delete, a truncate.

The SQL reads the temporary relations :func:`~lakeforge.storage.cdc_apply.apply_changes`
creates: ``b`` (the flagged batch), ``__lf_w`` (truncate watermark), ``__lf_tomb``
(tombstones), ``__lf_hist`` (the table's versions of the keys concerned) and ``__lf_hi`` (per
key, the greatest sequence its versions hold).
"""

from __future__ import annotations

from lakeforge.graph.spec import CDC
from lakeforge.storage.cdc_feed import IS_DELETE, IS_TRUNCATE, Feed, match_sql
from lakeforge.storage.cdc_tombstones import SEQ_COL, deleted_by_key_sql
from lakeforge.storage.write import q

# Event kinds, in the order they apply at one sequence value.
CURRENT, TRUNCATE, DELETE, UPSERT = 0, 1, 2, 3


# The greatest sequence a key already has: its versions, its delete, the last truncate.
_NEWEST = f"greatest(h.__lf_hi, d.{SEQ_COL}, w.__lf_w0)"


def applied_changes_sql(feed: Feed) -> str:
    """The batch's changes that apply: newer than everything their key already has, not at
    the sequence of one of the batch's truncates, one per key and sequence."""
    keys = ", ".join(f"c.{q(k)}" for k in [*feed.keys, feed.seq])
    s = q(feed.seq)
    cols = ", ".join(f"c.{q(col)}" for col in [*feed.keys, feed.seq, *feed.values])
    newest = _NEWEST
    return (
        f"SELECT {cols}, c.{IS_DELETE} FROM b AS c CROSS JOIN __lf_w AS w "
        f"LEFT JOIN __lf_hi AS h ON {match_sql(feed, 'c', 'h')} "
        f"LEFT JOIN ({deleted_by_key_sql(feed, '__lf_tomb')}) AS d ON {match_sql(feed, 'c', 'd')} "
        f"WHERE NOT c.{IS_TRUNCATE} AND ({newest} IS NULL OR c.{s} > {newest}) "
        f"AND c.{s} NOT IN (SELECT {s} FROM b WHERE {IS_TRUNCATE}) "
        f"QUALIFY row_number() OVER (PARTITION BY {keys}) = 1"
    )


def events_sql(feed: Feed, c: CDC, truncates: bool) -> str:
    """Every event of the keys concerned: current versions, applied changes and (when the
    batch truncates anew) the truncates newer than what each key has."""
    cols = ", ".join(q(col) for col in [*feed.keys, feed.seq, *feed.values])
    sql = (
        f"SELECT {cols}, {CURRENT} AS __lf_o, {q(c.valid_from)} AS __lf_vf FROM __lf_hist "
        f"WHERE {q(c.is_current)} UNION ALL BY NAME SELECT {cols}, "
        f"CASE WHEN {IS_DELETE} THEN {DELETE} ELSE {UPSERT} END AS __lf_o FROM __lf_ch"
    )
    if not truncates:
        return sql
    keys = ", ".join(q(k) for k in feed.keys)
    s = q(feed.seq)
    newest = _NEWEST
    return sql + (
        f" UNION ALL BY NAME SELECT {', '.join(f'k.{q(x)}' for x in feed.keys)}, t.{s}, "
        f"{TRUNCATE} AS __lf_o FROM (SELECT {keys} FROM __lf_hist WHERE {q(c.is_current)} "
        f"UNION SELECT {keys} FROM __lf_ch) AS k "
        f"CROSS JOIN (SELECT DISTINCT {s} FROM b WHERE {IS_TRUNCATE}) AS t CROSS JOIN __lf_w AS w "
        f"LEFT JOIN __lf_hi AS h ON {match_sql(feed, 'k', 'h')} "
        f"LEFT JOIN ({deleted_by_key_sql(feed, '__lf_tomb')}) AS d ON {match_sql(feed, 'k', 'd')} "
        f"WHERE {newest} IS NULL OR t.{s} > {newest}"
    )


def versions_sql(feed: Feed, c: CDC) -> str:
    """One row per version the events make or change: the feed's columns, ``__lf_vf`` /
    ``__lf_vt`` (its validity), ``__lf_first`` (the kind that opened it: 0 for a version the
    table has) and ``__lf_changed`` (false for a current version the batch leaves alone)."""
    keys = ", ".join(q(k) for k in feed.keys)
    s = q(feed.seq)
    by_key = f"PARTITION BY {keys} ORDER BY {s}, __lf_o"
    events = "__lf_ev"
    if c.ignore_null_updates and feed.values:
        # A NULL keeps the value of the key's previous change, back to its last delete or
        # truncate (each starts a new group).
        filled = ", ".join(
            f"last_value(CASE WHEN __lf_o IN ({CURRENT}, {UPSERT}) THEN {q(v)} END IGNORE NULLS) "
            f"OVER g AS {q(v)}"
            for v in feed.values
        )
        events = (
            f"(SELECT * REPLACE ({filled}) FROM (SELECT *, sum((__lf_o IN ({TRUNCATE}, {DELETE}))"
            f"::INT) OVER ({by_key} ROWS UNBOUNDED PRECEDING) AS __lf_g FROM __lf_ev) "
            f"WINDOW g AS (PARTITION BY {keys}, __lf_g ORDER BY {s}, __lf_o "
            "ROWS UNBOUNDED PRECEDING))"
        )
    changed = " OR ".join(f"{q(t)} IS DISTINCT FROM lag({q(t)}) OVER w" for t in feed.tracked)
    starts = (
        f"SELECT *, CASE WHEN __lf_o <> {UPSERT} THEN TRUE "
        f"WHEN lag(__lf_o) OVER w IS NULL OR lag(__lf_o) OVER w IN ({TRUNCATE}, {DELETE}) "
        f"THEN TRUE ELSE {changed or 'FALSE'} END AS __lf_start FROM {events} "
        f"WINDOW w AS ({by_key})"
    )
    runs = (
        f"SELECT *, sum(__lf_start::INT) OVER ({by_key} ROWS UNBOUNDED PRECEDING) AS __lf_run "
        f"FROM ({starts})"
    )
    whole_run = (
        f"PARTITION BY {keys}, __lf_run ORDER BY {s}, __lf_o "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING"
    )
    last = (
        f"SELECT *, first_value(__lf_o) OVER r AS __lf_first, first_value({s}) OVER r "
        f"AS __lf_first_s, count(*) OVER r AS __lf_n, max(__lf_vf) OVER r AS __lf_evf "
        f"FROM ({runs}) WINDOW r AS ({whole_run}) "
        f"QUALIFY row_number() OVER (PARTITION BY {keys}, __lf_run ORDER BY {s} DESC, "
        "__lf_o DESC) = 1"
    )
    cols = ", ".join(q(col) for col in feed.columns)
    bounded = (
        f"SELECT {cols}, __lf_first, __lf_n, coalesce(__lf_evf, __lf_first_s) AS __lf_vf, "
        f"lead(__lf_first_s) OVER (PARTITION BY {keys} ORDER BY __lf_run) AS __lf_vt "
        f"FROM ({last})"
    )
    return (
        f"SELECT * EXCLUDE (__lf_n), __lf_n > 1 OR __lf_vt IS NOT NULL AS __lf_changed "
        f"FROM ({bounded}) WHERE __lf_first IN ({CURRENT}, {UPSERT})"
    )
