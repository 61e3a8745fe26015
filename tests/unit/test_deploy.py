"""docs/deploy: the DaemonSet, the systemd unit and the Dockerfile agree with the code — the capability
set of pyprof.procfs.capabilities, the options `pyprof daemon` really has, the store and metrics paths —
and the unit passes `systemd-analyze verify`. (Building the image and applying the manifest need a
registry and a cluster: not here.)"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pyprof.cli.daemon import daemon as daemon_command
from pyprof.discovery.scanner import JvmScanner
from pyprof.errors import MissingKernelFeature, PermissionDenied, UsageError
from pyprof.procfs import capabilities
from tests.conftest import ROOT

DEPLOY = ROOT / "docs" / "deploy"
UNIT = DEPLOY / "pyprof-daemon.service"
IMAGE_PYPROF = "/opt/pyprof/bin/pyprof"
IMAGE_ENTRYPOINT = "/opt/pyprof/entrypoint.sh"


def daemonset() -> dict:
    docs = [doc for doc in yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()) if doc]
    found = [doc for doc in docs if doc["kind"] == "DaemonSet"]
    assert len(found) == 1, [doc["kind"] for doc in docs]
    return found[0]


def container(ds: dict) -> dict:
    containers = ds["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def parse_daemon_args(args: list[str]) -> dict:
    """The options as `pyprof daemon` parses them (types and ranges checked; nothing is run)."""
    assert args and args[0] == "daemon", args
    return dict(daemon_command.make_context("daemon", list(args[1:])).params)


def daemon_help() -> str:
    done = subprocess.run([sys.executable, "-m", "pyprof.cli.main", "daemon", "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_options_documented(args: list[str], help_text: str) -> None:
    for option in (arg.split("=", 1)[0] for arg in args if arg.startswith("--")):
        assert re.search(rf"(^|[ ,]){re.escape(option)}\b", help_text, re.M), (option, help_text)


def unit_sections(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None and key not in current, f"duplicate or stray {key!r}"
        current[key] = value
    return sections


# ---- the DaemonSet ------------------------------------------------------------------------------

def test_daemonset_shares_the_hosts_pids_with_exactly_the_documented_capabilities() -> None:
    ds = daemonset()
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    security = container(ds)["securityContext"]
    assert security.get("privileged", False) is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    documented = sorted(name.removeprefix("CAP_") for name in capabilities.DEPLOYED)
    assert sorted(security["capabilities"]["add"]) == documented
    assert security["runAsUser"] == 0     # no ambient capabilities in Kubernetes: see the README


def test_daemonset_mounts_what_the_daemon_uses() -> None:
    ds = daemonset()
    pod = ds["spec"]["template"]["spec"]
    c = container(ds)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert all(m["name"] in volumes for m in mounts.values())
    # bcc's kernel headers, read-only from the node
    for path in ("/lib/modules", "/usr/src"):
        assert mounts[path]["readOnly"] is True
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    # the store is where --out points, on a volume that outlives the container
    params = parse_daemon_args(c["args"])
    store = mounts[params["out"]]
    assert "hostPath" in volumes[store["name"]] or "emptyDir" in volumes[store["name"]]
    assert not store.get("readOnly", False)
    # a read-only root needs a writable /tmp; nothing of debugfs, tracefs or bpffs is needed
    if c["securityContext"].get("readOnlyRootFilesystem"):
        assert "/tmp" in mounts
    assert not {"/sys/kernel/debug", "/sys/kernel/tracing", "/sys/fs/bpf", "/proc"} & set(mounts)


def test_daemonset_args_are_options_pyprof_daemon_has() -> None:
    c = container(daemonset())
    assert_options_documented(c["args"], daemon_help())
    params = parse_daemon_args(c["args"])
    # the metrics port is the container's port, on every interface of the pod
    host, port = params["metrics_address"].rsplit(":", 1)
    assert host == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == int(port)
    # the node's name reaches the `host` label
    env = {e["name"]: e for e in c["env"]}
    assert env["PYPROF_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["memory"]


def test_pyprof_host_names_the_host_label(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYPROF_HOST", "node-7")
    assert JvmScanner().host == "node-7"
    monkeypatch.delenv("PYPROF_HOST")
    assert JvmScanner().host and JvmScanner().host != "node-7"


# ---- the image ----------------------------------------------------------------------------------

def test_image_entrypoint_runs_the_daemon_the_manifest_configures() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert entrypoint == [IMAGE_ENTRYPOINT]
    assert f"COPY docs/deploy/entrypoint.sh {IMAGE_ENTRYPOINT}" in text
    assert_options_documented(cmd, daemon_help())
    assert parse_daemon_args(cmd)["out"] == parse_daemon_args(container(daemonset())["args"])["out"]
    # bcc from Debian, seen by the venv
    assert "python3-bpfcc" in text and "--system-site-packages" in text
    assert "image" in container(daemonset())


def test_dockerfile_run_steps_are_valid_shell() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    steps = [m.group(1).replace("\\\n", " ") for m in re.finditer(r"^RUN (.*?)(?<!\\)\n", text, re.S | re.M)]
    assert len(steps) >= 3
    for step in steps:
        done = subprocess.run(["sh", "-n", "-c", step], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (step, done.stderr)


def run_entrypoint(tmp_path: Path, node_headers: bool, baked: bool) -> dict[str, str]:
    """The image's entry point with `env` in place of pyprof: the environment pyprof would get."""
    modules = tmp_path / "modules"
    if node_headers:
        (modules / platform.release() / "build" / "include").mkdir(parents=True)
    modules.mkdir(parents=True, exist_ok=True)
    image_headers = tmp_path / "image-headers"
    if baked:
        (image_headers / "include").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "BCC_KERNEL_SOURCE"}
    env.update(PYPROF="/usr/bin/env", PYPROF_MODULES_DIR=str(modules),
               PYPROF_IMAGE_HEADERS=str(image_headers))
    done = subprocess.run([str(DEPLOY / "entrypoint.sh")], capture_output=True, text=True, env=env,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def test_entrypoint_prefers_the_nodes_kernel_headers_to_the_images(tmp_path: Path) -> None:
    assert "BCC_KERNEL_SOURCE" not in run_entrypoint(tmp_path / "a", node_headers=True, baked=True)
    fallback = run_entrypoint(tmp_path / "b", node_headers=False, baked=True)
    assert fallback["BCC_KERNEL_SOURCE"] == str(tmp_path / "b" / "image-headers")
    assert "BCC_KERNEL_SOURCE" not in run_entrypoint(tmp_path / "c", node_headers=False, baked=False)


# ---- the systemd unit ---------------------------------------------------------------------------

def test_unit_grants_exactly_the_documented_capabilities_and_keeps_the_store_private() -> None:
    unit = unit_sections(UNIT.read_text())
    service = unit["Service"]
    assert set(service["AmbientCapabilities"].split()) == set(capabilities.DEPLOYED)
    assert set(service["CapabilityBoundingSet"].split()) == set(capabilities.DEPLOYED)
    assert service["NoNewPrivileges"] == "yes" and service["User"] not in ("root", "0")
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == IMAGE_PYPROF
    params = parse_daemon_args(argv[1:])
    assert params["out"] == f"/var/lib/{service['StateDirectory']}"
    assert service["StateDirectoryMode"] == "0700"
    assert params["metrics_address"].startswith("127.0.0.1:")   # local unless told otherwise
    assert_options_documented(argv[1:], daemon_help())
    # exit codes a restart cannot fix are not restarted
    no_restart = {int(code) for code in service["RestartPreventExitStatus"].split()}
    assert {UsageError.exit_code, PermissionDenied.exit_code, MissingKernelFeature.exit_code} <= no_restart
    assert "network-online.target" in unit["Unit"]["After"].split()
    # the sandboxing options that would break pyprof are not there (README: why)
    for key in ("ProtectKernelModules", "ProtectKernelTunables", "ProtectProc"):
        assert key not in service, key


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:   # parsed above; verify where systemd is installed (Debian has it)
        return
    # verify checks that ExecStart's binary exists: point it at this checkout's pyprof
    local = Path(sys.executable).with_name("pyprof")
    assert local.exists(), local
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(IMAGE_PYPROF, str(local)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    # unknown keys and bad values are warnings with exit code 0: stderr must be empty too
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


# ---- the documentation --------------------------------------------------------------------------

def test_readme_table_lists_each_capability_as_the_code_uses_it() -> None:
    text = (DEPLOY / "README.md").read_text()
    for use in capabilities.USES:
        row = re.search(rf"^\| `{use.capability}` \| (yes|no)\b", text, re.M)
        assert row, use.capability
        assert (row.group(1) == "yes") == use.required, use.capability
