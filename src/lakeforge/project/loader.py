"""Load a project: ``lakeforge.yml``, ``pipelines/*.py`` and ``models/**/*.sql``."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from lakeforge.errors import ConfigError, LakeforgeError, Location
from lakeforge.graph.dag import Graph
from lakeforge.graph.decorators import ATTRIBUTE
from lakeforge.graph.spec import Dataset
from lakeforge.project.config import (
    CONFIG_FILE,
    ProjectConfig,
    load_config,
    resolve_metadata_url,
    resolve_storage_root,
)
from lakeforge.scheduling.sensors import SENSOR_ATTRIBUTE, SensorDefinition
from lakeforge.sql.model import load_sql_model

if TYPE_CHECKING:
    from lakeforge.quality.contracts import Contract


@dataclass
class Project:
    """A loaded, validated project."""

    root: Path
    config: ProjectConfig
    graph: Graph
    contracts: dict[str, Contract] = field(default_factory=dict)  # dataset → its contract
    sensors: list[SensorDefinition] = field(default_factory=list)  # @lf.sensor functions

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def storage_root(self) -> str:
        return resolve_storage_root(self.root, self.config)

    @property
    def metadata_url(self) -> str:
        return resolve_metadata_url(self.root, self.config)


def find_root(start: Path) -> Path:
    """The nearest folder at or above ``start`` holding ``lakeforge.yml``."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise ConfigError(
        f"no {CONFIG_FILE} found in {start} or any parent folder",
        hint="run inside a project, pass --project-dir, or create one with `lakeforge init NAME`",
    )


def load_project(start: Path | str = ".") -> Project:
    """Load the project containing ``start`` (a folder)."""
    root = find_root(Path(start))
    config = load_config(root)
    sensors: list[SensorDefinition] = []
    datasets = [*_load_pipelines(root, sensors), *_load_models(root)]
    datasets = [_apply_defaults(ds, config) for ds in datasets]
    graph = Graph(datasets)
    contracts = _load_contracts(root, graph)
    return Project(root=root, config=config, graph=graph, contracts=contracts, sensors=sensors)


def _load_contracts(root: Path, graph: Graph) -> dict[str, Contract]:
    """Contracts under ``contracts/``, each bound to a table of the graph."""
    if not (root / "contracts").is_dir():
        return {}
    import difflib

    from lakeforge.errors import GraphError
    from lakeforge.quality.contracts import index_contracts, load_contracts

    bound = index_contracts(load_contracts(root))
    for dataset, contract in bound.items():
        if dataset in graph and not graph[dataset].is_view:
            continue
        close = difflib.get_close_matches(dataset, graph.datasets, n=1)
        raise GraphError(
            f"contract {contract.id!r} binds {dataset!r}, which is not a table of the project",
            location=Location(contract.file),
            dataset=dataset,
            hint=f"did you mean {close[0]!r}?"
            if close
            else "set the schema object's physicalName (or name) to a table's name",
        )
    return bound


def _apply_defaults(ds: Dataset, config: ProjectConfig) -> Dataset:
    defaults = config.defaults.model_dump(exclude_none=True)
    # Empty defaults (no tags) change nothing; `jitter: false` is a value, not an absence.
    update = {
        k: v
        for k, v in defaults.items()
        if k not in ds.config.model_fields_set and (v or v is False)
    }
    if config.quality.on_violation and "on_violation" not in ds.config.model_fields_set:
        update["on_violation"] = config.quality.on_violation
    if update:
        ds.config = ds.config.model_copy(update=update)
    return ds


def _load_models(root: Path) -> list[Dataset]:
    models = root / "models"
    if not models.is_dir():
        return []
    return [load_sql_model(path, root) for path in sorted(models.rglob("*.sql"))]


def _load_pipelines(root: Path, sensors: list[SensorDefinition] | None = None) -> list[Dataset]:
    """Datasets declared in ``pipelines/*.py``; ``@lf.sensor`` functions go to ``sensors``."""
    pipelines = root / "pipelines"
    if not pipelines.is_dir():
        return []
    found: list[Dataset] = []
    package = "lakeforge_project_" + hashlib.sha1(str(root).encode()).hexdigest()[:10]
    root_str = str(root)
    added = root_str not in sys.path
    if added:
        sys.path.insert(0, root_str)
    try:
        for path in sorted(pipelines.glob("*.py")):
            if path.name.startswith("_"):
                continue
            module = _import(path, f"{package}.{path.stem}", root)
            for value in vars(module).values():
                if getattr(value, "__module__", None) != module.__name__:
                    continue  # imported from elsewhere: declared there
                ds = getattr(value, ATTRIBUTE, None)
                if isinstance(ds, Dataset):
                    found.append(ds)
                sensor = getattr(value, SENSOR_ATTRIBUTE, None)
                if sensors is not None and isinstance(sensor, SensorDefinition):
                    sensors.append(sensor)
    finally:
        if added:
            sys.path.remove(root_str)
    return found


def _import(path: Path, module_name: str, root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path}", location=Location(str(path)))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    rel = str(path.relative_to(root))
    try:
        spec.loader.exec_module(module)
    except LakeforgeError:
        raise
    except SyntaxError as exc:
        raise ConfigError(
            f"Python syntax error: {exc.msg}",
            location=Location(rel, exc.lineno, exc.offset),
        ) from None
    except Exception as exc:
        line = None
        for frame in traceback.extract_tb(exc.__traceback__):
            if Path(frame.filename).resolve() == path.resolve():
                line = frame.lineno
        raise ConfigError(
            f"importing the pipeline failed: {type(exc).__name__}: {exc}",
            location=Location(rel, line),
            hint="run with --debug for the full traceback",
        ) from exc
    return module
