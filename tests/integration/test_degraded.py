"""Unknown JVMs degrade instead of being refused: entries hidden from the VMStructs reader stand in for a
JDK pyprof has never seen (a renamed field, a version it cannot read).

Target: a real JVM (Inlining, JDK 21: inlined frames with lines). The tables are read from it for real;
the test then removes entries from what the reader returned, in this process, before pyprof's Layout
sees them. Checked: the Layout is complete when built (version included); a missing part switches off
that part only, with one note the CLI prints once; method names and tiers keep working; exit 5 only when
compiled methods cannot be named at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

import pyprof.hotspot.jvm as jvm_module
from pyprof.cli.main import main
from pyprof.errors import UnsupportedJvm
from pyprof.hotspot.codecache import CodeCache
from pyprof.hotspot.debuginfo import DebugInfo
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.hotspot.layout import JvmVersion, Layout
from pyprof.hotspot.vmstructs import VMStructs
from pyprof.model import FrameKind
from pyprof.output.pprof import read_pprof
from tests.conftest import JavaProcess, start_java

pytestmark = [pytest.mark.jvm]

JDK = 21


@pytest.fixture(scope="module")
def target() -> JavaProcess:
    jp = start_java(JDK, "Inlining")
    yield jp
    jp.stop()


def hiding(*names: str) -> Callable[..., VMStructs]:
    """A read_vmstructs that drops every field called one of `names` (of any type; 'Type::field' for
    one type only)."""
    real = jvm_module.read_vmstructs

    def read(*args, **kwargs) -> VMStructs:
        vm = real(*args, **kwargs)
        for key in list(vm.fields):
            type_name, field_name = key
            if field_name in names or f"{type_name}::{field_name}" in names:
                del vm.fields[key]
        return vm

    return read


def nmethod_rows(out: str) -> list[list[str]]:
    """`codecache ls` text rows of nmethods: CODE SIZE LV ID STATE METHOD."""
    rows = [line.split(None, 5) for line in out.splitlines()[1:]]
    return [r for r in rows if len(r) == 6 and r[2] != "-"]


def test_a_layout_is_complete_when_built(target: JavaProcess) -> None:
    # GIVEN the VMStructs of a live JVM
    with HotSpotJvm.open(target.pid) as jvm:
        # WHEN a Layout is built without a version THEN that is an error, not a silent default
        with pytest.raises(TypeError):
            Layout(jvm.vm)  # type: ignore[call-arg]
        # AND a Layout of an unknown version knows it cannot decode compressed streams, and says so
        unknown = Layout(jvm.vm, JvmVersion(0, ""), jvm.symbols, jvm.libjvm_base)
        assert unknown.unsigned5_excludes_zero is None
        assert not unknown.supports("debug info") and not unknown.supports("line numbers")
        assert any("version is unknown" in note for note in unknown.notes)
        # AND the JVM's own Layout has its version and no notes
        assert jvm.layout.version.major == JDK and jvm.layout.unsigned5_excludes_zero is True
        assert jvm.layout.notes == [] and jvm.notes == []


def test_hidden_debug_info_gives_one_note_and_names_and_tiers_still_work(target, monkeypatch, capsys) -> None:
    # GIVEN the full view of the JVM's code cache
    assert main(["codecache", "ls", str(target.pid)]) == 0
    full = capsys.readouterr()
    full_rows = nmethod_rows(full.out)
    assert len(full_rows) > 20 and not [line for line in full.err.splitlines() if "inlined" in line]
    # WHEN the JVM does not publish where an nmethod's PcDescs are (a JDK that renamed the field)
    monkeypatch.setattr(jvm_module, "read_vmstructs", hiding("_scopes_pcs_offset"))
    code = main(["codecache", "ls", str(target.pid)])
    out = capsys.readouterr()
    # THEN ls still works: the same nmethods, named, with tiers and states; one note says what is missing
    assert code == 0, out.err
    rows = {r[3]: (r[2], r[4], r[5]) for r in nmethod_rows(out.out)}     # id -> level, state, method
    before = {r[3]: (r[2], r[4], r[5]) for r in full_rows}
    both = rows.keys() & before.keys()
    assert len(both) >= 0.9 * len(before)
    assert sum(1 for cid in both if rows[cid] == before[cid]) >= 0.99 * len(both)
    assert sum(1 for level, _state, method in rows.values() if method != "?" and level in "01234") > 20
    notes = [line for line in out.err.splitlines() if "no inlined frames" in line]
    assert len(notes) == 1 and "nmethod._scopes_pcs_offset" in notes[0], out.err
    # AND the unwinder's debug info is off without counting a failure per frame
    with HotSpotJvm.open(target.pid) as jvm:
        cache = CodeCache(jvm)
        snap = cache.walk()
        debug = DebugInfo(jvm.reader, jvm.layout, cache.resolver)
        blob = next(b for b in snap.live_nmethods if b.method is not None and b.level == 4)
        assert not debug.available and debug.scopes_at(blob, blob.code_begin) == () and debug.failures == 0
        assert jvm.layout.supports("tiers") and jvm.layout.supports("Java threads")


def test_hidden_thread_list_and_version_degrade_but_do_not_refuse(target, monkeypatch, capsys) -> None:
    # GIVEN a JVM that publishes neither its thread list nor its version
    monkeypatch.setattr(jvm_module, "read_vmstructs",
                        hiding("_java_thread_list", "Threads::_thread_list", "_vm_major_version",
                               "_s_vm_release"))
    # WHEN opened and listed
    with HotSpotJvm.open(target.pid) as jvm:
        notes = jvm.notes
        assert jvm.major == 0
    code = main(["codecache", "ls", str(target.pid)])
    out = capsys.readouterr()
    # THEN it is attempted: each missing part is one note, and compiled methods are still named
    assert code == 0, out.err
    assert any("untested" in n for n in notes)
    assert any(n.startswith("Java threads cannot be listed") for n in notes)
    assert any(n.startswith("no inlined frames") and "version is unknown" in n for n in notes)
    for note in notes:
        assert out.err.count(note) == 1, out.err
    assert sum(1 for r in nmethod_rows(out.out) if r[5] != "?") > 20


@pytest.mark.parametrize("hidden, missing", [
    (("_method",), "nmethod._method"),                       # nmethod's Method* (CompiledMethod's on 17/21)
    (("Klass::_name",), "Klass._name"),                      # class names
    (("_code_begin", "_code_offset"), "CodeBlob._code_begin"),  # where code is, in either JDK's form
])
def test_exit_5_only_when_compiled_methods_cannot_be_named(target, monkeypatch, capsys, hidden,
                                                            missing) -> None:
    # GIVEN a JVM that lacks something without which no compiled method can be found or named
    monkeypatch.setattr(jvm_module, "read_vmstructs", hiding(*hidden))
    # WHEN the attach-free reader is asked for its code cache
    code = main(["codecache", "ls", str(target.pid), "--source", "vmstructs"])
    out = capsys.readouterr()
    # THEN exit 5 with one line naming what is missing, and nothing on stdout
    assert code == UnsupportedJvm.exit_code == 5
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "JVM symbol(s) not found in VMStructs" in lines[0] and missing in lines[0]
    assert out.out == ""


def test_codecache_ls_opens_the_jvm_once_and_names_states_from_its_layout(target, monkeypatch,
                                                                          capsys) -> None:
    # GIVEN a count of the times the JVM is opened
    opened: list[int] = []
    real_open = HotSpotJvm.open.__func__

    def counting_open(cls, pid: int) -> HotSpotJvm:
        opened.append(pid)
        return real_open(cls, pid)

    monkeypatch.setattr(HotSpotJvm, "open", classmethod(counting_open))
    # WHEN ls lists the code cache as text (state names depend on the JDK version)
    assert main(["codecache", "ls", str(target.pid)]) == 0
    rows = nmethod_rows(capsys.readouterr().out)
    # THEN the JVM was opened once, and the states carry this JDK's names
    assert opened == [target.pid]
    assert rows and all(r[4] in ("in_use", "not_used", "not_entrant") for r in rows), rows[:5]
    # AND the jcmd source, which has no Layout, names them too (from its JDK's release file)
    assert main(["codecache", "ls", str(target.pid), "--source", "jcmd"]) == 0
    rows = nmethod_rows(capsys.readouterr().out)
    assert rows and all(r[4] in ("in_use", "not_used", "not_entrant") for r in rows), rows[:5]


@pytest.mark.bpf
def test_attach_without_debug_info_says_so_once_and_profiles_named_compiled_frames(
        target, monkeypatch, capsys, root_and_bpf, tmp_path: Path) -> None:
    # GIVEN a JVM whose PcDescs cannot be found (no inlining, no lines in compiled code)
    monkeypatch.setattr(jvm_module, "read_vmstructs", hiding("_scopes_pcs_offset"))
    out = tmp_path / "p.pb.gz"
    # WHEN pyprof profiles it (in this process, so that the hidden entries apply)
    code = main(["attach", str(target.pid), "-d", "3", "-o", str(out)])
    err = capsys.readouterr().err
    # THEN it profiles, and says once what is missing
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("pyprof: note:")]
    assert len(notes) == 1 and "no inlined frames" in notes[0], err
    # AND the compiled Java frames are named, each standing for its nmethod's method only (no inlining)
    profile = read_pprof(str(out))
    compiled = [f for key in profile.counts for f in key.frames
                if f.frames[0].kind in (FrameKind.C1, FrameKind.C2)]
    assert compiled and all(len(f.frames) == 1 for f in compiled)
    assert any(f.frames[0].name.startswith("pyproftest.Inlining.") for f in compiled)
