"""``@lf.table`` and ``@lf.view``: declare a dataset from a Python function.

The decorators validate the configuration and attach a :class:`Dataset` to the function
(attribute ``__lakeforge_dataset__``); nothing is registered globally. The project loader
collects these attributes from the modules under ``pipelines/``.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, overload

from pydantic import ValidationError

from lakeforge.errors import ConfigError, Location
from lakeforge.graph.spec import RESERVED_PARAMETERS, SOURCE_PARAMETER, Dataset, DatasetConfig

F = TypeVar("F", bound=Callable[..., Any])
ATTRIBUTE = "__lakeforge_dataset__"


def _declare(function: Callable[..., Any], kind: str, options: dict[str, Any]) -> Dataset:
    file = inspect.getsourcefile(function) or "<unknown>"
    try:
        lines, first_line = inspect.getsourcelines(function)
        source = _without_decorators(textwrap.dedent("".join(lines)))
    except (OSError, TypeError):
        first_line, source = 0, getattr(function, "__qualname__", "")
    location = Location(_display_path(file), first_line or None)
    options = {k: v for k, v in options.items() if v is not None}
    options.setdefault("name", function.__name__)
    options["kind"] = kind
    try:
        config = DatasetConfig.model_validate(options)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"@lf.{kind} {key}: {first['msg'].removeprefix('Value error, ')}",
            location=location,
            dataset=options.get("name"),
        ) from None
    assert config.name is not None
    inputs: list[str] = []
    takes_context = False
    for param in inspect.signature(function).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(
                f"@lf.{kind} {config.name}: *args/**kwargs cannot name upstream datasets",
                location=location,
                dataset=config.name,
                hint="name each upstream dataset as a parameter",
            )
        if param.name in RESERVED_PARAMETERS:
            takes_context = True
        elif param.name == SOURCE_PARAMETER and config.source is not None:
            continue  # the source's batch, not an upstream dataset
        else:
            inputs.append(param.name)
    return Dataset(
        name=config.name,
        config=config,
        location=location,
        inputs=inputs,
        function=function,
        source_text=source,
        takes_context=takes_context,
    )


def _without_decorators(source: str) -> str:
    """The function from its ``def`` line on: the decorator's options are fingerprinted
    through the configuration (only those that shape the data), not as source text."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return "".join(source.splitlines(keepends=True)[node.lineno - 1 :])
    return source


def _display_path(file: str) -> str:
    path = Path(file)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _decorator(kind: str, function: F | None, options: dict[str, Any]) -> Any:
    def wrap(fn: F) -> F:
        setattr(fn, ATTRIBUTE, _declare(fn, kind, options))
        return fn

    return wrap(function) if function is not None else wrap


@overload
def table(function: F, /) -> F: ...
@overload
def table(
    function: None = None, /, *, name: str | None = None, **options: Any
) -> Callable[[F], F]: ...
def table(function: F | None = None, /, *, name: str | None = None, **options: Any) -> Any:
    """Declare a materialized dataset (a Delta table) built by the decorated function.

    Parameters of the function name its upstream datasets; each arrives as a DuckDB
    relation over the input pinned for this run. A parameter named ``context`` receives the
    run context instead. The function returns a DuckDB relation, a pyarrow Table or
    RecordBatchReader, a Polars or a pandas DataFrame.

    Args:
        function: the function (when used as bare ``@lf.table``).
        name: dataset name (default: the function name).
        **options: any key of a dataset configuration: ``layer``, ``description``,
            ``owner``, ``tags``, ``columns``, ``partition_by``, ``cluster_by``,
            ``schema_evolution``, ``retries``, ``write`` (``lf.Merge(...)`` etc.),
            ``partitions`` (``lf.Daily(start=..., column=...)``: the function is called once
            per partition; ``context.partition`` has its ``start``/``end``).

    Example:
        >>> @lf.table(layer="silver", write=lf.Merge(keys=["order_id"]))
        ... def orders(raw_orders):
        ...     return raw_orders.filter("order_id IS NOT NULL")
    """
    return _decorator("table", function, {"name": name, **options})


@overload
def stream_table(function: F, /) -> F: ...
@overload
def stream_table(
    function: None = None, /, *, name: str | None = None, **options: Any
) -> Callable[[F], F]: ...
def stream_table(function: F | None = None, /, *, name: str | None = None, **options: Any) -> Any:
    """Declare a streaming table: ``@lf.table(mode="streaming", ...)``.

    It is built micro-batch by micro-batch from a ``source`` (files, a broker …) or from
    the rows appended to an upstream dataset (``stream_from``), appending by default.
    ``lakeforge stream`` runs it continuously on its ``trigger`` (an interval such as
    ``"30s"``, or ``"available_now"``); ``lakeforge run`` processes what is available now.

    Example:
        >>> @lf.stream_table(trigger="5s")
        ... def clean_events(raw_events):
        ...     return raw_events.filter("device_id IS NOT NULL")
    """
    return _decorator("table", function, {"name": name, **options, "mode": "streaming"})


@overload
def view(function: F, /) -> F: ...
@overload
def view(
    function: None = None, /, *, name: str | None = None, **options: Any
) -> Callable[[F], F]: ...
def view(function: F | None = None, /, *, name: str | None = None, **options: Any) -> Any:
    """Declare a view: a named transform computed when read, never stored.

    Takes the same arguments as :func:`table` except the storage ones (``write``,
    ``partition_by``, ``cluster_by``).
    """
    return _decorator("view", function, {"name": name, **options})
