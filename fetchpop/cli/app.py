"""The command group, its global options, and the one funnel from exceptions to
exit statuses: :func:`failure` decides, for every exception, the lines and
the status; :func:`guard` applies it to a command, and the per-account loops
(``sync``, ``check``) apply it to each account; :func:`run` does it for
click's own usage errors, and :func:`entry` ends the process.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import click

from fetchpop import __version__
from fetchpop.cli.env import Environment
from fetchpop.errors import ExitCode, FetchpopError, sanitize

#: Where a ``--json`` given before the command is kept (in ``ctx.meta``).
_GLOBAL_JSON = "fetchpop.json"


def _json_anywhere(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    return value or bool(ctx.meta.get(_GLOBAL_JSON))


#: ``--json``, as every command that has it declares it; ``fetchpop --json
#: status`` turns it on too.
json_option = click.option(
    "--json", "as_json", is_flag=True, callback=_json_anywhere, help="Print JSON on stdout."
)


def _has_json(cmd: click.Command | None) -> bool:
    return cmd is not None and any(p.name == "as_json" for p in cmd.params)


def _late_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    env = ctx.find_object(Environment)
    if env is not None and value is not None:
        env.config_option = value  # the later one wins, as with any option given twice


def _late_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    env = ctx.find_object(Environment)
    if env is not None and value:
        env.verbose += value  # counted across both places: `fetchpop -v sync -v` is -vv


def _late_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    env = ctx.find_object(Environment)
    if env is not None and value:
        env.quiet = True


def _global_options_after(cmd: click.Command) -> None:
    """Let ``-c``, ``-v`` and ``-q`` follow *cmd* too (``fetchpop sync -v``).

    They are hidden on the command: its ``--help`` and the man page's
    SYNOPSIS show them once, as the global options they are.
    """
    late = [
        click.Option(
            ["-c", "--config"],
            metavar="FILE",
            callback=_late_config,
            hidden=True,
            expose_value=False,
        ),
        click.Option(
            ["-v", "--verbose"], count=True, callback=_late_verbose, hidden=True, expose_value=False
        ),
        click.Option(
            ["-q", "--quiet"], is_flag=True, callback=_late_quiet, hidden=True, expose_value=False
        ),
    ]
    taken = {o for p in cmd.params for o in getattr(p, "opts", ())}
    cmd.params.extend(o for o in late if not taken & set(o.opts))
    if cmd.epilog is None:
        cmd.epilog = "The global options -c, -v and -q may come here too (fetchpop --help)."


class GlobalOptionsGroup(click.Group):
    """A group whose commands and subgroups (of this class too) accept the
    global options after their names as well as before."""

    group_class = type

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _global_options_after(cmd)
        super().add_command(cmd, name)


@click.group(cls=GlobalOptionsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config", metavar="FILE", help="Configuration file to use.")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="A summary line per account; -vv also a line per message and the protocol transcript.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON on stdout (as the command's --json)."
)
@click.version_option(__version__, "--version", prog_name="fetchpop")
@click.pass_context
def main(ctx: click.Context, config: str | None, verbose: int, quiet: bool, as_json: bool) -> None:
    """Fetch mail from POP3 accounts into Maildir, mbox or a delivery program.

    A message is deleted from the server only after it has been durably
    delivered and recorded, and is never delivered twice.

    -c, -v, -q and --json may also follow the command: fetchpop sync -v.
    """
    env = ctx.obj if isinstance(ctx.obj, Environment) else Environment()  # tests inject one
    env.config_option, env.verbose, env.quiet = config, verbose, quiet
    ctx.obj = env
    if as_json:
        name = ctx.invoked_subcommand
        if not _has_json(main.get_command(ctx, name) if name else None):
            raise click.UsageError(f"{name} has no --json output", ctx)
        ctx.meta[_GLOBAL_JSON] = True


def current_env() -> Environment:
    """The Environment of the command being run."""
    env = click.get_current_context().obj
    assert isinstance(env, Environment)
    return env


def failure(exc: BaseException) -> tuple[int, list[str]]:
    """The exit status and the lines (without ``fetchpop:``) for *exc*."""
    if isinstance(exc, FetchpopError):
        return int(exc.exit_code), str(exc).splitlines() or [type(exc).__name__]
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, ["interrupted"]
    if isinstance(exc, OSError):
        # Everything that talks to the network or the target turns its
        # OSErrors into FetchpopErrors; one that escapes is this machine's
        # (fetchpop's own files unreadable while importing a module, say).
        return ExitCode.IOERR, [f"local I/O error: {sanitize(str(exc))}"]
    # A bug: say so, briefly, with the type.
    return ExitCode.SOFTWARE, [f"internal error ({type(exc).__name__}): {sanitize(str(exc))}"]


def guard(env: Environment, func: Callable[[], int]) -> NoReturn:
    """Run a command and exit with its status, or with the failure's."""
    try:
        code = func()
    except BrokenPipeError:
        # `fetchpop accounts | head -1`: the reader is gone. End quietly, as
        # a Unix tool killed by SIGPIPE does (128 + 13), and let nothing more
        # be written to the closed pipe at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        sys.exit(ExitCode.BROKEN_PIPE)
    except (Exception, KeyboardInterrupt) as exc:
        code, lines = failure(exc)
        for line in lines:
            env.error(line)
        if code == ExitCode.SOFTWARE and env.verbose:
            import traceback

            traceback.print_exc(file=env.stderr)
    sys.exit(code)


def combine(codes: Sequence[int]) -> int:
    """One failure: its code. Several: TEMPFAIL (SPEC section 6)."""
    failed = [c for c in codes if c != 0]
    if not failed:
        return ExitCode.OK
    return failed[0] if len(failed) == 1 else ExitCode.TEMPFAIL


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """The console-script entry: click's usage errors exit 64 (EX_USAGE), not 2."""
    try:
        code = main.main(args=argv, prog_name="fetchpop", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        sys.exit(ExitCode.USAGE)
    except click.Abort:
        sys.exit(ExitCode.INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE)
    sys.exit(code if isinstance(code, int) else 0)


def entry() -> NoReturn:
    """The process's entry point (the console script, ``python -m fetchpop``).

    Runs :func:`run`, then ends the process without tearing the interpreter
    down: every file, lock and database fetchpop used is closed (and what
    must be durable is fsynced) before a command returns, and freeing
    thousands of objects and modules one by one only delays the exit status
    (20 to 30 ms a run). Under a tracer or profiler (coverage, cProfile),
    which write their results at exit, the exit is the ordinary one.
    """
    try:
        run()
    except SystemExit as exc:
        code = exc.code
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"), as Python itself treats it
        print(code, file=sys.stderr)
        status = 1
    if sys.gettrace() is not None or sys.getprofile() is not None:
        sys.exit(status)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing to say anyway
            stream.flush()
    os._exit(status)
