"""Where the migration stands, from the ledger and the runner's lock: what `pgconverge status` shows.

Each step is "not started", "running" (an attempt started, nothing recorded since, and the runner
holding the migration lock started it), "stopped" (started, nothing recorded since, and no runner
on it: killed, or its connection lost), "interrupted" (a signal stopped it; see
execution/interrupt.py), "failed" (with its error), "unproven" (the policy rewrite committed, its
equivalence check never finished), "done" or "reverted": the names the report gives them too. One summary line says
where the latest work stands and the command that goes on from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgconverge.catalog import baseline
from pgconverge.cli.common import command_line
from pgconverge.config import Spec
from pgconverge.connection import Target
from pgconverge.execution.sql import ident, qn
from pgconverge.execution.runner import lock_holder
from pgconverge.ledger.store import Ledger
from pgconverge.operations.base import PHASES, Plan, Step


def _state(outcome: dict | None, running_run: int | None) -> str:
    if outcome is None:
        return "not started"
    kind = outcome["event"]
    if kind == "start":
        return "running" if running_run is not None and outcome["run_id"] == running_run else "stopped"
    return {"error": "failed"}.get(kind, kind)  # done, reverted, interrupted


def _runner(conn: psycopg.Connection, spec: Spec, ledger: Ledger) -> dict | None:
    """The runner working now: the session holding the migration lock, and its run in the ledger."""
    holder = lock_holder(conn, spec)
    if holder is None:
        return None
    pid, app, client, since = holder
    run = ledger.run_of(pid, since)  # the run that control connection started
    return {"pid": pid, "application_name": app, "client": client,
            "connected_since": since.isoformat() if since else None,
            "run_id": run[0] if run else None, "command": run[1] if run else None}


def _total(conn: psycopg.Connection, step: Step, rows_done: int, outcome: dict | None) -> int:
    recorded = ((outcome or {}).get("detail") or {}).get("rows_total") if outcome else None
    try:
        estimate = conn.execute(step.op.total_estimate()).fetchone()[0]
    except psycopg.Error:
        estimate = 0
    return max(rows_done, recorded or 0, estimate or 0)


def collect(conn: psycopg.Connection, spec: Spec, plan: Plan, t: Target, config_file: Path | None) -> dict:
    """Status data, JSON-ready: summary, runner, phases, steps, last error. Reads only; changes nothing."""
    ledger = Ledger(conn, spec)
    exists = ledger.exists()
    outcomes = ledger.outcomes() if exists else {}
    runner = _runner(conn, spec, ledger) if exists else None
    running_run = runner["run_id"] if runner else None
    steps = []
    for s in plan.steps:
        o = outcomes.get(s.id)
        state = _state(o, running_run)
        if state == "done" and s.op.executor == "policies" and ledger.unproven(s.id):
            state = "unproven"  # rewritten, its equivalence check never finished: `run switch` checks it again
        row: dict[str, Any] = {"step": s.id, "phase": s.phase, "state": state,
                               "at": o["at"].isoformat() if o else None, "attempts": o["starts"] if o else 0}
        if state == "failed":
            row["error"] = {"message": o["message"], "sqlstate": o["sqlstate"], "at": o["at"].isoformat()}
        if state == "interrupted":
            row["interrupted"] = {"message": o["message"], **(o["detail"] or {})}
        if s.op.executor == "batched" and state in ("running", "stopped", "interrupted"):
            row["rows_done"] = ledger.rows_done(s.id)
            row["rows_total"] = _total(conn, s, row["rows_done"], o)
        steps.append(row)
    phases = {}
    for ph in PHASES:
        mine = [s for s in steps if s["phase"] == ph]
        if mine:
            done = sum(s["state"] == "done" for s in mine)
            phases[ph] = "done" if done == len(mine) else ("not started" if not any(
                s["state"] != "not started" for s in mine) else f"{done}/{len(mine)} steps")
    last_error = None
    if exists:  # the latest error, also when the step went on to finish since
        row = conn.execute(sql.SQL("select step, sqlstate, message, at from {} where event = 'error' "
                                   "order by id desc limit 1").format(ledger.t("events"))).fetchone()
        last_error = dict(zip(("step", "sqlstate", "message", "at"), row)) if row else None
    return {"target": t.display,
            "summary": _summary(conn, ledger, plan, steps, outcomes, runner, t, config_file),
            "runner": runner, "phases": phases, "steps": steps, "review": _review(conn, spec),
            "last_error": ({k: last_error[k] for k in ("step", "sqlstate", "message")}
                           | {"at": last_error["at"].isoformat()}) if last_error else None}


def _review(conn: psycopg.Connection, spec: Spec) -> list[dict]:
    """Canonical rows made for old code's writes other than as align would (without the copied values the canonical
    table refused, or for a row with no usable match value under unmatched = "refuse"): the mapping's notes."""
    m = spec.mapping_table
    if conn.execute("select pg_catalog.to_regclass(%s) is null or not exists (select 1 from pg_catalog.pg_attribute "
                    "where attrelid = pg_catalog.to_regclass(%s) and attname = 'note')",
                    (str(m), str(m))).fetchone()[0]:
        return []
    rows = conn.execute(sql.SQL("select {l}::text, {c}::text, note from {m} where note is not null order by "
                                "decided_at limit 100").format(l=ident(spec.mapping_legacy_column),
                                                               c=ident(spec.migration.new_column), m=qn(m))).fetchall()
    return [{"legacy": a, "canonical": b, "note": c} for a, b, c in rows]


def _progress(step_row: dict | None, phase_steps: list[dict]) -> str:
    done = sum(s["state"] == "done" for s in phase_steps)
    steps = f"{done} of {len(phase_steps)} steps done" if phase_steps else ""
    if step_row is not None and "rows_done" in step_row:
        rows = (f"{step_row['rows_done']:,} of {step_row['rows_total']:,} rows" if step_row.get("rows_total")
                else f"{step_row['rows_done']:,} rows")
        return f"{rows}; {steps}" if steps else rows
    return steps


def _command(conn: psycopg.Connection, ledger: Ledger, run_id: int | None, phase: str) -> list[str]:
    """The arguments that go on from where run RUN_ID stopped: its own command when it was `run` or `rollback`."""
    row = conn.execute(sql.SQL("select command from {} where id = %s").format(ledger.t("runs")),
                       (run_id,)).fetchone() if run_id is not None else None
    command = row[0] if row else ""
    if command.startswith(("run ", "rollback ")):
        words = command.split()
        # Runs recorded with the earlier spelling, `rollback --to PHASE` (which undid PHASE too), go on as `rollback PHASE`.
        return ["rollback", *words[2:]] if words[:2] == ["rollback", "--to"] else words
    return ["run", phase] if phase in PHASES else ["run", "--all"]


def _summary(conn: psycopg.Connection, ledger: Ledger, plan: Plan, steps: list[dict], outcomes: dict,
             runner: dict | None, t: Target, config_file: Path | None) -> dict:
    def again(args: list[str]) -> str:
        return command_line(args, t, config_file)

    if not outcomes:
        return {"phase": None, "state": "not started", "step": None,
                "line": f"nothing has run yet — start with {again(['run', 'align'])}",
                "command": again(["run", "align"])}
    by_id = {s["step"]: s for s in steps}
    running = runner is not None and runner["run_id"] is not None
    if running:
        mine = [o for o in outcomes.values() if o["run_id"] == runner["run_id"]]
        latest = max(mine or outcomes.values(), key=lambda o: o["id"])
    else:
        latest = max(outcomes.values(), key=lambda o: o["id"])
    phase, step = latest["phase"], latest["step"]
    phase_steps = [s for s in steps if s["phase"] == phase]
    row = by_id.get(step)
    state = "running" if running else _state(latest, None)
    out: dict[str, Any] = {"phase": phase, "state": state, "step": step, "steps_done": sum(
        s["state"] == "done" for s in phase_steps), "steps_total": len(phase_steps)}
    if row is not None and "rows_done" in row:
        out.update(rows_done=row["rows_done"], rows_total=row["rows_total"])
    elif latest["event"] in ("start", "interrupted") and latest["step"].startswith("rollback."):
        rows = ledger.rows_done(step)
        if rows:
            out["rows_done"] = rows
    progress = _progress(row if row is not None else (out if "rows_done" in out else None), phase_steps)
    progress = f" ({progress})" if progress else ""
    cmd = again(_command(conn, ledger, latest["run_id"], phase))
    unproven = next((s for s in steps if s["state"] == "unproven"), None)
    if unproven is not None and state != "running":
        # A policy rewrite in force that its equivalence check never confirmed: that is what the user must know first,
        # however the other steps stand; `run` of its phase restores the old policies and checks the rewrite again.
        ph = unproven["phase"]
        out.update(phase=ph, state="unproven", step=unproven["step"], command=again(["run", ph]))
        out["line"] = (f"{ph}: the live policies are unproven: the check did not finish — resume with "
                       f"{again(['run', ph])}")
        return out
    if state == "running":
        doing = f"running {step}" if latest["event"] == "start" else f"running (last: {step} {latest['event']})"
        out["line"] = (f"{phase}: {doing}{progress} — pid {runner['pid']} holds the migration lock"
                       + (f" ({runner['command']})" if runner.get("command") else ""))
        return out
    if state == "interrupted":
        detail = latest["detail"] or {}
        where = f"before {step}" if detail.get("stopped") == "before" else f"at {step}"
        out["line"] = f"{phase}: interrupted {where}{progress} — resume with {cmd}"
        out["command"] = cmd
        return out
    if state == "failed":
        message = (latest["message"] or "").strip().splitlines()[0] if latest["message"] else "see --steps"
        if len(message) > 240:
            message = message[:237] + "…"
        out.update(error=latest["message"], command=cmd)
        out["line"] = f"{phase}: failed at {step}{progress}: {message} — fix the cause, then {cmd}"
        return out
    if state == "stopped":
        out["command"] = cmd
        out["line"] = (f"{phase}: stopped in {step} without a record of how{progress} (the runner was killed or "
                       f"lost its connection) — resume with {cmd}")
        return out
    # Nothing in flight: the last phase finished, or a rollback did, or a rollback stopped between two of its steps.
    command = _command(conn, ledger, latest["run_id"], phase)
    unfinished = baseline.unfinished_rollback(ledger) if command[:1] == ["rollback"] else None
    if unfinished is not None:
        # Killed (or its connection lost) after one step committed and before the next began: no step is left
        # started, but the rollback has steps to run, and the database is neither the phase's start nor its end.
        out.update(phase="rollback", state="stopped", step=unfinished["step"], command=cmd)
        out.pop("steps_done", None)
        out.pop("steps_total", None)
        out["line"] = (f"rollback {unfinished['phase']}: stopped after {unfinished['step']}, with steps still to run "
                       "(the runner was killed or lost its connection between two steps; the database is half "
                       f"rolled back) — resume with {cmd}")
        return out
    if command[:1] == ["rollback"] and len(command) > 1 and command[1] in PHASES:
        out.update(phase="rollback", state="rolled back", step=None, command=again(["run", command[1]]))
        out["line"] = f"rolled back to the start of {command[1]} — go on again with {again(['run', command[1]])}"
        return out
    done_phases = [ph for ph in PHASES if plan.phase(ph) and all(by_id[s.id]["state"] == "done"
                                                                  for s in plan.phase(ph))]
    pending = [ph for ph in PHASES if plan.phase(ph) and ph not in done_phases]
    if not pending:
        out.update(phase=PHASES[-1], state="done")
        out["line"] = f"{PHASES[-1]}: done — every phase is finished"
        return out
    nxt = pending[0]
    started = any(by_id[s.id]["state"] not in ("not started", "reverted") for s in plan.phase(nxt))
    mine = [s for s in steps if s["phase"] == nxt]
    out.update(phase=nxt, state="partial" if started else "not started", command=again(["run", nxt]))
    out["steps_done"], out["steps_total"] = sum(s["state"] == "done" for s in mine), len(mine)
    before = f"{done_phases[-1]} done; " if done_phases else ""
    out["line"] = (f"{nxt}: {out['steps_done']} of {len(mine)} steps done — continue with {again(['run', nxt])}"
                   if started else f"{before}{nxt} not started — next: {again(['run', nxt])}")
    return out
