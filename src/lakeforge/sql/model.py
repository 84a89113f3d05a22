"""Parse a SQL model file: its ``/* lakeforge … */`` YAML header and its SELECT.

Dependencies are the table names the query reads (CTE names excluded); file-reading table
functions (``read_csv('landing/*.csv')``…) are recorded as external paths so the planner
can notice when the files change.
"""

from __future__ import annotations

import re
from pathlib import Path

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokens import Token

from lakeforge.errors import ConfigError, Location, SQLError
from lakeforge.graph.spec import Dataset, DatasetConfig
from lakeforge.project.yamlconf import load_yaml, validate

DIALECT = "duckdb"
_HEADER = re.compile(r"\A(\s*)/\*\s*lakeforge\b(.*?)\*/", re.DOTALL)
_FILE_FUNCTIONS = {
    "read_csv",
    "read_csv_auto",
    "read_json",
    "read_json_auto",
    "read_ndjson",
    "read_ndjson_auto",
    "read_parquet",
    "parquet_scan",
}
_LAYERS = {"bronze", "silver", "gold"}


def load_sql_model(path: Path, root: Path) -> Dataset:
    """Build a :class:`Dataset` from a ``models/**/*.sql`` file.

    The dataset name is the file stem unless the header sets ``name``; the layer defaults
    to the enclosing folder when it is ``bronze``, ``silver`` or ``gold``.
    """
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    text = path.read_text(encoding="utf-8")
    header: dict[str, object] = {}
    lines: dict[tuple[str | int, ...], int] = {}
    body_offset = 0
    match = _HEADER.match(text)
    if match:
        header_start_line = text[: match.start(2)].count("\n")
        data, lines = load_yaml(match.group(2), rel, line_offset=header_start_line)
        if data is not None and not isinstance(data, dict):
            raise ConfigError(
                "the lakeforge header must be a YAML mapping",
                location=Location(rel, header_start_line + 1),
            )
        header = dict(data or {})
        body_offset = text[: match.end()].count("\n")
        body = text[match.end() :]
    else:
        body = text
    header.setdefault("name", path.stem)
    if "layer" not in header and path.parent.name in _LAYERS:
        header["layer"] = path.parent.name
    config = validate(DatasetConfig, header, rel, lines, dataset=str(header.get("name")))
    assert config.name is not None
    sql = body.strip().rstrip(";").strip()
    if not sql:
        raise SQLError(
            "the SQL model has no query",
            location=Location(rel, body_offset + 1),
            dataset=config.name,
            hint="write one SELECT statement after the header",
        )
    leading = body[: len(body) - len(body.lstrip())].count("\n")
    # Tokenized once: the macro check and the parse read the same tokens.
    tokens = _tokenize(sql, rel, body_offset + leading, config.name)
    _check_macros(sql, config, Location(rel, body_offset + leading + 1), tokens)
    tree = parse_select(sql, rel, body_offset + leading, config.name, tokens)
    inputs, external = extract_references(tree)
    if config.source is not None:  # `FROM source` reads the source's batch
        inputs = [name for name in inputs if name != "source"]
    return Dataset(
        name=config.name,
        config=config,
        location=Location(rel, body_offset + leading + 1),
        inputs=inputs,
        sql=sql,
        # The tree is not used after this: normalizing it in place spares a deep copy.
        source_text=tree.sql(dialect=DIALECT, normalize=True, comments=False, copy=False),
        external_paths=external,
    )


def _tokenize(sql: str, file: str, line_offset: int, dataset: str) -> list[Token]:
    """The query's tokens in the project dialect; a lexical error carries file:line."""
    try:
        return Dialect.get_or_raise(DIALECT).tokenize(sql)
    except sqlglot.errors.TokenError as exc:
        raise SQLError(
            f"SQL does not parse: {exc}",
            location=Location(file, line_offset + 1),
            dataset=dataset,
        ) from None


def _check_macros(
    sql: str, config: DatasetConfig, location: Location, tokens: list[Token] | None = None
) -> None:
    """``@start``/``@end``/``@partition`` need partitions that define them."""
    from lakeforge.graph.partitions import uses_macros

    used = uses_macros(sql, tokens)
    if not used:
        return
    parts = config.partitions
    if parts is None:
        raise SQLError(
            f"the query uses @{sorted(used)[0]} but the dataset declares no partitions",
            location=location,
            dataset=config.name,
            hint="add `partitions: {daily: {start: 2024-01-01, column: order_date}}` to the header",
        )
    if parts.kind == "static" and used & {"start", "end"}:
        raise SQLError(
            "static partitions have no @start/@end: use @partition (the partition's value)",
            location=location,
            dataset=config.name,
        )


def parse_select(
    sql: str, file: str, line_offset: int, dataset: str, tokens: list[Token] | None = None
) -> exp.Query:
    """Parse one SELECT (or WITH … SELECT / set operation); errors carry file:line.

    ``tokens``: the query already tokenized in the project dialect (not done again)."""
    try:
        if tokens is None:
            parsed = sqlglot.parse(sql, dialect=DIALECT)
        else:
            parsed = Dialect.get_or_raise(DIALECT).parser().parse(tokens, sql)
        statements = [s for s in parsed if s is not None]
    except sqlglot.errors.ParseError as exc:
        err = exc.errors[0] if exc.errors else {}
        line = err.get("line")
        raise SQLError(
            f"SQL does not parse: {err.get('description', str(exc))}",
            location=Location(file, (line or 1) + line_offset, err.get("col")),
            dataset=dataset,
        ) from None
    if len(statements) != 1:
        raise SQLError(
            f"a SQL model holds exactly one query; found {len(statements)} statements",
            location=Location(file, line_offset + 1),
            dataset=dataset,
        )
    tree = statements[0]
    if not isinstance(tree, exp.Query):
        raise SQLError(
            f"a SQL model must be a SELECT query; found {tree.key.upper()}",
            location=Location(file, line_offset + 1),
            dataset=dataset,
            hint="Lakeforge writes the result itself; declare the write strategy in the header",
        )
    return tree


def extract_references(tree: exp.Query) -> tuple[list[str], list[str]]:
    """Dataset names and external file paths read by a query, in order of appearance."""
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    names: list[str] = []
    paths: list[str] = []
    for table in tree.find_all(exp.Table):
        target = table.this
        if isinstance(target, exp.Identifier):
            name = target.name
            if target.quoted and ("/" in name or "." in name):
                _add(paths, name)
            elif name not in ctes:
                _add(names, name)
        elif isinstance(target, exp.Func):
            func = target.sql_name() if not isinstance(target, exp.Anonymous) else target.name
            if func.lower() in _FILE_FUNCTIONS:
                for literal in target.find_all(exp.Literal):
                    if literal.is_string:
                        _add(paths, literal.this)
                        break
    return names, paths


def _add(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)
