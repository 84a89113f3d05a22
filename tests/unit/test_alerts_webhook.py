"""Alerts end to end: real projects, the real CLI, and a real HTTP receiver on 127.0.0.1
(a ``ThreadingHTTPServer`` in this process) standing in for a Slack incoming webhook;
the command and log channels write real files."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from lakeforge.cli.app import app
from lakeforge.execution.executor import Runner
from lakeforge.metadata.store import MetadataStore
from lakeforge.project.loader import load_project
from lakeforge.scheduling.alerts import notify_freshness, notify_run
from lakeforge.scheduling.freshness import evaluate as evaluate_freshness
from lakeforge.scheduling.freshness import last_data_change
from lakeforge.storage.delta import DeltaStore

HOOK_ENV = "LF_TEST_ALERT_HOOK"
TOKEN_ENV = "LF_TEST_ALERT_TOKEN"
URL_SECRET = "T0URLSECRET/B0URLSECRET/xoxb-url-secret"
TOKEN = "Bearer header-secret-4242"
SECRETS = ("URLSECRET", "url-secret", "header-secret-4242")


# -- the receiver -------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int  # what the receiver answered


class Receiver:
    """Records every POST; answers the statuses queued in ``answers``, then 200."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.answers: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with receiver.lock:
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.requests.append(
                        Request(self.path, dict(self.headers.items()), body, status)
                    )
                # A careless server echoes the request back in its error page.
                reply = b"ok" if status < 300 else (
                    f"no such hook {self.path} for {self.headers.get('Authorization')}"
                ).encode()  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass  # quiet

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def accepted(self) -> list[dict[str, Any]]:
        """Bodies of the requests answered with 2xx: the messages delivered."""
        with self.lock:
            return [r.body for r in self.requests if r.status < 300]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The delivered messages once there are ``count`` of them (poll with a deadline)."""
        deadline = time.monotonic() + timeout
        while len(self.accepted()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} message(s), got {self.accepted()}")
            time.sleep(0.01)
        return self.accepted()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    monkeypatch.setenv(HOOK_ENV, f"{r.url}/hooks/{URL_SECRET}")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


@pytest.fixture(autouse=True)
def wide_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as a terminal would show them, whatever the test runner's width."""
    from lakeforge.cli import output

    for console in (output.console, output.err_console):
        monkeypatch.setattr(console, "_width", 250)


# -- projects -----------------------------------------------------------------------------

WEBHOOK = {
    "name": "slack",
    "type": "webhook",
    "url_env": HOOK_ENV,
    "headers_env": {"Authorization": TOKEN_ENV},
    "retries": 0,
}


def make_project(root: Path, alerts: list[dict[str, Any]], models: dict[str, str]) -> Path:
    (root / "lakeforge.yml").write_text(yaml.safe_dump({"name": "shop", "alerts": alerts}))
    for name, sql in models.items():
        write(root, f"models/{name}.sql", sql)
    return root


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


def cli(root: Path, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(app, ["-C", str(root), *args])
    assert result.exit_code == code, f"{args}: {result.stdout}\n{result.stderr}"
    return result


def run(root: Path, *args: str, code: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cli(root, "run", "--json", *args, code=code).stdout)
    return out


NUMBERS = "SELECT range AS n FROM range(5)"
BROKEN = "SELECT n, no_such_column FROM numbers"
FIXED = "SELECT n FROM numbers"


# -- run failures -------------------------------------------------------------------------


def test_a_failing_dataset_fires_once_and_resolves_once(tmp_path: Path, receiver: Receiver) -> None:
    root = make_project(tmp_path, [WEBHOOK], {"numbers": NUMBERS, "report": BROKEN})
    first = run(root, code=1)
    (message,) = receiver.wait_for(1)
    assert message["text"].startswith(":red_circle: ERROR [shop] report: run failed — ")
    assert "no_such_column" in message["text"]
    assert message["text"].endswith(f"(run {first['run_id']})")
    alert = message["lakeforge"]
    assert {k: alert[k] for k in ("project", "event", "dataset", "subject", "severity")} == {
        "project": "shop",
        "event": "run_failed",
        "dataset": "report",
        "subject": None,
        "severity": "error",
    }
    assert (alert["status"], alert["notification"], alert["run_id"]) == (
        "firing",
        "firing",
        first["run_id"],
    )
    assert alert["details"]["attempts"] == 1 and "no_such_column" in alert["details"]["error"]
    assert alert["count"] == 1 and alert["resolved_at"] is None
    (request,) = receiver.requests
    assert request.path == f"/hooks/{URL_SECRET}"
    assert request.headers["Authorization"] == TOKEN
    assert request.headers["Content-Type"] == "application/json"
    with MetadataStore(load_project(root).metadata_url) as metadata:
        assert metadata.get_run(first["run_id"]).options["alerts"] == {"sent": 1, "failed": []}

    run(root, code=1)  # still failing: nothing new
    assert len(receiver.requests) == 1

    write(root, "models/report.sql", FIXED)
    fixed = run(root)
    (_, resolved) = receiver.wait_for(2)
    assert resolved["text"] == (
        f":white_check_mark: RESOLVED [shop] report: run failed — report built "
        f"(run {fixed['run_id']})"
    )
    assert resolved["lakeforge"]["status"] == "resolved"
    assert resolved["lakeforge"]["notification"] == "resolved"
    assert resolved["lakeforge"]["resolved_at"] is not None
    run(root)  # up to date: nothing more
    assert len(receiver.requests) == 2


def test_a_blocking_check_fires_once_and_resolves_once(tmp_path: Path, receiver: Receiver) -> None:
    ids = """
    /* lakeforge
    checks: [{not_null: id}, {type: row_count, min: 1}]
    */
    SELECT * FROM read_csv('landing/ids.csv')
    """
    root = make_project(tmp_path, [WEBHOOK], {"ids": ids})
    write(root, "landing/ids.csv", "id,v\n1,a\n,b\n")
    failed = run(root, code=1)
    (message,) = receiver.wait_for(1)
    # A gate failure is a check failure, not a run failure: one message, about the check.
    assert message["text"].startswith(":red_circle: ERROR [shop] ids: check not_null(id) failed — ")
    alert = message["lakeforge"]
    assert (alert["event"], alert["subject"], alert["status"]) == (
        "check_failed",
        "not_null(id)",
        "firing",
    )
    assert alert["run_id"] == failed["run_id"]
    assert alert["details"]["failing"] == 1 and alert["details"]["published"] is False

    run(root, code=1)
    assert len(receiver.requests) == 1

    write(root, "landing/ids.csv", "id,v\n1,a\n2,b\n")
    run(root)
    (_, resolved) = receiver.wait_for(2)
    assert resolved["text"].startswith(
        ":white_check_mark: RESOLVED [shop] ids: check not_null(id) failed — "
        "not_null(id) passes again"
    )
    assert (resolved["lakeforge"]["event"], resolved["lakeforge"]["status"]) == (
        "check_failed",
        "resolved",
    )
    run(root, "--full-refresh")
    assert len(receiver.requests) == 2


def test_under_no_gate_a_failed_partition_is_a_run_failure(tmp_path: Path) -> None:
    daily = """
    /* lakeforge
    partitions: {daily: {start: 2024-01-01, end: 2024-01-03, column: day}}
    checks: [{not_null: v}]
    */
    SELECT day, CASE WHEN day = DATE '2024-01-02' THEN error('boom')
                     WHEN day = DATE '2024-01-01' THEN NULL ELSE 1 END AS v
    FROM (SELECT @start AS day)
    """
    root = make_project(tmp_path, [{"type": "log"}], {"daily": daily})
    # 2024-01-01 fails its blocking check (published anyway), 2024-01-02 fails to build.
    run(root, "--no-gate", code=1)
    log = root / ".lakeforge" / "alerts.jsonl"
    sent = sorted(
        (d["lakeforge"]["event"], d["lakeforge"]["subject"] or "")
        for d in map(json.loads, log.read_text().splitlines())
    )
    assert sent == [("check_failed", "not_null(v)"), ("run_failed", "")]


# -- freshness ----------------------------------------------------------------------------

DAILY = """
/* lakeforge
partitions: {daily: {start: 2024-01-01, end: 2024-01-03, column: day}}
freshness: {warn_after: 30m, error_after: 1h}
*/
SELECT day, 1 AS n FROM (SELECT @start AS day)
"""
EVENTS = """
/* lakeforge
freshness: {warn_after: 2h, error_after: 6h}
*/
SELECT range AS id FROM range(3)
"""


def test_freshness_breach_fires_and_a_fresh_build_resolves(
    tmp_path: Path, receiver: Receiver
) -> None:
    root = make_project(tmp_path, [WEBHOOK], {"daily": DAILY})
    # Its two partitions ended long ago and were never built.
    out = cli(root, "freshness", "--alert", code=1)
    assert "alert freshness daily (firing) → slack" in out.stderr
    (message,) = receiver.wait_for(1)
    assert message["text"] == (
        ":red_circle: ERROR [shop] daily: freshness SLA breached — 2 partition(s) not built: "
        f"2024-01-01, 2024-01-02; 2024-01-01 is {message['lakeforge']['details']['age']} "
        "past its end"
    )
    alert = message["lakeforge"]
    assert (alert["event"], alert["severity"], alert["status"], alert["run_id"]) == (
        "freshness",
        "error",
        "firing",
        None,
    )
    assert alert["details"]["late_partitions"] == ["2024-01-01", "2024-01-02"]

    data = json.loads(cli(root, "freshness", "--alert", "--json", code=1).stdout)
    assert data["alerts"] == [] and data["datasets"][0]["status"] == "error"
    assert len(receiver.requests) == 1
    # Without --alert nothing is sent.
    cli(root, "freshness", code=1)
    assert len(receiver.requests) == 1

    run(root)
    data = json.loads(cli(root, "freshness", "--alert", "--json").stdout)
    assert data["datasets"][0]["status"] == "fresh"
    assert [(a["channel"], a["kind"], a["ok"]) for a in data["alerts"]] == [
        ("slack", "resolved", True)
    ]
    (_, resolved) = receiver.wait_for(2)
    assert resolved["text"] == (
        ":white_check_mark: RESOLVED [shop] daily: freshness SLA breached — "
        "fresh again: 2 of 2 partition(s) built"
    )
    cli(root, "freshness", "--alert")
    assert len(receiver.requests) == 2


def test_dead_mans_switch_on_a_table_nobody_refreshes(tmp_path: Path, receiver: Receiver) -> None:
    root = make_project(tmp_path, [WEBHOOK], {"events": EVENTS})
    cli(root, "freshness", "--alert", code=1)  # never built: error
    (never,) = receiver.wait_for(1)
    assert never["text"] == ":red_circle: ERROR [shop] events: freshness SLA breached — never built"
    run(root)
    cli(root, "freshness", "--alert")
    assert receiver.wait_for(2)[1]["lakeforge"]["status"] == "resolved"

    # Nobody refreshes it: judged hours later (an explicit `now`), it goes warn, then error.
    project = load_project(root)
    built = last_data_change(DeltaStore(project.storage_root), "events")
    assert built is not None

    def check(hours: float) -> None:
        now = built + dt.timedelta(hours=hours)
        with MetadataStore(project.metadata_url) as metadata:
            results = evaluate_freshness(project, now=now, metadata=metadata)
            notify_freshness(project, metadata, results, evaluated_all=True, now=now)

    check(1)
    assert len(receiver.requests) == 2
    check(3)
    warn = receiver.wait_for(3)[2]
    assert warn["text"] == (
        ":warning: WARN [shop] events: freshness SLA breached — last data change 3h ago "
        f"({built:%Y-%m-%d %H:%M} UTC)"
    )
    check(4)
    assert len(receiver.requests) == 3
    check(7)
    error = receiver.wait_for(4)[3]
    assert error["text"].startswith(
        ":red_circle: ERROR (was warn) [shop] events: freshness SLA breached — last data "
        "change 7h ago"
    )
    assert error["lakeforge"]["notification"] == "escalated"
    assert error["lakeforge"]["previous_severity"] == "warn"
    # The SLA is removed: the alert of a dataset no longer judged is resolved.
    write(root, "models/events.sql", "SELECT range AS id FROM range(3)")
    out = cli(root, "freshness", "--alert")
    assert "no dataset of the selection declares `freshness:`" in out.stdout
    assert "alert freshness events (resolved) → slack" in out.stderr
    resolved = receiver.wait_for(5)[4]
    assert resolved["text"] == (
        ":white_check_mark: RESOLVED [shop] events: freshness SLA breached — "
        "no freshness SLA declared any more"
    )


def test_freshness_alert_needs_channels(tmp_path: Path) -> None:
    write(tmp_path, "lakeforge.yml", "name: shop\n")
    write(tmp_path, "models/events.sql", EVENTS)
    out = cli(tmp_path, "freshness", "--alert", code=1)
    assert "--alert needs alert channels: no `alerts:` in lakeforge.yml" in out.stderr
    out = cli(tmp_path, "alerts", "test", code=1)
    assert "no `alerts:` in lakeforge.yml: there is no channel to test" in out.stderr
    assert "docs/freshness-alerts.md" in out.stderr


# -- command and log channels -------------------------------------------------------------

# Appends what it reads on stdin to a file in the project (the command runs there).
RECORD = "import sys; open('command.jsonl', 'a').write(sys.stdin.read() + chr(10))"


def test_command_and_log_channels(tmp_path: Path) -> None:
    alerts = [
        {"name": "oncall", "type": "command", "command": [sys.executable, "-c", RECORD]},
        {"name": "journal", "type": "log"},
        {"name": "runs_only", "type": "log", "path": "logs/runs.jsonl", "events": "run_failed"},
    ]
    root = make_project(tmp_path, alerts, {"numbers": NUMBERS, "report": BROKEN})
    run(root, code=1)
    command = [json.loads(line) for line in (root / "command.jsonl").read_text().splitlines()]
    journal_file = root / ".lakeforge" / "alerts.jsonl"
    journal = [json.loads(line) for line in journal_file.read_text().splitlines()]
    runs_only = [json.loads(line) for line in (root / "logs/runs.jsonl").read_text().splitlines()]
    assert len(command) == len(journal) == len(runs_only) == 1
    # Every channel receives the same document.
    for doc in (command[0], journal[0], runs_only[0]):
        assert doc["text"].startswith(":red_circle: ERROR [shop] report: run failed")
        assert (doc["lakeforge"]["event"], doc["lakeforge"]["status"]) == ("run_failed", "firing")
    run(root, code=1)
    assert len(journal_file.read_text().splitlines()) == 1
    write(root, "models/report.sql", FIXED)
    run(root)
    command = [json.loads(line) for line in (root / "command.jsonl").read_text().splitlines()]
    journal = [json.loads(line) for line in journal_file.read_text().splitlines()]
    assert [d["lakeforge"]["status"] for d in command] == ["firing", "resolved"]
    assert [d["lakeforge"]["status"] for d in journal] == ["firing", "resolved"]

    # A freshness breach goes to the channels that take it, not to `runs_only`.
    write(root, "models/numbers.sql", "/* lakeforge\nfreshness: {error_after: 1h}\n*/\n" + NUMBERS)
    project = load_project(root)
    with MetadataStore(project.metadata_url) as metadata:
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
        results = evaluate_freshness(project, now=later, metadata=metadata)
        delivered = notify_freshness(project, metadata, results, evaluated_all=True, now=later)
    assert sorted((d.channel, d.event, d.kind, d.ok) for d in delivered) == [
        ("journal", "freshness", "firing", True),
        ("oncall", "freshness", "firing", True),
    ]
    assert len((root / "logs/runs.jsonl").read_text().splitlines()) == 2


def test_a_failing_command_is_retried_and_never_fails_the_run(tmp_path: Path) -> None:
    flaky = (
        "import sys, pathlib; p = pathlib.Path('tries'); n = int(p.read_text()) if p.exists() "
        "else 0; p.write_text(str(n + 1)); body = sys.stdin.read(); "
        "sys.exit('pager down') if n == 0 else open('paged.jsonl', 'a').write(body + chr(10))"
    )
    alerts = [{"name": "pager", "type": "command", "command": [sys.executable, "-c", flaky]}]
    root = make_project(tmp_path, alerts, {"numbers": NUMBERS, "report": BROKEN})
    first = run(root, code=1)  # the run fails because of `report`, not of the alert
    assert [t["status"] for t in first["tasks"]] == ["success", "failed"]
    assert not (root / "paged.jsonl").exists()
    with MetadataStore(load_project(root).metadata_url) as metadata:
        summary = metadata.get_run(first["run_id"]).options["alerts"]
    (failure,) = summary["failed"]
    assert summary["sent"] == 0
    assert failure["channel"] == "pager" and failure["kind"] == "firing"
    assert failure["detail"].endswith("exited with 1: pager down")
    pending = json.loads(cli(root, "alerts", "ls", "--json").stdout)
    assert [(a["dataset"], a["pending"]) for a in pending] == [("report", ["pager"])]
    assert pending[0]["deliveries"]["pager"]["failures"] == 1

    run(root, code=1)  # the next evaluation delivers what is owed
    (paged,) = [json.loads(x) for x in (root / "paged.jsonl").read_text().splitlines()]
    assert paged["lakeforge"]["dataset"] == "report"
    assert json.loads(cli(root, "alerts", "ls", "--json").stdout)[0]["pending"] == []


# -- webhook delivery problems ------------------------------------------------------------


def test_a_500_is_retried_within_the_send(tmp_path: Path, receiver: Receiver) -> None:
    root = make_project(
        tmp_path, [{**WEBHOOK, "retries": 1}], {"numbers": NUMBERS, "report": BROKEN}
    )
    receiver.answers = [500]
    run(root, code=1)
    assert [r.status for r in receiver.requests] == [500, 200]
    (message,) = receiver.accepted()
    assert message["lakeforge"]["status"] == "firing"
    assert json.loads(cli(root, "alerts", "ls", "--json").stdout)[0]["pending"] == []


def test_a_refused_request_is_not_retried(tmp_path: Path, receiver: Receiver) -> None:
    root = make_project(
        tmp_path, [{**WEBHOOK, "retries": 2}], {"numbers": NUMBERS, "report": BROKEN}
    )
    receiver.answers = [404, 503, 503, 503]
    first = run(root, code=1)
    assert [r.status for r in receiver.requests] == [404]  # retrying changes nothing
    with MetadataStore(load_project(root).metadata_url) as metadata:
        (failure,) = metadata.get_run(first["run_id"]).options["alerts"]["failed"]
    assert failure["detail"] == "HTTP 404: no such hook *** for ***"
    (row,) = json.loads(cli(root, "alerts", "test", "--json", code=1).stdout)
    assert [r.status for r in receiver.requests] == [404, 503, 503, 503]
    assert row["detail"] == "HTTP 503: no such hook *** for *** after 3 attempt(s)"


def test_a_500_is_delivered_by_the_next_evaluation(tmp_path: Path, receiver: Receiver) -> None:
    root = make_project(tmp_path, [WEBHOOK], {"numbers": NUMBERS, "report": BROKEN})
    receiver.answers = [500]
    first = run(root, code=1)
    assert receiver.accepted() == []
    with MetadataStore(load_project(root).metadata_url) as metadata:
        (failure,) = metadata.get_run(first["run_id"]).options["alerts"]["failed"]
    assert failure["detail"].startswith("HTTP 500: no such hook *** for ***")
    listed = cli(root, "alerts", "ls").stdout
    assert "run_failed" in listed and "slack" in listed  # pending
    # The receiver is back; the next evaluation (any run, or `freshness --alert`) sends it.
    cli(root, "freshness", "--alert")
    (message,) = receiver.wait_for(1)
    assert (message["lakeforge"]["dataset"], message["lakeforge"]["status"]) == (
        "report",
        "firing",
    )
    assert json.loads(cli(root, "alerts", "ls", "--json").stdout)[0]["pending"] == []
    write(root, "models/report.sql", FIXED)
    run(root)
    assert [m["lakeforge"]["status"] for m in receiver.wait_for(2)] == ["firing", "resolved"]


def test_a_firing_never_delivered_is_not_followed_by_a_lone_resolution(
    tmp_path: Path, receiver: Receiver
) -> None:
    root = make_project(tmp_path, [WEBHOOK], {"numbers": NUMBERS, "report": BROKEN})
    receiver.answers = [500]
    run(root, code=1)
    write(root, "models/report.sql", FIXED)
    run(root)  # cleared before anyone heard of it: the channel is owed nothing
    assert [r.status for r in receiver.requests] == [500]
    (alert,) = json.loads(cli(root, "alerts", "ls", "--all", "--json").stdout)
    assert (alert["status"], alert["pending"]) == ("resolved", [])


def test_an_unset_url_variable_is_a_clear_delivery_error(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(HOOK_ENV)
    root = make_project(tmp_path, [WEBHOOK], {"numbers": NUMBERS})
    rows = json.loads(cli(root, "alerts", "test", "--json", code=1).stdout)
    assert rows == [
        {
            "channel": "slack",
            "type": "webhook",
            "target": f"${HOOK_ENV} → (not set)",
            "ok": False,
            "detail": f"environment variable {HOOK_ENV} is not set",
        }
    ]


def test_secrets_stay_out_of_output_logs_and_the_metadata_store(
    tmp_path: Path, receiver: Receiver
) -> None:
    root = make_project(tmp_path, [WEBHOOK], {"numbers": NUMBERS, "report": BROKEN})
    receiver.answers = [500] * 3  # the error page echoes the URL path and the token
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "lakeforge", "-C", str(root), "run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    # The failed delivery is reported (scrubbed) on stderr by the real process.
    assert "not delivered to slack: HTTP 500: no such hook *** for ***" in proc.stderr
    outputs = [proc.stdout, proc.stderr]
    for args in (
        ("alerts", "ls"),
        ("alerts", "ls", "--all", "--json"),
        ("alerts", "test"),
        ("alerts", "test", "--json"),
    ):
        result = CliRunner().invoke(app, ["-C", str(root), *args])
        outputs += [result.stdout, result.stderr]
    assert f"${HOOK_ENV} → {receiver.url}/***" in outputs[-4]  # alerts test: masked target
    assert [r.status for r in receiver.requests] == [500, 500, 500]
    # The secrets were sent where they belong …
    assert all(r.path == f"/hooks/{URL_SECRET}" for r in receiver.requests)
    assert all(r.headers["Authorization"] == TOKEN for r in receiver.requests)
    # … and nowhere else: output, the metadata store, the run log, anything on disk.
    for text in outputs:
        for secret in SECRETS:
            assert secret not in text, text
    with sqlite3.connect(root / ".lakeforge" / "metadata.db") as db:
        dump = "\n".join(db.iterdump())
    assert "no such hook *** for ***" in dump  # the scrubbed error is recorded
    for path in [p for p in root.rglob("*") if p.is_file()]:
        content = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in content, path


# -- lakeforge alerts ls / test -----------------------------------------------------------


def test_alerts_ls_and_test(tmp_path: Path, receiver: Receiver) -> None:
    alerts = [WEBHOOK, {"type": "log", "events": ["freshness"], "min_severity": "error"}]
    root = make_project(tmp_path, alerts, {"numbers": NUMBERS, "report": BROKEN})
    assert "no alert is firing" in cli(root, "alerts", "ls").stdout
    assert json.loads(cli(root, "alerts", "ls", "--json").stdout) == []
    run(root, code=1)
    listed = json.loads(cli(root, "alerts", "ls", "--json").stdout)
    (alert,) = listed
    assert {k: alert[k] for k in ("event", "dataset", "subject", "status", "severity")} == {
        "event": "run_failed",
        "dataset": "report",
        "subject": None,
        "status": "firing",
        "severity": "error",
    }
    assert alert["count"] == 1 and alert["pending"] == []
    assert alert["deliveries"]["slack"]["told"] is True
    assert "log-2" not in alert["deliveries"]  # it takes freshness only
    table = cli(root, "alerts", "ls")
    assert "run_failed" in table.stdout and "report" in table.stdout and "error" in table.stdout

    write(root, "models/report.sql", FIXED)
    run(root)
    assert json.loads(cli(root, "alerts", "ls", "--json").stdout) == []
    everything = json.loads(cli(root, "alerts", "ls", "--all", "--json").stdout)
    assert [(a["dataset"], a["status"]) for a in everything] == [("report", "resolved")]
    assert "resolved" in cli(root, "alerts", "ls", "--all").stdout

    before = len(receiver.requests)
    rows = json.loads(cli(root, "alerts", "test", "--json").stdout)
    assert rows == [
        {
            "channel": "slack",
            "type": "webhook",
            "target": f"${HOOK_ENV} → {receiver.url}/***",
            "ok": True,
            "detail": "delivered (HTTP 200)",
        },
        {
            "channel": "log-2",
            "type": "log",
            "target": str(root / ".lakeforge" / "alerts.jsonl"),
            "ok": True,
            "detail": f"appended to {root / '.lakeforge' / 'alerts.jsonl'}",
        },
    ]
    probe = receiver.wait_for(before + 1)[-1]
    assert probe["text"] == ":bell: [shop] Lakeforge test alert to channel slack"
    assert (probe["lakeforge"]["event"], probe["lakeforge"]["status"]) == ("test", "test")
    # A test message is not an alert: nothing is recorded.
    assert json.loads(cli(root, "alerts", "ls", "--all", "--json").stdout) == everything
    assert "ok delivered (HTTP 200)" in cli(root, "alerts", "test").stdout

    receiver.answers = [503]
    assert "failed HTTP 503" in cli(root, "alerts", "test", code=1).stdout


def test_notify_run_never_raises(tmp_path: Path, receiver: Receiver) -> None:
    root = make_project(tmp_path, [WEBHOOK], {"numbers": NUMBERS})
    project = load_project(root)
    result = Runner(project).run()
    assert result.ok
    # The metadata store is lost after the run: alerting reports it and does not raise.
    metadata = MetadataStore(project.metadata_url)
    metadata.close()
    for path in (root / ".lakeforge").glob("metadata.db*"):
        path.unlink()
    try:
        summary = notify_run(project, metadata, result)
    finally:
        metadata.close()
    assert summary is not None and "lf_alerts" in summary["error"]
    assert receiver.requests == []


# -- stream lag ---------------------------------------------------------------------------


def test_stream_lag_fires_escalates_and_resolves(tmp_path: Path, receiver: Receiver) -> None:
    from lakeforge.execution.executor import Runner
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import load_project
    from lakeforge.scheduling.alerts import notify_run

    root = make_project(
        tmp_path,
        [WEBHOOK],
        {
            "events": """
                /* lakeforge
                source: {path: "landing/*.ndjson"}
                lag_alert: {warn_after: 1000, error_after: 100000}
                */
                SELECT * FROM source
                """
        },
    )
    write(root, "landing/a.ndjson", '{"id": 1}\n')
    project = load_project(root)
    result = Runner(project).run()
    assert result.ok and receiver.accepted() == []  # a file source reports no lag

    def report(lag: int) -> list[dict[str, Any]]:
        # The figures a broker source leaves in the task's metrics (metrics.source.lag_total).
        result.tasks[0].metrics["source"]["lag_total"] = lag
        with MetadataStore(project.metadata_url) as metadata:
            notify_run(project, metadata, result, sleep=lambda s: None)
        return [m["lakeforge"] for m in receiver.accepted()]

    assert report(500) == []  # within the limits: nothing to say
    sent = report(5_000)
    assert [(m["event"], m["severity"], m["status"]) for m in sent] == [
        ("stream_lag", "warn", "firing")
    ]
    assert sent[0]["details"]["lag"] == 5_000 and sent[0]["details"]["unit"] == "messages"
    assert "5,000 messages behind" in receiver.accepted()[0]["text"]
    assert len(report(6_000)) == 1  # still warn: deduplicated
    assert report(200_000)[-1]["severity"] == "error"  # escalated
    resolved = report(0)[-1]
    assert (resolved["event"], resolved["status"]) == ("stream_lag", "resolved")
    assert len(receiver.accepted()) == 3


def test_lag_alert_needs_a_source_and_ordered_limits(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from lakeforge.graph.spec import DatasetConfig

    with pytest.raises(ValidationError, match="lag_alert applies to a table with a source"):
        DatasetConfig(lag_alert={"warn_after": 10})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="must be less than error_after"):
        DatasetConfig(
            source={"path": "x/*.csv"},  # type: ignore[arg-type]
            lag_alert={"warn_after": 10, "error_after": 5},  # type: ignore[arg-type]
        )
