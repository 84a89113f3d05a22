"""``lakeforge init``: create a working example project."""

from __future__ import annotations

from pathlib import Path

import typer

from lakeforge.cli.output import console


def init(
    path: Path = typer.Argument(..., help="Folder to create the project in."),
    size: int = typer.Option(1_000_000, "--size", min=100, help="Order lines to generate."),
    seed: int = typer.Option(7, "--seed", help="Random seed of the generated data."),
) -> None:
    """Create the example retail-shop project with generated landing data."""
    from lakeforge.project.scaffold import scaffold_project

    with console.status(f"generating {size:,} order lines…"):
        result = scaffold_project(path, size=size, seed=seed)
    console.print(f"[green]created[/] {result.root}")
    for name, rows in result.rows.items():
        console.print(f"  {name}: {rows:,} rows")
    console.print(f"next: [bold]cd {path} && lakeforge run[/]")


def register(app: typer.Typer) -> None:
    app.command()(init)
