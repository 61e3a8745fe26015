"""HotSpot's performance counters (the hsperfdata region), found in the target's memory.

PerfMemory::_prologue points to a PerfDataPrologue {magic, byte order, versions, used, overflow, time
stamp, entry_offset, num_entries}; the entries follow, each a PerfDataEntry {entry_length, name_offset,
vector_length, data_type, flags, data_units, data_variability, data_offset} with its NUL-terminated name
and its value inside the entry (src/hotspot/share/runtime/perfMemory.hpp, perfData.hpp). The region is
the JVM's own (also mapped as /tmp/hsperfdata_USER/PID unless -XX:+PerfDisableSharedMem); with
-XX:-UsePerfData there is none and every lookup here answers None.

Only counters that exist from the JVM's start are looked up (java.cls.unloadedClasses: created by
ClassLoadingService::init), so one scan of the region at attach finds them for good: an entry never moves.
"""

from __future__ import annotations

import struct

from pyprof.errors import MemoryReadError
from pyprof.hotspot.layout import Layout
from pyprof.procfs.memory import Reader

MAX_PERF_BYTES = 1 << 20      # -XX:PerfDataMemorySize is 64 KiB by default; more is not a prologue
MAX_ENTRIES = 20_000          # a JDK 25 JVM has ~300 counters
MAX_NAME = 256
_LONG = ord("J")              # data_type of a jlong counter (BasicType char)
_PROLOGUE = struct.Struct("<IbbbbiiqiI")   # magic .. num_entries (perfMemory.hpp, 32 bytes)
_ENTRY = struct.Struct("<iiibbbbi")        # entry_length .. data_offset (20 bytes)

# The counter of unloaded classes: ClassLoadingService::notify_class_unloaded increments it for every
# InstanceKlass of a class loader being unloaded (hidden classes included), before its metaspace is freed.
UNLOADED_CLASSES = "java.cls.unloadedClasses"


def counter_addresses(reader: Reader, layout: Layout, names: tuple[str, ...]) -> dict[str, int]:
    """name -> the address of that jlong counter's value, for those of `names` the JVM publishes
    (none without the VMStructs entries, with -XX:-UsePerfData, or when the region does not parse)."""
    if not layout.has("PerfMemory._prologue"):
        return {}
    try:
        prologue = reader.ptr(layout["PerfMemory._prologue"].address)
        if not prologue:
            return {}
        _magic, _order, _major, _minor, _accessible, used, _overflow, _stamp, entry_offset, count = \
            _PROLOGUE.unpack(reader.bytes(prologue, _PROLOGUE.size))
        if not _PROLOGUE.size <= entry_offset < used <= MAX_PERF_BYTES or not 0 < count <= MAX_ENTRIES:
            return {}
        region = reader.bytes(prologue, used)
    except (MemoryReadError, struct.error):
        return {}
    return _scan(region, prologue, entry_offset, count, set(names))


def _scan(region: bytes, base: int, offset: int, count: int, wanted: set[str]) -> dict[str, int]:
    """The entries of `region` (read at `base`): every bound checked, a malformed entry ends the scan."""
    found: dict[str, int] = {}
    for _ in range(count):
        if offset + _ENTRY.size > len(region) or not wanted - set(found):
            break
        length, name_offset, vector_length, data_type, _flags, _units, _var, data_offset = \
            _ENTRY.unpack_from(region, offset)
        if length < _ENTRY.size or offset + length > len(region):
            break
        if not (_ENTRY.size <= name_offset < length and 0 < data_offset <= length - 8):
            break
        end = region.find(b"\0", offset + name_offset, offset + min(length, name_offset + MAX_NAME))
        name = region[offset + name_offset:end].decode("ascii", "replace") if end > 0 else ""
        if name in wanted and data_type == _LONG and vector_length == 0:
            found[name] = base + offset + data_offset
        offset += length
    return found
