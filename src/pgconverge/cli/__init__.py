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
from pgconverge.cli import rollback as rollback_cmd
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
    rich_markup_mode="markdown",  # docstrings are wrapped prose: lines join, blank lines part paragraphs
)
app.command("inventory")(inventory_cmd.inventory)
app.command("plan")(migrate_cmd.plan)
app.command("run")(migrate_cmd.run)
app.command("status")(migrate_cmd.status)
app.command("rollback")(rollback_cmd.rollback)
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


_PLAIN = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "int range": "INTEGER", "float range": "NUMBER",
          "path": "PATH", "Path": "PATH", "bool": ""}


def _plain_help(command) -> None:
    """Help that speaks of values, not Python types: `--json` is a flag (no `<bool>`), `--code` takes a PATH,
    the phase argument reads PHASE. Applied to the commands Typer builds, once, before they run."""
    for param in getattr(command, "params", ()):
        kind = getattr(param, "param_type_name", "")
        if kind == "argument":
            label = (param.name or "value").upper() + ("..." if getattr(param, "nargs", 1) != 1 else "")
        elif kind == "option" and getattr(param, "metavar", None) is None:
            if getattr(param, "is_flag", False) or getattr(param, "is_bool_flag", False):
                label = ""
            else:
                shown = param.display_type_rich  # e.g. "<str>", "<list[Path]>", "<float>"
                try:
                    raw = str(shown(None)).strip("<>.")
                except Exception:  # a Typer whose display needs a context: keep its own rendering
                    continue
                raw = raw.removeprefix("list[").removesuffix("]")
                label = _PLAIN.get(raw, raw.upper())
        else:
            continue
        param.display_type_rich = lambda ctx, label=label: label  # what the help's type column shows
    made = getattr(command, "get_help_option", None)
    if made is not None:  # --help is made when the help is shown, not listed in params
        def help_option(ctx, made=made):
            opt = made(ctx)
            if opt is not None:
                opt.display_type_rich = lambda ctx: ""
            return opt
        command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)


def cli_command():
    """The click command behind `app`, with plain help (what `pgconverge` runs)."""
    command = typer.main.get_command(app)
    _plain_help(command)
    return command


def main() -> None:
    from pgconverge.execution import interrupt

    interrupt.WHOLE_PROCESS = True  # after a clean interrupt, a further signal still exits 130/143 (interrupt.py)
    try:
        cli_command()(prog_name="pgconverge")
    except SystemExit as exc:
        interrupt.leave(exc.code)  # stopped by a signal: end now, before the interpreter's teardown
        raise
