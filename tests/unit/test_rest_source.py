"""The REST API source against a real HTTP server on 127.0.0.1: every pagination style, auth
and secrets, the shared rate limit, retries (Retry-After, storms, flaky servers), incremental
loads that resume after a crash, full loads and records whose types clash."""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lakeforge.execution.executor import Runner
from lakeforge.project.loader import load_project
from lakeforge.sources.rest_http import limiter_for, retry_after
from lakeforge.storage.delta import DeltaStore

TOKEN = "s3cret-Token-42"
RECORDS = [{"id": i, "name": f"r{i}", "tags": {"n": i, "k": [i]}} for i in range(1, 11)]
SIZE = 3  # records per page


class Api(BaseHTTPRequestHandler):
    server: ApiServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        srv = self.server
        with srv.lock:
            srv.log.append((url.path, q, dict(self.headers), time.monotonic()))
            srv.hits[url.path] = hits = srv.hits.get(url.path, 0) + 1
        path = url.path
        if path == "/cursor":
            at = int(q.get("cursor", "0"))
            nxt = str(at + SIZE) if at + SIZE < len(RECORDS) else None
            self._send(200, {"data": {"items": RECORDS[at : at + SIZE]}, "meta": {"next": nxt}})
        elif path == "/offset":
            at, limit = int(q["offset"]), int(q["limit"])
            self._send(200, RECORDS[at : at + limit])
        elif path == "/page":
            page = int(q["page"])
            self._send(200, {"results": RECORDS[(page - 1) * SIZE : page * SIZE]})
        elif path == "/link":
            page = int(q.get("page", "1"))
            headers = {}
            if page * SIZE < len(RECORDS):
                nxt = f"http://127.0.0.1:{srv.server_port}/link?page={page + 1}"
                headers["Link"] = f'<{nxt}>; rel="next", </link?page=1>; rel="first"'
            self._send(200, RECORDS[(page - 1) * SIZE : page * SIZE], headers)
        elif path == "/next":
            page = int(q.get("page", "1"))
            nxt = f"/next?page={page + 1}" if page * SIZE < len(RECORDS) else None
            self._send(200, {"items": RECORDS[(page - 1) * SIZE : page * SIZE], "next": nxt})
        elif path == "/none":
            self._send(200, srv.full)
        elif path == "/events":
            since = q.get("updated_since", "")
            fail_at = srv.fail_offset
            if fail_at is not None and int(q["offset"]) >= fail_at:
                self._send(500, {"error": "down"})
                return
            found = [e for e in srv.events if e["updated_at"] > since]
            at, limit = int(q["offset"]), int(q["limit"])
            self._send(200, found[at : at + limit])
        elif path == "/since":  # inclusive: the records at the watermark come again
            if srv.fail_offset is not None and int(q["offset"]) >= srv.fail_offset:
                self._send(500, {"error": "down"})
                return
            since = q.get("updated_since", "")
            found = [e for e in srv.events if e["updated_at"] >= since]
            at, limit = int(q["offset"]), int(q["limit"])
            self._send(200, found[at : at + limit])
        elif path == "/pages":  # srv.pages[n - 1] for page n: a list, or raw bytes
            page = int(q.get("page", "1"))
            body = srv.pages[page - 1] if page <= len(srv.pages) else []
            self._send(200, body)
        elif path == "/limited":  # 429 once, then fine
            if hits == 1:
                self._send(429, {"error": "slow down"}, {"Retry-After": "0.3"})
            else:
                self._send(200, RECORDS[:2])
        elif path == "/storm":  # Retry-After: 0, three times
            if hits <= 3:
                self._send(429, {"error": "slow down"}, {"Retry-After": "0"})
            else:
                self._send(200, RECORDS[:2])
        elif path == "/flaky":  # 500 twice
            self._send(500, b"oops") if hits <= 2 else self._send(200, RECORDS[:2])
        elif path == "/down":
            self._send(503, b"unavailable")
        elif path == "/mixed":
            page = int(q["page"])
            pages = [
                [{"id": 1, "v": 1, "n": {"a": 1}}],
                [{"id": 2, "v": "two", "n": "flat"}],
                [{"id": 3, "extra": True}],
                [],
            ]
            self._send(200, pages[page - 1])
        elif path == "/elsewhere":  # the same server under another host name
            target = f"http://localhost:{srv.server_port}/auth/bearer"
            self._send(302, b"", {"Location": target})
        elif path.startswith("/auth/"):
            self._auth(path.removeprefix("/auth/"), q)
        else:
            self._send(404, {"error": f"no route {path}"})

    def _auth(self, kind: str, q: dict[str, str]) -> None:
        auth = self.headers.get("Authorization", "")
        if kind == "bearer":
            got = auth.removeprefix("Bearer ")
        elif kind == "basic":
            got = base64.b64decode(auth.removeprefix("Basic ") or b"").decode()
        else:
            got = self.headers.get("X-Token", "") if kind == "header" else q.get("api_key", "")
        expected = f"ann:{TOKEN}" if kind == "basic" else TOKEN
        if got == expected:
            self._send(200, self.server.full or RECORDS[:1])
        else:  # a careless server echoes what it was sent
            self._send(401, {"error": f"invalid credentials {got}"})


class ApiServer(ThreadingHTTPServer):
    def reset(self) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[str, dict[str, str], dict[str, str], float]] = []
        self.hits: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.fail_offset: int | None = None
        self.full: list[dict[str, Any]] = []
        self.pages: list[Any] = []


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServer]:
    srv = ApiServer(("127.0.0.1", 0), Api)
    srv.reset()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def api(server: ApiServer) -> ApiServer:
    server.reset()
    return server


def setup(root: Path, api: ApiServer, source: str, write: str = "") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "lakeforge.yml").write_text("name: api\n")
    (root / "models").mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{api.server_port}"
    (root / "models" / "raw.sql").write_text(
        f'/* lakeforge\n{write}source: {{kind: rest, url: "{url}", backoff_base: 0.01, '
        f"{source}}}\n*/\nSELECT * FROM source\n"
    )


def run(root: Path, ok: bool = True) -> Any:
    result = Runner(load_project(root)).run()
    assert result.ok is ok, [str(t.error) for t in result.tasks]
    return result


def rows(root: Path) -> list[dict[str, Any]]:
    table = DeltaStore(str(root / "lakehouse")).read("raw").to_table()
    return sorted(table.to_pylist(), key=lambda r: r["id"])


@pytest.mark.parametrize(
    "source",
    [
        "path: /cursor, records: data.items, paginate: {style: cursor, path: meta.next}",
        "path: /offset, paginate: {style: offset, limit: 3}",
        "path: /offset, paginate: {style: offset, limit: 5}",  # the last page is empty
        "path: /page, records: results, paginate: page",
        "path: /link, paginate: link_header",
        "path: /next, records: items, paginate: {style: next_url, path: next}",
    ],
    ids=["cursor", "offset", "offset-exact", "page", "link_header", "next_url"],
)
def test_every_pagination_style_reads_every_record_once(
    tmp_path: Path, api: ApiServer, source: str
) -> None:
    setup(tmp_path, api, source)
    result = run(tmp_path)
    got = rows(tmp_path)
    assert [r["id"] for r in got] == [r["id"] for r in RECORDS]
    assert got[0]["tags"] == {"n": 1, "k": [1]}  # nested JSON kept as a struct
    assert result.tasks[0].metrics["source"]["batches"] == 1  # a full load: one commit


def test_full_load_replaces_the_table_in_one_commit(tmp_path: Path, api: ApiServer) -> None:
    setup(tmp_path, api, "path: /none")
    api.full = [{"id": 1}, {"id": 2}]
    run(tmp_path)
    api.full = [{"id": 2}, {"id": 3}]
    plan = Runner(load_project(tmp_path)).plan()
    assert plan[0].stale and "API polled each run" in " ".join(plan[0].reasons)
    run(tmp_path)
    assert [r["id"] for r in rows(tmp_path)] == [2, 3]
    assert DeltaStore(str(tmp_path / "lakehouse")).version("raw") == 1  # one commit a run
    api.full = []  # no records, so no columns: the table is kept, not emptied
    result = run(tmp_path)
    assert "nothing new to read" in result.tasks[0].reason
    assert [r["id"] for r in rows(tmp_path)] == [2, 3]


def test_incremental_sends_the_watermark_and_appends_only_new(
    tmp_path: Path, api: ApiServer
) -> None:
    setup(
        tmp_path,
        api,
        "path: /events, paginate: {style: offset, limit: 2}, pages_per_batch: 1, "
        'incremental: {param: updated_since, field: updated_at, initial: "2024-01-01"}',
    )
    api.events = [{"id": i, "updated_at": f"2024-02-0{i}"} for i in range(1, 6)]
    first = run(tmp_path)
    assert first.tasks[0].metrics["source"]["batches"] == 3  # 2 + 2 + 1 records
    assert {q.get("updated_since") for _, q, _, _ in api.log} == {"2024-01-01"}
    api.log.clear()
    api.events += [{"id": 6, "updated_at": "2024-03-01"}]
    run(tmp_path)
    assert {q.get("updated_since") for _, q, _, _ in api.log} == {"2024-02-05"}
    assert [r["id"] for r in rows(tmp_path)] == [1, 2, 3, 4, 5, 6]
    api.log.clear()
    run(tmp_path)  # nothing new: no commit
    assert [r["id"] for r in rows(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert DeltaStore(str(tmp_path / "lakehouse")).version("raw") == 3


def test_a_pass_that_dies_resumes_after_its_last_batch(tmp_path: Path, api: ApiServer) -> None:
    setup(
        tmp_path,
        api,
        "path: /events, paginate: {style: offset, limit: 2}, pages_per_batch: 1, "
        'max_retries: 0, incremental: {param: updated_since, field: updated_at, initial: "0"}',
    )
    # Newest first: the watermark of a finished page is above records not yet read, so
    # resuming from it would lose them; the state's pass position does not.
    api.events = [{"id": i, "updated_at": f"2024-02-{20 - i:02d}"} for i in range(1, 8)]
    api.fail_offset = 4
    failed = run(tmp_path, ok=False)
    assert "HTTP 500" in str(failed.tasks[0].error)
    assert [r["id"] for r in rows(tmp_path)] == [1, 2, 3, 4]
    api.fail_offset = None
    api.log.clear()
    run(tmp_path)
    assert next(q["offset"] for _, q, _, _ in api.log) == "4"  # resumed, same parameter
    assert {q["updated_since"] for _, q, _, _ in api.log} == {"0"}
    assert [r["id"] for r in rows(tmp_path)] == list(range(1, 8))


INCLUSIVE = (
    "path: /since, paginate: {style: offset, limit: 2}, pages_per_batch: 1, max_retries: 0, "
    "incremental: {param: updated_since, field: updated_at%s}"
)


def version(root: Path) -> int:
    return DeltaStore(str(root / "lakehouse")).version("raw")


def test_an_inclusive_since_reruns_without_a_commit_and_reads_ties_once(
    tmp_path: Path, api: ApiServer
) -> None:
    # Append: a record read twice would be in the table twice.
    setup(tmp_path, api, INCLUSIVE % "")
    api.events = [
        {"id": 1, "updated_at": "2024-02-01", "v": "a"},
        {"id": 2, "updated_at": "2024-02-02", "v": "a"},
        *({"id": i, "updated_at": "2024-02-03", "v": "a"} for i in (3, 4, 5)),  # two pages
    ]
    run(tmp_path)
    assert [r["id"] for r in rows(tmp_path)] == [1, 2, 3, 4, 5]
    before = version(tmp_path)
    for _ in range(2):  # the API sends 3, 4, 5 again: read before, nothing to commit
        again = run(tmp_path)
        assert "nothing new to read" in again.tasks[0].reason
        assert version(tmp_path) == before
    assert {q["updated_since"] for _, q, _, _ in api.log[-2:]} == {"2024-02-03"}
    # A record changed in place at the watermark (same updated_at) is another record.
    api.events[3] = {"id": 4, "updated_at": "2024-02-03", "v": "changed"}
    assert run(tmp_path).tasks[0].rows_in == 1
    assert sorted((r["id"], r["v"]) for r in rows(tmp_path) if r["id"] == 4) == [
        (4, "a"),
        (4, "changed"),
    ]
    # A new record at the watermark is read; then nothing again.
    api.events.append({"id": 6, "updated_at": "2024-02-03", "v": "a"})
    assert run(tmp_path).tasks[0].rows_in == 1
    assert [r["id"] for r in rows(tmp_path)] == [1, 2, 3, 4, 4, 5, 6]
    before = version(tmp_path)
    run(tmp_path)
    assert version(tmp_path) == before
    newest = DeltaStore(str(tmp_path / "lakehouse")).commit_infos("raw")
    state = next(i.source_state for i in newest if i.source_state)
    assert state["watermark"] == "2024-02-03" and len(state["at_watermark"]) == 5  # 3-6, new 4
    assert "at_since" not in state  # the pass is complete


def test_with_a_key_the_ties_are_told_apart_by_the_key(tmp_path: Path, api: ApiServer) -> None:
    setup(tmp_path, api, INCLUSIVE % ", key: id")
    api.events = [{"id": i, "updated_at": "2024-02-03", "v": "a"} for i in (1, 2, 3)]
    run(tmp_path)
    before = version(tmp_path)
    api.events[0] = {"id": 1, "updated_at": "2024-02-03", "v": "changed"}  # same key: read
    run(tmp_path)
    assert version(tmp_path) == before
    api.events.append({"id": 4, "updated_at": "2024-02-03", "v": "a"})
    assert run(tmp_path).tasks[0].rows_in == 1
    assert [r["id"] for r in rows(tmp_path)] == [1, 2, 3, 4]


def test_an_inclusive_pass_that_dies_resumes_and_then_reruns_without_a_commit(
    tmp_path: Path, api: ApiServer
) -> None:
    setup(tmp_path, api, INCLUSIVE % "")
    api.events = [{"id": i, "updated_at": "2024-02-01"} for i in range(1, 4)]
    run(tmp_path)
    api.events += [{"id": i, "updated_at": f"2024-02-0{i - 2}"} for i in range(4, 8)]
    # since=2024-02-01 sends 1, 2, 3 again (skipped) then 4..7; the page at offset 4 fails.
    api.fail_offset = 4
    run(tmp_path, ok=False)
    assert [r["id"] for r in rows(tmp_path)] == [1, 2, 3, 4]
    state = next(
        i.source_state
        for i in DeltaStore(str(tmp_path / "lakehouse")).commit_infos("raw")
        if i.source_state
    )
    assert state["resume"] == 4 and len(state["at_since"]) == 3
    api.fail_offset = None
    api.log.clear()
    run(tmp_path)
    assert next(q["offset"] for _, q, _, _ in api.log) == "4"  # resumed, same parameter
    assert {q["updated_since"] for _, q, _, _ in api.log} == {"2024-02-01"}
    assert [r["id"] for r in rows(tmp_path)] == list(range(1, 8))
    before = version(tmp_path)
    run(tmp_path)  # since=2024-02-05 sends 7 again: read before
    assert version(tmp_path) == before


def dead_letters(root: Path) -> list[dict[str, Any]]:
    store = DeltaStore(str(root / "lakehouse"))
    if not store.exists("raw__dlq"):
        return []
    return sorted(
        store.read("raw__dlq").to_table().to_pylist(),
        key=lambda r: (r["source_file"], r["line"] if r["line"] is not None else -1),
    )


TYPED = 'schema: {id: BIGINT, amount: "DECIMAL(12,2)", at: TIMESTAMP}, required: [id]'


def test_records_that_do_not_fit_the_schema_go_to_the_dead_letter_queue(
    tmp_path: Path, api: ApiServer
) -> None:
    from decimal import Decimal

    setup(tmp_path, api, f"path: /none, {TYPED}")
    api.full = [
        {"id": 1, "amount": "12.50", "at": "2024-01-01T10:00:00", "note": "kept"},
        {"id": "two", "amount": 1, "at": "2024-01-01"},
        {"amount": 3},
        {"id": 4, "amount": "x" * 200, "at": "nope"},
        {"id": "5", "amount": 7, "at": None},
    ]
    result = run(tmp_path)
    got = rows(tmp_path)
    assert [(r["id"], r["amount"]) for r in got] == [(1, Decimal("12.50")), (5, Decimal("7"))]
    assert got[0]["note"] == "kept" and got[1]["note"] is None  # undeclared: inferred
    dead = dead_letters(tmp_path)
    assert [d["line"] for d in dead] == [1, 2, 3]
    origin = f"http://127.0.0.1:{api.server_port}/none"
    assert {d["source_file"] for d in dead} == {origin}
    assert [json.loads(d["raw_text"]) for d in dead] == api.full[1:4]
    assert "column 'id': expected BIGINT, found \"two\"" in dead[0]["error"]
    assert dead[1]["error"] == "'id' required, missing or null"
    assert "column 'amount'" in dead[2]["error"] and "column 'at'" in dead[2]["error"]
    assert "x" * 100 not in dead[2]["error"]  # the value found is cut short
    metrics = result.tasks[0].metrics
    assert metrics["rows_dlq"] == 3 and metrics["rows_published"] == 2
    # Nothing disappears: rows_in counts every record read, dead letters included.
    assert result.tasks[0].rows_in == len(api.full)
    assert result.tasks[0].rows_in == metrics["rows_published"] + metrics["rows_dlq"]


def test_a_dead_letter_at_the_watermark_is_not_read_again(tmp_path: Path, api: ApiServer) -> None:
    setup(tmp_path, api, f"{INCLUSIVE % ''}, schema: {{id: BIGINT}}")
    api.events = [
        {"id": 1, "updated_at": "2024-02-01"},
        {"id": "bad", "updated_at": "2024-02-02"},
    ]
    run(tmp_path)
    before = (version(tmp_path), len(dead_letters(tmp_path)))
    run(tmp_path)
    assert (version(tmp_path), len(dead_letters(tmp_path))) == before == (0, 1)


def test_dead_letter_origins_mask_the_api_key(
    tmp_path: Path, api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LF_API_TOKEN", TOKEN)
    setup(tmp_path, api, f"path: /auth/query, {AUTH['query']}, schema: {{id: INTEGER}}")
    api.full = [{"id": "one"}]
    # A full load that reads no record keeps the table and fails, saying why.
    error = str(run(tmp_path, ok=False).tasks[0].error)
    assert "no record could be read, 1 dead letter(s)" in error and "api_key=***" in error
    assert "column 'id': expected INTEGER" in error and TOKEN not in error
    api.full = [{"id": 1}, {"id": "two"}]
    run(tmp_path)
    assert [r["id"] for r in rows(tmp_path)] == [1]
    (dead,) = dead_letters(tmp_path)
    assert dead["source_file"].endswith("/auth/query?api_key=***") and dead["line"] == 1
    for text in _written_text(tmp_path):
        assert TOKEN not in text


@pytest.mark.parametrize("paginate", ["page", "link"])
def test_a_bad_page_fails_the_run_or_goes_to_the_dead_letter_queue(
    tmp_path: Path, api: ApiServer, paginate: str
) -> None:
    api.pages = [[{"id": 1}], b"<html>maintenance</html>", [{"id": 3}], []]
    setup(tmp_path, api, "path: /pages, paginate: page")
    error = str(run(tmp_path, ok=False).tasks[0].error)
    assert "/pages: the response is not JSON" in error
    setup(tmp_path, api, "path: /pages, paginate: page, on_bad_page: dead_letter")
    if paginate == "link":  # the next page is in the body: the pass ends at the bad page
        api.pages = [{"items": [{"id": 1}], "next": "/pages?page=2"}, b"<html>", {"items": []}]
        setup(
            tmp_path,
            api,
            "path: /pages, records: items, paginate: {style: next_url, path: next}, "
            "on_bad_page: dead_letter",
        )
    result = run(tmp_path)
    assert [r["id"] for r in rows(tmp_path)] == ([1, 3] if paginate == "page" else [1])
    (dead,) = dead_letters(tmp_path)
    assert dead["line"] is None and dead["raw_text"].startswith("<html>")
    assert dead["source_file"].endswith("/pages?page=2")
    assert dead["error"].startswith("bad page: the response is not JSON")
    assert result.tasks[0].metrics["rows_dlq"] == 1


def test_two_bad_pages_in_a_row_end_the_pagination(tmp_path: Path, api: ApiServer) -> None:
    api.pages = [[{"id": 1}], b"oops", b"oops", [{"id": 4}]]
    setup(tmp_path, api, "path: /pages, paginate: page, on_bad_page: dead_letter")
    run(tmp_path)
    assert [r["id"] for r in rows(tmp_path)] == [1]
    assert [d["source_file"][-6:] for d in dead_letters(tmp_path)] == ["page=2", "page=3"]


def test_rest_dead_letters_replay_with_the_settings_as_they_are_now(
    tmp_path: Path, api: ApiServer
) -> None:
    from typer.testing import CliRunner

    from lakeforge.cli.app import app

    def replay() -> dict[str, Any]:
        out = CliRunner().invoke(app, ["-C", str(tmp_path), "dlq", "replay", "raw", "--json"])
        assert out.exit_code == 0, out.output
        return dict(json.loads(out.output))

    source = "path: /pages, paginate: page, on_bad_page: dead_letter, schema: {id: BIGINT}"
    api.pages = [[{"id": 1, "v": "a"}, {"id": 2}, {"id": "x", "v": "b"}], b"<html>"]
    setup(tmp_path, api, f"{source}, required: [v]")
    run(tmp_path)
    assert [r["id"] for r in rows(tmp_path)] == [1] and len(dead_letters(tmp_path)) == 3
    assert replay()["replayed"] == 0  # nothing changed: nothing reads
    setup(tmp_path, api, source)  # v is no longer required
    done = replay()
    assert (done["replayed"], done["still_unreadable"]) == (1, 2)  # "x" and the page stay
    assert [(r["id"], r["v"]) for r in rows(tmp_path)] == [(1, "a"), (2, None)]
    assert replay()["replayed"] == 0 and len(rows(tmp_path)) == 2


def test_schema_config_errors() -> None:
    from lakeforge.graph.spec import DatasetConfig

    base = {"kind": "rest", "url": "http://h"}
    with pytest.raises(ValueError, match="schema: column 'a': 'BIGNIT' is not a DuckDB type"):
        DatasetConfig.model_validate({"source": {**base, "schema": {"a": "BIGNIT"}}})
    config = DatasetConfig.model_validate({"source": {**base, "schema": {"a": "int"}}})
    assert config.source is not None and config.source.record_schema == {"a": "INTEGER"}
    with pytest.raises(ValueError, match="on_bad_page"):
        DatasetConfig.model_validate({"source": {**base, "on_bad_page": "skip"}})


def test_records_whose_types_clash_become_text(tmp_path: Path, api: ApiServer) -> None:
    setup(tmp_path, api, "path: /mixed, paginate: page")
    run(tmp_path)
    got = rows(tmp_path)
    assert [r["v"] for r in got] == ["1", "two", None]
    assert json.loads(got[0]["n"]) == {"a": 1} and got[1]["n"] == "flat"
    assert got[2]["extra"] is True


def test_retry_after_is_honoured(tmp_path: Path, api: ApiServer) -> None:
    setup(tmp_path, api, "path: /limited")
    run(tmp_path)
    (_, _, _, first), (_, _, _, second) = api.log
    assert second - first >= 0.3
    assert len(rows(tmp_path)) == 2


def test_a_retry_after_zero_storm_is_slowed_down(tmp_path: Path, api: ApiServer) -> None:
    setup(tmp_path, api, "path: /storm, max_retries: 5")
    path = tmp_path / "models" / "raw.sql"
    path.write_text(path.read_text().replace("backoff_base: 0.01", "backoff_base: 0.05"))
    run(tmp_path)
    times = [t for *_, t in api.log]
    assert len(times) == 4
    assert all(b - a >= 0.05 for a, b in itertools.pairwise(times))


def test_flaky_servers_are_retried_then_give_up_transiently(tmp_path: Path, api: ApiServer) -> None:
    setup(tmp_path, api, "path: /flaky, max_retries: 3")
    run(tmp_path)
    assert api.hits["/flaky"] == 3 and len(rows(tmp_path)) == 2
    down = tmp_path / "down"
    setup(down, api, "path: /down, max_retries: 2")
    error = run(down, ok=False).tasks[0].error
    assert "failed after 3 attempt(s): HTTP 503" in str(error)
    assert api.hits["/down"] == 3


def test_a_client_error_is_terminal_with_the_status_and_body(
    tmp_path: Path, api: ApiServer
) -> None:
    setup(tmp_path, api, "path: /missing")
    error = str(run(tmp_path, ok=False).tasks[0].error)
    assert "HTTP 404" in error and "no route /missing" in error
    assert api.hits["/missing"] == 1  # not retried


def test_the_rate_limit_is_shared_per_host(tmp_path: Path, api: ApiServer) -> None:
    setup(tmp_path, api, "path: /page, records: results, paginate: page, requests_per_second: 8")
    run(tmp_path)  # 5 requests (4 pages and an empty one)
    times = [t for *_, t in api.log]
    assert len(times) == 5 and times[-1] - times[0] >= 4 / 8 - 0.02
    # Two threads on one host share one bucket.
    bucket = limiter_for("shared.example:443", 20)
    assert limiter_for("shared.example:443", 50) is bucket and bucket.rate == 20
    start = time.monotonic()
    threads = [
        threading.Thread(target=lambda: [bucket.acquire() for _ in range(3)]) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - start >= 5 / 20 - 0.02


AUTH = {
    "bearer": "auth: {type: bearer, token_env: LF_API_TOKEN}",
    "basic": "auth: {type: basic, username: ann, password_env: LF_API_TOKEN}",
    "header": "auth: {type: api_key, key_env: LF_API_TOKEN, header: X-Token}",
    "query": "auth: {type: api_key, key_env: LF_API_TOKEN, query_param: api_key}",
}


@pytest.mark.parametrize("kind", list(AUTH))
def test_auth_works_and_secrets_never_show(
    tmp_path: Path, api: ApiServer, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    setup(tmp_path, api, f"path: /auth/{kind}, {AUTH[kind]}")
    monkeypatch.setenv("LF_API_TOKEN", TOKEN)
    run(tmp_path)
    assert len(rows(tmp_path)) == 1
    # A wrong secret: the server echoes it back; the error must not carry it.
    wrong = f"wrong-{TOKEN}"
    monkeypatch.setenv("LF_API_TOKEN", wrong)
    error = str(run(tmp_path, ok=False).tasks[0].error)
    assert "HTTP 401" in error and "***" in error
    written = list(_written_text(tmp_path))
    run_log = (tmp_path / ".lakeforge" / "logs" / "run_log.jsonl").read_text()
    assert "HTTP 401" in run_log and run_log in written  # the log is among what is scanned
    for text in (error, *written):
        assert TOKEN not in text and wrong not in text
        assert base64.b64encode(f"ann:{TOKEN}".encode()).decode() not in text


def test_secrets_from_a_file(tmp_path: Path, api: ApiServer) -> None:
    setup(
        tmp_path,
        api,
        "path: /auth/bearer, auth: {type: bearer, secrets_file: secrets.yml, secret: api}",
    )
    (tmp_path / "secrets.yml").write_text(f"api: {TOKEN}\n")
    run(tmp_path)
    assert len(rows(tmp_path)) == 1
    (tmp_path / "secrets.yml").write_text("other: 1\n")
    error = str(run(tmp_path, ok=False).tasks[0].error)
    assert "has no 'api'" in error


def test_a_redirect_to_another_host_drops_the_token(
    tmp_path: Path, api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LF_API_TOKEN", TOKEN)
    setup(tmp_path, api, f"path: /elsewhere, {AUTH['bearer']}")
    error = str(run(tmp_path, ok=False).tasks[0].error)
    assert "HTTP 401" in error and TOKEN not in error
    assert api.log[-1][2].get("Authorization") is None  # not sent to the other host


def test_config_errors() -> None:
    from lakeforge.graph.spec import DatasetConfig

    base = {"kind": "rest", "url": "http://h"}
    with pytest.raises(ValueError, match="needs path"):
        DatasetConfig.model_validate({"source": {**base, "paginate": "cursor"}})
    with pytest.raises(ValueError, match="exactly one of token_env and secrets_file"):
        DatasetConfig.model_validate({"source": {**base, "auth": {"type": "bearer"}}})
    with pytest.raises(ValueError, match="must start with http"):
        DatasetConfig.model_validate({"source": {**base, "url": "ftp://h"}})
    config = DatasetConfig.model_validate({"source": base})
    assert config.write.strategy == "append"


def test_retry_after_dates_and_seconds() -> None:
    from email.utils import formatdate

    assert retry_after("2") == 2.0
    assert retry_after("0") == 0.0
    assert retry_after(None) is None and retry_after("soon") is None
    later = retry_after(formatdate(time.time() + 30, usegmt=True))
    assert later is not None and 28 <= later <= 31
    assert retry_after(formatdate(time.time() - 30, usegmt=True)) == 0.0


def _written_text(root: Path) -> Iterator[str]:
    """Everything Lakeforge wrote: the run log, metadata, Delta logs."""
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".log", ".yml", ".txt"):
            if path.name != "secrets.yml":
                yield path.read_text(errors="replace")
        elif path.is_file() and path.suffix in (".db", ".sqlite", ".duckdb"):
            yield path.read_bytes().decode("latin-1")
