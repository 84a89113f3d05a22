"""Console output shared by the commands: errors, JSON, Arrow tables."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    import pyarrow as pa

    from lakeforge.errors import LakeforgeError

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(
        orjson.dumps(
            data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str
        ).decode()
        + "\n"
    )
    sys.stdout.flush()


def print_error(exc: LakeforgeError, *, debug: bool, trace: str | None = None) -> None:
    if debug and trace:
        err_console.print(trace, markup=False, highlight=False)
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[dim]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)


def arrow_table(data: pa.Table, title: str | None = None, max_width: int = 60) -> Table:
    table = Table(title=title, title_justify="left")
    for name in data.column_names:
        table.add_column(escape(name), overflow="fold", max_width=max_width)
    for row in data.to_pylist():
        table.add_row(*("∅" if v is None else escape(str(v)) for v in row.values()))
    return table


def arrow_records(data: pa.Table) -> list[dict[str, Any]]:
    return data.to_pylist()
