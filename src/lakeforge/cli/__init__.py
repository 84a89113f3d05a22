"""The ``lakeforge`` command line (Typer + rich). Heavy libraries load inside commands."""
