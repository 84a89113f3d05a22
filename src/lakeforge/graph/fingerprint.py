"""Code fingerprints: a dataset is rebuilt when what produces its rows changes.

The fingerprint covers the normalized definition (SQL normalized by sqlglot, so whitespace
and comments do not count; Python function source), the configuration that affects the
rows written (write strategy, partitioning, schema policy, declared column types,
expectations that drop or quarantine rows; a streaming table's event time, lateness,
window, output mode and dedup), and the definitions of the views it reads
through. Descriptions, owners, tags and retries do not.
"""

from __future__ import annotations

import hashlib

import orjson

from lakeforge.graph.dag import Graph
from lakeforge.graph.spec import Dataset

_DATA_AFFECTING = ("kind", "partition_by", "schema_evolution", "write")


def definition_payload(ds: Dataset) -> dict[str, object]:
    """The parts of a dataset's definition that shape its data."""
    config = ds.config.model_dump(mode="json", include=set(_DATA_AFFECTING))
    config["column_types"] = {
        name: col.type for name, col in sorted(ds.config.columns.items()) if col.type
    }
    # Expectations that drop or quarantine rows decide which rows are published; those that
    # only warn or fail do not change a published table, so editing them rebuilds nothing.
    row_filters = {
        name: e.expr
        for name, e in sorted(ds.config.expect.items())
        if (e.action or ds.config.on_violation) in ("drop", "quarantine")
    }
    if row_filters:  # absent when empty: fingerprints of datasets without them are unchanged
        config["row_filters"] = row_filters
    if ds.config.event_time is not None:
        # Which events are late, deduplicated, and which windows they fall in shape the rows;
        # absent without event time, so other datasets' fingerprints are unchanged.
        config["event_time"] = ds.config.model_dump(
            mode="json",
            include={"event_time", "allowed_lateness", "window", "output_mode", "dedup"},
        )
    if ds.config.partitions is not None:
        # What a partition holds; its start or lookback do not change built partitions.
        config["partitions"] = {
            "kind": ds.config.partitions.kind,
            "column": ds.config.partitions.column,
        }
    return {"language": ds.language, "definition": ds.source_text, "config": config}


def fingerprint(ds: Dataset, graph: Graph) -> str:
    """A stable hash of ``ds``'s definition and of the views it reads through."""
    payload = {
        "dataset": definition_payload(ds),
        "views": {v: definition_payload(graph[v]) for v in graph.views_needed(ds.name)},
    }
    digest = hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:16]
