"""The state store of event-time streaming tables: one Parquet snapshot per batch.

A snapshot holds what a streaming table must remember between micro-batches: the events of
windows not closed yet and the dedup keys still inside their bound. It is written to
``<storage root>/_lf_state/<dataset>/<batch:012d>.parquet`` *before* the batch's Delta
commit, and that commit's source state names it — so the state, the output and the source
position land together or not at all. Recovery reads the file the newest commit names; a
snapshot of a batch whose commit did not land is overwritten when that batch number is
built again; snapshots older than the committed one are deleted after the commit.

Local storage roots use the local filesystem; object-store roots (``s3://``, ``gs://``,
``az://``) a pyarrow filesystem built from the project's ``storage_options``
(``storage/objectstore.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lakeforge.errors import StorageError
from lakeforge.storage import objectstore

if TYPE_CHECKING:
    import pyarrow as pa

STATE_FOLDER = "_lf_state"
_SNAPSHOT = re.compile(r"^(\d{12})\.parquet$")


class StateStore:
    """Snapshots of one dataset's streaming state under a storage root."""

    def __init__(self, root: str, dataset: str, options: Mapping[str, str] | None = None) -> None:
        self.root = root.rstrip("/")
        self.dataset = dataset
        self.options = dict(options or {})
        self._fs: Any = None
        self._base = ""

    @property
    def fs(self) -> Any:
        """The pyarrow filesystem holding the snapshots (built on first use)."""
        if self._fs is None:
            import pyarrow.fs as pafs

            if objectstore.is_uri(self.root):
                uri = objectstore.parse_uri(self.root)
                # The project's storage options are delta-rs's; pass on those the object
                # store knows (the others are for delta-rs only).
                known = {}
                for key, value in self.options.items():
                    try:
                        objectstore.check_options(self.root, {key: value})
                    except ValueError:
                        continue
                    known[key] = value
                self._fs, _ = objectstore.filesystem(uri, known)
                self._base = f"{uri.bucket}/{uri.key}".rstrip("/")
            else:
                self._fs = pafs.LocalFileSystem()
                self._base = self.root
        return self._fs

    def relative(self, batch: int) -> str:
        """A snapshot's path relative to the storage root (what a commit records)."""
        return f"{STATE_FOLDER}/{self.dataset}/{batch:012d}.parquet"

    def _path(self, relative: str) -> str:
        _ = self.fs
        return f"{self._base}/{relative}"

    def write(self, batch: int, table: pa.Table) -> tuple[str, int]:
        """Write batch ``batch``'s snapshot (replacing an earlier attempt's); returns its
        relative path and its size in bytes."""
        import pyarrow.parquet as pq

        relative = self.relative(batch)
        path = self._path(relative)
        folder = path.rsplit("/", 1)[0]
        try:
            self.fs.create_dir(folder, recursive=True)
            pq.write_table(table, path, filesystem=self.fs, compression="zstd")
            size = int(self.fs.get_file_info(path).size or 0)
        except OSError as exc:
            raise StorageError(
                f"{self.dataset}: cannot write its streaming state {relative}: {exc}",
                dataset=self.dataset,
            ) from exc
        return relative, size

    def read(self, relative: str) -> pa.Table:
        """The snapshot a commit names."""
        import pyarrow.parquet as pq

        try:
            return pq.read_table(self._path(relative), filesystem=self.fs)
        except (OSError, ValueError) as exc:
            raise StorageError(
                f"{self.dataset}: its streaming state {relative}, named by its newest commit, "
                f"cannot be read: {exc}",
                dataset=self.dataset,
                hint="restore the file, or rebuild the table and its state with "
                f"`lakeforge run --full-refresh {self.dataset}`",
            ) from exc

    def delete_before(self, batch: int) -> int:
        """Delete the snapshots of batches before ``batch`` (superseded once ``batch`` is
        committed); returns how many. Best effort: a file left behind is removed next time."""
        import pyarrow.fs as pafs

        folder = self._path(f"{STATE_FOLDER}/{self.dataset}")
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except OSError:
            return 0
        deleted = 0
        for info in infos:
            match = _SNAPSHOT.match(info.base_name)
            if match is None or int(match.group(1)) >= batch:
                continue
            try:
                self.fs.delete_file(info.path)
                deleted += 1
            except OSError:
                continue
        return deleted
