"""HTTP for the REST source: one GET with a shared rate limit, retries and redacted errors.

- **Rate limit.** A token bucket per host, shared by every dataset of the process that
  reads that host (the limit is the server's, not a dataset's), thread-safe: each request
  reserves the next free slot under a lock and sleeps outside it.
- **Retries.** Connection errors, 429 and 5xx are retried up to ``max_retries`` times with
  exponential backoff and full jitter, or after the server's ``Retry-After`` (seconds or an
  HTTP date). A ``Retry-After`` of zero (or in the past) is not taken at its word: the wait
  is at least ``backoff_base``, so a server that keeps saying 0 is not hammered. When the
  retries are exhausted the error is transient (the executor retries the task per
  ``retries``); any other 4xx is terminal.
- **Secrets** never reach a message: every error text goes through :meth:`Http.redact`,
  and URLs are shown without their query string (a dead letter's origin keeps the query,
  with the API key parameter and every secret masked: :meth:`Http.origin`).
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any

from lakeforge.errors import SourceError, TransientSourceError

_EXCERPT = 200  # characters of an error body shown


class TokenBucket:
    """``rate`` requests per second, bursts of at most ``capacity``."""

    def __init__(self, rate: float, capacity: float = 1.0) -> None:
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for a token; returns the seconds waited."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1  # reserve a slot even when it is in the future
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        if wait > 0:
            time.sleep(wait)
        return wait


_limiters: dict[str, TokenBucket] = {}
_limiters_lock = threading.Lock()


def limiter_for(host: str, rate: float) -> TokenBucket:
    """The process-wide bucket of ``host``; when datasets disagree, the slowest rate wins."""
    with _limiters_lock:
        bucket = _limiters.get(host)
        if bucket is None:
            bucket = _limiters[host] = TokenBucket(rate)
        elif rate < bucket.rate:
            bucket.rate = rate
        return bucket


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    url: str

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None


def shown(url: str) -> str:
    """A URL fit for messages: no query string (it may hold an API key), no user info."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP date), or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, dropping credentials when one leads to another host."""

    def __init__(self, secret_headers: set[str]) -> None:
        self.secret_headers = secret_headers

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Any:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            old_host = urllib.parse.urlsplit(req.full_url).netloc
            if urllib.parse.urlsplit(newurl).netloc != old_host:
                for name in self.secret_headers:
                    new.remove_header(name.capitalize())
                    new.remove_header(name)
        return new


@dataclass
class Http:
    """GET with rate limit, retries and redaction, for one dataset."""

    dataset: str
    headers: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    requests_per_second: float | None = None
    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 300.0
    timeout: float = 30.0
    requests: int = 0

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
                quoted = urllib.parse.quote(secret, safe="")
                if quoted != secret:
                    text = text.replace(quoted, "***")
        return text

    def origin(self, url: str, hidden: Iterable[str] = ()) -> str:
        """Which page a dead letter came from: :func:`shown` plus the query (the offset,
        page or cursor), with the ``hidden`` parameters (an API key) and any secret masked."""
        query = urllib.parse.urlsplit(url).query
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        masked = [(k, "***" if k in hidden else v) for k, v in pairs]
        return self.redact(
            shown(url) + ("?" + urllib.parse.urlencode(masked, safe="*") if masked else "")
        )

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))

    def get(self, url: str) -> Response:
        """The response to ``GET url`` (2xx), after retries; raises a SourceError."""
        where = f"{self.dataset}: GET {shown(url)}"
        secret_headers = {
            k.lower() for k, v in self.headers.items() if any(x and x in v for x in self.secrets)
        }
        opener = urllib.request.build_opener(_SameHostRedirects(secret_headers))
        host = urllib.parse.urlsplit(url).netloc
        for attempt in range(self.max_retries + 1):
            if self.requests_per_second:
                limiter_for(host, self.requests_per_second).acquire()
            self.requests += 1
            request = urllib.request.Request(url, headers=self.headers, method="GET")
            wait_hint: float | None = None
            try:
                with opener.open(request, timeout=self.timeout) as resp:
                    return Response(resp.status, dict(resp.headers), resp.read(), resp.url)
            except urllib.error.HTTPError as exc:
                status = exc.code
                body = _read_quietly(exc)
                if status != 429 and status < 500:
                    excerpt = self.redact(body.decode("utf-8", "replace")[:_EXCERPT]).strip()
                    raise SourceError(
                        f"{where} failed: HTTP {status}" + (f": {excerpt}" if excerpt else ""),
                        dataset=self.dataset,
                        hint=_hint(status),
                    ) from None
                problem = f"HTTP {status}"
                wait_hint = retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            except (urllib.error.URLError, HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                problem = self.redact(f"{type(exc).__name__}: {reason}")
            if attempt == self.max_retries:
                raise TransientSourceError(
                    f"{where} failed after {self.max_retries + 1} attempt(s): {problem}",
                    dataset=self.dataset,
                    hint="the task is retried `retries` times; raise max_retries to insist",
                ) from None
            if wait_hint is None:
                delay = self._backoff(attempt)
            elif wait_hint > self.max_retry_after:
                raise TransientSourceError(
                    f"{where}: the server asks to wait {wait_hint:.0f} s (Retry-After), more "
                    f"than max_retry_after ({self.max_retry_after:g} s)",
                    dataset=self.dataset,
                ) from None
            else:
                # Retry-After: 0 over and over would be a busy loop: wait at least the base.
                delay = max(wait_hint, self.backoff_base)
            time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises


def _read_quietly(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read() or b""
    except (OSError, HTTPException):
        return b""


def _hint(status: int) -> str | None:
    if status in (401, 403):
        return "check the source's auth settings and that the secret is valid"
    if status == 404:
        return "check the source's url and path"
    return None
