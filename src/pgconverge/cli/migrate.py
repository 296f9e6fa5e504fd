"""`pgconverge plan`, `run` and `status`: show, execute and follow the migration."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pgconverge.catalog import baseline
from pgconverge.cli.common import (
    ConfigOpt, DsnOpt, JsonOpt, command_line, console, err_console, fail_cleanly, load_spec, print_json, resume_hint,
    target,
)
from pgconverge.cli.progress import RichProgress
from pgconverge.cli.rollback import confirm
from pgconverge.connection import connect
from pgconverge.errors import PgConvergeError
from pgconverge.execution.runner import Runner, claimed
from pgconverge.execution import preflight_copy, prechecks, privileges
from pgconverge.identity import check as match_check
from pgconverge.ledger.store import Ledger
from pgconverge.operations.base import PHASES
from pgconverge.planning import plan as planner

PreflightServerOpt = Annotated[str | None, typer.Option(
    "--preflight-server", envvar=preflight_copy.SERVER_ENV,
    help="Admin connection string of a scratch server for the preflight copy instead of the embedded Postgres "
         "(a database is created there and dropped after).", show_default=False)]
KeepCopyOpt = Annotated[bool, typer.Option("--keep-preflight-copy", help="Keep the preflight's copy afterwards "
                                                                         "(to look into a failure).")]
PhaseArg = Annotated[str | None, typer.Argument(help=f"One of: {', '.join(PHASES)}. Default: every phase.",
                                                show_default=False)]
RunYesOpt = Annotated[bool, typer.Option(
    "--yes", "-y", help="Do not ask before contract (for scripts). Without it, a terminal is shown what contract "
                        "drops and archives, and asked first; output that is not a terminal is never asked.")]
RunPhaseArg = Annotated[str | None, typer.Argument(
    help=f"The phase to run, one of: {', '.join(PHASES)}. Required unless --all runs every phase.",
    show_default=False)]


def _phase(name: str | None) -> str | None:
    if name is not None and name not in PHASES:
        raise typer.BadParameter(f"unknown phase {name!r}; phases are {', '.join(PHASES)}")
    return name


def _plan_for(dsn, config_file, rollback_to: str | None = None, check_data: bool = False, see_rows: bool = True,
              take_in: bool = False):
    spec = load_spec(config_file)
    t = target(dsn)
    with connect(t) as conn:
        cats = baseline.load(conn, spec)
        if take_in:  # expand run (or shown) again: references the application made since it was planned
            cats = _take_in(conn, spec, cats)
        if see_rows:  # plan, run, rollback, before anything else: refuse a database that takes no writes, and a
            # role that row level security filters
            prechecks.writable(conn)
            prechecks.lock_timeout(conn, spec)
            privileges.check_catalogs(conn, cats.live, *cats.saved.values())
        if see_rows and not rollback_to:  # configuration values the database shows wrong, before any change
            prechecks.configuration(conn, spec, cats)
        p = planner.rollback(spec, cats, rollback_to) if rollback_to else planner.build(spec, cats, refuse=see_rows)
        # Before align has started: refuse a match kind that cannot read the legacy values, or rows it
        # cannot place, before anything changes.
        checked = match_check.run(conn, spec, cats.live) if check_data and cats.live is not None \
            and not _done(conn, spec, "align.match") else None
        if see_rows:  # a published table without a replica identity takes no UPDATE, forward or back
            prechecks.replica_identity(conn, cats.live)
        if see_rows and not rollback_to:  # before expand: rows no mapping can reach; after align, rows a mirrored
            # unique index would reject
            prechecks.orphans(conn, spec, p)
            prechecks.collisions(conn, spec, p)
            # before align and expand: a legacy row pgconverge makes for a person new code writes for must be one the
            # legacy table takes
            prechecks.newcomer_rows(conn, spec, p, cats)
    return spec, t, p, cats, checked


def _take_in(conn, spec, cats):
    """CATS with expand's catalog taking in the references the application made since expand was planned (see
    planning/expand.py take_in), or a refusal naming them where expand cannot."""
    from pgconverge.planning import expand

    ledger = Ledger(conn, spec)
    cats, problems = expand.take_in(spec, cats, ledger.step_states() if ledger.exists() else {})
    if problems:
        raise PgConvergeError("; ".join(problems) + ": it has no new column, sync trigger or backfill; nothing was "
                              "changed",
                              fix="roll back to before expand (`pgconverge rollback expand`), then `pgconverge run "
                                  "expand`, which carries it; or drop that foreign key")
    return cats


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
             "--rollback-to", help="Show the rollback plan back to the start of this phase instead.")] = None,
         check: Annotated[bool, typer.Option(
             "--check", help="Run the preflight alone: every remaining phase and the whole rollback on a copy of "
                             "the schema with a sample of rows (see `run`); the target is only read. Exits 2 if "
                             "a step fails there.")] = False,
         preflight_server: PreflightServerOpt = None,
         keep_copy: KeepCopyOpt = False) -> None:
    """Show every step's exact SQL, the lock it takes and what it costs, without changing anything.

    Lock levels are Postgres' own (ACCESS EXCLUSIVE blocks everything, SHARE UPDATE EXCLUSIVE lets
    reads and writes go on). Cost says how long that lock is held: instant (a catalog change),
    scans table (reads every row), rows (short batches, one transaction each).
    """
    phase = _phase(phase)
    spec, t, p, cats, checked = _plan_for(dsn, config_file, _phase(rollback_to), check_data=not rollback_to,
                                          take_in=not rollback_to and phase in (None, "expand"))
    if not rollback_to and phase in (None, "switch", "contract"):
        _refuse_underivable(spec, cats)
    if check:
        if rollback_to:
            raise typer.BadParameter("--check runs the forward plan and its rollback; leave out --rollback-to")
        result = _preflight(spec, t, p, cats, preflight_server, keep_copy, as_json, always=True)
        if as_json:
            print_json(result.as_dict() if result else {"verdict": "nothing to run"})
        if result is not None and not result.passed:
            if not as_json:
                _refuse_preflight(result)
            raise typer.Exit(2)
        return
    data = p.as_dict(None if rollback_to else phase)
    if checked:
        data["match_check"] = checked.as_dict()
    if not rollback_to:
        from pgconverge.planning import shapes

        data["dependent_objects"] = shapes.report(spec, cats)
    else:  # functions of the application that reach what the rollback drops: it refuses while they do
        with connect(t) as conn:
            ledger = Ledger(conn, spec)
            steps = prechecks.rollback_steps(p, ledger.step_states()) if ledger.exists() else []
            refusing = prechecks.function_references(conn, steps, spec)
        if refusing:
            fix = prechecks.functions_fix(spec, "`" + command_line(
                ["rollback", rollback_to, "--accept-function-references"], t, config_file) + "`")
            data["rollback_refused_by"] = [{"object": line, "fix": fix} for line in refusing]
    if as_json:
        print_json(data)
        return
    _print_steps(data["steps"], sql)
    if checked:
        _print_match_check(spec, checked)
    for f in data.get("rollback_refused_by", ()):
        console.print(f"[bold]refuses the rollback[/] {escape(f['object'])}: it fails once the rollback drops what it "
                      f"reaches — fix: {escape(f['fix'])}", highlight=False, soft_wrap=True)
    for f in data.get("dependent_objects", ()):
        fix = f" — fix: {escape(f['fix'])}" if f.get("fix") else ""
        console.print(f"[bold]{f['action']}[/] {escape(f['object'])}: {escape(f['detail'])}{fix}", highlight=False,
                      soft_wrap=True)


@fail_cleanly
def run(phase: RunPhaseArg = None, dsn: DsnOpt = None, config_file: ConfigOpt = None, as_json: JsonOpt = False,
        all_phases: Annotated[bool, typer.Option("--all", help="Run every phase in order, stopping at the first "
                                                             "gate that fails.")] = False,
        code: Annotated[list[Path] | None, typer.Option(
            "--code", help="Application source to audit before contract (repeatable); see `audit code`.",
            show_default=False)] = None,
        accept_code_references: Annotated[bool, typer.Option(
            "--accept-code-references", help="Contract even though code or database objects still name the "
                                             "legacy side.")] = False,
        accept_runtime_use: Annotated[bool, typer.Option(
            "--accept-runtime-use", help="Contract even though the legacy side was used since the runtime "
                                         "baseline, or before migration.observation_window has passed.")] = False,
        accept_unproven_rls: Annotated[bool, typer.Option(
            "--accept-unproven-rls", help="Contract even though no row of the policy tables has an owner, so the "
                                          "switch's RLS check compared nothing (a database without rows).")] = False,
        skip_preflight: Annotated[bool, typer.Option(
            "--skip-preflight", help="Change the target without first running the remaining plan and its rollback "
                                     "on a sampled copy. You give up learning, before the first change, that a "
                                     "step fails on this schema (a trigger, a constraint, a unique index, a "
                                     "rollback step): the run then stops half way on the target itself. "
                                     f"${preflight_copy.ENABLE_ENV}=off does the same.")] = False,
        preflight_server: PreflightServerOpt = None,
        keep_copy: KeepCopyOpt = False, yes: RunYesOpt = False) -> None:
    """Execute a phase (`run expand`), or every phase with --all. Finished steps are skipped, so after a crash
    the same command resumes.

    One runner at a time: a second one stops, naming the first one's process, host, run and backend pid.
    Every DDL waits at most migration.lock_timeout_ms for its lock and retries with backoff; long work runs
    in short, checkpointed batches. Contract drops and archives the legacy side: on a terminal, `run
    contract` and `run --all` show what it drops and ask first (--yes skips the question).

    Before the first change, the preflight copies the target's schema and a sample of its rows (a few
    hundred per table the plan touches) into the embedded Postgres (or --preflight-server), runs every
    remaining phase and then the whole rollback there, and stops (exit 2, the target unchanged) if a
    step fails, naming the step, the error and the object to fix.
    """
    phase = _phase(phase)
    if phase is None and not all_phases:
        raise typer.BadParameter("name a phase (align, expand, switch, contract) or pass --all")
    missing = [str(c) for c in code or () if not c.exists()]
    if missing:  # before anything runs: contract's code gate would audit nothing there
        raise PgConvergeError(f"--code {missing[0]} does not exist", fix="pass the directory that holds your "
                              "application's source (repeat --code for each code base), e.g. --code supabase/functions")
    # One runner at a time: the lock first, before anything reads the catalog (a runner stopped inside a step would
    # keep that read waiting for its table lock); a second runner is refused at once, naming the first.
    with claimed(target(dsn), load_spec(config_file)) as control:
        spec, t, p, cats, checked = _plan_for(dsn, config_file, check_data=phase in (None, "align"),
                                              take_in=phase in (None, "expand"))
        if checked and not as_json:
            _print_match_check(spec, checked)
        preflight = None
        if not skip_preflight and preflight_copy.enabled():
            preflight = _preflight(spec, t, p, cats, preflight_server, keep_copy, as_json)
            if preflight is not None and not preflight.passed:
                raise preflight_copy.refusal(preflight)
        phases = [ph for ph in PHASES if p.phase(ph)] if phase is None else [phase]
        if "contract" in phases:  # before the first phase starts: a "no" leaves the database as it is
            question = _contract_question(spec, t, p, phases)
            if question:
                confirm(*question, yes)
        out = []
        started = time.monotonic()
        again = ["run", phase or "--all", *[a for c in code or () for a in ("--code", str(c))],
                 *(["--accept-code-references"] if accept_code_references else []),
                 *(["--accept-runtime-use"] if accept_runtime_use else []),
                 *(["--accept-unproven-rls"] if accept_unproven_rls else [])]
        with Runner(t, spec, p, progress=RichProgress(err_console if as_json else console, quiet=as_json),
                    command=f"run {phase or '--all'}", catalogs=cats, code_dirs=tuple(str(c) for c in code or ()),
                    accept=frozenset(k for k, v in (("code-references", accept_code_references),
                                                    ("runtime-use", accept_runtime_use),
                                                    ("unproven-rls", accept_unproven_rls)) if v),
                    resume=resume_hint(again, t, config_file), control=control) as runner:
            for ph in phases:
                for r in runner.run_phase(ph):
                    out.append({"step": r.step, "status": r.status, "seconds": round(r.seconds, 3),
                                "attempts": r.attempts, "rows": r.rows, **r.detail})
            report = runner.ledger.latest_snapshot("align_report") if "align" in phases else None
            audit = runner.ledger.latest_snapshot("phone_audit") if "align" in phases else None
        if as_json:
            print_json({"target": t.display, "phases": phases, "steps": out, "resumed": runner.resumed,
                        "preflight": preflight.as_dict() if preflight else None,
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
        console.print(_verdict(spec, t, p, phases, out, time.monotonic() - started, config_file), highlight=False,
                      soft_wrap=True)


def _verdict(spec, t, p, phases: list[str], out: list[dict], seconds: float, config_file) -> str:
    """One closing line: "expand finished on X in 12.3 s: 5 steps, 12,000 rows backfilled; next: pgconverge run
    switch"."""
    batched = {s.id: s.phase for s in p.steps if s.op.executor == "batched"}
    done = [r for r in out if r["status"] == "done"]
    mapped = sum(r["rows"] or 0 for r in done if batched.get(r["step"]) == "align")  # align's batches map rows
    filled = sum(r["rows"] or 0 for r in done if r["step"] in batched and batched[r["step"]] != "align")
    what = f"{len(done)} step{'s' if len(done) != 1 else ''}"
    if len(done) < len(out):
        what += f" ({len(out) - len(done)} more already done)"
    if mapped:
        what += f", {mapped:,} legacy rows mapped"
    if filled:
        what += f", {filled:,} rows backfilled"
    last = phases[-1]
    if last == "contract":
        after = ("the legacy side is archived; the run report: "
                 + command_line(["report", "--html", "pgconverge-report.html"], t, config_file)
                 + "; undo with " + command_line(["rollback", "contract"], t, config_file))
    else:
        nxt = PHASES[PHASES.index(last) + 1]
        after = "next: " + command_line(["run", nxt], t, config_file)
        if nxt == "contract":
            after += (" once the observation window (migration.observation_window) has passed and nothing uses the "
                      "legacy side (" + command_line(["audit", "runtime"], t, config_file) + ")")
    return (f"[green]{escape(', '.join(phases))} finished[/] on {escape(t.display)} in {seconds:.1f} s: "
            f"{what}; {escape(after)}")


def _contract_question(spec, t, p, phases: list[str]) -> tuple[str, str] | None:
    """(question, summary) to ask before a run that goes through contract; None when contract has nothing left to
    do, or when the runner will refuse it anyway (`run contract` before switch finished)."""
    with connect(t) as conn:
        left = {s.id for s in preflight_copy.remaining(p, conn, spec)}
    todo = [s for s in p.phase("contract") if s.id in left]
    if not todo:
        return None
    if phases == ["contract"] and any(s.id in left for ph in PHASES[:-1] for s in p.phase(ph)):
        return None  # the runner refuses it: "phase contract needs switch finished first"
    before = [ph for ph in phases[:-1] if any(s.id in left for s in p.phase(ph))]
    head = (f"run --all runs {', '.join(before)}, then contract" if before else "run contract") + f" on {t.display}"
    summary = "\n".join([f"[bold]{escape(head)}[/]; contract drops and archives the legacy side:",
                         *(f"  {escape(x)}" for x in contract_summary(spec, todo)),
                         "  (`pgconverge rollback contract` puts all of it back: the archived tables keep their "
                         "rows)"])
    return f"Run {', '.join(before) + ' and ' if before else ''}contract on {t.display}", summary


def contract_summary(spec, steps) -> list[str]:
    """What STEPS (contract's) drop and archive, one line per kind: tables archived (with their new names),
    columns dropped, then how many foreign keys, indexes, triggers and policies go, and the legacy helper."""
    from pgconverge.operations.archive import ArchiveTable
    from pgconverge.operations.columns import DropColumn
    from pgconverge.operations.constraints import DropConstraint
    from pgconverge.operations.create_index import DropIndexConcurrently
    from pgconverge.operations.create_trigger import DropTrigger
    from pgconverge.operations.drop_policies import DropPolicies
    from pgconverge.operations.partitions import DropIndex
    from pgconverge.operations.replace_function import ReplaceFunction
    from pgconverge.planning.contract import RetireFunction

    ops = []
    for s in steps:
        ops += list(getattr(s.op, "ops", ())) or [s.op]
    archived = [f"{o.table} as {o.archived}" for o in ops if isinstance(o, ArchiveTable)]
    columns = [f"{o.table}.{o.column}" for o in ops if isinstance(o, DropColumn)]
    counted = {"foreign key": sum(isinstance(o, DropConstraint) for o in ops),
               "index": sum(isinstance(o, (DropIndex, DropIndexConcurrently)) for o in ops),
               "trigger": sum(isinstance(o, DropTrigger) for o in ops),
               "policy": sum(len(o.policies) for o in ops if isinstance(o, DropPolicies))}
    plural = {"foreign key": "foreign keys", "index": "indexes", "trigger": "triggers", "policy": "policies"}
    out = []
    if archived:
        out.append("archives " + ", ".join(archived))
    if columns:
        out.append("drops column" + ("s " if len(columns) > 1 else " ") + ", ".join(columns))
    also = [f"{n} {plural[k] if n > 1 else k}" for k, n in counted.items() if n]
    if also:
        out.append("drops " + ", ".join(also) + " that name the legacy side")
    for o in ops:
        if isinstance(o, RetireFunction):
            out.append(f"drops function {o.name}()")
        elif isinstance(o, ReplaceFunction) and spec.has_helper and o.name == spec.legacy.helper:
            out.append(f"replaces {o.name}() by a stub that raises \"retired\"")
    return out


def _preflight(spec, t, p, cats, server: str | None, keep: bool, as_json: bool, always: bool = False):
    """Run the preflight on a copy (None when no step remains), one line per stage as it ends."""
    out = err_console if as_json else console
    with connect(t) as conn:
        left = preflight_copy.remaining(p, conn, spec)
    if not left:
        out.print("preflight: every step is done, nothing to try on a copy", highlight=False)
        return None

    def line(st) -> None:
        mark = "[green]ok[/]" if st.passed else "[red]FAILED[/]"
        out.print(f"preflight {st.name}: {mark} in {st.seconds:.1f}s — {escape(st.detail)}", highlight=False,
                  soft_wrap=True)
    out.print(f"preflight: {len(left)} remaining steps, then the whole rollback, on a sampled copy", highlight=False)
    result = preflight_copy.run(spec, t, p, cats, server=server, keep=keep, on_stage=line)
    if result.kept:
        out.print(f"preflight copy kept: database {result.database} on {escape(result.server)}", highlight=False)
    return result


def _refuse_preflight(result) -> None:
    e = preflight_copy.refusal(result)
    err_console.print(f"[bold red]error:[/] {escape(e.problem)}", highlight=False, soft_wrap=True)
    err_console.print(f"[bold]fix:[/] {escape(e.fix or '')}", highlight=False, soft_wrap=True)


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
    if c.created is not None:
        console.print(f"the {c.created:,} {spec.canonical.table} rows align would create keep the table's rules "
                      "(checks, NOT NULL, unique keys, foreign keys)" if c.created else
                      f"align creates no {spec.canonical.table} row: no rule of the table was read against one",
                      highlight=False)
    if c.unchecked:
        console.print("not checked against the rows align creates (each is checked when the row is written): "
                      + "; ".join(c.unchecked), highlight=False, soft_wrap=True)


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
    colors = {"done": "green", "stopped": "yellow", "unproven": "yellow", "interrupted": "yellow", "running": "cyan", "failed": "red",
              "reverted": "magenta", "rolled back": "magenta"}
    summary = data["summary"]
    console.print(f"[{colors.get(summary['state'], 'bold')}]{escape(summary['line'])}[/]", highlight=False,
                  soft_wrap=True)
    console.print("phases: " + " · ".join(f"{ph} {state}" for ph, state in data["phases"].items()), highlight=False,
                  soft_wrap=True)
    if data["review"]:
        console.print(f"[yellow]{len(data['review'])} canonical row(s) made for old code's writes to review[/] "
                      f"(the note column of {spec.mapping_table}):", highlight=False)
        for r in data["review"][:10]:
            console.print(f"  {r['legacy']} → {r['canonical']}: {escape(r['note'])}", highlight=False, soft_wrap=True)
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
