"""The version tables VMStructs does not describe (pyprof.hotspot.versions), as the Layout uses them."""

from __future__ import annotations

from pyprof.hotspot import versions


def test_nmethod_state_names_per_jdk() -> None:
    # GIVEN the JDKs pyprof is tested on WHEN their nmethod::_state values are named
    # THEN 11 has zombie 3 / unloaded 4, 17 the other way round, 21 neither, 25 not_entrant at 1
    assert versions.nmethod_states(11)[3] == "zombie" and versions.nmethod_states(11)[4] == "unloaded"
    assert versions.nmethod_states(17)[3] == "unloaded" and versions.nmethod_states(17)[4] == "zombie"
    assert versions.nmethod_states(21) == {0: "in_use", 1: "not_used", 2: "not_entrant"}
    assert versions.nmethod_states(25) == {0: "in_use", 1: "not_entrant"}
    # AND an unknown version (0) and a future one get the newest names
    assert versions.nmethod_states(0) == versions.nmethod_states(26) == versions.nmethod_states(25)


def test_unsigned5_flavour_is_unknown_without_a_version() -> None:
    assert versions.unsigned5_excludes_zero(11) is False
    assert versions.unsigned5_excludes_zero(17) is False
    assert versions.unsigned5_excludes_zero(20) is True
    assert versions.unsigned5_excludes_zero(26) is True
    assert versions.unsigned5_excludes_zero(0) is None


def test_probe_candidates_follow_the_gc() -> None:
    # GIVEN the Serial GC WHEN its probe candidates are listed THEN both its heap class names are tried
    serial = versions.nmethod_probe_candidates("Serial")
    assert "_ZN10SerialHeap16register_nmethodEP7nmethod" in serial["register"]
    assert "_ZN16GenCollectedHeap16register_nmethodEP7nmethod" in serial["register"]
    assert not [s for s in serial["register"] if "G1" in s]
    # AND an unknown GC tries every heap class, once each
    every = versions.nmethod_probe_candidates("unknown")["register"]
    assert len(every) == len(set(every)) and any("G1CollectedHeap" in s for s in every)
    assert versions.GC_FLAGS[0] == "UseG1GC" and "UseConcMarkSweepGC" in versions.GC_FLAGS
