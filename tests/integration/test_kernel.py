"""The kernel-safety code check on this machine's real kernel (root, BPF: it has no /proc/kcore)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from pyprof.kernel import ktext, requirements, safety
from tests.conftest import ROOT, pyprof

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("root_and_bpf")]


def test_this_kernels_copy_from_user_nofault_calls_nmi_uaccess_okay() -> None:
    # GIVEN the running kernel's copy_from_user_nofault, read as the decision reads it
    function = safety.read_running_function()
    # THEN its bytes are the function's (bounded by the next symbol) and the fix's call is found in them
    assert 16 <= len(function.code) <= ktext.MAX_FUNCTION_BYTES
    calls = safety.calls_into(function)
    assert len(calls) == 1, function.code.hex()
    # AND were this kernel's version in the affected range, the code would make it safe
    decision = safety.decide((6, 1, 27), safety.read_running_function)
    assert decision.safe and decision.basis == "code", decision


def test_the_safety_module_reports_the_decision_and_the_code() -> None:
    # WHEN `python -m pyprof.kernel.safety` runs on this kernel
    done = pyprof_module("pyprof.kernel.safety")
    report = json.loads(done.stdout)
    # THEN it is safe by version (6.18), and the code check found the call anyway
    assert done.returncode == 0, done.stderr
    version, _ = requirements.upstream_version()
    assert report == {"safe": True, "basis": "version", "detail": report["detail"], "code": report["code"]}
    assert requirements.format_version(version) in report["detail"]
    assert report["code"].startswith("copy_from_user_nofault calls nmi_uaccess_okay at +0x"), report


def pyprof_module(module: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, stdin=subprocess.DEVNULL)


def test_doctor_names_the_minimum() -> None:
    done = pyprof("doctor", "--json")
    kernel = {c["name"]: c for c in json.loads(done.stdout)["checks"]}["kernel"]
    assert kernel["status"] == "ok" and kernel["detail"].startswith(platform.release())
