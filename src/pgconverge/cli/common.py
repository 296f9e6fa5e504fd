"""Options and error handling shared by every command."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable

import psycopg
import typer
from rich.console import Console
from rich.markup import escape

from pgconverge import config, connection
from pgconverge.errors import PgConvergeError

# Piped output (logs, CI) gets a wide fixed width instead of Rich's 80-column default,
# so identifiers are not folded mid-name.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DsnOpt = Annotated[str | None, typer.Option(
    "--dsn", help="Connection string of the database to work on. Default: $DATABASE_URL, else the embedded "
                  "Postgres of this project directory (started on demand).", show_default=False)]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="pgconverge.toml to use. Default: ./pgconverge.toml if present, else the built-in "
                           "defaults (the customers → profiles case).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]


def fail_cleanly(fn: Callable) -> Callable:
    """Turn PgConvergeError into a readable message (or JSON with --json) and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pgconverge.execution import interrupt

        try:
            try:
                return fn(*args, **kwargs)
            except interrupt.Abort as exc:  # a second signal outside any step: stop now all the same
                raise interrupt.aborted(exc) from None
            except psycopg.Error as exc:  # one no step or check turned into a PgConvergeError: still no traceback
                from pgconverge.execution import privileges

                if privileges.refusal(exc):
                    raise _row_security(fn.__name__, exc, kwargs) from exc
                state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
                if isinstance(exc, psycopg.errors.InsufficientPrivilege):
                    fix = ("the role pgconverge connects as lacks that privilege: grant it, or connect as the "
                           "owner of the tables")
                elif exc.sqlstate == "53200":  # out of shared memory: the lock table is full
                    fix = ("the server's lock table is full: raise max_locks_per_transaction (a restart), or run "
                           "when fewer sessions hold locks; then run the same command again (finished steps are not "
                           "repeated)")
                elif exc.sqlstate == "53300":  # too many connections
                    fix = ("the server has no connection slot left: close idle sessions (pg_stat_activity names "
                           "them), or raise max_connections or the role's CONNECTION LIMIT; then run the same "
                           "command again (finished steps are not repeated)")
                elif isinstance(exc, psycopg.OperationalError):
                    fix = ("the connection failed or was lost: check that the server is up and reachable, then run "
                           "the same command again (finished steps are not repeated)")
                else:
                    fix = "`pgconverge status` shows the last step and its error; fix what the message names and rerun"
                raise PgConvergeError(f"the database refused a query of `{fn.__name__}`: {str(exc).strip()}{state}",
                                      fix=fix) from exc
        except interrupt.Interrupted as exc:
            # SIGINT/SIGTERM stopped the run at a safe point: one line, where and how to resume; exit 130/143.
            if kwargs.get("as_json"):
                print(json.dumps(exc.as_dict(), indent=2, default=str))
            else:
                err_console.print(escape(exc.line()), highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except PgConvergeError as exc:
            if kwargs.get("as_json"):
                print(json.dumps(exc.as_dict(), indent=2))
            else:
                err_console.print(f"[bold red]error:[/] {escape(exc.problem)}", highlight=False, soft_wrap=True)
                if exc.fix:
                    err_console.print(f"[bold]fix:[/] {escape(exc.fix)}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        finally:
            interrupt.release()  # a signal that stopped a runner: its line is printed, the usual handlers apply

    return wrapper


def _row_security(command: str, exc: psycopg.Error, kwargs: dict) -> PgConvergeError:
    """Postgres refused a query that row level security would have filtered (pgconverge's sessions run with
    row_security off): name every table that filters rows for this role, and the fix, read afresh."""
    from pgconverge.catalog import baseline
    from pgconverge.execution import privileges

    if "dsn" in kwargs:  # not for a command that connects elsewhere (rehearse): there, only what Postgres said
        try:
            spec = load_spec(kwargs.get("config_file"))
            with connection.connect(target(kwargs.get("dsn"))) as conn:
                cats = baseline.load(conn, spec)
                return privileges.explain(conn, privileges.tables_of(cats.live, *cats.saved.values()), exc,
                                          f"a query of `{command}`")
        except (PgConvergeError, psycopg.Error):
            pass  # the database cannot say more: what Postgres said, and the general fix
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return privileges.RowSecurityBlocks(
        f"Postgres refused a query of `{command}` that row level security would have filtered ({said}): the "
        "role pgconverge connects as sees only the rows the table's policies show it",
        fix="as a superuser, `ALTER ROLE <that role> BYPASSRLS;`, or, if it owns the table, "
            "`ALTER TABLE <table> NO FORCE ROW LEVEL SECURITY;`")


def load_spec(path: Path | None) -> config.Spec:
    return config.load(path)


def target(dsn: str | None) -> connection.Target:
    return connection.resolve(dsn)


def command_line(args: list[str], t: connection.Target | None = None, config_file: Path | None = None) -> str:
    """`pgconverge ARGS` as a shell command that reaches the same database and configuration again.

    A DSN given with --dsn is repeated (its password masked, never shown); DATABASE_URL and the
    embedded server are found again without one.
    """
    import shlex

    parts = ["pgconverge", *args]
    if t is not None and t.source == "--dsn":
        parts += ["--dsn", connection.shown(t.dsn)]
    if config_file is not None:
        parts += ["--config", str(config_file)]
    line = shlex.join(parts)
    return line + (" (with the same DATABASE_URL)" if t is not None and t.source == "DATABASE_URL" else "")


def resume_hint(args: list[str], t: connection.Target | None = None, config_file: Path | None = None) -> str:
    return "resume with: " + command_line(args, t, config_file)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
