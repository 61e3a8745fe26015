"""The agent's connection file is trusted only when it cannot have been planted; sockets and thread ids."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from pyprof.agent.connection import (
    _address,
    check_listener,
    listeners,
    read_connection_file,
)
from pyprof.errors import SourceUnavailable
from pyprof.procfs.process import host_tids

TOKEN = "ab" * 32
PID = os.getpid()
UID = os.geteuid()


def _write(directory, content=None, mode=0o600, name=None):
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    path = directory / (name or f"agent-{PID}.json")
    data = content if content is not None else {"pid": PID, "port": 4711, "token": TOKEN,
                                                  "address": "127.0.0.1", "started_ms": 1, "dynamic": True}
    path.write_text(json.dumps(data) if isinstance(data, dict) else data)
    os.chmod(path, mode)
    return path


def _read(path):
    return read_connection_file(str(path), PID, uid=UID, expected_ns_pid=PID)


def test_a_good_file_is_read(tmp_path):
    # GIVEN a 0600 file in a 0700 directory, both the JVM user's
    path = _write(tmp_path / "pyprof")
    # WHEN it is read THEN port, token and pid come back
    info = _read(path)
    assert (info.port, info.token, info.ns_pid, info.dynamic) == (4711, TOKEN, PID, True)


def test_a_symlink_at_the_path_is_not_followed(tmp_path):
    # GIVEN a valid-looking file elsewhere and a symlink to it where the connection file goes
    real = _write(tmp_path / "elsewhere", name="real.json")
    d = tmp_path / "pyprof"
    d.mkdir(mode=0o700)
    (d / f"agent-{PID}.json").symlink_to(real)
    # WHEN it is read THEN it is refused (O_NOFOLLOW), not read through the link
    with pytest.raises(SourceUnavailable, match="safely"):
        _read(d / f"agent-{PID}.json")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_file_others_can_read_is_refused(tmp_path, mode):
    path = _write(tmp_path / "pyprof", mode=mode)
    with pytest.raises(SourceUnavailable, match="readable by others"):
        _read(path)


@pytest.mark.parametrize("mode", [0o755, 0o777, 0o1777, 0o710])
def test_a_directory_others_can_use_is_refused(tmp_path, mode):
    path = _write(tmp_path / "pyprof")
    os.chmod(path.parent, mode)
    with pytest.raises(SourceUnavailable, match="accessible to others"):
        _read(path)


def test_a_symlinked_directory_is_refused(tmp_path):
    path = _write(tmp_path / "real")
    (tmp_path / "pyprof").symlink_to(tmp_path / "real")
    with pytest.raises(SourceUnavailable, match="not a directory"):
        _read(tmp_path / "pyprof" / path.name)


def test_a_file_of_another_user_is_refused(tmp_path):
    path = _write(tmp_path / "pyprof")
    # WHEN the JVM runs as another user than the file's owner THEN the file is not trusted
    with pytest.raises(SourceUnavailable, match="belongs to uid"):
        read_connection_file(str(path), PID, uid=UID + 1, expected_ns_pid=PID)


def test_a_file_owned_by_someone_else_is_refused(tmp_path):
    if UID != 0:
        pytest.fail("this test chowns a file: run the suite as root (make test)")
    path = _write(tmp_path / "pyprof")
    os.chown(path, 65534, 65534)
    with pytest.raises(SourceUnavailable, match="belongs to uid 65534"):
        _read(path)


@pytest.mark.parametrize("content, why", [
    ({"pid": PID + 1, "port": 4711, "token": TOKEN}, "is for pid"),
    ({"pid": PID, "port": 4711, "token": "short"}, "malformed token"),
    ({"pid": PID, "port": 4711, "token": TOKEN, "address": "0.0.0.0"}, "unexpected address"),
    ({"pid": PID, "port": 70000, "token": TOKEN}, "unexpected address or port"),
    ({"pid": PID, "token": TOKEN}, "not a pyprof agent connection file"),
    ("not json", "not a pyprof agent connection file"),
])
def test_wrong_contents_are_refused(tmp_path, content, why):
    path = _write(tmp_path / "pyprof", content=content)
    with pytest.raises(SourceUnavailable, match=why):
        _read(path)


def test_no_file_is_not_an_error_but_no_agent(tmp_path):
    d = tmp_path / "pyprof"
    d.mkdir(mode=0o700)
    with pytest.raises(FileNotFoundError):
        _read(d / f"agent-{PID}.json")


def test_proc_net_tcp_addresses_are_decoded():
    assert _address("0100007F", v6=False) == "127.0.0.1"
    assert _address("00000000", v6=False) == "0.0.0.0"
    # Java's dual-stack sockets: ::ffff:127.0.0.1 in /proc/net/tcp6
    assert _address("0000000000000000FFFF00000100007F", v6=True) == "127.0.0.1"
    assert _address("00000000000000000000000001000000", v6=True) == "::1"


def test_a_loopback_listener_of_this_process_passes_a_wildcard_one_does_not():
    # GIVEN this process listens on 127.0.0.1 and on 0.0.0.0
    lo = socket.socket()
    lo.bind(("127.0.0.1", 0))
    lo.listen()
    anywhere = socket.socket()
    anywhere.bind(("0.0.0.0", 0))
    anywhere.listen()
    try:
        port = lo.getsockname()[1]
        # THEN the loopback one is found, with its inode, and accepted
        found = listeners(PID, port)
        assert [a for a, _ in found] == ["127.0.0.1"]
        check_listener(PID, port)
        # AND the wildcard one is refused; a port nobody listens on too
        with pytest.raises(SourceUnavailable, match="not 127.0.0.1 only"):
            check_listener(PID, anywhere.getsockname()[1])
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
        free.close()
        with pytest.raises(SourceUnavailable, match="nothing listens"):
            check_listener(PID, free_port)
    finally:
        lo.close()
        anywhere.close()


def test_host_tids_map_this_process_threads():
    # GIVEN a second thread in this process
    ready, done = threading.Event(), threading.Event()
    tid = {}

    def run():
        tid["t"] = threading.get_native_id()
        ready.set()
        done.wait(10)

    t = threading.Thread(target=run)
    t.start()
    ready.wait(10)
    try:
        mapping = host_tids(PID)
        # THEN (no pid namespace between us) every thread maps to itself
        assert mapping[PID] == PID and mapping[tid["t"]] == tid["t"]
    finally:
        done.set()
        t.join()
