"""`pgconverge rollback PHASE`: undo PHASE and every phase after it, from whatever state the database is in."""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from typing import Annotated

import typer
from rich.markup import escape

from pgconverge.cli.common import (ConfigOpt, DsnOpt, JsonOpt, command_line, console, err_console, fail_cleanly,
                                   load_spec, print_json, resume_hint, target)
from pgconverge.cli.progress import RichProgress
from pgconverge.connection import connect
from pgconverge.errors import PgConvergeError
from pgconverge.execution import prechecks
from pgconverge.execution.runner import ACCEPT_FUNCTIONS, Runner, claimed
from pgconverge.ledger.store import Ledger
from pgconverge.operations.base import PHASES

PhaseToUndo = Annotated[str | None, typer.Argument(
    help=f"The earliest phase to undo: it and every phase after it are undone ({', '.join(PHASES)}). "
         "`rollback align` undoes everything; `rollback contract` only contract.", show_default=False)]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (for scripts). Without it, "
                                                          "a terminal is asked before anything changes.")]


class NothingToUndo(PgConvergeError):
    """The phase named never ran here: there is nothing to undo."""

    exit_code = 2


def _undone_by(phase: str) -> list[str]:
    return list(PHASES[PHASES.index(phase):])


def ran(conn, spec, phases: list[str]) -> list[str]:
    """Of PHASES, those with any step in the ledger: started at some point, whatever became of it since. A phase
    rolled back already is among them (a rollback killed after its last step goes on, finishing its bookkeeping)."""
    ledger = Ledger(conn, spec)
    if not ledger.exists():
        return []
    states = ledger.step_states()
    return [ph for ph in phases if any(sid.split(".", 1)[0] == ph for sid in states)]


def confirm(what: str, summary: str, yes: bool) -> None:
    """Ask on a terminal (stdin and stdout both), unless --yes; elsewhere go on (a script says --yes or pipes)."""
    if yes or not (sys.stdin.isatty() and sys.stdout.isatty()):
        return
    # On stderr, question included: stdout stays what --json promises.
    err_console.print(summary, highlight=False)
    if not typer.confirm(f"{what}?", default=False, err=True):
        err_console.print("nothing was changed", highlight=False)
        raise typer.Exit(1)


@fail_cleanly
def rollback(phase: PhaseToUndo = None,
             to: Annotated[str | None, typer.Option("--to", hidden=True)] = None,
             dsn: DsnOpt = None, config_file: ConfigOpt = None, as_json: JsonOpt = False,
             dry_run: Annotated[bool, typer.Option("--dry-run", help=(
                 "Only show the rollback plan (refused, as the rollback would be, when objects of yours depend on "
                 "what it drops)."))] = False,
             accept_function_references: Annotated[bool, typer.Option(
                 "--accept-function-references", help=(
                     "Roll back even though functions of yours read or call what the rollback drops (a new column, "
                     "the canonical helper): they fail once it is gone. Without it the rollback refuses, naming "
                     "them."))] = False,
             yes: YesOpt = False) -> None:
    """Undo PHASE and every phase after it, from whatever state the migration is in.

    `pgconverge rollback switch` on a contracted database undoes contract, then switch, and leaves align
    and expand in place: the database is then as it was when the switch began, and `pgconverge run
    switch` goes forward again. The rollback is a plan like any other: its summary is shown and, on a
    terminal, confirmed before anything changes (`--yes` skips the question, `--dry-run` shows the
    steps and stops); it runs with the same lock timeouts, retries and ledger as `run`. Steps that
    never ran are skipped; a killed rollback resumes when run again. A phase that never ran, or was
    rolled back already, is refused, changing nothing.
    """
    from pgconverge.cli.migrate import _phase, _plan_for, _print_steps

    if to is not None:
        raise typer.BadParameter(
            f"`rollback --to {to}` is no longer accepted: write `pgconverge rollback {to}`, which undoes {to} and "
            "every phase after it (what --to did)", param_hint="--to")
    if phase is None:
        raise typer.BadParameter(f"name the earliest phase to undo, one of {', '.join(PHASES)} "
                                 "(e.g. `pgconverge rollback switch`)", param_hint="PHASE")
    phase = _phase(phase)
    # One runner at a time: the lock first, before anything reads the catalog (a runner stopped inside a step would
    # keep that read waiting for its table lock); a second runner is refused at once, naming the first.
    with nullcontext() if dry_run else claimed(target(dsn), load_spec(config_file)) as control:
        spec, t, p, cats, _ = _plan_for(dsn, config_file, phase)
        with connect(t) as conn:
            started = ran(conn, spec, _undone_by(phase))
            accepted: list[str] = []
            if started:  # before the question (and in a dry run): objects of the user's that would stop it half way
                ledger = Ledger(conn, spec)
                steps_left = prechecks.rollback_steps(p, ledger.step_states())
                # Rolled back already: no step left to undo, and the rollback's last bookkeeping (the saved catalogs
                # of the phases it undid, discarded at its end) done too; a rollback killed before that goes on.
                if not steps_left and not any(ph in cats.saved for ph in started):
                    raise NothingToUndo(
                        f"nothing to roll back: no step of {', '.join(started)} is left done on {t.display} (rolled back "
                        "already, or sent back to be planned again by a gate that refused before anything changed); "
                        "nothing was changed",
                        fix=f"`pgconverge status` shows where the migration stands; go forward again with "
                            f"{command_line(['run', phase], t, config_file)}, or name an earlier phase to undo")
                prechecks.rollback_blockers(conn, steps_left, spec, accept_functions=accept_function_references,
                                            accept_flag="`" + command_line(
                                                ["rollback", phase, "--accept-function-references"], t,
                                                config_file) + "`")
                if accept_function_references:
                    accepted = prechecks.function_references(conn, steps_left, spec)
        if not started:
            raise NothingToUndo(
                f"nothing to roll back: {phase} never ran on {t.display}"
                + (f" (nor did {', '.join(_undone_by(phase)[1:])})" if phase != PHASES[-1] else "")
                + "; nothing was changed",
                fix="`pgconverge status` shows which phases ran; name one of them")
        steps = p.as_dict()["steps"]
        warnings = _warnings(spec, cats, started) + [
            f"{line}: it fails once the rollback is done (--accept-function-references)" for line in accepted]
        if not as_json:
            console.print(f"[bold]rollback {phase}[/] on {t.display}: undoes {', '.join(reversed(started))}",
                          highlight=False)
            _print_steps(steps, show_sql=False)
        for w in warnings:  # on stderr: stdout stays what --json promises
            err_console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
        if dry_run:
            if as_json:
                print_json({**p.as_dict(), **({"warnings": warnings} if warnings else {})})
            return
        confirm(f"Undo {', '.join(reversed(started))} on {t.display}",
                f"{len(steps)} rollback steps (those that never ran are skipped)", yes)
        out, t0 = [], time.monotonic()
        with Runner(t, spec, p, progress=RichProgress(err_console if as_json else console, quiet=as_json),
                    command=f"rollback {phase}", catalogs=cats,
                    accept=frozenset({ACCEPT_FUNCTIONS} if accept_function_references else ()),
                    resume=resume_hint(["rollback", phase, *(["--accept-function-references"]
                                                             if accept_function_references else [])], t, config_file),
                    control=control) as runner:
            for r in runner.run_rollback(p, to=phase):
                out.append({"step": r.step, "status": r.status, "seconds": round(r.seconds, 3), "rows": r.rows})
        newcomers = _newcomers(t, spec, out)
        if as_json:
            print_json({"target": t.display, "phase": phase, "undone": started, "steps": out,
                        **({"legacy_rows_made": newcomers} if newcomers is not None else {}),
                        **({"warnings": warnings} if warnings else {})})
        else:
            if newcomers and newcomers.get("people"):
                console.print(_newcomers_line(newcomers, spec), highlight=False, soft_wrap=True)
            done = sum(r["status"] == "done" for r in out)
            console.print(f"[green]rolled back {escape(', '.join(reversed(started)))}[/] on {escape(t.display)} in "
                          f"{time.monotonic() - t0:.1f} s: {done} steps undone ({len(out) - done} skipped: never ran); "
                          f"the database is as it was before {phase} began"
                          + ("" if not any(r["status"] == "done" and r["step"].startswith("rollback.contract.")
                                           and r["step"].endswith(".legacy_column") for r in out) else
                             " (the legacy columns back at the end of their tables: name the columns in INSERT and COPY)")
                          + "; forward again: "
                          + escape(command_line(["run", phase], t, config_file)), highlight=False, soft_wrap=True)


def _warnings(spec, cats, started: list[str]) -> list[str]:
    """What the rollback will do that leaves someone unable to use the application, said before its first change."""
    from pgconverge.planning.switch import newcomer_link_gap

    if "switch" not in started:
        return []
    gap = newcomer_link_gap(spec, cats.for_phase("switch"))
    return [gap] if gap else []


def _newcomers(t, spec, out: list[dict]) -> dict | None:
    """What the rollback of the switch recorded before it gave legacy rows to the people who had none (planning/
    switch.py newcomer_refills), when its refill ran in this command; else None."""
    from pgconverge.planning.switch import NEWCOMERS

    if not any(r["status"] == "done" and r["step"].startswith("rollback.switch.legacy_ids") for r in out):
        return None
    with connect(t) as conn:
        return Ledger(conn, spec).latest_snapshot(NEWCOMERS)


def _newcomers_line(made: dict, spec) -> str:
    people = made["people"]
    tables = ", ".join(f"{n} in {tab}" for tab, n in sorted((made.get("by_table") or {}).items()))
    return (f"made {people} {escape(str(spec.legacy.table))} row{'s' if people != 1 else ''} for {people} "
            f"{'person' if people == 1 else 'people'} who owned rows by the canonical id alone (signed up after the "
            f"switch), and gave their rows the legacy id ({escape(tables)})"
            + (f": the restored policies compare the legacy column with {escape(str(spec.legacy.helper))}() again"
               if spec.has_helper else ": old code finds them by the legacy column again"))
