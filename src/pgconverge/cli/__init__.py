"""The `pgconverge` command line."""

from __future__ import annotations

import typer

from pgconverge import __version__
from pgconverge.cli import align as align_cmd
from pgconverge.cli import audit as audit_cmd
from pgconverge.cli import demo as demo_cmd
from pgconverge.cli import embedded as embedded_cmd
from pgconverge.cli import emit as emit_cmd
from pgconverge.cli import fixture as fixture_cmd
from pgconverge.cli import inventory as inventory_cmd
from pgconverge.cli import migrate as migrate_cmd
from pgconverge.cli import rehearse as rehearse_cmd
from pgconverge.cli import report as report_cmd
from pgconverge.cli import verify as verify_cmd

app = typer.Typer(
    name="pgconverge",
    help="Retire a legacy identity table (customers) in favour of a canonical one (profiles) in a live "
         "PostgreSQL/Supabase database: online, verified and reversible.\n\n"
         "Start with `pgconverge demo`, then `pgconverge inventory --dsn ...` on your own database. "
         "Configuration comes from ./pgconverge.toml (all keys optional; defaults are the customers → "
         "profiles case).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("inventory")(inventory_cmd.inventory)
app.command("plan")(migrate_cmd.plan)
app.command("run")(migrate_cmd.run)
app.command("status")(migrate_cmd.status)
app.command("rollback")(migrate_cmd.rollback)
app.command("verify")(verify_cmd.verify)
app.command("report")(report_cmd.report)
app.command("demo")(demo_cmd.demo)
app.command("rehearse")(rehearse_cmd.rehearse)
app.command("align")(align_cmd.align)
app.command("emit")(emit_cmd.emit)
app.add_typer(embedded_cmd.app, name="embedded")
app.add_typer(fixture_cmd.app, name="fixture")
app.add_typer(audit_cmd.app, name="audit")


def _version(value: bool) -> None:
    if value:
        print(f"pgconverge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


def main() -> None:
    from pgconverge.execution import interrupt

    interrupt.WHOLE_PROCESS = True  # after a clean interrupt, a further signal still exits 130/143 (interrupt.py)
    try:
        app()
    except SystemExit as exc:
        interrupt.leave(exc.code)  # stopped by a signal: end now, before the interpreter's teardown
        raise
