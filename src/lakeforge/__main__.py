"""``python -m lakeforge`` runs the CLI."""

from lakeforge.cli.app import main

main()
