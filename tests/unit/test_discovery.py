"""Discovery's pure parts: container ids from cgroup files, service names from command lines, the
filters, and opening a container's file without following a planted symlink."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pyprof.discovery import Selection, ServiceRule, container_id_from_cgroup, main_of
from pyprof.discovery.cmdline import service_name
from pyprof.discovery.files import UnsafePath, open_beneath
from pyprof.discovery.scanner import docker_container_name
from pyprof.errors import UsageError

ID = "4f1c0ab2d7e9" + "0123456789abcdef" * 3 + "0123"
assert len(ID) == 64


@pytest.mark.parametrize("text", [
    f"0::/system.slice/docker-{ID}.scope",                                                   # docker, v2
    f"12:memory:/docker/{ID}\n11:cpu:/docker/{ID}\n",                                        # docker, v1
    f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5d7e.slice/cri-containerd-{ID}.scope",
    f"0::/kubepods.slice/kubepods-pod9a8b.slice/crio-{ID}.scope",                              # cri-o
    f"11:cpu,cpuacct:/kubepods/besteffort/pod0b1c2d3e-aaaa-bbbb-cccc-0123456789ab/{ID}",       # kubepods v1
    f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container",  # podman
    f"5:pids:/docker/{'1' * 64}\n0::/system.slice/docker-{ID}.scope\n",                       # v2 preferred
])
def test_container_id_from_cgroup_v1_and_v2(text: str) -> None:
    assert container_id_from_cgroup(text) == ID


@pytest.mark.parametrize("text", [
    "0::/user.slice/user-1000.slice/session-3.scope",
    "0::/",
    "4:memory:/process_api/260c943a3bb533064b878dd7c31f4171",   # 32 hex digits: not a container id
    f"0::/kubepods.slice/kubepods-pod9a8b.slice/crio-conmon-{ID}.scope",   # cri-o's monitor process
    "",
])
def test_host_processes_have_no_container_id(text: str) -> None:
    assert container_id_from_cgroup(text) == ""


@pytest.mark.parametrize("argv, expected", [
    (["/opt/jdk/bin/java", "-Xmx1g", "-cp", "a.jar:b.jar", "com.shop.Orders", "--port", "80"],
     "com.shop.Orders"),
    (["java", "-XX:+UseG1GC", "-jar", "/srv/billing-2.3.jar", "serve"], "billing-2.3"),
    (["java", "--module-path", "mods", "-m", "com.shop/com.shop.Main"], "com.shop.Main"),
    (["java", "--module=com.shop"], "com.shop"),
    (["java", "-Dx=y", "--add-opens", "java.base/java.lang=ALL-UNNAMED", "Hello.java"], "Hello"),
    (["java", "@argfile", "-version"], ""),
    (["/usr/lib/jvm/java-17/bin/javac", "--release", "17", "A.java"], "javac"),
    (["/opt/app/bin/inventory"], "inventory"),      # a jpackage launcher embedding libjvm
    ([], ""),
])
def test_main_class_or_jar_from_the_command_line(argv: list[str], expected: str) -> None:
    assert main_of(argv) == expected


def test_service_name_rule_then_container_name_then_main() -> None:
    argv = ["java", "-Dapp.env=prod", "-cp", "x", "com.shop.Orders"]
    rules = (ServiceRule.parse(r"app\.env=(\w+).*Orders=orders-\1"), ServiceRule.parse("Billing=billing"))
    assert service_name(argv, rules, "orders-container", "java") == "orders-prod"
    assert service_name(argv, rules[1:], "orders-container", "java") == "orders-container"
    assert service_name(argv, (), "", "java") == "com.shop.Orders"
    assert service_name(["java", "-version"], (), "", "java") == "java"
    with pytest.raises(UsageError, match="REGEX=NAME"):
        ServiceRule.parse("no-equals-sign")
    with pytest.raises(UsageError, match="invalid --service regular expression"):
        ServiceRule.parse("(unclosed=name")


def test_selection_by_pid_match_and_exclude() -> None:
    everything = Selection.parse()
    assert everything.wants(1, "java Foo")
    chosen = Selection.parse(pids=(7,), match="Orders", exclude="-Dtest")
    assert chosen.wants(7, "java com.shop.Orders")
    assert not chosen.wants(8, "java com.shop.Orders")
    assert not chosen.wants(7, "java com.shop.Billing")
    assert not chosen.wants(7, "java -Dtest=1 com.shop.Orders")
    with pytest.raises(UsageError, match="--exclude"):
        Selection.parse(exclude="[")


def test_open_beneath_refuses_planted_symlinks(tmp_path: Path) -> None:
    # GIVEN a container root with a real libjvm, and symlinks planted towards host files
    root = tmp_path / "root"
    server = root / "opt" / "jdk" / "lib" / "server"
    server.mkdir(parents=True)
    (server / "libjvm.so").write_bytes(b"\x7fELF real")
    secret = tmp_path / "host-secret"
    secret.write_text("host only")
    (root / "opt" / "evil").mkdir()
    (root / "opt" / "evil" / "libjvm.so").symlink_to(secret)        # absolute: would resolve on the host
    (root / "opt" / "linked").symlink_to("/")                        # a directory symlink on the way
    # THEN the real file opens, and every symlink and `..` is refused, not followed
    fd = open_beneath(str(root), "/opt/jdk/lib/server/libjvm.so")
    try:
        assert os.read(fd, 100) == b"\x7fELF real"
    finally:
        os.close(fd)
    for path in ("/opt/evil/libjvm.so", f"/opt/linked{secret}", "/opt/../../host-secret", "/opt/jdk"):
        with pytest.raises(UnsafePath):
            open_beneath(str(root), path)


def test_docker_container_name_from_its_config(tmp_path: Path) -> None:
    config = tmp_path / "containers" / ID
    config.mkdir(parents=True)
    (config / "config.v2.json").write_text(json.dumps({"Name": "/orders-1", "ID": ID}))
    assert docker_container_name(ID, str(tmp_path)) == "orders-1"
    assert docker_container_name("f" * 64, str(tmp_path)) == ""
    assert docker_container_name("", str(tmp_path)) == ""
