"""``lakeforge contract``: list, validate, diff, check (CI) and draft data contracts."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from lakeforge.cli.output import console, print_json
from lakeforge.errors import ConfigError

if TYPE_CHECKING:
    from lakeforge.quality.contracts import Contract, ContractDiff, Mode

_COLOURS = {"full": "green", "backward": "yellow", "forward": "cyan", "breaking": "bold red"}
_MODES = ("forward", "backward", "full")


def _root(ctx: typer.Context) -> Path:
    from lakeforge.cli.app import settings
    from lakeforge.project.loader import find_root

    return find_root(settings(ctx).project_dir)


def _valid_mode(value: str) -> str:
    if value not in _MODES:
        raise typer.BadParameter(f"{value!r} is not one of: {', '.join(_MODES)}")
    return value


def _mode(value: str) -> Mode:
    return _valid_mode(value)  # type: ignore[return-value]


def _mode_option() -> Any:
    return typer.Option(
        "forward",
        "--mode",
        help="Compatibility required without a major bump: forward (existing consumers keep "
        "working), backward, or full.",
        callback=_valid_mode,
    )


def ls(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the project's contracts and the dataset each binds."""
    from rich.table import Table

    from lakeforge.quality.contracts import load_contracts

    contracts = load_contracts(_root(ctx))
    rows: list[dict[str, Any]] = [
        {
            "file": c.file,
            "id": c.id,
            "name": c.name,
            "version": c.version,
            "status": c.status,
            "datasets": c.datasets,
            "owner": c.owner,
            "checks": sum(len(c.checks_for(d)) for d in c.datasets),
        }
        for c in contracts
    ]
    if as_json:
        print_json(rows)
        return
    table = Table(title=_plural(len(rows), "contract"), title_justify="left")
    for col in ("file", "id", "version", "status", "datasets", "owner", "checks"):
        table.add_column(col, justify="right" if col == "checks" else "left")
    for r in rows:
        table.add_row(
            r["file"],
            r["id"],
            r["version"],
            r["status"],
            ", ".join(r["datasets"]),
            r["owner"] or "",
            str(r["checks"]),
        )
    console.print(table)


def validate(ctx: typer.Context) -> None:
    """Parse every contract and check that each bound dataset is a table of the project."""
    from lakeforge.project.loader import load_project
    from lakeforge.quality.contracts import load_contracts

    root = _root(ctx)
    contracts = load_contracts(root)
    graph = load_project(root).graph
    problems: list[str] = []
    for contract in contracts:
        for i, dataset in enumerate(contract.datasets):
            where = contract.location_of(("schema", i))
            if dataset not in graph:
                problems.append(
                    f"{where}: {contract.id} binds dataset {dataset!r}, which the project "
                    "does not define"
                )
            elif graph[dataset].is_view:
                problems.append(
                    f"{where}: {contract.id} binds {dataset!r}, a view; contracts are "
                    "enforced when a table is written"
                )
    if problems:
        raise ConfigError(
            f"{_plural(len(problems), 'contract problem')}:\n" + "\n".join(problems),
            hint="set physicalName to the dataset's name (or fix the object's name)",
        )
    bound = sum(len(c.datasets) for c in contracts)
    console.print(
        f"{_plural(len(contracts), 'contract')} valid, binding {_plural(bound, 'dataset')}"
    )


def diff(
    old: Path = typer.Argument(..., help="The earlier contract file."),
    new: Path = typer.Argument(..., help="The later contract file."),
    mode: str = _mode_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Classify the changes between two contract files (full/backward/forward/breaking)."""
    from lakeforge.quality.contracts import check_version_bump, diff_contracts, load_contract

    before, after = load_contract(old), load_contract(new)
    result = diff_contracts(before, after)
    problems = check_version_bump(before, after, _mode(mode))
    summary = _summary(result, _mode(mode), problems)
    if as_json:
        print_json({**summary, "changes": [c.to_dict() for c in result.changes]})
        return
    _print_changes(result, f"{old} → {new}")
    _print_summary(summary)


def _summary(result: ContractDiff, mode: Mode, problems: list[str]) -> dict[str, Any]:
    from lakeforge.quality.contracts import effective_bump, next_version, required_bump

    bump = effective_bump(required_bump(result, mode), result.old_version)
    return {
        "old_version": result.old_version,
        "new_version": result.new_version,
        "compatibility": result.compatibility,
        "mode": mode,
        "compatible": result.compatible(mode),
        "required_bump": bump,
        "minimum_version": None if bump == "none" else next_version(result.old_version, bump),
        "problems": problems,
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _print_changes(result: ContractDiff, title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    if not result.changes:
        console.print(f"{escape(title)}: no changes")
        return
    table = Table(title=title, title_justify="left")
    for col in ("object", "property", "change", "old", "new", "compatibility", "why"):
        table.add_column(col, overflow="fold")
    for c in result.changes:
        colour = _COLOURS[c.compatibility]
        table.add_row(
            escape(c.object),
            escape(c.property or ""),
            c.kind,
            escape("" if c.old is None else str(c.old)),
            escape("" if c.new is None else str(c.new)),
            f"[{colour}]{c.compatibility}[/]",
            escape(c.explanation),
        )
    console.print(table)


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.markup import escape

    colour = _COLOURS[summary["compatibility"]]
    need = (
        "no version bump"
        if summary["minimum_version"] is None
        else f"a {summary['required_bump']} bump (at least {summary['minimum_version']})"
    )
    console.print(
        f"overall: [{colour}]{summary['compatibility']}[/] · {summary['old_version']} → "
        f"{summary['new_version']} · {summary['mode']} mode needs {need}"
    )
    for problem in summary["problems"]:
        console.print(f"[red]✗[/] {escape(problem)}")


def check(
    ctx: typer.Context,
    against: str = typer.Option("HEAD", "--against", help="Git ref to compare with."),
    mode: str = _mode_option(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """CI gate: compare each contract with its version at a git ref; fail on a change that
    is incompatible in --mode without a major version bump, or any change without a bump."""
    from lakeforge.quality.contracts import diff_contracts, load_contracts

    checked_mode = _mode(mode)
    root = _root(ctx)
    top = Path(_git(root, "rev-parse", "--show-toplevel").strip())
    if _git_ok(root, "rev-parse", "--verify", "--quiet", f"{against}^{{commit}}") is None:
        raise ConfigError(
            f"git ref {against!r} does not exist here",
            hint="fetch it first (e.g. `git fetch origin main`) or pass another --against",
        )
    current = load_contracts(root)
    baseline = _contracts_at(root, top, against)
    path_of_id = {c.id: path for path, c in baseline.items()}
    results: list[dict[str, Any]] = []
    matched: set[str] = set()
    for contract in current:
        rel = (root / contract.file).resolve().relative_to(top.resolve()).as_posix()
        # The same path, else the same id: a moved file keeps its history.
        base_path = rel if rel in baseline else path_of_id.get(contract.id)
        entry: dict[str, Any] = {"file": contract.file, "id": contract.id, "problems": []}
        results.append(entry)
        if base_path is None or base_path in matched:
            entry.update(status="new", new_version=contract.version)
            continue
        matched.add(base_path)
        old = baseline[base_path]
        result = diff_contracts(old, contract)
        entry.update(_summary(result, checked_mode, _bump_problems(old, contract, checked_mode)))
        entry["status"] = "unchanged" if not result.changes else "changed"
        entry["changes"] = [c.to_dict() for c in result.changes]
    for path, old in baseline.items():
        if path in matched:
            continue
        entry = {"file": path, "id": old.id, "status": "deleted", "problems": []}
        if checked_mode != "backward" and old.status.lower() not in ("deprecated", "retired"):
            entry["problems"].append(
                f"{path} ({old.id}) was deleted: consumers of {', '.join(old.datasets)} "
                "lose its guarantees; mark it status: deprecated first, and delete it later"
            )
        results.append(entry)
    failed = [r for r in results if r["problems"]]
    if as_json:
        print_json({"against": against, "mode": checked_mode, "contracts": results})
        if failed:
            raise typer.Exit(1)
        return
    _print_check(results, against, checked_mode)
    if failed:
        raise ConfigError(
            f"{_plural(len(failed), 'contract')} failed the {checked_mode} "
            f"compatibility check against {against}:\n"
            + "\n".join(p for r in failed for p in r["problems"]),
            hint="bump the contract version as asked, or make the change compatible",
        )


def _bump_problems(old: Contract, new: Contract, mode: Mode) -> list[str]:
    from lakeforge.quality.contracts import check_version_bump

    return [f"{new.file}: {p}" for p in check_version_bump(old, new, mode)]


def _print_check(results: list[dict[str, Any]], against: str, mode: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"contracts vs {against} ({mode} mode)", title_justify="left")
    for col in ("file", "status", "version", "compatibility", "needs", "result"):
        table.add_column(col)
    for r in results:
        compat = r.get("compatibility")
        version = (
            f"{r['old_version']} → {r['new_version']}"
            if "old_version" in r
            else r.get("new_version", "")
        )
        table.add_row(
            escape(r["file"]),
            r["status"],
            version,
            f"[{_COLOURS[compat]}]{compat}[/]" if compat else "",
            r.get("required_bump", ""),
            "[red]fail[/]" if r["problems"] else "[green]ok[/]",
        )
    console.print(table)


def _contracts_at(root: Path, top: Path, ref: str) -> dict[str, Contract]:
    """Contracts in ``contracts/`` at ``ref``, by repository path; unparsable ones skipped."""
    from lakeforge.errors import LakeforgeError
    from lakeforge.quality.contracts import CONTRACTS_DIR, parse_contract

    folder = (root / CONTRACTS_DIR).resolve().relative_to(top.resolve()).as_posix()
    listing = _git_ok(top, "ls-tree", "--name-only", f"{ref}:{folder}")
    found: dict[str, Contract] = {}
    for name in (listing or "").splitlines():
        if not name.endswith((".yml", ".yaml")):
            continue
        path = f"{folder}/{name}"
        text = _git(top, "show", f"{ref}:{path}")
        try:
            contract = parse_contract(text, f"{ref}:{path}")
        except LakeforgeError as exc:
            console.print(f"[yellow]warning:[/] {exc} (no baseline for this file)")
            continue
        found[path] = contract
    return found


def _git(root: Path, *args: str) -> str:
    out = _git_ok(root, *args)
    if out is None:
        raise ConfigError(
            f"`git {' '.join(args)}` failed in {root}",
            hint="`contract check` compares with git history: run it inside a git checkout",
        )
    return out


def _git_ok(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise ConfigError(
            "git is not installed", hint="install git to use `contract check`"
        ) from None
    return done.stdout if done.returncode == 0 else None


def init(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="A built table of the project."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Where to write (default: contracts/<dataset>.yml)."
    ),
) -> None:
    """Draft a contract from a live table: types, nullability and uniqueness as observed,
    descriptions, PII and owner as declared."""
    from lakeforge.cli.explore import _open
    from lakeforge.quality.contracts import (
        CONTRACTS_DIR,
        draft_contract,
        load_contracts,
        parse_contract,
        profile_table,
    )

    project, store = _open(ctx)
    ds = project.graph[dataset]
    if ds.is_view:
        raise ConfigError(f"{dataset} is a view; contracts describe tables")
    target = output if output is not None else project.root / CONTRACTS_DIR / f"{dataset}.yml"
    if target.exists() and not force:
        raise ConfigError(
            f"{target} already exists", hint="pass --force to overwrite it, or --output elsewhere"
        )
    for contract in load_contracts(project.root):
        owner_file = (project.root / contract.file).resolve()
        if dataset in contract.datasets and owner_file != target.resolve():
            raise ConfigError(
                f"{dataset} already has a contract: {contract.file}",
                hint="edit that contract, or pass --output to write the draft there",
            )
    pinned = store.read(dataset)
    schema = store.schema(dataset)
    assert schema is not None
    with console.status(f"profiling {dataset} v{pinned.version}…"):
        stats = profile_table(pinned)
    text = draft_contract(dataset, schema, stats, ds.config, project=project.name)
    drafted = parse_contract(text, str(target))  # a draft must load back as written
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    obj = drafted.objects[0]
    required = sum(p.required for p in obj.properties)
    unique = sum(p.unique for p in obj.properties)
    console.print(
        f"wrote {target}: {drafted.id} {drafted.version} ({drafted.status}), "
        f"{len(obj.properties)} properties, {required} required, {unique} unique "
        f"(from {stats['rows']:,} rows at v{pinned.version}); review it before activating"
    )


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        name="contract",
        help="Data contracts (ODCS v3) in contracts/: list, validate, diff, check in CI, draft.",
        no_args_is_help=True,
    )
    group.command("ls")(ls)
    group.command()(validate)
    group.command()(diff)
    group.command()(check)
    group.command()(init)
    app.add_typer(group, name="contract")
