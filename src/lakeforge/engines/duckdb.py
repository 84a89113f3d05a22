"""The DuckDB engine (default): in-process, reads pinned Arrow datasets zero-copy."""

from __future__ import annotations

import contextlib
import inspect
import re
import threading
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from lakeforge.engines.base import TransformContext
from lakeforge.engines.connection import connect
from lakeforge.errors import LakeforgeError, Location, SQLError, TransformError, TransientError

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from lakeforge.graph.spec import Dataset
    from lakeforge.storage.delta import PinnedTable

_LINE = re.compile(r"LINE (\d+):")
# fetch_arrow() takes the extra copy deliberately (see there). Installed once at import:
# warnings.catch_warnings() is not thread-safe and tasks run in threads.
warnings.filterwarnings("ignore", message="Arrow output on a DB-API result", category=UserWarning)


class DuckDBEngine:
    """Runs SQL models and Python transforms in an in-memory DuckDB per task.

    A new DuckDB database costs about 20 ms; a task that transforms batch after batch (a
    source's, a stream's micro-batches) keeps one for its dataset within :meth:`session`:
    each batch registers its inputs and views again under the same names, replacing the
    last batch's.
    """

    name: ClassVar[str] = "duckdb"
    SUPPORTS_PYTHON_TRANSFORMS: ClassVar[bool] = True
    SUPPORTS_ZERO_COPY_ARROW: ClassVar[bool] = True
    SQL_DIALECT: ClassVar[str] = "duckdb"

    def __init__(self, project_root: Path, threads: int | None = None) -> None:
        self.project_root = project_root
        self.threads = threads
        self._local = threading.local()

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Within: this thread's transforms of one dataset share a connection; nestable."""
        local = self._local.__dict__
        if "session" in local:
            yield
            return
        local["session"] = {}
        try:
            yield
        finally:
            for con in local.pop("session").values():
                con.close()

    @contextlib.contextmanager
    def _transform_connection(self, dataset: str) -> Iterator[duckdb.DuckDBPyConnection]:
        held: dict[str, duckdb.DuckDBPyConnection] | None = self._local.__dict__.get("session")
        if held is None:
            con = self.connect()
            try:
                yield con
            finally:
                con.close()
            return
        if dataset not in held:
            for other in held.values():  # one dataset's connection at a time
                other.close()
            held.clear()
            held[dataset] = self.connect()
        yield held[dataset]

    def connect(self) -> duckdb.DuckDBPyConnection:

        config: dict[str, Any] = {"file_search_path": str(self.project_root)}
        if self.threads:
            config["threads"] = self.threads
        return connect(**config)

    def transform(
        self,
        ds: Dataset,
        inputs: dict[str, PinnedTable],
        views: list[Dataset],
        context: TransformContext,
    ) -> pa.Table:
        with self._transform_connection(ds.name) as con:
            for name, data in inputs.items():
                register_table(con, name, data)
            for view in views:
                self._define_view(con, view, context)
            if ds.sql is not None:
                return self._run_sql(con, ds, context)
            return to_arrow(self._call(con, ds, context), ds)

    def query(
        self,
        sql: str,
        tables: dict[str, PinnedTable],
        views: list[Dataset] | None = None,
        context: TransformContext | None = None,
        limit: int | None = None,
    ) -> pa.Table:
        import duckdb

        con = self.connect()
        try:
            for name, data in tables.items():
                register_table(con, name, data)
            for view in views or []:
                assert context is not None, "views need a transform context"
                self._define_view(con, view, context)
            try:
                rel = con.sql(sql)
                if rel is None:
                    raise SQLError("the statement returned no rows; `lakeforge sql` runs queries")
                if limit is not None:
                    rel = rel.limit(limit)
                return rel.to_arrow_table()
            except duckdb.Error as exc:
                raise SQLError(str(exc).splitlines()[0], hint=_hint(str(exc))) from None
        finally:
            con.close()

    def _define_view(
        self, con: duckdb.DuckDBPyConnection, view: Dataset, context: TransformContext
    ) -> None:
        if view.sql is not None:
            import duckdb

            try:
                con.sql(f"CREATE OR REPLACE TEMP VIEW {_ident(view.name)} AS {view.sql}")
            except duckdb.Error as exc:
                raise _sql_error(view, exc) from None
            return
        result = self._call(con, view, context)
        if hasattr(result, "create_view"):
            result.create_view(view.name, replace=True)
        else:
            con.register(view.name, to_arrow(result, view))

    def _run_sql(
        self, con: duckdb.DuckDBPyConnection, ds: Dataset, context: TransformContext
    ) -> pa.Table:
        import duckdb

        assert ds.sql is not None
        sql = ds.sql
        if context.partition is not None and ds.config.partitions is not None:
            from lakeforge.graph.partitions import expand_macros

            sql = expand_macros(sql, context.partition, ds.config.partitions.time_type)
        try:
            return fetch_arrow(con, sql)
        except duckdb.Error as exc:
            raise _sql_error(ds, exc) from None

    def _call(self, con: duckdb.DuckDBPyConnection, ds: Dataset, context: TransformContext) -> Any:
        import duckdb

        assert ds.function is not None
        kwargs: dict[str, Any] = {name: con.table(name) for name in ds.inputs}
        if ds.config.source is not None and "source" in inspect.signature(ds.function).parameters:
            kwargs["source"] = con.table("source")  # the batch the dataset's source yielded
        if ds.takes_context:
            kwargs["context"] = context
        try:
            return ds.function(**kwargs)
        except LakeforgeError:
            raise  # already precise, and may be transient (a source the transform reads)
        except duckdb.Error as exc:
            raise TransformError(
                f"{ds.name}: DuckDB error in the transform: {str(exc).splitlines()[0]}",
                location=_user_frame(ds, exc),
                dataset=ds.name,
            ) from exc
        except (ConnectionError, TimeoutError) as exc:  # the network: a retry may help
            raise TransientError(
                f"{ds.name}: the transform raised {type(exc).__name__}: {exc}",
                location=_user_frame(ds, exc),
                dataset=ds.name,
                hint="retried when the dataset sets retries; run with --debug for the traceback",
            ) from exc
        except Exception as exc:
            raise TransformError(
                f"{ds.name}: the transform raised {type(exc).__name__}: {exc}",
                location=_user_frame(ds, exc),
                dataset=ds.name,
                hint="run with --debug for the full traceback",
            ) from exc


def register_table(con: duckdb.DuckDBPyConnection, name: str, table: PinnedTable) -> None:
    """Expose a pinned table to DuckDB under ``name`` (a union view when it has parts)."""
    if len(table.parts) == 1:
        con.register(name, table.parts[0])
        return
    hidden = []
    for i, part in enumerate(table.parts):
        alias = f"__lf_{name}_{i}"
        con.register(alias, part)
        hidden.append(f"SELECT * FROM {_ident(alias)}")
    con.sql(f"CREATE OR REPLACE TEMP VIEW {_ident(name)} AS " + " UNION ALL BY NAME ".join(hidden))


def fetch_arrow(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | dict[str, Any] | None = None
) -> pa.Table:
    """Run one statement and return its result as Arrow, binding the query only once.

    ``con.sql(q).to_arrow_table()`` binds ``q`` twice (once to build the relation, once to run
    it); for a model over ``read_csv``/``read_json`` that means detecting the files' format
    twice, which measured 1.6x slower on the bronze benchmark than the extra result copy DuckDB
    warns about on this path.
    """
    return con.execute(sql, params).to_arrow_table()


def to_arrow(result: Any, ds: Dataset) -> pa.Table:
    """Normalize what a Python transform returned to a pyarrow Table."""
    import pyarrow as pa

    if isinstance(result, pa.Table):
        return result
    if isinstance(result, pa.RecordBatchReader):
        return result.read_all()
    if isinstance(result, pa.RecordBatch):
        return pa.Table.from_batches([result])
    if hasattr(result, "to_arrow_table") and hasattr(result, "columns"):  # DuckDB relation
        return result.to_arrow_table()
    module = type(result).__module__.split(".")[0]
    if module == "polars":
        if hasattr(result, "collect"):  # LazyFrame
            result = result.collect()
        return result.to_arrow()
    if module == "pandas":
        return pa.Table.from_pandas(result, preserve_index=False)
    raise TransformError(
        f"{ds.name}: the transform returned {type(result).__name__}; expected a DuckDB "
        "relation, a pyarrow Table, a Polars or a pandas DataFrame",
        location=ds.location,
        dataset=ds.name,
        expected="relation / Arrow / Polars / pandas",
        found=type(result).__name__,
    )


def _ident(name: str) -> str:
    from sqlglot import exp

    return exp.to_identifier(name, quoted=True).sql("duckdb")


def _sql_error(ds: Dataset, exc: Exception) -> SQLError:
    text = str(exc)
    line = ds.location.line
    match = _LINE.search(text)
    if match and line is not None:
        line += int(match.group(1)) - 1
    return SQLError(
        text.splitlines()[0],
        location=Location(ds.location.file, line),
        dataset=ds.name,
        hint=_hint(text),
    )


def _hint(text: str) -> str | None:
    lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
    for ln in lines:
        if ln.lower().startswith(("did you mean", "candidate")):
            return ln
    return None


def _user_frame(ds: Dataset, exc: BaseException) -> Location:
    assert ds.function is not None
    target = inspect.getsourcefile(ds.function)
    line = ds.location.line
    if target:
        for frame in traceback.extract_tb(exc.__traceback__):
            if Path(frame.filename).resolve() == Path(target).resolve():
                line = frame.lineno
    return Location(ds.location.file, line)
