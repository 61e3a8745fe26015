"""pyprof.procfs.capabilities: which capability a refusal means, and the CLI's one line for a permission
error no layer explained. (The capabilities themselves are measured end to end by
tests/integration/test_privileges.py.)"""

from __future__ import annotations

import click
import pytest

from pyprof.cli import main as cli_main
from pyprof.procfs import capabilities


def mask(*names: str) -> int:
    return sum(1 << capabilities.NUMBERS[name] for name in names)


def test_a_broader_capability_counts_as_the_kernel_counts_it() -> None:
    assert capabilities.missing("CAP_BPF", "CAP_PERFMON", mask=mask("CAP_SYS_ADMIN")) == []
    assert capabilities.missing("CAP_DAC_READ_SEARCH", mask=mask("CAP_DAC_OVERRIDE")) == []
    # but not the other way round, nor between unrelated ones
    assert capabilities.missing("CAP_SYS_ADMIN", mask=mask("CAP_BPF", "CAP_PERFMON")) == ["CAP_SYS_ADMIN"]
    assert capabilities.missing("CAP_SYS_PTRACE", "CAP_BPF", mask=mask("CAP_DAC_OVERRIDE")) == \
        ["CAP_SYS_PTRACE", "CAP_BPF"]


def test_effective_mask_reads_capeff(tmp_path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000080004\n")
    assert capabilities.effective_mask(str(status)) == mask("CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE",
                                                            "CAP_DAC_READ_SEARCH")
    assert capabilities.effective_mask(str(tmp_path / "missing")) == 0


def test_the_documented_sets() -> None:
    assert capabilities.REQUIRED == ("CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH")
    assert set(capabilities.DEPLOYED) - set(capabilities.REQUIRED) == {"CAP_SYSLOG", "CAP_CHECKPOINT_RESTORE"}
    assert "CAP_SYS_ADMIN" not in capabilities.DEPLOYED
    assert all(use.purpose and use.without for use in capabilities.USES)


def test_a_stray_permission_error_is_one_line_and_exit_6(capsys: pytest.CaptureFixture) -> None:
    # GIVEN a command that hits a PermissionError no layer turned into PermissionDenied
    @click.command("raise-permission-error")
    def raiser() -> None:
        raise PermissionError(13, "Permission denied", "/proc/1/somewhere")

    cli_main.cli.add_command(raiser)
    try:
        # WHEN it runs
        code = cli_main.main(["raise-permission-error"])
    finally:
        cli_main.cli.commands.pop("raise-permission-error")
    # THEN one line, exit 6, naming the path and the capability situation (the tests run as root with
    # every capability: the line says something else than a capability refused)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 6
    assert len(err) == 1 and err[0].startswith("pyprof: error: /proc/1/somewhere: permission denied"), err
    assert "CAP_SYS_PTRACE" in err[0] and "Traceback" not in err[0]
