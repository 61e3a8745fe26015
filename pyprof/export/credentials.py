"""Secrets for the backends: from a file or the environment, never from the command line (any user
of the host reads a process's arguments in /proc/PID/cmdline).

File format (`--credentials FILE`), one `key=value` a line, `#` comments:

    username=123456          # basic auth (Grafana Cloud: the stack's user id)
    password=glc_...         # basic auth password or API token
    token=...                # bearer token (instead of username/password)
    tenant=team-a            # X-Scope-OrgID, for multi-tenant Pyroscope / Mimir-style gateways

Environment (read when no file is given): PREFIX_USERNAME, PREFIX_PASSWORD, PREFIX_TOKEN, PREFIX_TENANT,
with PREFIX `PYPROF_PUSH` for Pyroscope and `PYPROF_OTLP` for OTLP.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Mapping, Optional
from urllib.parse import urlsplit

from pyprof.errors import UsageError

KEYS = ("username", "password", "token", "tenant")
MAX_FILE_BYTES = 64 * 1024
PUSH_PREFIX = "PYPROF_PUSH"
OTLP_PREFIX = "PYPROF_OTLP"


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    token: str = ""
    tenant: str = ""

    def __repr__(self) -> str:   # never print a secret, not even in a traceback
        kind = "token" if self.token else "basic" if self.username else "none"
        return f"Credentials(auth={kind}, tenant={self.tenant!r})"

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        elif self.username or self.password:
            pair = f"{self.username}:{self.password}".encode()
            out["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        if self.tenant:
            out["X-Scope-OrgID"] = self.tenant
        return out


def load_credentials(path: Optional[str], prefix: str,
                     environ: Optional[Mapping[str, str]] = None) -> Credentials:
    """Credentials from `path` when given, else from the environment variables PREFIX_*."""
    env = os.environ if environ is None else environ
    values = _read_file(path) if path else _read_environment(prefix, env)
    creds = Credentials(**{key: values.get(key, "") for key in KEYS})
    if creds.token and (creds.username or creds.password):
        raise UsageError(f"credentials{' in ' + path if path else ''}: give a token or a username and "
                         "password, not both")
    return creds


def refuse_secrets_in_url(url: str) -> None:
    """A URL with user:password@ would put the secret on the command line."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise UsageError(f"credentials in the URL {parts.scheme}://…@{parts.hostname}: any user can read "
                         "the command line; put them in a --credentials file or the environment")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"invalid URL {url!r}: expected http(s)://HOST[:PORT][/PATH]")


def _read_file(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_FILE_BYTES)
    except OSError as e:
        raise UsageError(f"cannot read credentials file {path}: {e.strerror}") from e
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or key not in KEYS:
            # the line may hold a secret: name its number, never its text
            raise UsageError(f"credentials file {path}, line {number}: expected one of "
                             f"{', '.join(k + '=' for k in KEYS)}")
        values[key] = value.strip()
    return values


def _read_environment(prefix: str, environ: Mapping[str, str]) -> dict[str, str]:
    return {key: environ[f"{prefix}_{key.upper()}"] for key in KEYS if environ.get(f"{prefix}_{key.upper()}")}
