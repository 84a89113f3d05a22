"""Write–audit–publish: everything that happens to a candidate batch before its commit.

``audit`` applies the row expectations (publish / drop / quarantine / fail), then evaluates
the dataset's checks and its contract's checks on the rows that would be published — or,
for ``scope: table``, on the table as it will be after the write — and reports which results
block the publish. It writes nothing: the executor commits the quarantine and the dataset
only when nothing blocks, and otherwise keeps the candidate for inspection.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import sqlglot
from sqlglot import exp

from lakeforge.engines.connection import connect
from lakeforge.errors import ConfigError, DatasetNotFound
from lakeforge.quality.checks import (
    ROW_COLUMN,
    CheckEnvironment,
    CheckTarget,
    evaluate_checks,
    ident,
)
from lakeforge.quality.expectations import apply_expectations
from lakeforge.quality.results import DEFAULT_SAMPLE_ROWS, CheckResult
from lakeforge.quality.spec import CustomSQL, Relationships, SqlValue, _Check

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from lakeforge.graph.spec import Dataset
    from lakeforge.storage.delta import DeltaStore

BATCH_RELATION = "__lf_batch"
PLAIN_BATCH_RELATION = "__lf_batch_rows"
TABLE_RELATION = "__lf_table"
CURRENT_RELATION = "__lf_current"


@dataclass
class AuditOutcome:
    """The verdict on one candidate batch.

    ``rows_in == published.num_rows + quarantined rows + dropped`` always holds.
    """

    rows_in: int
    published: pa.Table
    quarantined: pa.Table | None
    dropped: int
    results: list[CheckResult] = field(default_factory=list)
    read_versions: dict[str, int] = field(default_factory=dict)

    @property
    def quarantined_rows(self) -> int:
        return 0 if self.quarantined is None else self.quarantined.num_rows

    @property
    def blocking(self) -> list[CheckResult]:
        return [r for r in self.results if r.blocking]

    def counts(self) -> dict[str, int]:
        """Results by status (pass / warn / fail / error)."""
        return dict(Counter(r.status for r in self.results))


def check_dependencies(checks: Sequence[_Check], own_name: str) -> set[str]:
    """Other datasets the checks read (relationship targets, tables named in check SQL)."""
    found: set[str] = set()
    for check in checks:
        if isinstance(check, Relationships):
            found.add(check.to)
        elif isinstance(check, CustomSQL | SqlValue):
            try:
                tree = sqlglot.parse_one(check.sql, dialect="duckdb")
            except sqlglot.errors.ParseError:
                continue  # reported with its location when the check is evaluated
            ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
            found |= {t.name for t in tree.find_all(exp.Table) if t.name and t.name not in ctes}
    found.discard(own_name)
    return found


def audit(
    ds: Dataset,
    candidate: pa.Table,
    *,
    store: DeltaStore,
    target_version: int | None,
    extra_checks: list[CheckTarget] | None = None,
    contract_types: Callable[[dict[str, str]], list[str]] | None = None,
    history: Callable[[str, int], list[float]] | None = None,
    now: dt.datetime | None = None,
    sample_size: int = DEFAULT_SAMPLE_ROWS,
    threads: int | None = None,
    replaces: str | None = None,
) -> AuditOutcome:
    """Apply ``ds``'s expectations and evaluate its checks on ``candidate``.

    Args:
        ds: the dataset.
        candidate: the transform's output.
        store: reads the current table (``scope: table``) and other datasets checks name.
        target_version: the table's version the write will apply to (None: the write
            replaces the table from scratch).
        extra_checks: checks from the dataset's data contract.
        contract_types: the contract's logical-type judgement: column → DuckDB type in,
            problems out.
        history: check name, window → earlier published values (anomaly checks).
        now: evaluation time (freshness); default the current time.
        sample_size: failing rows kept per result.
        threads: DuckDB threads (default: all cores).
        replaces: the condition of the partition a partition build replaces.
    """
    pii = {name for name, col in ds.config.columns.items() if col.pii}
    targets = [CheckTarget(c) for c in ds.config.checks] + list(extra_checks or [])
    if not ds.config.expect and not targets and contract_types is None:
        return AuditOutcome(candidate.num_rows, candidate, None, 0)

    # Checks run in-process on the Arrow candidate, whatever engine produced it.
    con = connect(threads=threads)
    try:
        split = apply_expectations(con, ds, candidate, sample_size=sample_size, pii_columns=pii)
        outcome = AuditOutcome(
            split.rows_in, split.published, split.quarantined, split.dropped, split.results
        )
        con.register(PLAIN_BATCH_RELATION, split.published)
        if contract_types is not None:
            outcome.results.append(_contract_type_result(con, contract_types))
        if not targets:
            return outcome
        # The batch with each row's position: checks collect the positions of their first
        # failing rows in the same scan, and samples are then taken from Arrow.
        import numpy as np
        import pyarrow as pa

        rows = pa.array(np.arange(split.published.num_rows, dtype=np.int64))
        con.register(BATCH_RELATION, split.published.append_column(ROW_COLUMN, rows))
        relations = {"batch": BATCH_RELATION}
        plain = {"batch": PLAIN_BATCH_RELATION}
        if any(t.check.scope == "table" for t in targets):
            _register_table_scope(con, ds, store, target_version, replaces)
            relations["table"] = TABLE_RELATION
        registered: dict[str, str] = {}

        def resolve(name: str) -> str:
            if name not in registered:
                from lakeforge.engines.duckdb import register_table

                try:
                    pinned = store.read(name)
                except DatasetNotFound:
                    raise LookupError(f"dataset {name!r} has no table yet") from None
                alias = f"__lf_ds_{len(registered)}"
                register_table(con, alias, pinned)
                registered[name] = alias
                outcome.read_versions[name] = pinned.version
            return registered[name]

        env = CheckEnvironment(
            con=con,
            ds=ds,
            relations=relations,
            resolve=resolve,
            history=history or (lambda name, window: []),
            now=now or dt.datetime.now(dt.UTC),
            sample_size=sample_size,
            pii_columns=pii,
            positions={BATCH_RELATION: split.published},
            plain=plain,
        )
        outcome.results += evaluate_checks(env, targets)
        return outcome
    finally:
        con.close()


def _contract_type_result(
    con: duckdb.DuckDBPyConnection, judge: Callable[[dict[str, str]], list[str]]
) -> CheckResult:
    relation = con.table(PLAIN_BATCH_RELATION)
    columns = {n: str(t) for n, t in zip(relation.columns, relation.types, strict=True)}
    problems = judge(columns)
    return CheckResult(
        name="contract:logical_types",
        check_type="schema",
        origin="contract",
        severity="error",
        status="fail" if problems else "pass",
        scope="batch",
        value=float(len(problems)),
        failing=len(problems),
        total=len(columns),
        threshold="each column's type is of its logicalType's family",
        message="; ".join(problems) if problems else "column types match the contract",
    )


def _register_table_scope(
    con: duckdb.DuckDBPyConnection,
    ds: Dataset,
    store: DeltaStore,
    target_version: int | None,
    replaces: str | None = None,
) -> None:
    """Define ``__lf_table``: the table as it will be once the candidate is written."""
    from lakeforge.engines.duckdb import register_table
    from lakeforge.storage.write import table_after_write_sql

    if ds.config.write.strategy == "scd2":
        raise ConfigError(
            f"{ds.name}: checks with scope: table are not available for scd2 writes",
            location=ds.location,
            dataset=ds.name,
            hint="check the batch (the default scope), or check a view of the current rows "
            "downstream",
        )
    current = None
    if target_version is not None:
        register_table(con, CURRENT_RELATION, store.read(ds.name, target_version))
        current = CURRENT_RELATION
    cdc = None
    if ds.config.write.strategy == "cdc":  # the change feed applies with its tombstones
        from lakeforge.storage.cdc_apply import cdc_scope

        cdc = cdc_scope(con, store, ds, PLAIN_BATCH_RELATION, current)
    sql = table_after_write_sql(ds, PLAIN_BATCH_RELATION, current, replaces, cdc)
    con.sql(f"CREATE TEMP VIEW {ident(TABLE_RELATION)} AS {sql}")


def stage_candidate(root: Path, run_id: str, dataset: str, candidate: pa.Table) -> Path:
    """Keep a blocked candidate as Parquet so it can be inspected (``checks show RUN``)."""
    import pyarrow.parquet as pq

    folder = root / "candidates" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset}.parquet"
    pq.write_table(candidate, path)
    return path
