"""Alert messages and their delivery to webhooks, commands and log files.

Every channel receives the same JSON document: a Slack-compatible ``text`` and a
machine-readable ``lakeforge`` object (event, dataset, subject, severity, status
``firing``/``resolved``, run id, message, details …). Secrets stay out of messages:
a webhook URL is shown as ``scheme://host/***`` and every error text is scrubbed of the
URL and header values before it is printed or stored.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakeforge.scheduling.spec import (
    AlertChannel,
    CommandChannel,
    LogChannel,
    WebhookChannel,
    duration_seconds,
)

if TYPE_CHECKING:
    from lakeforge.scheduling.alert_book import AlertRecord

DEFAULT_LOG = "alerts.jsonl"  # under the project's state dir
BASE_DELAY = 0.5  # seconds before the first webhook retry; doubles, capped at MAX_DELAY
MAX_DELAY = 4.0
_EXCERPT = 200  # characters of a failing response or command output kept in an error

_ICONS = {"error": ":red_circle:", "warn": ":warning:", "resolved": ":white_check_mark:"}
_TITLES = {
    "run_failed": "run failed",
    "check_failed": "check failed",
    "freshness": "freshness SLA breached",
    "stream_lag": "stream lag",
}


@dataclass(frozen=True)
class SendResult:
    """What happened when one message was sent to one channel."""

    channel: str
    ok: bool
    detail: str  # "delivered (HTTP 200)", or the (scrubbed) error


# -- messages -----------------------------------------------------------------------------


def alert_payload(
    project: str,
    alert: AlertRecord,
    kind: str,
    previous_severity: str | None = None,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The document sent about ``alert``; ``kind`` is firing, escalated, repeat or resolved."""
    status = "resolved" if kind == "resolved" else "firing"
    title = _TITLES.get(alert.event, alert.event)
    if alert.event == "check_failed" and alert.subject:
        title = f"check {alert.subject} failed"
    where = f"[{project}] {alert.dataset}"
    if status == "resolved":
        text = f"{_ICONS['resolved']} RESOLVED {where}: {title}"
        if alert.message:
            text += f" — {alert.message}"
    else:
        level = alert.severity.upper()
        if kind == "escalated" and previous_severity:
            level += f" (was {previous_severity})"
        text = f"{_ICONS.get(alert.severity, '')} {level} {where}: {title} — {alert.message}"
        if kind == "repeat":
            text += f" (still firing since {alert.first_fired:%Y-%m-%d %H:%M} UTC)"
    if alert.run_id:
        text += f" (run {alert.run_id})"
    return {
        "text": text.strip(),
        "lakeforge": {
            "project": project,
            "event": alert.event,
            "dataset": alert.dataset,
            "subject": alert.subject or None,
            "severity": alert.severity,
            "status": status,
            "notification": kind,
            "previous_severity": previous_severity,
            "run_id": alert.run_id,
            "message": alert.message,
            "details": alert.details,
            "first_fired": alert.first_fired.isoformat(),
            "resolved_at": None if alert.resolved_at is None else alert.resolved_at.isoformat(),
            "count": alert.count,
            "sent_at": (now or datetime.now(UTC)).isoformat(),
        },
    }


def probe_payload(project: str, channel: str) -> dict[str, Any]:
    """What ``lakeforge alerts test`` sends."""
    return {
        "text": f":bell: [{project}] Lakeforge test alert to channel {channel}",
        "lakeforge": {
            "project": project,
            "event": "test",
            "dataset": None,
            "subject": None,
            "severity": "warn",
            "status": "test",
            "notification": "test",
            "run_id": None,
            "message": "test alert",
            "details": {},
            "sent_at": datetime.now(UTC).isoformat(),
        },
    }


# -- delivery -----------------------------------------------------------------------------


def send(
    channel: AlertChannel,
    payload: dict[str, Any],
    *,
    root: Path,
    state_dir: str,
    sleep: Callable[[float], None] = time.sleep,
) -> SendResult:
    """Deliver ``payload`` to ``channel``; never raises (a failure is in the result)."""
    try:
        if isinstance(channel, WebhookChannel):
            return _post(channel, payload, sleep)
        if isinstance(channel, CommandChannel):
            return _run_command(channel, payload, root)
        if isinstance(channel, LogChannel):
            return _append(channel, payload, root, state_dir)
    except Exception as exc:  # a delivery problem is reported, never raised into a run
        return SendResult(channel.label, False, scrub(channel, f"{type(exc).__name__}: {exc}"))
    raise AssertionError(f"unknown channel type {channel!r}")  # pragma: no cover


def describe_target(channel: AlertChannel, root: Path, state_dir: str) -> str:
    """Where a channel delivers, safe to print (webhook URLs masked)."""
    if isinstance(channel, WebhookChannel):
        if channel.url_env is not None:
            url = os.environ.get(channel.url_env)
            shown = mask_url(url) if url else "(not set)"
            return f"${channel.url_env} → {shown}"
        return mask_url(channel.url or "")
    if isinstance(channel, CommandChannel):
        return channel.argv[0]
    return str(log_path(channel, root, state_dir))


def mask_url(url: str) -> str:
    """``https://hooks.slack.com/***``: a webhook's path and query usually are its secret."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "***"
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    hidden = parts.path not in ("", "/") or parts.query or parts.username or parts.password
    return f"{parts.scheme}://{host}/" + ("***" if hidden else "")


def scrub(channel: AlertChannel, text: str) -> str:
    """``text`` without the channel's URL or header values."""
    if not isinstance(channel, WebhookChannel):
        return text
    url = _url(channel, required=False)
    secrets = [v for v in _headers(channel, required=False).values() if v]
    if url:
        text = text.replace(url, mask_url(url))
        parts = urllib.parse.urlsplit(url)
        secrets += [s for s in (parts.path, parts.query, parts.password) if s and len(s) > 1]
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _url(channel: WebhookChannel, *, required: bool = True) -> str | None:
    if channel.url is not None:
        return channel.url
    assert channel.url_env is not None
    url = os.environ.get(channel.url_env)
    if not url and required:
        raise _ConfigProblem(f"environment variable {channel.url_env} is not set")
    return url


def _headers(channel: WebhookChannel, *, required: bool = True) -> dict[str, str]:
    headers = dict(channel.headers)
    for header, variable in channel.headers_env.items():
        value = os.environ.get(variable)
        if value is None:
            if required:
                raise _ConfigProblem(f"environment variable {variable} is not set")
            continue
        headers[header] = value
    return headers


class _ConfigProblem(Exception):
    """A channel cannot be used as configured (a missing environment variable …)."""


def _post(
    channel: WebhookChannel, payload: dict[str, Any], sleep: Callable[[float], None]
) -> SendResult:
    try:
        url = _url(channel)
        headers = {"Content-Type": "application/json", **_headers(channel)}
    except _ConfigProblem as exc:
        return SendResult(channel.label, False, str(exc))
    assert url is not None
    body = json.dumps(payload, default=str).encode()
    timeout = duration_seconds(channel.timeout)
    attempts = channel.retries + 1
    problem = ""
    made = 0
    for attempt in range(1, attempts + 1):
        made = attempt
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return SendResult(channel.label, True, f"delivered (HTTP {response.status})")
        except urllib.error.HTTPError as exc:
            excerpt = exc.read(_EXCERPT).decode("utf-8", "replace").strip()
            problem = f"HTTP {exc.code}" + (f": {excerpt}" if excerpt else "")
            if exc.code != 429 and exc.code < 500:
                break  # the request itself is refused: retrying changes nothing
        except (urllib.error.URLError, HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            problem = f"{type(reason).__name__}: {reason}"
        if attempt < attempts:
            sleep(min(MAX_DELAY, BASE_DELAY * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
    tried = f" after {made} attempt(s)" if made > 1 else ""  # a refusal is not retried
    return SendResult(channel.label, False, scrub(channel, f"{problem}{tried}"))


def _run_command(channel: CommandChannel, payload: dict[str, Any], root: Path) -> SendResult:
    argv = channel.argv
    try:
        done = subprocess.run(  # no shell: arguments are passed as they are
            argv,
            input=json.dumps(payload, default=str).encode(),
            capture_output=True,
            timeout=duration_seconds(channel.timeout),
            cwd=root,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return SendResult(channel.label, False, f"{argv[0]} timed out after {channel.timeout}")
    except OSError as exc:
        return SendResult(channel.label, False, f"{argv[0]} could not start: {exc.strerror}")
    if done.returncode != 0:
        output = (done.stderr or done.stdout).decode("utf-8", "replace").strip()[:_EXCERPT]
        return SendResult(
            channel.label, False, f"{argv[0]} exited with {done.returncode}: {output}".strip()
        )
    return SendResult(channel.label, True, "delivered (exit 0)")


def log_path(channel: LogChannel, root: Path, state_dir: str) -> Path:
    path = Path(channel.path) if channel.path else Path(state_dir) / DEFAULT_LOG
    return path if path.is_absolute() else root / path


def _append(channel: LogChannel, payload: dict[str, Any], root: Path, state_dir: str) -> SendResult:
    path = log_path(channel, root, state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(payload, default=str, ensure_ascii=False) + "\n"
    # One write of one line in append mode: concurrent writers do not interleave lines.
    with path.open("a", encoding="utf-8") as out:
        out.write(line)
    return SendResult(channel.label, True, f"appended to {path}")
