"""Parsing jcmd's Compiler.codelist and Compiler.perfmap output (pyprof.sources.jcmd)."""

from __future__ import annotations

import os

import pytest

from pyprof.errors import SourceUnavailable
from pyprof.hotspot.codecache import BlobKind
from pyprof.sources import jcmd

CODELIST = """12345:
6 4 0 Spin.f(J)J [0x00007fe46cec7490, 0x00007fe46cec7600 - 0x00007fe46cec7678]
5 3 2 Spin.f(J)J [0x00007fe465400d10, 0x00007fe465400ea0 - 0x00007fe465400f90]
4 0 0 jdk.internal.misc.Unsafe.getReferenceVolatile(Ljava/lang/Object;J)Ljava/lang/Object; \
[0x00007fe46cec7010, 0x00007fe46cec71c0 - 0x00007fe46cec7430]
77 1 0 Foo$$Lambda/0x0000000801001234.run()V [0x00007fe46cec8010, 0x00007fe46cec8100 - 0x00007fe46cec8180]
"""

PERFMAP = """0x00007fe46c940b80 0x0000000000017de0 Interpreter
0x00007fe46c958a00 0x00000000000001b0 I2C/C2I adapters
0x00007fe46cec7600 0x0000000000000078 long Spin.f(long)
0x00007fe46c940580 0x0000000000000060 StackOverflowError throw_exception
"""


def test_codelist_lines_become_nmethods_with_exact_method_strings() -> None:
    # GIVEN codelist output WHEN parsed
    blobs = jcmd.parse_codelist(CODELIST)
    # THEN every line is an nmethod with its id, tier, state, range and jcmd's method string
    assert [b.compile_id for b in blobs] == [6, 5, 4, 77]
    assert blobs[0].level == 4 and blobs[1].state == 2
    assert blobs[0].code_begin == 0x7FE46CEC7600 and blobs[0].code_end == 0x7FE46CEC7678
    assert blobs[0].address == 0x7FE46CEC7490
    assert blobs[2].method_name == ("jdk.internal.misc.Unsafe.getReferenceVolatile"
                                    "(Ljava/lang/Object;J)Ljava/lang/Object;")
    assert blobs[3].method.holder == "Foo$$Lambda/0x0000000801001234" and blobs[3].method.name == "run"
    assert all(b.kind is BlobKind.NMETHOD for b in blobs)


def test_perfmap_adds_only_non_nmethod_blobs() -> None:
    # GIVEN a perf map that also lists an nmethod codelist already named
    blobs = jcmd.parse_perfmap(PERFMAP, {0x7FE46CEC7600})
    # THEN only the stubs remain, with kinds from their names
    kinds = {b.name: b.kind for b in blobs}
    assert kinds == {"Interpreter": BlobKind.INTERPRETER, "I2C/C2I adapters": BlobKind.ADAPTER,
                     "StackOverflowError throw_exception": BlobKind.OTHER}


def test_perfmap_reader_refuses_a_planted_symlink(tmp_path, monkeypatch) -> None:
    # GIVEN a /tmp/perf-PID.map that is a symlink (an attacker's plant) in "the JVM's root"
    pid = os.getpid()
    root = tmp_path / "root"
    (root / "tmp").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("0x1 0x1 stolen\n")
    (root / "tmp" / f"perf-{pid}.map").symlink_to(secret)
    real_open = os.open

    def fake_root_open(path, flags, *args):
        prefix = f"/proc/{pid}/root/"
        if isinstance(path, str) and path.startswith(prefix):
            path = str(root / path[len(prefix):])
        return real_open(path, flags, *args)

    monkeypatch.setattr(jcmd.os, "open", fake_root_open)
    # WHEN pyprof reads it THEN it refuses instead of following the link
    with pytest.raises(SourceUnavailable):
        jcmd.read_perfmap_safely(pid)
