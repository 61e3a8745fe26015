"""The compiled-BPF cache's entries, keys and directory (pyprof.kernel.bpf_cache): what it accepts and
what it refuses (no BPF here: tests/integration/test_bpf_cache.py loads entries into the kernel)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from pyprof.kernel import bpf_cache
from pyprof.kernel.bpf_cache import CacheEntry, FunctionCode, MapDef, build_type, describe_type

LD_MAP_FD = bytes([0x18, 0x11, 0, 0, 7, 0, 0, 0]) + bytes(8)   # r1 = map fd 7 (ld_imm64, two slots)
EXIT = bytes([0x95]) + bytes(7)


class Anchor(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_uint64), ("pcs", ctypes.c_uint64 * 3), ("flags", ctypes.c_uint32, 4),
                ("kind", ctypes.c_uint32, 28)]


def entry(key: str = "k" * 64) -> CacheEntry:
    e = CacheEntry(key, b"GPL", 0)
    e.maps.append(MapDef("java_threads", 1, 4, ctypes.sizeof(Anchor), 65536, 0,
                         describe_type(ctypes.c_uint32), describe_type(Anchor)))
    e.functions.append(FunctionCode("on_sample", 7, LD_MAP_FD + EXIT, ((0, 0),)))
    return e


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch) -> Path:
    d = tmp_path / "bpf"
    monkeypatch.setenv(bpf_cache.CACHE_ENV, str(d))
    return d


def test_an_entry_survives_its_bytes() -> None:
    original = entry()
    again = CacheEntry.from_bytes(original.to_bytes(), original.key)
    assert again == original
    rebuilt = build_type(again.maps[0].leaf_type)
    assert ctypes.sizeof(rebuilt) == ctypes.sizeof(Anchor)
    assert [f[0] for f in rebuilt._fields_] == ["sp", "pcs", "flags", "kind"]
    value = rebuilt(1, (2, 3, 4), 5, 6)
    assert (value.pcs[2], value.flags, value.kind) == (4, 5, 6)


@pytest.mark.parametrize("damage", [
    lambda b: b[: len(b) // 2],                                   # cut short
    lambda b: b.replace(b'"GPL"', b'7'),                          # a field of the wrong type
    lambda b: b.replace(b"[[0,0]]", b"[[1,0]]"),                  # the map reference is not an ld_imm64
    lambda b: b.replace(b"[[0,0]]", b"[[0,3]]"),                  # ... or names no map
    lambda b: b.replace(b'"I"]', b'"B"]', 1),                    # the key's type has not its size
    lambda b: b"\xff" * 64,
])
def test_a_damaged_entry_is_refused(damage) -> None:
    original = entry()
    with pytest.raises((ValueError, TypeError, KeyError)):
        CacheEntry.from_bytes(damage(original.to_bytes()), original.key)


def test_an_entry_of_another_key_is_refused() -> None:
    with pytest.raises(ValueError):
        CacheEntry.from_bytes(entry("a" * 64).to_bytes(), "b" * 64)


def test_the_key_changes_with_text_flags_headers_and_bcc() -> None:
    base = bpf_cache.cache_key("int f;", ["-DX=1"], "headers", "bcc 0.26")
    assert base == bpf_cache.cache_key("int f;", ["-DX=1"], "headers", "bcc 0.26")
    assert len({base, bpf_cache.cache_key("int g;", ["-DX=1"], "headers", "bcc 0.26"),
                bpf_cache.cache_key("int f;", ["-DX=2"], "headers", "bcc 0.26"),
                bpf_cache.cache_key("int f;", ["-DX=1"], "other headers", "bcc 0.26"),
                bpf_cache.cache_key("int f;", ["-DX=1"], "headers", "bcc 0.27")}) == 5


def test_stored_entries_load_and_damaged_ones_are_counted(cache_dir: Path) -> None:
    e = entry()
    assert bpf_cache.store(e)
    assert oct(cache_dir.stat().st_mode & 0o777) == "0o700"
    assert bpf_cache.load(e.key) == e
    path = bpf_cache.entry_path(cache_dir, e.key)
    path.write_bytes(path.read_bytes()[:100])
    corrupt = bpf_cache.STATS.corrupt
    assert bpf_cache.load(e.key) is None
    assert bpf_cache.STATS.corrupt == corrupt + 1
    assert bpf_cache.load("0" * 64) is None            # no entry: not corrupt
    assert bpf_cache.STATS.corrupt == corrupt + 1


def test_a_planted_symlink_or_a_shared_directory_is_not_used(cache_dir: Path, tmp_path: Path) -> None:
    e = entry()
    assert bpf_cache.store(e)
    path = bpf_cache.entry_path(cache_dir, e.key)
    elsewhere = tmp_path / "planted"
    elsewhere.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(elsewhere)
    assert bpf_cache.load(e.key) is None                # O_NOFOLLOW: the link is not followed
    path.unlink()
    assert bpf_cache.store(e)
    os.chmod(cache_dir, 0o777)                          # open to others: neither read nor written
    assert bpf_cache.load(e.key) is None
    assert not bpf_cache.store(e)
    os.chmod(cache_dir, 0o700)
    assert bpf_cache.load(e.key) == e
    moved = tmp_path / "moved"
    cache_dir.rename(moved)
    cache_dir.symlink_to(moved)                         # the directory itself a symlink: not followed
    assert bpf_cache.load(e.key) is None


def test_off_disables_the_cache(monkeypatch) -> None:
    monkeypatch.setenv(bpf_cache.CACHE_ENV, "off")
    assert bpf_cache.cache_dir() is None
    assert not bpf_cache.store(entry())
    assert bpf_cache.load(entry().key) is None
