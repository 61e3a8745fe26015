"""The py4j client of the agent: 127.0.0.1 only, the token from the connection file, time-outs.

Every agent method returns one JSON string (no Java objects reach Python, and the agent refuses
reflection), so this module is a thin, typed wrapper: each call becomes a dict or a PyprofError.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pyprof.agent.connection import ConnectionInfo, check_listener, find_connection
from pyprof.errors import NoSuchProcess, SourceUnavailable
from pyprof.procfs.process import host_tids

TIMEOUT = 30.0      # connect (loopback: immediate or refused) and every answer (a big codelist included)

# py4j logs connection failures with tracebacks through `logging`; pyprof reports them as one line.
logging.getLogger("py4j").addHandler(logging.NullHandler())
logging.getLogger("py4j").propagate = False


@dataclass
class JitEvent:
    seq: int
    kind: str                   # compile, deopt, compile_failure, code_cache_full, class_unload
    time_ns: int                # wall clock (epoch ns), as JFR stamps it
    data: dict[str, Any]

    @property
    def compile_id(self) -> Optional[int]:
        return self.data.get("compile_id")

    @property
    def method(self) -> Optional[str]:
        return self.data.get("method")


class AgentClient:
    """One connection to the agent in JVM `pid`. Use `AgentClient.connect(pid)`; close() when done."""

    def __init__(self, info: ConnectionInfo, gateway: Any) -> None:
        self.info = info
        self.pid = info.pid
        self._gateway = gateway
        self._entry = gateway.entry_point

    # ---- life cycle ------------------------------------------------------------------------------
    @classmethod
    def connect(cls, pid: int, timeout: float = TIMEOUT,
                info: Optional[ConnectionInfo] = None) -> AgentClient:
        info = info or find_connection(pid)
        if info is None:
            raise SourceUnavailable(f"no pyprof agent in {pid}: `pyprof agent load {pid}` loads it")
        check_listener(pid, info.port)
        client = cls(info, open_gateway(info.port, info.token, timeout, netns_of=pid))
        try:
            client.status()
        except BaseException:
            client.close()
            raise
        return client

    def close(self) -> None:
        if self._gateway is not None:
            try:
                self._gateway.close(keep_callback_server=False, close_callback_server_connections=False)
            except Exception:
                pass
            self._gateway = None

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- calls -----------------------------------------------------------------------------------
    def _call(self, method: str, *args: Any) -> dict[str, Any]:
        from py4j.protocol import Py4JError

        if self._gateway is None:
            raise SourceUnavailable("the agent connection is closed")
        try:
            text = getattr(self._entry, method)(*args)
        except Py4JError as e:
            raise SourceUnavailable(f"the agent in {self.pid} did not answer {method}: "
                                    f"{_first_line(e)}") from e
        except OSError as e:
            raise SourceUnavailable(f"the agent in {self.pid} did not answer {method}: {e}") from e
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as e:
            raise SourceUnavailable(f"the agent in {self.pid} sent no JSON for {method}") from e
        if isinstance(data, dict) and data.get("error") and len(data) == 1:
            raise SourceUnavailable(f"agent {method}: {data['error']}")
        return data

    def status(self) -> dict[str, Any]:
        return self._call("status")

    def codelist(self) -> tuple[str, float]:
        """Compiler.codelist's text, run in process, and how long the JVM took."""
        data = self._call("codelist")
        return data["codelist"], float(data.get("seconds", 0.0))

    def threads(self) -> list[dict[str, Any]]:
        """Every thread of the JVM: name, java_id (None for VM threads), os_tid (the JVM's own view),
        tid (host view), state, daemon, kind."""
        rows = self._call("threads")["threads"]
        try:
            mapping = host_tids(self.pid)
        except NoSuchProcess:
            mapping = {}
        for row in rows:
            row["tid"] = mapping.get(row["os_tid"], row["os_tid"] if not mapping else None)
        return rows

    def events(self, since: int = 0, limit: int = 10_000) -> tuple[list[JitEvent], int, int]:
        """JIT events after `since`: (events, last seq, events dropped because the ring overflowed)."""
        data = self._call("events", int(since), int(limit))
        events = [JitEvent(e["seq"], e["kind"], e.get("time_ns", 0), e) for e in data["events"]]
        return events, int(data["last"]), int(data.get("dropped", 0))

    def pauses(self, since: int = 0, limit: int = 10_000) -> tuple[list[dict[str, Any]], int, int]:
        """GC and safepoint pauses after `since`: (pauses, last seq, dropped). Times: epoch ns."""
        data = self._call("pauses", int(since), int(limit))
        return data["pauses"], int(data["last"]), int(data.get("dropped", 0))

    def compiles(self, compile_ids: list[int]) -> dict[int, Optional[dict[str, Any]]]:
        """compile id -> {method, level, osr, inlined: [...]} (None when the agent never saw it)."""
        data = self._call("compiles", ",".join(str(int(i)) for i in compile_ids))["compiles"]
        return {int(k): v for k, v in data.items()}

    def unload(self) -> None:
        self._call("unload")


def open_gateway(port: int, token: Optional[str], timeout: float = TIMEOUT,
                 address: str = "127.0.0.1", netns_of: Optional[int] = None) -> Any:
    """A connected py4j JavaGateway; SourceUnavailable (one line) when refused or unreachable.

    netns_of: the JVM's pid. When it runs in another network namespace (a container), its 127.0.0.1 is
    not ours: the connection's socket is created inside the JVM's namespace (setns on a helper thread;
    a socket stays in the namespace it was created in). The connection is then reused for every call."""
    from py4j.java_gateway import GatewayParameters, JavaGateway
    from py4j.protocol import Py4JAuthenticationError, Py4JError, Py4JNetworkError

    params = GatewayParameters(address=address, port=port, auth_token=token, auto_convert=False,
                               auto_field=False, eager_load=False, enable_memory_management=False,
                               read_timeout=timeout, auto_close=True)
    gateway = JavaGateway(gateway_parameters=params)
    try:
        # connect (and authenticate) now, not at the first call: errors belong here
        if netns_of is not None and _other_netns(netns_of):
            connection = _in_netns(netns_of, gateway._gateway_client._get_connection)
        else:
            connection = gateway._gateway_client._get_connection()
        gateway._gateway_client._give_back_connection(connection)
    except Py4JAuthenticationError as e:
        gateway.close()
        raise SourceUnavailable(f"the agent on port {port} refused the token") from e
    except (OSError, Py4JNetworkError, Py4JError) as e:
        gateway.close()
        cause = e.cause if isinstance(e, Py4JNetworkError) and e.cause is not None else e
        raise SourceUnavailable(f"cannot reach the agent on {address}:{port}: {_first_line(cause)}") from e
    return gateway


def _other_netns(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def _in_netns(pid: int, fn: Callable[[], Any]) -> Any:
    """fn() on a thread that entered the network namespace of `pid` (setns affects only that thread)."""
    import ctypes
    import threading

    clone_newnet = 0x40000000
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, clone_newnet) != 0:
                    err = ctypes.get_errno()
                    raise SourceUnavailable(f"cannot enter the network namespace of {pid}: "
                                            f"{os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    t = threading.Thread(target=run, name="pyprof-netns", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
