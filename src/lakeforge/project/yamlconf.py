"""YAML that remembers where each key came from, so config errors name file and line."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from lakeforge.errors import ConfigError, Location
from lakeforge.graph.spec import STRATEGY_NAMES as _UNION_TAGS

M = TypeVar("M", bound=BaseModel)
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
Path_ = tuple[str | int, ...]


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], offset: int) -> None:
    lines[path] = node.start_mark.line + 1 + offset
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, str(key.value))
            _walk(value, sub, lines, offset)
            lines[sub] = key.start_mark.line + 1 + offset
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines, offset)


def load_yaml(text: str, file: str, line_offset: int = 0) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML text; return the data and a map from key path to 1-based line.

    Args:
        text: the YAML text.
        file: the file name used in error messages.
        line_offset: lines before ``text`` in ``file`` (for a block embedded in a SQL file).

    Raises:
        ConfigError: the YAML does not parse; names the line and column.
    """
    # One pass, through libyaml when PyYAML has it (a project loads hundreds of headers):
    # the node tree gives the lines, the data is constructed from the same tree.
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 + line_offset if mark else None
        col = mark.column + 1 if mark else None
        raise ConfigError(
            f"invalid YAML: {exc.problem}",
            location=Location(file, line, col),
            hint="check indentation and quoting around this line",
        ) from None
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {}
    if node is not None:
        _walk(node, (), lines, line_offset)
    return data, lines


def line_of(lines: dict[Path_, int], path: Iterable[str | int]) -> int | None:
    """The line of the longest prefix of ``path`` present in ``lines``."""
    parts = tuple(path)
    while parts:
        if parts in lines:
            return lines[parts]
        parts = parts[:-1]
    return lines.get(())


def validate(
    model: type[M],
    data: Any,
    file: str,
    lines: dict[Path_, int],
    *,
    prefix: Path_ = (),
    dataset: str | None = None,
) -> M:
    """Validate ``data`` into ``model``; a failure names the key, its file:line, and why."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [p for p in first["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)]
        key = ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown key {key!r}"
            allowed = _allowed_keys(model, loc[:-1])
            hint = f"allowed keys here: {', '.join(allowed)}" if allowed else None
        else:
            message = f"{key}: {message}"
            hint = None
        more = len(exc.errors()) - 1
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(
            message,
            location=Location(file, line_of(lines, (*prefix, *loc))),
            dataset=dataset,
            hint=hint,
        ) from None


def _allowed_keys(model: type[BaseModel], loc: list[Any]) -> list[str]:
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []
