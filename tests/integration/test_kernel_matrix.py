"""scripts/kernels/matrix.py's time budget: a kernel that would not fit is named NOT RUN, never dropped."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, require


def test_no_budget_left_reports_every_kernel_as_not_run() -> None:
    require(subprocess.run(["which", "qemu-system-x86_64"], capture_output=True).returncode == 0,
            "qemu-system-x86 is not installed")
    # WHEN the matrix gets no time at all
    done = subprocess.run([sys.executable, "scripts/kernels/matrix.py", "--budget", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    # THEN it starts nothing, names each kernel with the time it would need, and does not fail
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    not_run = [line for line in lines if " NOT RUN " in line]
    assert len(not_run) == 4, lines       # debian-6.1, debian-6.12, debian-5.10 and the host
    assert all("of the time budget left" in line for line in not_run)
    assert lines[-1] == "kernels: 0 passed, 0 failed"
    assert "not run (time budget): 4" in done.stderr
