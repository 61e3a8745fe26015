"""`pyprof`: the command-line entry point. The only place errors become stderr text and exit codes."""

from __future__ import annotations

import os
import sys

import click

from pyprof import __version__
from pyprof.errors import PermissionDenied, PyprofError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="pyprof")
def cli() -> None:
    """A CPU profiler for running HotSpot JVMs (17, 21, 25) that needs no agent, no flags, no restart.

    \b
    Start here:
      pyprof doctor [PID]          what works on this machine and for this JVM
      pyprof attach PID -d 30      profile a running JVM for 30 s, write a pprof file
      pyprof report cpu.pb.gz      read it: top, tree, flame graph (-o cpu.html), speedscope
      pyprof top PID               live view of the hottest methods
      pyprof codecache ls PID      what the JIT has compiled, read attach-free
    """


def _register_commands() -> None:
    from pyprof.cli import agent, attach, codecache, daemon, doctor, report, store, top

    cli.add_command(agent.agent)
    cli.add_command(codecache.codecache)
    cli.add_command(doctor.doctor)
    for command in attach.COMMANDS + daemon.COMMANDS + report.COMMANDS + store.COMMANDS + top.COMMANDS:
        cli.add_command(command)


def _permission_message(error: PermissionError) -> str:
    from pyprof.procfs import capabilities

    what = str(error.filename) if error.filename else "an operation"
    return str(capabilities.denied(what, *capabilities.REQUIRED))


def main(argv: list[str] | None = None) -> int:
    _register_commands()
    try:
        # Without standalone mode click *returns* the code of a click.exceptions.Exit (doctor's 1,
        # record's JVM exit status) instead of raising it.
        result = cli.main(args=argv, prog_name="pyprof", standalone_mode=False)
    except PyprofError as e:
        click.echo(f"pyprof: error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except PermissionError as e:
        # a refusal no layer below explained: still one line, exit 6, and the capability it most
        # likely means (what pyprof needs and this process lacks)
        click.echo(f"pyprof: error: {_permission_message(e)}", err=True)
        return PermissionDenied.exit_code
    except click.UsageError as e:
        # one line, like every other error; the command's --help is named for the rest
        where = e.ctx.command_path if e.ctx is not None else "pyprof"
        click.echo(f"pyprof: error: {e.format_message()} (see `{where} --help`)", err=True)
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("pyprof: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("pyprof: interrupted", err=True)
        return 130
    except BrokenPipeError:
        # `pyprof codecache ls PID | head`: not an error; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug: say so in one line, keep the traceback for PYPROF_DEBUG
        if os.environ.get("PYPROF_DEBUG"):
            raise
        click.echo(f"pyprof: internal error: {type(e).__name__}: {e} (set PYPROF_DEBUG=1 for details)",
                   err=True)
        return 70
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
