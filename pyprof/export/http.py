"""One HTTP POST to a backend, and what its answer means for delivery.

- 2xx: delivered.
- 429, 408, any 5xx, a refused or reset connection, a timeout, a TLS handshake that fails: retried
  (the backend is overloaded, restarting or unreachable: the data is fine).
- any other 4xx, and 3xx: dropped and counted (the backend says this request will never be accepted:
  bad labels, bad auth, wrong URL); retrying would only block the windows behind it.

Redirects are not followed: a POST with an Authorization header must not go to another host.
https uses the system CA bundle, or only `ca_file` when given.
"""

from __future__ import annotations

import enum
import http.client
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Optional

from pyprof.errors import UsageError
from pyprof.export.credentials import Credentials, refuse_secrets_in_url

USER_AGENT = "pyprof-daemon"
MAX_ERROR_BODY = 512
MAX_RETRY_AFTER_S = 300.0


class Outcome(enum.Enum):
    SENT = "sent"
    RETRY = "retry"
    DROP = "drop"


@dataclass(frozen=True)
class PostResult:
    outcome: Outcome
    status: int = 0              # HTTP status, 0 when no answer came
    detail: str = ""             # one line: the server's message or the network error
    retry_after_s: Optional[float] = None
    body: bytes = b""


@dataclass
class Endpoint:
    """A backend's base URL with its credentials and TLS settings."""

    url: str
    credentials: Credentials = field(default_factory=Credentials)
    ca_file: Optional[str] = None
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        refuse_secrets_in_url(self.url)
        self.url = self.url.rstrip("/")
        self._opener = urllib.request.build_opener(_NoRedirect, urllib.request.HTTPSHandler(
            context=_tls_context(self.ca_file)))

    def post(self, path: str, body: bytes, content_type: str,
             extra_headers: Optional[dict[str, str]] = None) -> PostResult:
        headers = {"Content-Type": content_type, "User-Agent": USER_AGENT, **self.credentials.headers(),
                   **(extra_headers or {})}
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return PostResult(Outcome.SENT, response.status, body=response.read(1 << 20))
        except urllib.error.HTTPError as e:
            return _classify_status(e)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            return PostResult(Outcome.RETRY, 0, _network_error(reason))


def _classify_status(e: urllib.error.HTTPError) -> PostResult:
    try:
        text = e.read(MAX_ERROR_BODY).decode("utf-8", "replace")
    except OSError:
        text = ""
    detail = f"HTTP {e.code}: {' '.join(text.split())[:200] or e.reason}"
    if e.code in (408, 429) or e.code >= 500:
        return PostResult(Outcome.RETRY, e.code, detail, _retry_after(e.headers.get("Retry-After")))
    return PostResult(Outcome.DROP, e.code, detail)


def _retry_after(value: Optional[str]) -> Optional[float]:
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S) if value else None
    except ValueError:
        return None   # an HTTP date: rare from these servers; the backoff applies


def _network_error(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(reason, ssl.SSLError):
        return f"TLS: {reason.reason or reason}"
    return str(reason) or type(reason).__name__


def _tls_context(ca_file: Optional[str]) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file)   # None: the system CA bundle
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot load CA file {ca_file}: {getattr(e, 'strerror', None) or e}") from e


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None   # urllib then raises HTTPError(3xx): classified as dropped, with the status
