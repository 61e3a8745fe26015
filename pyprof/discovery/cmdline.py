"""What a JVM's command line says: its main class or jar (the default service name), the `--service`
rules that rename it, and the `--match` / `--exclude` filters."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

from pyprof.errors import UsageError

MAX_CMDLINE_BYTES = 128 * 1024
# java options whose value is the next argument (java --help, JDK 17-25)
_OPTIONS_WITH_VALUE = frozenset({
    "-cp", "-classpath", "--class-path", "-p", "--module-path", "--upgrade-module-path", "--add-modules",
    "--enable-native-access", "--limit-modules", "--add-exports", "--add-reads", "--add-opens",
    "--patch-module", "--source", "-splash", "--illegal-access",
})


def read_cmdline(pid: int) -> list[str]:
    """The arguments of a process (bounded read); [] when it is gone or a kernel thread."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(MAX_CMDLINE_BYTES)
    except OSError:
        return []
    return [arg.decode("utf-8", "replace") for arg in raw.split(b"\0") if arg]


def command_text(argv: list[str]) -> str:
    """The command line as one string, what --match/--exclude/--service rules are matched against."""
    return " ".join(argv)


LAUNCHERS = ("java", "javaw")


def main_of(argv: list[str]) -> str:
    """The main class, the jar's name (without .jar) or the module's main class; "" when none is named.

    A process started by another launcher (jpackage's app launcher, javac, a custom one embedding libjvm)
    is named after that launcher: its options are not java's."""
    if not argv:
        return ""
    launcher = os.path.basename(argv[0])
    if launcher not in LAUNCHERS:
        return launcher
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-jar":
            return _jar_name(args[i + 1]) if i + 1 < len(args) else ""
        if arg in ("-m", "--module"):
            return _module_main(args[i + 1]) if i + 1 < len(args) else ""
        if arg.startswith("--module="):
            return _module_main(arg.partition("=")[2])
        if arg in _OPTIONS_WITH_VALUE:
            i += 2
            continue
        if arg.startswith("-") or arg.startswith("@"):   # an option, or an @argfile we do not open
            i += 1
            continue
        return _source_file_name(arg)
    return ""


def _jar_name(path: str) -> str:
    name = os.path.basename(path)
    return name[:-4] if name.endswith(".jar") else name


def _module_main(spec: str) -> str:
    module, _, main_class = spec.partition("/")
    return main_class or module


def _source_file_name(arg: str) -> str:
    """`java Hello.java` (source-file mode) runs class Hello."""
    return os.path.basename(arg)[:-5] if arg.endswith(".java") else arg


@dataclass(frozen=True)
class ServiceRule:
    """`REGEX=NAME`: a JVM whose command line matches REGEX is service NAME (`\\1` takes a group)."""

    pattern: re.Pattern
    name: str

    @classmethod
    def parse(cls, text: str) -> ServiceRule:
        regex, sep, name = text.rpartition("=")
        if not sep or not regex or not name:
            raise UsageError(f"invalid --service rule {text!r}: expected REGEX=NAME")
        return cls(compile_filter(regex, "--service"), name)

    def apply(self, command: str) -> Optional[str]:
        match = self.pattern.search(command)
        if match is None:
            return None
        try:
            return match.expand(self.name)
        except (re.error, IndexError):
            return self.name


def compile_filter(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UsageError(f"invalid {what} regular expression {pattern!r}: {e}") from None


@dataclass(frozen=True)
class Selection:
    """Which JVMs to profile: all, unless pids are given; then --match must match and --exclude not."""

    pids: frozenset[int] = frozenset()
    match: Optional[re.Pattern] = None
    exclude: Optional[re.Pattern] = None

    @classmethod
    def parse(cls, pids: tuple[int, ...] = (), match: Optional[str] = None,
              exclude: Optional[str] = None) -> Selection:
        return cls(frozenset(pids), compile_filter(match, "--match") if match else None,
                   compile_filter(exclude, "--exclude") if exclude else None)

    def wants(self, pid: int, command: str) -> bool:
        if self.pids and pid not in self.pids:
            return False
        if self.match is not None and not self.match.search(command):
            return False
        return not (self.exclude is not None and self.exclude.search(command))


def service_name(argv: list[str], rules: tuple[ServiceRule, ...], container_name: str, comm: str) -> str:
    """A rule's name, else the container's name, else the main class or jar, else the process name."""
    command = command_text(argv)
    for rule in rules:
        named = rule.apply(command)
        if named:
            return named
    return container_name or main_of(argv) or comm or "unspecified"
