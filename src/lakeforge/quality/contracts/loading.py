"""Reading contracts: ``contracts/*.yml`` of a project, validated, with file and line in
every error.

Loading also builds every rule's checks, so a rule Lakeforge cannot enforce is reported when
the contract is read, not when a run first needs it.
"""

from __future__ import annotations

import difflib
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from lakeforge.errors import ConfigError, Location
from lakeforge.project.yamlconf import line_of, load_yaml
from lakeforge.quality.contracts.enforcement import check_sla_elements
from lakeforge.quality.contracts.model import Contract

CONTRACTS_DIR = "contracts"


def parse_contract(text: str, file: str) -> Contract:
    """Parse and validate contract YAML text; ``file`` names it in error messages.

    Raises:
        ConfigError: invalid YAML, an unknown key, a bad value, or a rule Lakeforge cannot
            enforce; names the file and line.
    """
    data, lines = load_yaml(text, file)
    if not isinstance(data, dict):
        raise ConfigError(
            "a data contract must be a YAML mapping (apiVersion, kind, id, version, …)",
            location=Location(file, 1),
        )
    contract = _validate(data, file, lines)
    contract._file = file
    contract._lines = lines
    for dataset in contract.datasets:  # rules Lakeforge cannot enforce fail here, with lines
        contract.rules_for(dataset)
    check_sla_elements(contract)
    return contract


def load_contract(path: Path | str, *, display: str | None = None) -> Contract:
    """Read one contract file (``display``: how messages name it; default the path)."""
    path = Path(path)
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read contract: {exc.strerror}", location=Location(name)
        ) from None
    return parse_contract(text, name)


def contract_files(project_root: Path | str) -> list[Path]:
    """``contracts/*.yml`` and ``contracts/*.yaml`` of a project, sorted."""
    folder = Path(project_root) / CONTRACTS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file())


def load_contracts(project_root: Path | str) -> list[Contract]:
    """Every contract of a project; two contracts binding one dataset is an error."""
    root = Path(project_root)
    contracts = [
        load_contract(path, display=path.relative_to(root).as_posix())
        for path in contract_files(root)
    ]
    index_contracts(contracts)
    return contracts


def index_contracts(contracts: list[Contract]) -> dict[str, Contract]:
    """Dataset → the contract binding it.

    Raises:
        ConfigError: two contracts bind the same dataset, or share an id.
    """
    by_dataset: dict[str, Contract] = {}
    by_id: dict[str, Contract] = {}
    for contract in contracts:
        if contract.id in by_id:
            raise ConfigError(
                f"contracts {by_id[contract.id].file} and {contract.file} share the id "
                f"{contract.id!r}",
                location=contract.location_of(("id",)),
                hint="a contract id identifies one contract; give each its own",
            )
        by_id[contract.id] = contract
        for i, obj in enumerate(contract.objects):
            other = by_dataset.get(obj.dataset)
            if other is not None:
                raise ConfigError(
                    f"dataset {obj.dataset!r} is bound by two contracts: {other.file} and "
                    f"{contract.file}",
                    location=contract.location_of(("schema", i)),
                    dataset=obj.dataset,
                    hint="a dataset has one contract: merge them, or fix the physicalName",
                )
            by_dataset[obj.dataset] = contract
    return by_dataset


def _validate(data: dict[str, Any], file: str, lines: dict[Any, int]) -> Contract:
    # yamlconf.validate names keys by Python field names; ODCS keys are camelCase aliases,
    # and most errors sit inside lists, so the hint is computed here from the aliases.
    try:
        return Contract.model_validate(data)
    except ValidationError as exc:
        errors = [
            (error, _data_path(data, error["loc"], missing=error["type"] == "missing"))
            for error in exc.errors()
        ]
        # A union (``team``: object or list) fails once per alternative: report the
        # alternative that got furthest into the data.
        base = errors[0][1]
        same = [e for e in errors if base[: len(e[1])] == e[1] or e[1][: len(base)] == base]
        first, loc = max(same, key=lambda e: len(e[1]))
        more = len(errors) - len(same)
        where = _dotted(loc)
        hint = None
        if first["type"] == "extra_forbidden":
            key = str(loc[-1])
            allowed = _allowed_keys(Contract, loc[:-1])
            close = difflib.get_close_matches(key, allowed, n=1)
            message = f"unknown key {key!r}" + (f" in {_dotted(loc[:-1])}" if loc[:-1] else "")
            if close:
                message += f"; did you mean {close[0]!r}?"
            hint = (
                f"allowed keys here: {', '.join(allowed)}; put vendor fields under customProperties"
            )
        elif first["type"] == "missing":
            message = f"{where}: this key is required"
        else:
            message = f"{where or '(top level)'}: {first['msg'].removeprefix('Value error, ')}"
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(
            message, location=Location(file, line_of(lines, loc)), hint=hint
        ) from None


def _data_path(data: Any, loc: tuple[Any, ...], *, missing: bool) -> tuple[str | int, ...]:
    """An error location as a path into the YAML data.

    Parts absent from the data are a union alternative's tag (``Team``, ``str``,
    ``list[TeamMember]``) and are dropped, except the last part of a missing-key error.
    """
    path: list[str | int] = []
    current = data
    for i, part in enumerate(loc):
        key = isinstance(current, dict) and isinstance(part, str) and part in current
        item = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if key or item:
            current = current[part]
            path.append(part)
        elif missing and i == len(loc) - 1:
            path.append(part)
    return tuple(path)


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _allowed_keys(model: type[BaseModel], path: tuple[str | int, ...]) -> list[str]:
    """The ODCS keys allowed at ``path`` (a key path into the contract's YAML)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            current = _list_item(current)
        else:
            owner = _model_in(current)
            fields = owner.model_fields.items() if owner else ()
            found = next((f for name, f in fields if (f.alias or name) == part), None)
            current = found.annotation if found else None
        if current is None:
            return []
    owner = _model_in(current)
    return sorted(f.alias or name for name, f in owner.model_fields.items()) if owner else []


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) is Union or isinstance(annotation, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model among a union's alternatives (lists excluded)."""
    for alt in _alternatives(annotation):
        if isinstance(alt, type) and issubclass(alt, BaseModel):
            return alt
    return None


def _list_item(annotation: Any) -> Any:
    """The item type of the list among a union's alternatives."""
    for alt in _alternatives(annotation):
        if get_origin(alt) is list:
            return get_args(alt)[0]
    return None
