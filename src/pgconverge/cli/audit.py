"""`pgconverge audit`: what still references the legacy names outside the database schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pgconverge.cli.common import ConfigOpt, DsnOpt, JsonOpt, console, fail_cleanly, load_spec, print_json
from pgconverge.errors import PgConvergeError

app = typer.Typer(help="Find what still references the legacy table, its foreign-key column or its helpers.",
                  no_args_is_help=True)


@app.callback()
def _audit() -> None:
    """Find what still references the legacy table, its foreign-key column or its helpers."""


DirArg = Annotated[Path, typer.Argument(
    help="Directory of application source to read (or a single file): .ts/.tsx/.js/.jsx/.mjs/.cjs, .py, .sql. "
         "node_modules, .git, dist, build and virtualenvs are skipped.", show_default=False)]
FailOpt = Annotated[bool, typer.Option(
    "--fail-on-findings", help="Exit with code 1 when anything is found, when no file of a language the audit reads "
                               "was found (it proves nothing then), or when files in other languages (.go, .rb, "
                               ".vue, ...) name a legacy name (for CI).")]
ColumnOpt = Annotated[list[str] | None, typer.Option(
    "--column", help="Another legacy column name to report, besides the foreign-key column of the config "
                     "(repeatable).", show_default=False)]
FailOnUseOpt = Annotated[bool, typer.Option(
    "--fail-on-use", help="Exit with code 1 while anything still uses the legacy side since the baseline (for CI, "
                          "before contract). --fail-on-findings is accepted too.")]
HelperOpt = Annotated[list[str] | None, typer.Option(
    "--code-helper", help="An application identifier to report and its replacement, as OLD=NEW (repeatable). "
                          "Default: migration.code_helpers of the config (ensureCustomer=ensureProfile).",
    show_default=False)]


@app.command("code")
@fail_cleanly
def code(directory: DirArg, as_json: JsonOpt = False, fail_on_findings: FailOpt = False,
         config_file: ConfigOpt = None, column: ColumnOpt = None, code_helper: HelperOpt = None) -> None:
    """List every reference to the legacy names in application source, with what to write instead.

    TypeScript/JavaScript and Python are parsed with tree-sitter and SQL with pglast: comments and
    prose never count. Categories: table (.from('customers'), select embeds, SQL), column
    (customer_id as key, filter, type property, SQL column), helper (auth_customer_id in SQL or
    rpc()), code_helper (ensureCustomer). A legacy name bound to a variable, parameter, field or key is
    a finding, and so is each use of that name in the same file where the literal would be one
    (`.from(name)`, an f-string or template literal), with how it was reached. Nothing is changed.
    """
    from pgconverge.audit.code import scan

    if not directory.exists():
        raise PgConvergeError(f"{directory} does not exist",
                              fix="pass the directory that holds your application source, e.g. supabase/functions")
    spec = load_spec(config_file)
    helpers = _code_helpers(code_helper) if code_helper else None
    result = scan(directory, spec, code_helpers=helpers, extra_columns=column or ())
    counts = result.counts()
    if as_json:
        print_json({"root": str(directory), "findings": [f.as_dict() for f in result.findings], "counts": counts,
                    "files_scanned": result.files_scanned, "skipped": result.skipped,
                    "unread": list(result.unread),
                    "unproven": [{"path": rel, "why": why} for rel, why in result.unproven],
                    "proves_nothing": result.proves_nothing})
    else:
        _render(directory, result, counts)
    if fail_on_findings and (result.findings or result.proves_nothing or result.unread or result.unproven):
        raise typer.Exit(1)


def _code_helpers(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise PgConvergeError(f"--code-helper {pair!r} is not OLD=NEW",
                                  fix="write it as --code-helper ensureCustomer=ensureProfile")
        out[old.strip()] = new.strip()
    return out


def _render(directory: Path, result, counts: dict[str, int]) -> None:
    if result.findings:
        t = Table(title=f"References to legacy names in {escape(str(directory))}", title_justify="left")
        t.add_column("where", overflow="fold", no_wrap=True)
        t.add_column("category")
        t.add_column("name")
        t.add_column("code", overflow="fold")
        t.add_column("suggestion", overflow="fold")
        for f in result.findings:
            t.add_row(escape(f"{f.path}:{f.line}:{f.column}"), f.category, escape(f.name),
                      escape(f.code) + (f"\n[dim]{escape(f.reason)}[/]" if f.reason else ""), escape(f.suggestion))
        console.print(t)
    summary = ", ".join(f"{n} {c}" for c, n in counts.items())
    total = len(result.findings)
    console.print(f"[bold]{total} finding{'s' if total != 1 else ''}[/] in {result.files_scanned} files "
                  f"({summary})", highlight=False)
    for rel in result.skipped:
        console.print(f"[yellow]skipped:[/] {escape(rel)} (over 1 MB or unreadable)", highlight=False)
    for rel in result.unread:
        console.print(f"[yellow]not read:[/] {escape(rel)} names a legacy name in a language the audit does not "
                      "parse: check it by hand", highlight=False)
    for rel, why in result.unproven:
        console.print(f"[yellow]not read:[/] {escape(rel)} {escape(why)}: not proven clean, check it by hand",
                      highlight=False)
    if result.proves_nothing:
        console.print(f"[red]proves nothing:[/] no file under {escape(str(directory))} is in a language the audit "
                      "reads (.ts, .tsx, .js, .jsx, .mjs, .cjs, .py, .sql): pass the directory of the application's "
                      "source", highlight=False)


@app.command("runtime")
@fail_cleanly
def runtime(dsn: DsnOpt = None, config_file: ConfigOpt = None, as_json: JsonOpt = False,
            fail_on_use: FailOnUseOpt = False,
            fail_on_findings: Annotated[bool, typer.Option("--fail-on-findings", hidden=True)] = False,
            rebaseline: Annotated[bool, typer.Option(
                "--rebaseline", help="Take the baseline again now, once the last old-code deployment is retired: "
                                     "use between the switch and that moment is then no longer counted.")] = False,
            ) -> None:
    """Who still uses the legacy table and helper, from the server's statistics since the switch.

    Compares pg_stat_user_tables (scans and row writes on the legacy table), pg_stat_user_functions
    (calls of the legacy helper), the rows old code wrote to each dependent table with only the legacy
    column (counted by expand's sync trigger) and, where installed, pg_stat_statements (statements naming
    the legacy table, helper or a legacy column) with the baseline
    the switch recorded (or the newer one `--rebaseline` took). Says how much of the observation window
    (migration.observation_window) contract still waits for. Signals this server cannot give are listed,
    with the reason. With --fail-on-use, exits 1 while anything still uses the legacy side, or a signal that
    could show such use was not measured at all (a table without statistics, track_counts off, a missing
    counter).
    """
    from pgconverge.audit import runtime as rt
    from pgconverge.catalog import baseline
    from pgconverge.cli.common import target
    from pgconverge.config import format_duration
    from pgconverge.connection import connect

    spec = load_spec(config_file)
    with connect(target(dsn)) as conn:
        cats = baseline.load(conn, spec)
        cat = cats.for_phase("switch") if "switch" in cats.saved else cats.current
        if rebaseline:
            if "switch" not in cats.saved:
                raise PgConvergeError("there is no switch to take the runtime baseline again after",
                                      fix="run `pgconverge run switch` first; it records the first baseline")
            rt.record_baseline(conn, spec, cat)
        audit = rt.measure(conn, spec, cat, expanded=cats.saved.get("expand"))
    if as_json:
        print_json(audit.as_dict())
    else:
        console.print(f"since the server's statistics reset {'at ' + audit.reset_at if audit.reset_at else ''} "
                      f"(after the baseline of {audit.baseline_at}):" if audit.reset
                      else f"since {audit.baseline_at or 'statistics were last reset'}:", highlight=False)
        for k, v in audit.table.items():
            console.print(f"  legacy table {k}: +{v}", highlight=False)
        if audit.made:
            console.print(f"  legacy rows pgconverge made for people new code wrote for: {audit.made} (not old code: "
                          "taken off n_tup_ins)", highlight=False)
        if audit.helper_not_applicable:
            console.print(f"  {escape(audit.helper_not_applicable)}", highlight=False)
        elif audit.helper_calls is not None:
            console.print(f"  legacy helper calls: +{audit.helper_calls}", highlight=False)
        if audit.sync_calls:
            console.print(f"  legacy helper calls the sync triggers made for merged people new code wrote for: "
                          f"{audit.sync_calls} (not old code: taken off the calls)", highlight=False)
        for w in audit.old_writes:
            console.print(f"  {escape(w['table'])}: +{w['rows']} row(s) written with {escape(w['column'])} only "
                          f"(old code; {escape(str(w['new_column']))} filled by the sync trigger)", highlight=False)
        for s in audit.statements:
            console.print(f"  {s['calls']}× {escape(s['query'][:120])}", highlight=False)
        for u in audit.unavailable:
            console.print(f"  [yellow]unavailable[/]: {escape(u)}", highlight=False)
        if audit.reads:
            console.print(f"  reads of the legacy table: {', '.join(audit.reads)} (not counted as use: the legacy "
                          "foreign keys' own checks read it too)", highlight=False)
        if audit.baseline_at is not None:
            console.print(f"  {escape(audit.traffic_detail())}", highlight=False)
        for b in audit.blind:
            console.print(f"  [yellow]not measured[/]: {escape(b)}", highlight=False)
        console.print("[red]still in use[/]: " + escape("; ".join(audit.in_use)) if audit.in_use
                      else "[yellow]not shown unused[/]: some signals were not measured (above)" if audit.blind
                      else "[green]no use of the legacy side since the baseline[/]", highlight=False)
        if audit.window_open:
            console.print("[yellow]contract waits[/]: " + escape(audit.window_detail()), highlight=False)
        elif audit.observed_s is not None:
            console.print(f"observation window of {format_duration(audit.observation_window)} passed "
                          f"({format_duration(audit.observed_s)} since the baseline)", highlight=False)
    if (fail_on_use or fail_on_findings) and (audit.in_use or audit.blind):  # what was not measured is not unused
        raise typer.Exit(1)
