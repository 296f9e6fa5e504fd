"""`pgconverge plan`, `run` and `status`: show, execute and follow the migration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pgconverge.catalog import baseline
from pgconverge.cli.common import (
    ConfigOpt, DsnOpt, JsonOpt, console, err_console, fail_cleanly, load_spec, print_json, resume_hint, target,
)
from pgconverge.cli.progress import RichProgress
from pgconverge.connection import connect
from pgconverge.errors import PgConvergeError
from pgconverge.execution.runner import Runner
from pgconverge.execution import prechecks, privileges
from pgconverge.identity import check as match_check
from pgconverge.ledger.store import Ledger
from pgconverge.operations.base import PHASES
from pgconverge.planning import plan as planner

PhaseArg = Annotated[str | None, typer.Argument(help=f"One of: {', '.join(PHASES)}. Default: every phase.",
                                                show_default=False)]


def _phase(name: str | None) -> str | None:
    if name is not None and name not in PHASES:
        raise typer.BadParameter(f"unknown phase {name!r}; phases are {', '.join(PHASES)}")
    return name


def _plan_for(dsn, config_file, rollback_to: str | None = None, check_data: bool = False, see_rows: bool = True):
    spec = load_spec(config_file)
    t = target(dsn)
    with connect(t) as conn:
        cats = baseline.load(conn, spec)
        if see_rows:  # plan, run, rollback: refuse a role that row level security filters, before anything else
            privileges.check_catalogs(conn, cats.live, *cats.saved.values())
        p = planner.rollback(spec, cats, rollback_to) if rollback_to else planner.build(spec, cats, refuse=see_rows)
        # Before align has started: refuse a match kind that cannot read the legacy values, or rows it
        # cannot place, before anything changes.
        checked = match_check.run(conn, spec, cats.live) if check_data and cats.live is not None \
            and not _done(conn, spec, "align.match") else None
        if see_rows and not rollback_to:  # after align, before expand: rows a mirrored unique index would reject
            prechecks.collisions(conn, spec, p)
    return spec, t, p, cats, checked


def _done(conn, spec, step: str) -> bool:
    ledger = Ledger(conn, spec)
    state = ledger.step_states().get(step) if ledger.exists() else None
    return state is not None and state.state == "done"


def _refuse_underivable(spec, cats) -> None:
    """A plan whose switch cannot derive the canonical helper is refused here, before the migration starts."""
    from pgconverge.planning import switch

    cat = cats.for_phase("switch")
    problems = switch.helper_refusals(spec, cat)
    if problems:
        raise PgConvergeError(f"the switch cannot derive {spec.canonical.helper}() from the legacy helper "
                              f"{spec.legacy.helper}(): " + "; ".join(problems), fix=switch.helper_fix(spec, cat))


def _print_steps(steps: list[dict], show_sql: bool) -> None:
    for s in steps:
        lock = s["lock"] + (f" on {s['lock_target']}" if s["lock_target"] else "")
        tx = "" if s["transactional"] else ", outside a transaction"
        console.print(f"[bold]{s['id']}[/]  [cyan]{escape(lock)}[/], {s['cost']}{tx}", highlight=False)
        console.print(f"  {escape(s['description'])}", highlight=False)
        if show_sql:
            for stmt in s["sql"]:
                console.print(escape("    " + stmt.strip().rstrip(";").replace("\n", "\n    ")) + ";", style="dim",
                              highlight=False, soft_wrap=True)


@fail_cleanly
def plan(phase: PhaseArg = None, dsn: DsnOpt = None, config_file: ConfigOpt = None, as_json: JsonOpt = False,
         sql: Annotated[bool, typer.Option("--sql/--no-sql", help="Show each step's SQL.")] = True,
         rollback_to: Annotated[str | None, typer.Option(
             "--rollback-to", help="Show the rollback plan back to the start of this phase instead.")] = None) -> None:
    """Show every step's exact SQL, the lock it takes and what it costs, without changing anything.

    Lock levels are Postgres' own (ACCESS EXCLUSIVE blocks everything, SHARE UPDATE EXCLUSIVE lets
    reads and writes go on). Cost says how long that lock is held: instant (a catalog change),
    scans table (reads every row), rows (short batches, one transaction each).
    """
    phase = _phase(phase)
    spec, _, p, cats, checked = _plan_for(dsn, config_file, _phase(rollback_to), check_data=not rollback_to)
    if not rollback_to and phase in (None, "switch", "contract"):
        _refuse_underivable(spec, cats)
    data = p.as_dict(None if rollback_to else phase)
    if checked:
        data["match_check"] = checked.as_dict()
    if not rollback_to:
        from pgconverge.planning import shapes

        data["dependent_objects"] = shapes.report(spec, cats)
    if as_json:
        print_json(data)
        return
    _print_steps(data["steps"], sql)
    if checked:
        _print_match_check(spec, checked)
    for f in data.get("dependent_objects", ()):
        console.print(f"[bold]{f['action']}[/] {escape(f['object'])}: {escape(f['detail'])}", highlight=False,
                      soft_wrap=True)


@fail_cleanly
def run(phase: PhaseArg = None, dsn: DsnOpt = None, config_file: ConfigOpt = None, as_json: JsonOpt = False,
        all_phases: Annotated[bool, typer.Option("--all", help="Run every phase in order, stopping at the first "
                                                             "gate that fails.")] = False,
        code: Annotated[list[Path] | None, typer.Option(
            "--code", help="Application source to audit before contract (repeatable); see `audit code`.",
            show_default=False)] = None,
        accept_code_references: Annotated[bool, typer.Option(
            "--accept-code-references", help="Contract even though code or database objects still name the "
                                             "legacy side.")] = False,
        accept_runtime_use: Annotated[bool, typer.Option(
            "--accept-runtime-use", help="Contract even though the legacy table or helper was used since the "
                                         "switch.")] = False) -> None:
    """Execute a phase. Finished steps are skipped, so after a crash the same command resumes.

    One runner at a time: a second one stops with the first one's pid. Every DDL waits at most
    migration.lock_timeout_ms for its lock and retries with backoff; long work runs in short,
    checkpointed batches.
    """
    phase = _phase(phase)
    if phase is None and not all_phases:
        raise typer.BadParameter("name a phase (align, expand, switch, contract) or pass --all")
    spec, t, p, cats, checked = _plan_for(dsn, config_file, check_data=phase in (None, "align"))
    if checked and not as_json:
        _print_match_check(spec, checked)
    phases = [ph for ph in PHASES if p.phase(ph)] if phase is None else [phase]
    out = []
    again = ["run", phase or "--all", *[a for c in code or () for a in ("--code", str(c))],
             *(["--accept-code-references"] if accept_code_references else []),
             *(["--accept-runtime-use"] if accept_runtime_use else [])]
    with Runner(t, spec, p, progress=RichProgress(err_console if as_json else console, quiet=as_json),
                command=f"run {phase or '--all'}", catalogs=cats, code_dirs=tuple(str(c) for c in code or ()),
                accept=frozenset(k for k, v in (("code-references", accept_code_references),
                                                ("runtime-use", accept_runtime_use)) if v),
                resume=resume_hint(again, t, config_file)) as runner:
        for ph in phases:
            for r in runner.run_phase(ph):
                out.append({"step": r.step, "status": r.status, "seconds": round(r.seconds, 3),
                            "attempts": r.attempts, "rows": r.rows, **r.detail})
        report = runner.ledger.latest_snapshot("align_report") if "align" in phases else None
        audit = runner.ledger.latest_snapshot("phone_audit") if "align" in phases else None
    if as_json:
        print_json({"target": t.display, "phases": phases, "steps": out, "resumed": runner.resumed,
                    **({"align": _align_summary(report)} if report else {})})
        return
    if report:
        a = _align_summary(report)
        console.print("identity decisions: " + ", ".join(f"{k} {v:,}" for k, v in a["methods"].items())
                      + f"; {a['merged_groups']:,} groups of legacy rows merged onto one canonical row, "
                        f"{a['canonical_duplicate_groups']:,} numbers with several canonical rows (preferred one "
                        f"chosen), {a['unusable_numbers']:,} NULL or unparseable numbers", highlight=False)
    if audit:
        console.print(f"phone key audit: {audit['checked']:,} distinct numbers compared with phonenumbers, "
                      f"{audit['disagreements']:,} disagree ({audit['unexplained']:,} outside the documented "
                      "classes)", highlight=False)
    console.print(f"[green]{', '.join(phases)} finished[/] on {t.display}", highlight=False)


def _print_match_check(spec, c) -> None:
    from pgconverge.planning.align import describe_match

    if not c.rows:
        console.print(f"match check: {spec.legacy.table} is empty; align has nothing to match", highlight=False)
        return
    console.print(f"match check ({describe_match(spec)}): {c.keyed:,} of {c.rows:,} legacy rows have a key "
                  f"({100 * c.keyed / c.rows:.0f}%); {c.unusable:,} without one "
                  + ("each get a canonical row of their own" if c.rule == "create" else "are refused")
                  + (" (e.g. " + ", ".join(f"{i}: {v!r}" for i, v in c.examples[:3]) + ")" if c.examples else ""),
                  highlight=False)


def _align_summary(report: dict) -> dict:
    return {"methods": report["methods"], "merged_groups": report["merged"]["groups"],
            "canonical_duplicate_groups": report["canonical_duplicates"]["groups"],
            "unusable_numbers": report["unusable_numbers"]["rows"]}


@fail_cleanly
def status(dsn: DsnOpt = None, config_file: ConfigOpt = None, as_json: JsonOpt = False,
           show_steps: Annotated[bool, typer.Option("--steps", help="Also list every step with its state, "
                                                                  "attempts and rows done.")] = False) -> None:
    """Show where the migration stands: one line (phase, state, progress, the command that goes on), then each phase.

    A step is running (a runner holding the migration lock is on it), interrupted (a signal stopped it;
    the same command resumes), failed (with its error), pending (started, then killed), done or reverted.
    --steps lists every step; --json carries all of it.
    """
    from pgconverge.cli import standing

    spec, t, p, _, _ = _plan_for(dsn, config_file, see_rows=False)
    with connect(t) as conn:
        data = standing.collect(conn, spec, p, t, config_file)
    if as_json:
        print_json(data)
        return
    colors = {"done": "green", "pending": "yellow", "interrupted": "yellow", "running": "cyan", "failed": "red",
              "reverted": "magenta", "rolled back": "magenta"}
    summary = data["summary"]
    console.print(f"[{colors.get(summary['state'], 'bold')}]{escape(summary['line'])}[/]", highlight=False,
                  soft_wrap=True)
    console.print("phases: " + " · ".join(f"{ph} {state}" for ph, state in data["phases"].items()), highlight=False,
                  soft_wrap=True)
    if not show_steps:
        console.print("[dim]each step: pgconverge status --steps[/]", highlight=False)
        return
    table = Table(title=f"pgconverge status — {t.display}", title_justify="left")
    for c in ("phase", "step", "state", "attempts", "at"):
        table.add_column(c, overflow="fold")
    for s in data["steps"]:
        state = s["state"] + (f" ({s['rows_done']:,} of {s['rows_total']:,} rows)" if "rows_done" in s else "")
        if s.get("error"):
            state += f": {s['error']['message']}"
        table.add_row(s["phase"], s["step"], f"[{colors.get(s['state'], 'dim')}]{escape(state)}[/]",
                      str(s["attempts"] or ""), s["at"] or "")
    console.print(table)
    if data["last_error"]:
        e = data["last_error"]
        console.print(f"[red]last error[/] in {e['step']} at {e['at']}: {escape(e['message'] or '')}",
                      highlight=False)


@fail_cleanly
def rollback(to: Annotated[str, typer.Option("--to", help="Undo back to the start of this phase: align undoes "
                                                      "everything, expand keeps align, and so on.")],
             dsn: DsnOpt = None, config_file: ConfigOpt = None, as_json: JsonOpt = False,
             dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show the rollback plan.")] = False) -> None:
    """Undo the migration back to the start of a phase, from whatever state it is in.

    The rollback is a plan like any other: it is printed first (see also `pgconverge plan
    --rollback-to PHASE`), then run with the same lock timeouts, retries and ledger. Steps that
    never ran are skipped; a killed rollback resumes when run again.
    """
    to = _phase(to)
    spec, t, p, cats, _ = _plan_for(dsn, config_file, to)
    if not as_json:
        console.print(f"[bold]rollback to the start of {to}[/] on {t.display}", highlight=False)
        _print_steps(p.as_dict()["steps"], show_sql=False)
    if dry_run:
        if as_json:
            print_json(p.as_dict())
        return
    out = []
    with Runner(t, spec, p, progress=RichProgress(err_console if as_json else console, quiet=as_json),
                command=f"rollback --to {to}", catalogs=cats,
                resume=resume_hint(["rollback", "--to", to], t, config_file)) as runner:
        for r in runner.run_rollback(p, to=to):
            out.append({"step": r.step, "status": r.status, "seconds": round(r.seconds, 3), "rows": r.rows})
    if as_json:
        print_json({"target": t.display, "to": to, "steps": out})
    else:
        console.print(f"[green]rolled back to the start of {to}[/]", highlight=False)
