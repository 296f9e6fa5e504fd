"""`pgconverge rehearse`: the whole migration on a copy of a real database, in the embedded Postgres."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pgconverge import embedded
from pgconverge import rehearse as rh
from pgconverge.catalog import baseline
from pgconverge.cli.common import (
    ConfigOpt, JsonOpt, command_line, console, err_console, fail_cleanly, load_spec, print_json,
)
from pgconverge.cli.demo import run_verified, summary_table, write_report
from pgconverge.cli.progress import RichProgress
from pgconverge.connection import Target, connect, redact, shown
from pgconverge.execution import gates
from pgconverge.execution.runner import Runner
from pgconverge.ledger.store import Ledger
from pgconverge.planning import plan as planner


@fail_cleanly
def rehearse(
    source: Annotated[str, typer.Option("--from", help="Connection string of the database to copy. It is only "
                                                      "read (read-only sessions).", show_default=False)],
    config_file: ConfigOpt = None,
    database: Annotated[str, typer.Option("--database", help="Name of the copy on the embedded server "
                                                             "(dropped and made anew).")] = rh.DEFAULT_DATABASE,
    report_dir: Annotated[Path | None, typer.Option(
        "--report-dir", help="Where to write rehearsal-report.html and .md. Default: ./.pgconverge.",
        show_default=False)] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the copy afterwards to explore it (a failed rehearsal "
                                                  "always keeps it).")] = False,
    skip_missing_extensions: Annotated[bool, typer.Option(
        "--skip-missing-extensions", help="Copy without the extensions the embedded server lacks; objects "
                                          "that need them are left out and listed.")] = False,
    exclude_schema: Annotated[list[str] | None, typer.Option(
        "--exclude-schema", help="Leave this schema out of the copy (repeatable; pg_dump patterns).",
        show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rehearse the migration: copy a real database into the embedded Postgres and run every phase there.

    The source's schema and data are copied with the embedded server's own pg_dump and pg_restore
    (read-only sessions on the source; the copy is refused if it would be the source itself).
    Roles the copy needs but the embedded server lacks (Supabase's anon, authenticated,
    service_role, ...) are created NOLOGIN first, so owners, grants and policies come across as
    they are. Then align, expand, switch and contract run on the copy with the invariants and row
    level security verified after each, and the run report is written. The contract gates on
    application code and runtime use are accepted (the copy has no application); the report
    lists what they found. Exits 1 if the copy cannot be made or any check fails.
    """
    started = time.monotonic()
    out = err_console if as_json else console
    spec = load_spec(config_file)

    def stage(name: str, text: str) -> None:
        if not as_json:
            out.print(f"[bold cyan]{name}[/]: {escape(text)}", highlight=False)

    stage("source", f"connecting read-only to {redact(source)}")
    src = rh.inspect_source(source)
    rh.check_version(src)
    stage("source", f"PostgreSQL {src.identity.version}, database {src.identity.database}, "
                    f"{len(src.extensions)} extensions, {len(src.roles)} roles named by its objects")
    admin, where = rh.target_admin_dsn()
    stage("target", f"{where}, database {database}")
    copy = rh.make_copy(src, admin, database, skip_missing_extensions=skip_missing_extensions,
                        exclude_schemas=tuple(exclude_schema or ()), on_stage=stage)
    ok = finished = False
    try:
        t = Target(copy.dsn, "rehearsal copy")
        with connect(t) as conn:
            cats = baseline.load(conn, spec)
        plan = planner.build(spec, cats)

        def phase_done(row: dict) -> None:
            verdict = "[green]verified[/]" if row["passed"] else "[red]verification FAILED[/]"
            stage(row["phase"], f"{row['steps']} steps in {row['seconds']:.1f}s")
            if not as_json:
                out.print(f"  {verdict}", highlight=False)

        again = command_line(["rehearse", "--from", shown(source), "--database", database,
                              *(["--skip-missing-extensions"] if skip_missing_extensions else []),
                              *[a for s in exclude_schema or () for a in ("--exclude-schema", s)]],
                             config_file=config_file)
        with Runner(t, spec, plan, progress=RichProgress(out, quiet=as_json), command="rehearse", catalogs=cats,
                    accept=frozenset({gates.CODE, gates.RUNTIME}),
                    resume=f"the rehearsal starts afresh (a new copy): {again}") as runner:
            rows, ok = run_verified(runner, spec, plan, cats, spec.migration.rls_sample, on_phase=phase_done)
            ledger = Ledger(runner.work, spec)
            equivalence = ledger.latest_snapshot("rls_equivalence") or {}
            accepted = [g for g in ledger.latest_snapshot("contract_gates") or [] if g.get("accepted")]
            rehearsal = {"source": redact(source), "source_version": src.identity.version, "database": database,
                         "roles_created": copy.roles_created, "extensions_skipped": copy.extensions_skipped,
                         "restore_errors": copy.restore_errors, "phases": rows, "passed": ok}
            html_path, md_path = write_report(runner.work, spec, report_dir or embedded.data_dir().parent,
                                              "rehearsal-report", extra={"target": t.display,
                                                                         "rehearsal": rehearsal})
        finished = True
    finally:
        # A failed rehearsal keeps its copy: it is the evidence.
        kept = keep or not ok
        if not kept:
            rh.drop_database(admin, database)
        elif not finished:
            err_console.print(f"the copy is kept for inspection: psql '{escape(copy.dsn)}'", highlight=False)
    elapsed = round(time.monotonic() - started, 1)
    if as_json:
        print_json({"source": redact(source), "copy": copy.as_dict(), "phases": rows, "rls_equivalence": equivalence,
                    "accepted_gates": [{"gate": g["gate"], "details": g.get("details", [])} for g in accepted],
                    "passed": ok, "seconds": elapsed, "kept": kept,
                    "report": {"html": str(html_path), "md": str(md_path)}})
    else:
        console.print(summary_table(rows))
        for g in accepted:
            console.print(f"contract gate accepted on the copy (it has no application): {g['gate']} — "
                          + escape("; ".join(map(str, g.get("details", [])[:3]))), highlight=False)
        if copy.roles_created:
            console.print("roles created in the copy (NOLOGIN): " + ", ".join(copy.roles_created), highlight=False)
        if copy.extensions_skipped or copy.restore_errors:
            console.print(f"[yellow]left out of the copy[/]: extensions {', '.join(copy.extensions_skipped)}; "
                          f"{len(copy.restore_errors)} objects failed to restore:", highlight=False)
            for e in copy.restore_errors[:20]:
                console.print("  " + escape(e), highlight=False)
        if equivalence:
            console.print(f"switch: {equivalence['identities']} identities saw the same rows before and after, "
                          f"{len(equivalence['problems'])} differences", highlight=False)
        console.print(f"report: {html_path} (and {md_path.name})", highlight=False)
        color = "green" if ok else "red"
        where_now = f"the copy is kept: psql '{copy.dsn}'" if kept else "the copy was dropped (--keep keeps it)"
        console.print(f"\n[{color}]rehearsal {'passed' if ok else 'FAILED'} in {elapsed}s[/]; {where_now}",
                      highlight=False)
    if not ok:
        raise typer.Exit(1)
