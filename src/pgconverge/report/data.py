"""Read the ledger (events, checkpoints, snapshots, runs) into plain, JSON-ready data."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from pgconverge import __version__
from pgconverge.config import Spec
from pgconverge.errors import PgConvergeError
from pgconverge.ledger.store import Ledger
from pgconverge.operations.base import PHASES
from pgconverge.report import checks, verdict

SNAPSHOTS = ("align_report", "phone_audit", "rls_equivalence", "contract_gates", "counts_before", "counts_after",
             "client_traffic")


class NoLedger(PgConvergeError):
    """The database holds no ledger: nothing has run yet."""


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None


def _ms(a: datetime | None, b: datetime | None) -> float | None:
    return round((b - a).total_seconds() * 1000, 3) if a is not None and b is not None else None


def _rows(conn: psycopg.Connection, query: sql.Composable, params: Any = None) -> list[dict]:
    cur = conn.execute(query, params)
    names = [d.name for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def collect(conn: psycopg.Connection, spec: Spec) -> dict:
    """Everything the report shows, read from the private schema (and the catalog, for the plan its steps are read
    against). Changes nothing."""
    ledger = Ledger(conn, spec)
    if not ledger.exists():
        raise NoLedger("no pgconverge ledger in this database: nothing has run yet",
                       fix="run `pgconverge run align` (or `pgconverge run --all`) first, or pass the right --dsn")
    t = ledger.t
    runs = _rows(conn, sql.SQL("select id, command, started_at, client, spec from {} order by id").format(t("runs")))
    events = _rows(conn, sql.SQL(
        "select id, run_id, phase, step, event, attempt, sql, sqlstate, message, duration_ms, detail, at "
        "from {} order by id").format(t("events")))
    checkpoints = _rows(conn, sql.SQL(
        "select id, run_id, step, rows_done, batch_rows, batch_ms, at from {} order by id").format(t("checkpoints")))
    snaps = {r["name"]: r for r in _rows(conn, sql.SQL(
        "select distinct on (name) name, data, at from {} where name = any(%s) order by name, id desc").format(
        t("snapshots")), (list(SNAPSHOTS),))}
    # The configuration in effect is the one the latest run recorded; the one given to `report` may differ.
    ran = next((r["spec"] for r in reversed(runs) if r.get("spec")), None)
    # The plan's steps against the ledger, as `pgconverge status` reads them: a phase is done when all its steps are.
    # Planned with the configuration the latest run recorded, else the one given; failing both, from the events alone.
    from pgconverge.catalog import baseline
    from pgconverge.config import from_dict
    from pgconverge.errors import PgConvergeError
    from pgconverge.planning import plan as planner

    candidates = [spec]
    if ran:
        try:  # recorded as the report prints it, a default left empty ('') where the file may omit it; an empty
            # helper is the configuration's own (legacy.helper = "": no RLS identity helper)
            candidates.insert(0, from_dict({k: {n: v for n, v in sec.items() if v != "" or n == "helper"}
                                            for k, sec in ran.items()},
                                           source="the configuration the latest run recorded"))
        except PgConvergeError:
            pass
    plan = None
    for planned in candidates:
        try:
            plan = planner.build(planned, baseline.load(conn, planned), refuse=False)
            break
        except PgConvergeError:
            continue
    unproven = frozenset(s.id for s in plan.steps if s.op.executor == "policies" and ledger.unproven(s.id)) \
        if plan is not None else frozenset()
    phases = _phases(events, [(s.id, s.phase) for s in plan.steps] if plan is not None else None, unproven,
                     _running_run(conn, spec, ledger))
    d = {
        "server": _server(conn),
        "pgconverge_version": __version__,
        "config": _ordered(ran, spec.as_dict()) if ran else spec.as_dict(),
        "config_source": "the latest run" if ran else "the configuration given to report (no run recorded one)",
        "config_differs": sorted(_diff(ran, spec.as_dict())) if ran else [],
        "private_schema": spec.migration.private_schema,
        "runs": [{**{k: v for k, v in r.items() if k != "spec"}, "started_at": _iso(r["started_at"])} for r in runs],
        "phases": phases,
        "timeline": _timeline(phases),
        "backfill": _backfill(checkpoints),
        "identity": {"align_report": _snap(snaps, "align_report"), "phone_audit": _snap(snaps, "phone_audit")},
        "rls_equivalence": _snap(snaps, "rls_equivalence"),
        "contract_gates": _snap(snaps, "contract_gates"),
        "counts": {"before": _snap(snaps, "counts_before"), "after": _snap(snaps, "counts_after")},
        # recorded by whoever ran application traffic alongside (the demo does): latency and errors over time
        "clients": _snap(snaps, "client_traffic"),
        "linkage": {name: _linkage(conn, t(f"linkage_{name}")) for name in ("before", "after")},
    }
    lock_hold = (d["rls_equivalence"] or {}).get("lock_hold_ms")
    for p in phases:  # the policy switch holds its strong locks for the rewrite only, not for its check
        for s in p["steps"]:
            s["lock_held_ms"] = lock_hold if s["id"] == "switch.policies" and s["state"] == "done" else None
    # A rollback stopped part way (between two of its steps too): the verdict says so before anything else.
    d["rollback_stopped"] = baseline.unfinished_rollback(ledger)
    d["rls_policies"] = _policies(ledger, phases)
    d["checks"] = checks.build(d)
    d["attempts"] = verdict.attempts(d)
    d["verdict"] = verdict.build(d)
    return d


def _running_run(conn: psycopg.Connection, spec: Spec, ledger: Ledger) -> int | None:
    """The run of the runner holding the migration lock now, if one does."""
    from pgconverge.execution.runner import lock_holder

    holder = lock_holder(conn, spec)
    if holder is None:
        return None
    run = ledger.run_of(holder[0], holder[3])
    return run[0] if run else None


def _server(conn: psycopg.Connection) -> dict:
    """Where the report was read: host (or socket directory), port, database, server version."""
    info = conn.info
    version = conn.execute("select current_setting('server_version')").fetchone()[0]
    return {"host": info.host, "port": info.port, "database": info.dbname, "version": version}


def _ordered(ran: dict, like: dict) -> dict:
    """RAN (read back from jsonb, which orders keys its own way) in the order of the configuration file."""
    out = {}
    for section in [*like, *(k for k in ran if k not in like)]:
        if section not in ran:
            continue
        x, order = ran[section], like.get(section)
        out[section] = ({k: x[k] for k in [*order, *(k for k in x if k not in order)] if k in x}
                        if isinstance(x, dict) and isinstance(order, dict) else x)
    return out


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Keys (section.key) whose values differ between two configurations."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict) and k in ("legacy", "canonical", "migration"):
            out += _diff(x, y, f"{k}.")
        elif x != y:
            out.append(prefix + k)
    return out


def _linkage(conn: psycopg.Connection, table: sql.Identifier) -> dict | None:
    """Rows per dependent table in a linkage snapshot table (and how many have no owner); None if it is gone."""
    if not conn.execute("select pg_catalog.to_regclass(%s) is not null", (table.as_string(conn),)).fetchone()[0]:
        return None
    rows = conn.execute(sql.SQL("select tbl, count(*), count(*) filter (where owner is null) from {} "
                                "group by tbl order by tbl").format(table)).fetchall()
    return {tbl: {"rows": n, "no_owner": none} for tbl, n, none in rows}


def _snap(snaps: dict, name: str) -> Any:
    return snaps[name]["data"] if name in snaps else None


def _new_step(step: str, phase: str) -> dict:
    return {"id": step, "phase": phase, "state": "pending", "lock": None, "sql": None,
            "started_at": None, "finished_at": None, "duration_ms": None, "attempts": 0, "executions": 0,
            "lock_waits": 0, "retry_sqlstates": {}, "errors": [], "notes": [], "history": [],
            "_start": None, "_last": 0}


def _phases(events: list[dict], plan: list[tuple[str, str]] | None = None, unproven: frozenset[str] = frozenset(),
            running_run: int | None = None) -> list[dict]:
    """Each phase and its steps, from the ledger's events.

    With PLAN (the plan's steps, (id, phase), in order: what `status` reads too), a phase is done only when every
    step the plan gives it is: a step with no event is "not started", a step still recorded as running that no
    runner holds the lock for (RUNNING_RUN: the run of the runner holding it) "stopped" (killed, or its
    connection lost), and a step in UNPROVEN (the policy rewrite, committed before its check finished)
    "unproven"."""
    steps: dict[str, dict] = {}
    for e in events:
        s = steps.setdefault(e["step"], _new_step(e["step"], e["phase"]))
        kind = e["event"]
        if kind in ("start", "done", "error", "interrupted", "reverted"):
            s["_last"] = e["id"]
        run = s["history"][-1] if s["history"] and s["history"][-1]["outcome"] == "running" else None
        if kind == "start":
            if run is not None:  # started again with no outcome recorded: the process died (SIGKILL, lost host)
                run["outcome"] = "killed"
            s["executions"] += 1
            s["_start"] = e["at"]
            s["started_at"] = _iso(e["at"])
            s["finished_at"] = s["duration_ms"] = None
            s["lock"] = (e["detail"] or {}).get("lock", s["lock"])
            s["state"] = "running"
            s["history"].append({"run_id": e["run_id"], "started_at": _iso(e["at"]), "ended_at": None,
                                 "duration_ms": None, "outcome": "running", "tries": 1, "message": None,
                                 "sqlstate": None, "_at": e["at"]})
        elif kind == "done":
            s["state"] = "done"
            s["sql"] = e["sql"]
            s["finished_at"] = _iso(e["at"])
            s["duration_ms"] = _ms(s["_start"], e["at"])
            if e["detail"]:
                s["detail"] = e["detail"]
            if run is not None:
                _end(run, "done", e)
                run["tries"] = max(run["tries"], e["attempt"] or 1)
        elif kind == "retry":
            s["lock_waits"] += 1
            key = e["sqlstate"] or "?"
            s["retry_sqlstates"][key] = s["retry_sqlstates"].get(key, 0) + 1
            if run is not None:
                run["tries"] = max(run["tries"], (e["attempt"] or 1) + 1)
        elif kind == "error":
            s["state"] = "failed"
            s["finished_at"] = _iso(e["at"])
            s["duration_ms"] = _ms(s["_start"], e["at"])
            s["errors"].append({"at": _iso(e["at"]), "sqlstate": e["sqlstate"], "message": e["message"]})
            if run is not None:
                _end(run, "failed", e)
            elif s["history"] and s["history"][-1]["outcome"] == "reverted":
                _end(s["history"][-1], "failed", e)  # a check that failed after undoing its change
        elif kind == "interrupted":
            s["state"] = "interrupted"
            # The execution it stopped (or one that had undone its change first: the switch's check).
            target = run or (s["history"][-1] if s["history"] and s["history"][-1]["outcome"] == "reverted"
                             else None)
            if target is not None:
                _end(target, "interrupted", e)
                s["finished_at"] = _iso(e["at"])
                s["duration_ms"] = _ms(s["_start"], e["at"])
                s["errors"].append({"at": _iso(e["at"]), "sqlstate": None, "message": e["message"],
                                    "interrupted": True})
            else:  # stopped before the step started: not an attempt
                s["notes"].append(e["message"] or "interrupted before it started")
        elif kind == "reverted":
            s["state"] = "reverted"
            s["notes"].append(e["message"] or "reverted")
            last = s["history"][-1] if s["history"] else None
            if last is not None and last["outcome"] == "done" and last["run_id"] == e["run_id"]:
                # Undone within the same execution (the switch's check failed or was interrupted): not done.
                last["outcome"] = "reverted"
                last["ended_at"], last["duration_ms"] = _iso(e["at"]), _ms(last["_at"], e["at"])
        elif kind == "skip":
            s["state"] = "skipped"
            s["notes"].append(e["message"] or "skipped")
        elif kind == "note" and e["message"]:
            s["notes"].append(e["message"])
    for s in steps.values():
        for h in s["history"]:
            h.pop("_at")
        # Every attempt counts: each execution (interrupted, failed, killed or done) and each lock retry in it.
        s["attempts"] = sum(h["tries"] for h in s["history"])
    if plan is not None:
        ran = {s["phase"] for s in steps.values()}
        planned = {}
        for sid, phase in plan:  # in the plan's order, then what the ledger has beyond it (rollback steps)
            if sid in steps or phase in ran:
                planned[sid] = steps.get(sid) or {**_new_step(sid, phase), "state": "not started"}
        steps = {**planned, **{k: v for k, v in steps.items() if k not in planned}}
        for s in steps.values():
            if s["state"] == "done" and s["id"] in unproven:
                s["state"] = "unproven"
                s["notes"].append("rewritten, but its equivalence check did not finish: `pgconverge run switch` "
                                  "puts the original policies back and checks the rewrite again")
            elif s["state"] == "running" and (running_run is None or s["history"][-1]["run_id"] != running_run):
                s["state"] = "stopped"
                s["notes"].append("started, then nothing recorded: the runner was killed or lost its connection")
    order = {p: i for i, p in enumerate(PHASES)}
    by_phase: dict[str, list[dict]] = {}
    remarks: dict[str, list[str]] = {}
    known = {sid for sid, _ in plan or ()}
    for s in steps.values():
        s.pop("_start")
        if not s["_last"] and s["state"] == "pending" and s["id"] not in known:
            # Notes alone under a name no step has (the manual decisions `align --decisions` recorded): said with
            # the phase, not counted as one of its steps, which would never finish.
            remarks.setdefault(s["phase"], []).extend(f"{s['id']}: {x}" for x in s["notes"])
            continue
        by_phase.setdefault(s["phase"], []).append(s)
    out = []
    for phase in sorted(by_phase, key=lambda p: (order.get(p, len(order)), p)):
        ss = by_phase[phase]
        states = Counter(s["state"] for s in ss)
        latest = max(ss, key=lambda s: s["_last"])["state"]
        state = ("failed" if states["failed"] else "interrupted" if states["interrupted"]
                 else "running" if states["running"] and plan is not None
                 else "done" if states["done"] == len(ss)
                 else "reverted" if states["reverted"] and states["reverted"] + states["not started"] == len(ss)
                 else "unproven" if states["unproven"]
                 else "stopped" if plan is not None and (states["stopped"] or states["done"]) and latest != "reverted"
                 else "partial")
        for s in ss:
            s.pop("_last")
        starts = [s["started_at"] for s in ss if s["started_at"]]
        ends = [s["finished_at"] for s in ss if s["finished_at"]]
        out.append({"phase": phase, "state": state, "steps": ss,
                    "started_at": min(starts) if starts else None, "finished_at": max(ends) if ends else None,
                    "states": dict(states), "notes": remarks.get(phase, [])})
    return out


def _end(run: dict, outcome: str, e: dict) -> None:
    run["outcome"] = outcome
    run["ended_at"] = _iso(e["at"])
    run["duration_ms"] = _ms(run["_at"], e["at"])
    if outcome in ("failed", "interrupted"):
        run["message"], run["sqlstate"] = e["message"], e["sqlstate"]


def _policies(ledger: Ledger, phases: list[dict]) -> list[dict]:
    """Each policy the switch rewrote: its table, its text before (as saved for the rollback) and after (as sent)."""
    step = next((s for p in phases for s in p["steps"] if s["id"] == "switch.policies"), None)
    if step is None:
        return []
    sent = [x.strip() for x in (step.get("sql") or "").split(";\n") if x.strip().lower().startswith("alter policy")]
    out = []
    for kind, name, before in ledger.saved_definitions("switch.policies"):
        if kind != "policy":
            continue
        schema, table, policy = (name.split(".", 2) + ["", ""])[:3]
        after = next((x for x in sent if x.lower().startswith("alter policy " + _quoted(policy).lower())
                      and _quoted(table).lower() in x.lower()), None)
        out.append({"table": f"{schema}.{table}", "policy": policy, "before": before.rstrip().rstrip(";") + ";",
                    "after": after.rstrip(";") + ";" if after else None})
    return sorted(out, key=lambda p: (p["table"], p["policy"]))


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _timeline(phases: list[dict]) -> list[dict]:
    """One bar per step that has a start and an end, in start order."""
    bars = [{"step": s["id"], "phase": p["phase"], "state": s["state"], "start": s["started_at"],
             "end": s["finished_at"]}
            for p in phases for s in p["steps"] if s["started_at"] and s["finished_at"]]
    return sorted(bars, key=lambda b: b["start"])


def _backfill(checkpoints: list[dict]) -> list[dict]:
    series: dict[str, dict] = {}
    for c in checkpoints:
        parts = c["step"].split(".")
        s = series.setdefault(c["step"], {"step": c["step"], "table": parts[1] if len(parts) == 3 else c["step"],
                                          "batches": []})
        ms = c["batch_ms"] or 0.0
        s["batches"].append({"at": _iso(c["at"]), "run_id": c["run_id"], "rows_done": c["rows_done"],
                             "batch_rows": c["batch_rows"], "batch_ms": round(ms, 3),
                             "rows_per_s": round(c["batch_rows"] * 1000 / ms, 1) if ms > 0 else None})
    for s in series.values():
        b = s["batches"]
        total_ms = sum(x["batch_ms"] for x in b)
        s["rows"] = sum(x["batch_rows"] for x in b)
        s["total_ms"] = round(total_ms, 3)
        s["mean_rows_per_s"] = round(s["rows"] * 1000 / total_ms, 1) if total_ms > 0 else None
    return list(series.values())
