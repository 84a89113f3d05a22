"""Sensors: conditions evaluated every ``min_interval`` that queue a run when they hold.

Three kinds, each comparing what it sees now with what its last evaluation saw (its
*state*, kept in the metadata store by the scheduler):

- **files** (``files: landing/*.csv``): fires when a file matching the glob is new or
  changed (size or modification time) since the last evaluation. Files removed do not fire;
  empty files are ignored until they have content (they are often still being written).
  Files already there when the sensor is first evaluated count as new.
- **upstream** (``datasets: [orders]``, or ``on_upstream_change: true`` on a dataset):
  fires when one of the tables has a new *data* version (a commit that changed rows —
  ``optimize`` and ``vacuum`` do not count) since the versions recorded at the last
  evaluation. The first evaluation records the versions it finds and does not fire.
- **python** (``@lf.sensor`` in ``pipelines/*.py``, or ``python: module:function``): the
  function gets a :class:`SensorContext` and returns ``True``/``False`` (run the sensor's
  selection or not) or a :class:`RunRequest`. ``context.cursor`` is the value it left
  there last time (JSON), for it to remember what it has seen.

Evaluation is separate from queueing so the scheduler can evaluate without holding locks;
it then records the new state and the queued run in one transaction.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from lakeforge.errors import ConfigError, LakeforgeError, Location

if TYPE_CHECKING:
    from lakeforge.project.loader import Project
    from lakeforge.scheduling.spec import SensorConfig
    from lakeforge.storage.delta import DeltaStore

F = TypeVar("F", bound=Callable[..., Any])
SENSOR_ATTRIBUTE = "__lakeforge_sensor__"
_SHOWN_FILES = 3  # file names quoted in a queue item's reason


@dataclass(frozen=True)
class RunRequest:
    """What a Python sensor returns to queue a run.

    Args:
        select: what to run (selection syntax; a term or a list); default: the sensor's
            ``select``.
        key: identifies what the run is for (a file name, an export id …): a request with
            the same key as the one before is not queued again, and the key makes the
            queue item's dedupe key ``sensor:<name>:<key>``.
        reason: shown in ``lakeforge queue ls`` and recorded with the run.
    """

    select: list[str] | str | None = None
    key: str | None = None
    reason: str | None = None


@dataclass
class SensorContext:
    """What a Python sensor is called with.

    Attributes:
        name: the sensor's name.
        now: the evaluation time (UTC; the scheduler's clock).
        cursor: the value the sensor left in ``cursor`` at its last evaluation (None the
            first time); set it to anything JSON can hold to remember what was seen.
        last_fired: when the sensor last queued a run, if ever.
        project_root: the project folder.
        vars: ``vars:`` of lakeforge.yml.
    """

    name: str
    now: datetime
    cursor: Any
    last_fired: datetime | None
    project_root: Path
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SensorDefinition:
    """What ``@lf.sensor`` attaches to its function (collected by the project loader)."""

    config: SensorConfig
    function: Callable[..., Any]
    location: Location


@overload
def sensor(function: F, /) -> F: ...
@overload
def sensor(
    function: None = None,
    /,
    *,
    name: str | None = None,
    select: list[str] | str | None = None,
    min_interval: str | float = "30s",
    priority: int = 0,
    pool: str | None = None,
) -> Callable[[F], F]: ...
def sensor(
    function: F | None = None,
    /,
    *,
    name: str | None = None,
    select: list[str] | str | None = None,
    min_interval: str | float = "30s",
    priority: int = 0,
    pool: str | None = None,
) -> Any:
    """Declare a custom sensor: ``lakeforge schedule`` calls the function every
    ``min_interval`` and queues a run when it returns ``True`` or a :class:`RunRequest`.

    Args:
        function: the function (when used as bare ``@lf.sensor``); it takes a
            :class:`SensorContext` (or nothing).
        name: the sensor's name (default: the function name).
        select: what to run when it fires (a ``RunRequest`` may name its own).
        min_interval: evaluated at most this often (``30s``, ``5m`` …).
        priority / pool: of the queued runs, as for schedules.

    Example:
        >>> @lf.sensor(select=["+daily_export"], min_interval="5m")
        ... def export_ready(context):
        ...     marker = context.project_root / "landing" / "_SUCCESS"
        ...     if not marker.exists():
        ...         return False
        ...     return lf.RunRequest(key=str(marker.stat().st_mtime_ns))
    """
    options = {
        "name": name,
        "select": select,
        "min_interval": min_interval,
        "priority": priority,
        "pool": pool,
    }

    def wrap(fn: F) -> F:
        setattr(fn, SENSOR_ATTRIBUTE, _declare(fn, options))
        return fn

    return wrap(function) if function is not None else wrap


def _declare(fn: Callable[..., Any], options: dict[str, Any]) -> SensorDefinition:
    from pydantic import ValidationError

    from lakeforge.scheduling.spec import SensorConfig

    file = inspect.getsourcefile(fn) or "<unknown>"
    try:
        line: int | None = inspect.getsourcelines(fn)[1]
    except (OSError, TypeError):
        line = None
    location = Location(file, line)
    data = {k: v for k, v in options.items() if v is not None}
    data.setdefault("name", fn.__name__)
    data["python"] = f"{fn.__module__}:{fn.__name__}"
    try:
        config = SensorConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        text = f"@lf.sensor {key}: {message}" if key else f"@lf.sensor: {message}"
        raise ConfigError(text, location=location) from None
    return SensorDefinition(config, fn, location)


@dataclass(frozen=True)
class Sensor:
    """A sensor of the project, resolved against the graph.

    Attributes:
        name: its name (``dataset:<name>`` for ``on_upstream_change``).
        config: the configuration (interval, priority, pool, trigger).
        selection: what it runs (terms as queued).
        datasets: what the selection resolves to now (pool routing by tag).
        watched: upstream sensors: the tables whose versions it compares.
        function: Python sensors: the function called.
        origin: where it is declared.
    """

    name: str
    config: SensorConfig
    selection: list[str]
    datasets: list[str]
    origin: str
    watched: list[str] = field(default_factory=list)
    function: Callable[..., Any] | None = None

    @property
    def kind(self) -> str:
        return self.config.kind

    def describe(self) -> str:
        """``files landing/*.csv``, ``upstream orders, customers``, ``python mod:fn``."""
        if self.config.files is not None:
            return f"files {self.config.files}"
        if self.kind == "upstream":
            return "upstream " + ", ".join(self.watched)
        return f"python {self.origin}"


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one evaluation.

    Attributes:
        fire: queue a run.
        state: what to remember for the next evaluation (stored whether it fired or not).
        reason: why it fires (the queue item's reason), or what it saw.
        key: identifies this firing (the queue item's dedupe key is ``sensor:<name>:<key>``).
        selection: a Python sensor's own selection for this run.
    """

    fire: bool
    state: dict[str, Any]
    reason: str
    key: str
    selection: list[str] | None = None


def sensors_of(project: Project) -> list[Sensor]:
    """The project's sensors: ``sensors:`` of lakeforge.yml, ``@lf.sensor`` functions of
    ``pipelines/*.py``, then each dataset with ``on_upstream_change: true``.

    Raises:
        ConfigError: a selection or a watched dataset is unknown, a ``python:`` reference
            cannot be imported, two sensors share a name, or a dataset with
            ``on_upstream_change`` reads no table.
    """
    from lakeforge.graph.selection import select

    graph = project.graph
    config_file = Location(str(project.root / "lakeforge.yml"))

    def resolve(name: str, terms: list[str], where: Location) -> list[str]:
        if not terms:
            return []
        try:
            return select(graph, terms)
        except LakeforgeError as exc:
            raise ConfigError(
                f"sensor {name!r} select: {exc.message}", location=where, hint=exc.hint
            ) from None

    out: list[Sensor] = []
    for c in project.config.sensors:
        watched: list[str] = []
        function = None
        if c.datasets is not None:
            watched = _watched(project, c.name, c.datasets, config_file)
        if c.python is not None:
            function = _import_function(project.root, c.name, c.python, config_file)
        names = resolve(c.name, c.select, config_file)
        out.append(Sensor(c.name, c, list(c.select), names, "lakeforge.yml", watched, function))
    for definition in project.sensors:
        c = definition.config
        names = resolve(c.name, c.select, definition.location)
        out.append(
            Sensor(
                c.name,
                c,
                list(c.select),
                names,
                str(definition.location),
                function=definition.function,
            )
        )
    for name in graph.order:
        ds = graph[name]
        if not ds.config.on_upstream_change:
            continue
        inputs = graph.materialized_inputs(name)
        if not inputs:
            raise ConfigError(
                f"dataset {name!r} has on_upstream_change: true but reads no table",
                location=ds.location,
                dataset=name,
                hint="give it a `schedule:` instead, or remove on_upstream_change",
            )
        from lakeforge.scheduling.spec import SensorConfig

        c = SensorConfig(name=name, datasets=inputs, select=[name])
        out.append(Sensor(f"dataset:{name}", c, [name], [name], str(ds.location), inputs))
    names = [s.name for s in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"two sensors are named {duplicates[0]!r} (lakeforge.yml and @lf.sensor)",
            location=config_file,
            hint="give one of them another `name`",
        )
    return out


def _watched(project: Project, sensor: str, datasets: list[str], where: Location) -> list[str]:
    """The tables an upstream sensor compares (a view stands for the tables it reads)."""
    graph = project.graph
    out: list[str] = []
    for name in datasets:
        try:
            ds = graph[name]
        except LakeforgeError as exc:  # unknown: with a did-you-mean
            raise ConfigError(
                f"sensor {sensor!r} datasets: {exc.message}", location=where, hint=exc.hint
            ) from None
        tables = graph.materialized_inputs(name) if ds.is_view else [name]
        out.extend(t for t in tables if t not in out)
    return out


def _import_function(root: Path, sensor: str, reference: str, where: Location) -> Any:
    """The function ``module:function`` names, imported with the project root on
    ``sys.path`` (so ``sensors/landing.py`` is ``sensors.landing``)."""
    import importlib
    import sys

    module_name, _, attribute = reference.partition(":")
    added = str(root) not in sys.path
    if added:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"sensor {sensor!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}",
            location=where,
            hint="python: takes module:function, the module importable from the project root",
        ) from None
    finally:
        if added:
            sys.path.remove(str(root))
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(
            f"sensor {sensor!r}: {module_name} has no function {attribute!r}", location=where
        )
    return function


# -- evaluation ----------------------------------------------------------------------------


def evaluate(
    sensor: Sensor,
    previous: dict[str, Any],
    *,
    now: datetime,
    last_fired: datetime | None,
    project: Project,
    store: Callable[[], DeltaStore],
) -> Evaluation:
    """Evaluate ``sensor`` against the state its last evaluation left (``{}`` at first).

    Raises:
        Exception: whatever reading the files or tables, or the sensor function, raised;
            the scheduler records it on the sensor and goes on.
    """
    if sensor.kind == "files":
        return _evaluate_files(sensor, previous, project.root)
    if sensor.kind == "upstream":
        return _evaluate_upstream(sensor, previous, store())
    return _evaluate_python(sensor, previous, now, last_fired, project)


def _evaluate_files(sensor: Sensor, previous: dict[str, Any], root: Path) -> Evaluation:
    import glob

    pattern = sensor.config.files
    assert pattern is not None
    full = pattern if os.path.isabs(pattern) else str(root / pattern)
    seen: dict[str, list[int]] = {}
    for path in glob.glob(full, recursive=True):
        try:
            st = os.stat(path)
        except OSError:
            continue  # vanished between listing and stat
        if os.path.isfile(path) and st.st_size > 0:
            seen[os.path.relpath(path, root)] = [st.st_size, st.st_mtime_ns]
    before = previous.get("files", {})
    changed = sorted(p for p, sig in seen.items() if before.get(p) != sig)
    key = _digest(sorted(seen.items()))
    shown = ", ".join(changed[:_SHOWN_FILES]) + (" …" if len(changed) > _SHOWN_FILES else "")
    reason = (
        f"sensor {sensor.name}: {len(changed)} new or changed file(s): {shown}"
        if changed
        else f"sensor {sensor.name}: {len(seen)} file(s), none new"
    )
    return Evaluation(bool(changed), {"files": seen}, reason, key)


def _evaluate_upstream(sensor: Sensor, previous: dict[str, Any], store: DeltaStore) -> Evaluation:
    versions: dict[str, int | None] = {}
    for name in sensor.watched:
        state = store.state(name)
        versions[name] = None if state is None else state.data_version
    key = _digest(sorted(versions.items()))
    before = previous.get("versions")
    if before is None:  # first evaluation: the baseline
        return Evaluation(False, {"versions": versions}, f"sensor {sensor.name}: baseline", key)
    changed = [n for n in sensor.watched if versions[n] != before.get(n)]
    moves = ", ".join(f"{n} {_v(before.get(n))} → {_v(versions[n])}" for n in changed)
    reason = f"sensor {sensor.name}: " + (moves or "no upstream change")
    return Evaluation(bool(changed), {"versions": versions}, reason, key)


def _v(version: Any) -> str:
    return "(no table)" if version is None else f"v{version}"


def _evaluate_python(
    sensor: Sensor,
    previous: dict[str, Any],
    now: datetime,
    last_fired: datetime | None,
    project: Project,
) -> Evaluation:
    fn = sensor.function
    assert fn is not None
    context = SensorContext(
        name=sensor.name,
        now=now,
        cursor=previous.get("cursor"),
        last_fired=last_fired,
        project_root=project.root,
        vars=dict(project.config.vars),
    )
    takes_context = bool(inspect.signature(fn).parameters)
    result = fn(context) if takes_context else fn()
    try:
        json.dumps(context.cursor)
    except (TypeError, ValueError):
        raise LakeforgeError(
            f"sensor {sensor.name!r} left a cursor JSON cannot hold: "
            f"{type(context.cursor).__name__}",
            hint="set context.cursor to a str, number, bool, list or dict",
        ) from None
    state: dict[str, Any] = {"cursor": context.cursor, "last_key": previous.get("last_key")}
    if result is None or result is False:
        return Evaluation(False, state, f"sensor {sensor.name}: no run requested", "")
    if result is True:
        result = RunRequest()
    if not isinstance(result, RunRequest):
        raise LakeforgeError(
            f"sensor {sensor.name!r} returned {type(result).__name__}",
            hint="return True, False or lf.RunRequest(...)",
        )
    selection = [result.select] if isinstance(result.select, str) else result.select
    if not (selection or sensor.selection):
        raise LakeforgeError(
            f"sensor {sensor.name!r} requested a run but names no selection",
            hint="give the sensor `select`, or return lf.RunRequest(select=[...])",
        )
    reason = result.reason or f"sensor {sensor.name}"
    if result.key is not None:
        if result.key == previous.get("last_key"):
            return Evaluation(False, state, f"{reason} (key {result.key} already queued)", "")
        state["last_key"] = result.key
        return Evaluation(True, state, reason, result.key, selection or None)
    return Evaluation(True, state, reason, now.isoformat(), selection or None)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, default=str).encode()).hexdigest()[:16]


def describe_state(sensor: Sensor, state: dict[str, Any]) -> str:
    """One line about what the sensor last saw, for ``lakeforge schedule ls``."""
    if not state:
        return "never evaluated"
    if sensor.kind == "files":
        return f"{len(state.get('files', {}))} file(s) seen"
    if sensor.kind == "upstream":
        versions = state.get("versions", {})
        return ", ".join(f"{n} {_v(v)}" for n, v in versions.items()) or "no tables"
    parts = []
    if state.get("cursor") is not None:
        parts.append("cursor " + json.dumps(state["cursor"])[:40])
    if state.get("last_key") is not None:
        parts.append(f"last key {state['last_key']}")
    return ", ".join(parts) or "no cursor"
