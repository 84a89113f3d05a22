"""The ``lakeforge`` Typer application: global options, error handling, command registry."""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from lakeforge.cli.output import print_error
from lakeforge.errors import LakeforgeError


@dataclass
class Settings:
    """Global options shared by every command."""

    project_dir: Path
    debug: bool


class _Group(TyperGroup):
    """Turns Lakeforge errors into one line + hint and exit code 1 (traceback with --debug)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except LakeforgeError as exc:
            debug = bool(ctx.obj and ctx.obj.debug) or os.environ.get("LAKEFORGE_DEBUG") == "1"
            print_error(exc, debug=debug, trace=traceback.format_exc())
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    name="lakeforge",
    help="Lakehouse pipelines on Delta Lake: bronze → silver → gold with SQL or Python.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _global(
    ctx: typer.Context,
    project_dir: Path = typer.Option(
        Path("."),
        "--project-dir",
        "-C",
        help="Project folder (default: nearest with lakeforge.yml).",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    ctx.obj = Settings(project_dir=project_dir, debug=debug)


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings)
    return obj


def _register() -> None:
    # The one place commands are registered.
    from lakeforge.cli import (
        alerts,
        cdc,
        checks,
        contract,
        dlq,
        explore,
        freshness,
        init,
        maintenance,
        plan,
        queue,
        run,
        runs,
        schedule,
        sources,
        stream,
    )

    modules = (init, run, plan, queue, explore, sources, dlq, checks, contract, maintenance)
    for module in (*modules, runs, stream, schedule, freshness, alerts, cdc):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point (exit codes: 0 ok, 1 failed, 2 usage)."""
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    # Native runtimes (delta-rs' async runtime) can abort during interpreter finalization
    # after many writes, turning a success into exit 134. All work is committed and all
    # output flushed here, so the process ends without running finalizers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
