"""The structured run log: one JSON line per task.

Fields follow the run-log standard of the methodology (pipeline_name, run_id, started_at,
completed_at, status, stage, rows_extracted, rows_transformed, rows_loaded, rows_rejected,
quality_checks_passed, quality_checks_failed, duration_seconds, error_message,
watermark_before, watermark_after), plus Lakeforge's own: dataset, layer, reason,
input_versions, output_version, fingerprint, attempts.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

LOG_FILE = "run_log.jsonl"


@dataclass
class RunLogRecord:
    """One task's record in the run log."""

    pipeline_name: str
    run_id: str
    started_at: str
    completed_at: str
    status: str
    stage: str
    dataset: str
    layer: str | None
    reason: str
    rows_extracted: int = 0
    rows_transformed: int = 0
    rows_loaded: int = 0
    rows_rejected: int = 0
    quality_checks_passed: int = 0
    quality_checks_failed: int = 0
    duration_seconds: float = 0.0
    error_message: str = ""
    watermark_before: str = ""
    watermark_after: str = ""
    input_versions: dict[str, int] = field(default_factory=dict)
    output_version: int | None = None
    fingerprint: str = ""
    attempts: int = 0


class RunLog:
    """Appends records to ``<state dir>/logs/run_log.jsonl``; safe across threads."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "logs" / LOG_FILE
        self._lock = threading.Lock()

    def write(self, record: RunLogRecord) -> None:
        line = orjson.dumps(asdict(record)) + b"\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One write call per line in append mode: lines from concurrent runs never interleave.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def read(self, run_id: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_bytes().splitlines():
            if line.strip():
                rec = orjson.loads(line)
                if run_id is None or rec.get("run_id") == run_id:
                    out.append(rec)
        return out
