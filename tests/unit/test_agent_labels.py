"""Agent data for samples: thread labels by host tid, and which pause (GC, safepoint) held an instant."""

from __future__ import annotations

from pyprof.agent.labels import PauseTimeline, ThreadLabels


def test_thread_labels_by_host_tid():
    labels = ThreadLabels.from_rows([
        {"name": "worker-1", "java_id": 17, "tid": 4711, "state": "RUNNABLE"},
        {"name": "GC Thread#0", "java_id": None, "tid": 4700, "state": "runnable"},
        {"name": "gone", "java_id": 3, "tid": None},
    ])
    assert labels.get(4711) == {"java_thread": "worker-1", "java_thread_id": "17", "thread_state": "RUNNABLE"}
    assert labels.get(4700) == {"java_thread": "GC Thread#0", "thread_state": "runnable"}
    assert labels.get(1) == {}


def test_a_sample_inside_a_gc_pause_is_labelled_with_the_gc_not_its_safepoint():
    # GIVEN a safepoint 1000..1500 holding a GC pause 1100..1400 (wall clock = monotonic + 10_000)
    pauses = [
        {"kind": "safepoint", "start_ns": 11_000, "duration_ns": 500, "operation": "G1CollectFull"},
        {"kind": "gc", "start_ns": 11_100, "duration_ns": 300, "name": "G1Full", "phase": "GC Pause",
         "cause": "System.gc()"},
        {"kind": "safepoint", "start_ns": 13_000, "duration_ns": 50, "operation": "Cleanup"},
    ]
    timeline = PauseTimeline.from_pauses(pauses, wall_minus_mono_ns=10_000)
    # THEN samples are labelled by the innermost pause, and samples outside any pause are not
    assert timeline.at(1200) == {"pause": "gc", "pause_name": "G1Full GC Pause (System.gc())"}
    assert timeline.at(1050) == {"pause": "safepoint", "pause_name": "G1CollectFull"}
    assert timeline.at(1450) == {"pause": "safepoint", "pause_name": "G1CollectFull"}
    assert timeline.at(3020) == {"pause": "safepoint", "pause_name": "Cleanup"}
    assert timeline.at(999) == {} and timeline.at(2000) == {} and timeline.at(5000) == {}
    assert timeline.total_ns("gc") == 300 and timeline.total_ns("safepoint") == 550
