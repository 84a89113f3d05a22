"""Object-store URIs (``s3://``, ``gs://``, ``az://``, ``abfs://``): parse them, build a
pyarrow filesystem with credentials, list the objects a glob matches, fetch one to disk.

Credentials come from the standard environment of each store (``AWS_ACCESS_KEY_ID`` …,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_KEY`` …) or from a
``storage_options`` mapping whose secret values are ``${VAR}`` references, resolved when
the filesystem is built. They never appear in a URI this module returns, and error
messages show them as ``***``: URIs go to ledgers, logs and commit metadata as they are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lakeforge.errors import ConfigError, SourceError, TransientSourceError

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_GLOB = re.compile(r"[*?\[]")
_CHUNK = 1 << 20

# URI scheme → store; options per store: accepted names (lower case) → canonical name.
_STORES = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
_STORES.update({"az": "azure", "abfs": "azure", "abfss": "azure"})
_OPTIONS: dict[str, dict[str, str]] = {
    "s3": {
        "aws_access_key_id": "access_key",
        "aws_secret_access_key": "secret_key",
        "aws_session_token": "session_token",
        "aws_region": "region",
        "region": "region",
        "aws_endpoint_url": "endpoint_url",
        "aws_endpoint": "endpoint_url",
        "endpoint_url": "endpoint_url",
        "anonymous": "anonymous",
        "aws_skip_signature": "anonymous",
    },
    "gcs": {
        "endpoint_url": "endpoint_url",
        "anonymous": "anonymous",
        "project_id": "project_id",
        "google_access_token": "access_token",
    },
    "azure": {
        "azure_storage_account_name": "account_name",
        "account_name": "account_name",
        "azure_storage_account_key": "account_key",
        "account_key": "account_key",
        "azure_storage_sas_token": "sas_token",
        "sas_token": "sas_token",
        "azure_client_id": "client_id",
        "azure_client_secret": "client_secret",
        "azure_tenant_id": "tenant_id",
        "endpoint_url": "endpoint_url",
    },
}
# Options holding a secret: only as a ${VAR} reference, so no secret is in the project.
_SECRETS = {"secret_key", "session_token", "access_token", "account_key", "sas_token"}
_SECRETS |= {"client_secret"}
# Standard environment variables, first found wins (pyarrow's own chains read the rest).
_ENV: dict[str, dict[str, tuple[str, ...]]] = {
    "s3": {
        "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
        "endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    },
    "gcs": {"endpoint_url": ("STORAGE_EMULATOR_HOST",)},
    "azure": {
        "account_name": ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT"),
        "account_key": ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_KEY"),
        "sas_token": ("AZURE_STORAGE_SAS_TOKEN",),
    },
}
# Error texts that no retry will fix.
_TERMINAL = re.compile(
    r"AccessDenied|ACCESS_DENIED|InvalidAccessKeyId|SignatureDoesNotMatch|NoSuchBucket|"
    r"\b40[0134]\b|PermissionDenied|Forbidden|Unauthorized|AuthorizationFailure",
    re.I,
)


def is_uri(path: str) -> bool:
    """Whether ``path`` is a URI (``scheme://…``) rather than a local path."""
    return _URI.match(path) is not None


@dataclass(frozen=True)
class ObjectURI:
    """A parsed object-store URI.

    Attributes:
        scheme: as written (``s3``, ``gs``, ``abfs`` …).
        store: ``s3``, ``gcs`` or ``azure``.
        authority: what follows ``://`` up to the first ``/`` (bucket or container, and
            for ``abfs`` the account host).
        bucket: bucket or container.
        key: the object key or key pattern (no leading ``/``).
        account: Azure account from an ``abfs://container@account.dfs…`` authority.
    """

    scheme: str
    store: str
    authority: str
    bucket: str
    key: str
    account: str | None = None

    def uri(self, key: str) -> str:
        """The URI of another key in the same bucket."""
        return f"{self.scheme}://{self.authority}/{key}"


def parse_uri(text: str) -> ObjectURI:
    """Parse ``scheme://bucket/key``; raise ConfigError for what cannot be read.

    A ``?`` is part of the key (a glob character), not a query string.
    """
    match = _URI.match(text)
    if match is None:
        raise ConfigError(f"{text!r} is not a URI (scheme://bucket/key)")
    scheme, rest = match.group(1).lower(), match.group(2)
    store = _STORES.get(scheme)
    if store is None:
        raise ConfigError(
            f"unsupported object store {scheme}:// in {text!r}",
            hint="use s3://, gs://, az:// or abfs:// (or a local path)",
        )
    authority, _, key = rest.partition("/")
    if "@" in authority and (store != "azure" or ":" in authority.split("@")[0]):
        raise ConfigError(
            f"{scheme}:// URIs cannot carry credentials",
            hint="give credentials in the environment or as storage_options: {KEY: ${VAR}}",
        )
    bucket, account = authority, None
    if store == "azure" and "@" in authority:  # abfs://container@account.dfs.core.windows.net
        bucket, host = authority.split("@", 1)
        account = host.split(".", 1)[0]
    if not bucket:
        raise ConfigError(f"{text!r} names no bucket", hint=f"{scheme}://BUCKET/path/*.json")
    return ObjectURI(scheme, store, authority, bucket, key.lstrip("/"), account)


def check_options(path: str, options: Mapping[str, str]) -> None:
    """Raise ValueError for options the store of ``path`` does not know, or a secret given
    as a literal value instead of a ``${VAR}`` reference."""
    if not options:
        return
    if not is_uri(path):
        raise ValueError("storage_options apply to object-store paths (s3://, gs://, az://)")
    store = parse_uri(path).store
    known = _OPTIONS[store]
    for key, value in options.items():
        name = known.get(key.lower())
        if name is None:
            raise ValueError(
                f"unknown storage option {key!r} for {store}; known: {', '.join(sorted(known))}"
            )
        if name in _SECRETS and not _VAR.fullmatch(str(value).strip()):
            raise ValueError(
                f"storage option {key!r} is a secret: give it as a reference to an "
                "environment variable (${VAR}), not its value"
            )


def resolve_options(store: str, options: Mapping[str, str]) -> dict[str, str]:
    """Canonical option names → values, ``${VAR}`` resolved, the environment filling gaps."""
    known = _OPTIONS[store]
    out: dict[str, str] = {}
    for key, value in options.items():
        out[known[key.lower()]] = _expand(str(value), key)
    for name, variables in _ENV.get(store, {}).items():
        if name not in out:
            found = next((os.environ[v] for v in variables if os.environ.get(v)), None)
            if found is not None:
                out[name] = found
    return out


def _expand(value: str, key: str) -> str:
    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(
                f"storage option {key!r} refers to ${{{name}}}, which is not set",
                hint=f"export {name}=…",
            )
        return os.environ[name]

    return _VAR.sub(lookup, value)


def _true(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def filesystem(uri: ObjectURI, options: Mapping[str, str]) -> tuple[Any, list[str]]:
    """(a pyarrow filesystem for ``uri``'s store, the secret values to redact in errors)."""
    import pyarrow.fs as pafs

    opts = resolve_options(uri.store, options)
    secrets = [v for k, v in opts.items() if k in _SECRETS and v]
    env = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCOUNT_KEY")
    secrets += [os.environ[v] for v in env if os.environ.get(v)]
    endpoint = opts.get("endpoint_url")
    scheme = None
    if endpoint and "://" in endpoint:
        scheme, endpoint = endpoint.split("://", 1)
        endpoint = endpoint.rstrip("/")
    try:
        if uri.store == "s3":
            kwargs: dict[str, Any] = {"anonymous": _true(opts.get("anonymous"))}
            if opts.get("access_key") and opts.get("secret_key"):
                kwargs.update(access_key=opts["access_key"], secret_key=opts["secret_key"])
                if opts.get("session_token"):
                    kwargs["session_token"] = opts["session_token"]
            if endpoint:
                kwargs["endpoint_override"] = endpoint
                # S3-compatible stores ignore the region, but without one the client looks
                # the bucket's region up first.
                kwargs["region"] = opts.get("region") or "us-east-1"
            elif opts.get("region"):
                kwargs["region"] = opts["region"]
            if scheme:
                kwargs["scheme"] = scheme
            return pafs.S3FileSystem(**kwargs), secrets
        if uri.store == "gcs":
            from datetime import UTC, datetime, timedelta

            gcs: dict[str, Any] = {"anonymous": _true(opts.get("anonymous"))}
            if endpoint:
                gcs["endpoint_override"] = endpoint
                gcs["scheme"] = scheme or "https"
            if opts.get("project_id"):
                gcs["project_id"] = opts["project_id"]
            if opts.get("access_token"):
                gcs["access_token"] = opts["access_token"]
                gcs["credential_token_expiration"] = datetime.now(UTC) + timedelta(hours=1)
            return pafs.GcsFileSystem(**gcs), secrets
        account = uri.account or opts.get("account_name")
        if not account:
            raise ConfigError(
                f"{uri.scheme}:// needs a storage account",
                hint="set AZURE_STORAGE_ACCOUNT_NAME, storage_options: {account_name: …}, or "
                "use abfs://container@ACCOUNT.dfs.core.windows.net/…",
            )
        azure: dict[str, Any] = {
            k: opts[k]
            for k in ("account_key", "sas_token", "client_id", "client_secret", "tenant_id")
            if opts.get(k)
        }
        if endpoint:
            azure.update(blob_storage_authority=endpoint, dfs_storage_authority=endpoint)
            web = scheme or "https"
            azure.update(blob_storage_scheme=web, dfs_storage_scheme=web)
        return pafs.AzureFileSystem(account, **azure), secrets
    except (ImportError, OSError, ValueError, TypeError) as exc:
        # A pyarrow built without this store, or options it refuses.
        raise ConfigError(
            f"cannot open {uri.scheme}://{uri.authority}: {_redact(str(exc), secrets)}"
        ) from exc


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its URI, its path in the filesystem, size and mtime (ns)."""

    uri: str
    path: str
    size: int
    mtime_ns: int


class ObjectStore:
    """The objects under one URI pattern, and a way to copy them to local files."""

    def __init__(self, pattern: str, options: Mapping[str, str], dataset: str) -> None:
        self.pattern = pattern
        self.dataset = dataset
        self.uri = parse_uri(pattern)
        self.options = dict(options)
        self._fs: Any = None
        self._secrets: list[str] = []

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs, self._secrets = filesystem(self.uri, self.options)
        return self._fs

    def list(self) -> list[ObjectInfo]:
        """Objects the pattern matches (non-empty files only), in no particular order."""
        import pyarrow.fs as pafs

        key = self.uri.key
        first = _GLOB.search(key)
        base = key if first is None else key[: key.rfind("/", 0, first.start()) + 1]
        base = base.rstrip("/")
        matches = glob_matcher(key)
        root = f"{self.uri.bucket}/{base}" if base else self.uri.bucket
        fs = self.fs
        if first is None:  # one object, named in full
            infos = self._call(lambda: [fs.get_file_info(root)], "list")
        else:
            rest = key[len(base) :].lstrip("/")
            selector = pafs.FileSelector(
                root, recursive="/" in rest or "**" in rest, allow_not_found=True
            )
            infos = self._call(lambda: fs.get_file_info(selector), "list")
        prefix = f"{self.uri.bucket}/"
        out = []
        for info in infos:
            if info.type != pafs.FileType.File or not info.size:
                continue  # folders, folder markers, and empty objects (nothing to read yet)
            obj_key = info.path[len(prefix) :] if info.path.startswith(prefix) else info.path
            if not matches(obj_key):
                continue
            mtime = info.mtime_ns if info.mtime_ns is not None else 0
            out.append(ObjectInfo(self.uri.uri(obj_key), info.path, int(info.size), int(mtime)))
        return out

    def fetch(self, path: str, dest: str) -> str | None:
        """Copy the object at ``path`` (as listed) to the local file ``dest``, as stored
        (no decompression); returns its ETag when the store gives one."""

        def copy() -> str | None:
            with self.fs.open_input_stream(path, compression=None) as src, open(dest, "wb") as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                meta = dict(src.metadata() or {})
            etag = meta.get("ETag")
            if isinstance(etag, bytes):
                etag = etag.decode("utf-8", "replace")
            return etag.strip('"') if etag else None

        return self._call(copy, f"read {path}")

    def _call(self, action: Callable[[], Any], what: str) -> Any:
        try:
            return action()
        except OSError as exc:
            message = _redact(" ".join(str(exc).split()), self._secrets)
            error = SourceError if _TERMINAL.search(message) else TransientSourceError
            raise error(
                f"{self.dataset}: cannot {what} in {self.uri.scheme}://{self.uri.authority}: "
                f"{message}",
                dataset=self.dataset,
                hint="check the endpoint, the bucket and the credentials (environment or "
                "storage_options)",
            ) from None


def _redact(message: str, secrets: list[str]) -> str:
    for secret in secrets:
        if len(secret) >= 8:  # a shorter value is no real secret, and would mangle words
            message = message.replace(secret, "***")
    return message


def glob_matcher(pattern: str) -> Callable[[str], bool]:
    """A predicate on keys for a glob as ``glob.glob(recursive=True)`` reads it: ``*`` and
    ``?`` stay within one ``/``-separated part, ``**`` spans any number of parts, and
    wildcards do not match a part that starts with ``.``."""
    parts = pattern.split("/")
    regex = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex += r"(?:(?!\.)[^/]*(?:/(?!\.)[^/]*)*)?" if last else r"(?:(?!\.)[^/]*/)*"
            continue
        regex += _part(part) + ("" if last else "/")
    compiled = re.compile(regex, re.S)
    return lambda key: compiled.fullmatch(key) is not None


def _part(part: str) -> str:
    out = "" if part.startswith(".") else r"(?!\.)"
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = part.find("]", i + 2 if part[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out += re.escape(c)
            else:
                body = part[i + 1 : end]
                body = "^" + body[1:] if body.startswith("!") else body
                out += "[" + body.replace("\\", "\\\\") + "]"
                i = end
        else:
            out += re.escape(c)
        i += 1
    return out
