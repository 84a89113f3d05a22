"""Lakeforge: lakehouse data pipelines on Delta Lake.

The public API is what this module exports; everything else is internal.
"""

from __future__ import annotations

from lakeforge.graph.decorators import table, view
from lakeforge.graph.spec import SCD2, Append, ColumnSpec, Merge, Overwrite, ReplacePartitions
from lakeforge.sources.files import FilesConfig as files
from lakeforge.sources.rest import RestConfig as rest
from lakeforge.sources.sql_db import SqlConfig as database

__version__ = "0.1.0"

__all__ = [
    "SCD2",
    "Append",
    "ColumnSpec",
    "Merge",
    "Overwrite",
    "ReplacePartitions",
    "__version__",
    "database",
    "files",
    "rest",
    "table",
    "view",
]
