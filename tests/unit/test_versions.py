"""The version tables VMStructs does not describe (pyprof.hotspot.versions), as the Layout uses them."""

from __future__ import annotations

from typing import Optional

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


def test_jdk_major_from_the_release_file(tmp_path) -> None:
    from pathlib import Path

    from pyprof.jvmtools.release import jdk_major

    # GIVEN JDK homes whose release files say 11.0.13, 1.8.0_392, something else, or nothing
    def home(name: str, release: Optional[str]) -> Path:
        (tmp_path / name / "bin").mkdir(parents=True)
        if release is not None:
            (tmp_path / name / "release").write_text(release)
        return tmp_path / name / "bin" / "java"

    # WHEN their tools are asked for the JDK major THEN it comes from JAVA_VERSION, or 0
    assert jdk_major(home("a", 'IMPLEMENTOR="x"\nJAVA_VERSION="11.0.13"\n')) == 11
    assert jdk_major(home("b", 'JAVA_VERSION="1.8.0_392"\n')) == 8
    assert jdk_major(home("c", 'JAVA_VERSION="26-ea"\n')) == 26
    assert jdk_major(home("d", "garbage")) == 0
    assert jdk_major(home("e", None)) == 0
