"""Sources: external systems read incrementally into datasets (see ``base.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lakeforge.graph.spec import Dataset
    from lakeforge.sources.base import Source


def source_of(ds: Dataset, project_root: Path) -> Source | None:
    """The source feeding ``ds``, or None. The one place source kinds are resolved."""
    config = ds.config.source
    if config is None:
        return None
    from lakeforge.sources.files import FilesSource
    from lakeforge.sources.rest import RestSource
    from lakeforge.sources.sql_db import SqlSource

    kinds: dict[str, Any] = {"files": FilesSource, "sql": SqlSource, "rest": RestSource}
    return kinds[config.kind](ds.name, project_root, config)
