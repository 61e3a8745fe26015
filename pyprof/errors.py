"""One error hierarchy. The CLI (pyprof.cli.main) is the only place these become stderr text and exit codes.

Lower layers raise the most specific class they can; nothing below the CLI prints or exits.
"""

from __future__ import annotations


class PyprofError(Exception):
    """A failure the user can act on. The message is one line, shown as-is."""

    exit_code = 1


class UsageError(PyprofError):
    exit_code = 2


class NoSuchProcess(PyprofError):
    exit_code = 3


class NotAJvm(PyprofError):
    exit_code = 4


class UnsupportedJvm(PyprofError):
    exit_code = 5


class PermissionDenied(PyprofError):
    exit_code = 6


class MissingKernelFeature(PyprofError):
    exit_code = 7


class ProcessExited(PyprofError):
    """The target went away while we were reading it."""

    exit_code = 8


class SourceUnavailable(PyprofError):
    """A code-cache metadata source cannot work for this JVM (stripped libjvm, no jcmd, ...)."""

    exit_code = 9


class MemoryReadError(Exception):
    """A read of target memory failed or was refused (bad pointer, unmapped, over a bound).

    Not a PyprofError: callers turn it into a counted "unknown", never into a user-facing failure.
    """
