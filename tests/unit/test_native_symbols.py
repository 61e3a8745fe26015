"""Native symbols as perf finds them: separate debug files by build-id and .gnu_debuglink, MiniDebugInfo,
PLT entries, size-less assembly functions; and the x86_64 call-site check of the unwinder.

The libraries are real: built here with gcc and objcopy (binutils), and the machine's libc with
Debian's libc6-dbg (installed by scripts/setup.sh).
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pyprof.procfs.elf import ElfSymbols
from pyprof.sampling.unwind import ends_with_call
from pyprof.symbols.debugfiles import with_debug_symbols
from pyprof.symbols.native import NativeSymbolizer
from tests.conftest import require

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
SOURCE = """
__attribute__((noinline)) static int hidden_helper(int x) { return x * 3 + 1; }
__attribute__((noinline)) static int second_helper(int x) { return hidden_helper(x) ^ 5; }
int exported_entry(int x) { return second_helper(x) + 2; }
"""


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, (cmd, done.stderr)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """libdemo.so.full (with .symtab), libdemo.so (stripped: .dynsym only) and libdemo.debug."""
    for tool in ("gcc", "objcopy", "strip"):
        require(shutil.which(tool) is not None, f"{tool} missing (binutils, gcc)")
    d = tmp_path_factory.mktemp("native")
    (d / "demo.c").write_text(SOURCE)
    _run("gcc", "-O2", "-g", "-shared", "-fPIC", "-fomit-frame-pointer", "-Wl,--build-id",
         "-o", str(d / "libdemo.so.full"), str(d / "demo.c"))
    _run("objcopy", "--only-keep-debug", str(d / "libdemo.so.full"), str(d / "libdemo.debug"))
    _run("strip", "--strip-all", "-o", str(d / "libdemo.so"), str(d / "libdemo.so.full"))
    return d


def _address_of(path: Path, name: str) -> int:
    sym = ElfSymbols.load(str(path)).lookup(name)
    assert sym is not None, name
    return sym.value


def _name_at(symbols: ElfSymbols, vaddr: int) -> str | None:
    sym = symbols.function_at(vaddr)
    return sym.name if sym else None


def test_stripped_library_names_only_its_exports(built: Path) -> None:
    helper = _address_of(built / "libdemo.so.full", "hidden_helper")
    stripped = ElfSymbols.load(str(built / "libdemo.so"))
    assert not stripped.has_symtab
    assert _name_at(stripped, helper + 1) is None
    assert _name_at(stripped, _address_of(built / "libdemo.so.full", "exported_entry")) == "exported_entry"


def test_gnu_debuglink_next_to_the_library_names_static_functions(built: Path, tmp_path: Path) -> None:
    # GIVEN a stripped library whose .gnu_debuglink names libdemo.debug, placed beside it
    lib = tmp_path / "libdemo.so"
    _run("objcopy", f"--add-gnu-debuglink={built / 'libdemo.debug'}", str(built / "libdemo.so"), str(lib))
    shutil.copy(built / "libdemo.debug", tmp_path / "libdemo.debug")
    symbols = ElfSymbols.load(str(lib))
    assert symbols.debuglink == "libdemo.debug"
    # WHEN pyprof looks for debug files (no build-id directory has it)
    named = with_debug_symbols(symbols, str(lib), ("/",))
    # THEN the static functions are named, at the addresses of the unstripped build
    for name in ("hidden_helper", "second_helper"):
        assert _name_at(named, _address_of(built / "libdemo.so.full", name) + 1) == name


def test_debug_file_of_another_build_is_refused(built: Path, tmp_path: Path) -> None:
    # GIVEN a debuglink to a file of the same name from a different build (another build-id)
    other = tmp_path / "other"
    other.mkdir()
    (other / "demo.c").write_text(SOURCE.replace("* 3 + 1", "* 7 + 2"))
    _run("gcc", "-O2", "-g", "-shared", "-fPIC", "-Wl,--build-id", "-o", str(other / "full.so"),
         str(other / "demo.c"))
    _run("objcopy", "--only-keep-debug", str(other / "full.so"), str(tmp_path / "libdemo.debug"))
    lib = tmp_path / "libdemo.so"
    _run("objcopy", f"--add-gnu-debuglink={built / 'libdemo.debug'}", str(built / "libdemo.so"), str(lib))
    # WHEN its symbols are looked up THEN the stale debug file names nothing
    named = with_debug_symbols(ElfSymbols.load(str(lib)), str(lib), ("/",))
    assert not named.has_symtab
    assert _name_at(named, _address_of(built / "libdemo.so.full", "hidden_helper") + 1) is None


def test_build_id_directory_under_a_container_root(built: Path, tmp_path: Path) -> None:
    # GIVEN a root (as /proc/PID/root is for a JVM in a container) with usr/lib/debug/.build-id/xx/yyyy.debug
    symbols = ElfSymbols.load(str(built / "libdemo.so"))
    bid = symbols.build_id
    assert len(bid) == 40
    where = tmp_path / "usr/lib/debug/.build-id" / bid[:2]
    where.mkdir(parents=True)
    shutil.copy(built / "libdemo.debug", where / f"{bid[2:]}.debug")
    # WHEN looked up with that root first THEN found there
    named = with_debug_symbols(symbols, "/opt/app/libdemo.so", (str(tmp_path), "/"))
    assert _name_at(named, _address_of(built / "libdemo.so.full", "hidden_helper") + 1) == "hidden_helper"


def test_minidebuginfo_gnu_debugdata(built: Path, tmp_path: Path) -> None:
    # GIVEN a stripped library carrying an xz-compressed ELF with only a .symtab (Fedora's MiniDebugInfo)
    mini = tmp_path / "mini"
    _run("objcopy", "--strip-debug", "--remove-section=.gnu_debuglink", str(built / "libdemo.debug"),
         str(mini))
    (tmp_path / "mini.xz").write_bytes(lzma.compress(mini.read_bytes(), format=lzma.FORMAT_XZ))
    lib = tmp_path / "libdemo.so"
    _run("objcopy", f"--add-section=.gnu_debugdata={tmp_path / 'mini.xz'}", str(built / "libdemo.so"),
         str(lib))
    symbols = ElfSymbols.load(str(lib))
    assert symbols.debugdata
    # WHEN no separate debug file exists THEN the static functions are named from .gnu_debugdata
    named = with_debug_symbols(symbols, str(lib), (str(tmp_path / "nothing"),))
    assert _name_at(named, _address_of(built / "libdemo.so.full", "second_helper") + 1) == "second_helper"
    # AND a corrupt section is ignored, not fatal
    broken = ElfSymbols(path="x", debugdata=b"\xfd7zXZ\0garbage")
    assert with_debug_symbols(broken, "x", ()) is broken


def test_libc_internal_functions_named_from_libc6_dbg() -> None:
    # GIVEN the machine's libc (only .dynsym) and Debian's libc6-dbg (.build-id/xx/yyyy.debug)
    require(os.path.isfile(LIBC), f"no {LIBC}")
    plain = ElfSymbols.load(LIBC)
    require(os.path.isfile(f"/usr/lib/debug/.build-id/{plain.build_id[:2]}/{plain.build_id[2:]}.debug"),
            "libc6-dbg not installed")
    named = with_debug_symbols(plain, LIBC, ("/",))
    internal = named.lookup("__futex_abstimed_wait_common")
    # THEN the futex wait every parked Java thread sits in is named (perf and async-profiler do)
    assert internal is not None and internal.table == ".symtab"
    assert _name_at(named, internal.value + 4) == "__futex_abstimed_wait_common"
    assert _name_at(plain, internal.value + 4) != "__futex_abstimed_wait_common"


def test_plt_entries_and_sizeless_assembly_functions_are_named_like_perf() -> None:
    # libjvm (JDK 17, Debian): calls through the PLT, and SpinPause, an assembly function of size 0
    libjvm = "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so"
    require(os.path.isfile(libjvm), "no JDK 17")
    symbols = ElfSymbols.load(libjvm)
    memcpy_plt = symbols.lookup("memcpy@plt")
    assert memcpy_plt is not None and memcpy_plt.table == ".plt"
    assert _name_at(symbols, memcpy_plt.value + 6) == "memcpy@plt"
    spin = symbols.lookup("SpinPause")
    assert spin is not None and spin.size == 0
    assert _name_at(symbols, spin.value + 2) == "SpinPause"


def test_every_plt_entry_is_where_objdump_puts_it_and_libcs_ifunc_slots_are_named() -> None:
    # GIVEN libc, whose .rela.plt mixes JUMP_SLOT and IRELATIVE relocations out of slot order,
    # and JDK 17's libjvm (JUMP_SLOTs only)
    libjvm = "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so"
    for path in (LIBC, libjvm):
        require(os.path.isfile(path), f"no {path}")
        dump = subprocess.run(["objdump", "-d", "-j", ".plt", "-j", ".plt.sec", path], capture_output=True,
                              text=True, check=True).stdout
        theirs = {int(m.group(1), 16): m.group(2)
                  for m in re.finditer(r"^([0-9a-f]+) <(.+)@plt>:$", dump, re.M)}
        # WHEN pyprof synthesizes its PLT symbols
        symbols = ElfSymbols.load(path)
        ours = {s.value: s.name.removesuffix("@plt") for s in symbols.symbols if s.table == ".plt"}
        # THEN each entry is at objdump's address, with objdump's name; where objdump has none
        # (`*ABS*+0x9f550`, an ifunc resolved at load), pyprof names the ifunc (strnlen)
        assert set(ours) == set(theirs), (path, sorted(set(ours) ^ set(theirs))[:5])
        for at, name in theirs.items():
            if name.startswith("*ABS*+"):
                resolver = int(name.removeprefix("*ABS*+"), 16)
                assert any(s.name == ours[at] and s.value == resolver for s in symbols.symbols), \
                    (hex(at), name, ours[at])
            else:
                assert ours[at] == name.split("@")[0], (hex(at), name, ours[at])


def test_native_symbolizer_names_libc_in_a_live_process() -> None:
    # GIVEN a live process mapping libc
    proc = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.3)
        natives = NativeSymbolizer(proc.pid)
        libc = next(e for e in natives._entries if e.path.endswith("/libc.so.6"))
        file = natives._file(libc)
        assert file.symbols is not None
        internal = file.symbols.lookup("__futex_abstimed_wait_common")
        require(internal is not None, "libc6-dbg not installed")
        # WHEN an address inside it is symbolized THEN it has the debug file's name, and a CFI rule
        pc = file.base + internal.value + 4
        assert natives.symbolize(pc).symbol == "__futex_abstimed_wait_common"
        mapped, rule = natives.unwind_rule(pc)
        assert mapped and rule is not None
        # AND only the function's first byte is its start (where a uprobe's breakpoint sits)
        entry = file.base + internal.value
        assert natives.starts_function(entry) and not natives.starts_function(entry + 1)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("before, is_call", [
    (b"\x90\x90\xe8\x10\x20\x30\x40", True),            # call rel32
    (b"\x90\x90\x90\x90\x90\xff\xd0", True),            # call rax
    (b"\x90\x90\x90\x90\x41\xff\xd3", True),            # call r11
    (b"\x90\xff\x15\x01\x02\x03\x04", True),            # call [rip+disp32]
    (b"\x90\x90\x90\x90\xff\x50\x08", True),            # call [rax+8]
    (b"\xff\x94\x24\x01\x02\x03\x04", True),            # call [rsp+disp32]
    (b"\x90\x90\x90\xff\x54\x24\x08", True),            # call [rsp+8]
    (b"\x90\x90\x90\x90\x90\xff\xe0", False),           # jmp rax
    (b"\x90\x90\x90\x90\x90\x90\xc3", False),           # ret
    (b"\x48\x89\xe5\x48\x83\xec\x10", False),           # mov rbp, rsp; sub rsp, 16
])
def test_call_instruction_before_a_return_address(before: bytes, is_call: bool) -> None:
    assert ends_with_call(before) is is_call
