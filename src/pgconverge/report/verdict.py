"""The report's first lines: the verdict, where it ran, with what, and what to do next."""

from __future__ import annotations

import json
import re
from typing import Any

from pgconverge.operations.base import PHASES
from pgconverge.report.checks import ACCEPTED, FAILED, NOT_APPLICABLE, NOT_MEASURED, NOTHING, PASSED

# `alter table "archive"."customers" rename to "customers_20261124T031500Z"` in the archive step's SQL
_RENAME = re.compile(r'alter table "((?:[^"]|"")+)"\."(?:[^"]|"")+" rename to "((?:[^"]|"")+)"', re.IGNORECASE)


def archives(d: dict) -> list[str]:
    """Where contract put the legacy table and the mapping (schema.name), read from the SQL it sent."""
    out = []
    for p in d["phases"]:
        for s in p["steps"]:
            if s["state"] == "done" and ".archive_" in s["id"] and s["sql"]:
                out += [f"{a.replace(chr(34) * 2, chr(34))}.{b.replace(chr(34) * 2, chr(34))}"
                        for a, b in _RENAME.findall(s["sql"])]
    return out


def attempts(d: dict) -> list[dict]:
    """Every execution that did not finish (interrupted, failed, killed, undone by its own check), oldest first."""
    out = [{"step": s["id"], "run_id": h["run_id"], "outcome": h["outcome"], "started_at": h["started_at"],
            "duration_ms": h["duration_ms"], "error": (f"[{h['sqlstate']}] " if h.get("sqlstate") else "")
            + (h.get("message") or "") or None}
           for p in d["phases"] for s in p["steps"] for h in s.get("history") or []
           if h["outcome"] not in ("done", "running")]
    return sorted(out, key=lambda a: a["started_at"] or "")


def build(d: dict) -> dict:
    """{verdict, status, next: [...]} from the phases and the checks."""
    phases = {p["phase"]: p for p in d["phases"]}
    checks = d["checks"]
    failed = [c for c in checks if c["status"] == FAILED]
    nothing = [c for c in checks if c["status"] == NOTHING]
    unmeasured = [c for c in checks if c["status"] == NOT_MEASURED]
    accepted = [c for c in checks if c["status"] == ACCEPTED]
    inapplicable = [c for c in checks if c["status"] == NOT_APPLICABLE]
    done = [ph for ph in PHASES if ph in phases and phases[ph]["state"] == "done"]
    stopped = next((phases[ph] for ph in PHASES if ph in phases
                    and phases[ph]["state"] in ("failed", "interrupted", "stopped", "unproven", "running")), None)
    nxt: list[str] = []
    rollback = d.get("rollback_stopped")
    if rollback is not None:
        ph = rollback["phase"]
        where = f"after {rollback['step']}" if rollback["event"] == "done" else f"at {rollback['step']}"
        status = "INTERRUPTED"
        verdict = (f"INTERRUPTED: rollback {ph} stopped {where} with steps still to run: "
                   f"{', '.join(PHASES[PHASES.index(ph):])} are half undone")
        nxt.append(f"finish it with `pgconverge rollback {ph}` (it goes on from the first step not done)")
        nxt.append(f"or go forward again: `pgconverge run {ph}`")
    elif stopped is not None:
        ph = stopped["phase"]
        ss = stopped["steps"]
        count = f"{sum(s['state'] == 'done' for s in ss)} of {len(ss)} steps done"
        if stopped["state"] == "running":
            step = next((s for s in ss if s["state"] == "running"), None)
            status = "RUNNING"
            verdict = f"RUNNING: {ph} is running {step['id'] if step else ''} ({count}); this report is not final"
            nxt.append("follow it with `pgconverge status`, and report again when it has finished")
        elif stopped["state"] in ("stopped", "unproven"):
            status = "INTERRUPTED"
            step = next((s for s in ss if s["state"] in ("unproven", "stopped")), None)
            if step is not None and step["state"] == "unproven":
                verdict = (f"INTERRUPTED: {ph} stopped in {step['id']} ({count}): the policies are rewritten, but "
                           "their equivalence check did not finish, so the rewrite is unproven")
                nxt.append(f"resume with `pgconverge run {ph}`: it puts the original policies back and checks the "
                           "rewrite against them again")
            else:
                last = [s for s in ss if s["state"] == "done"]
                where = (f"in {step['id']}" if step is not None
                         else f"after {last[-1]['id']}" if last else "before its first step")
                verdict = (f"INTERRUPTED: {ph} stopped {where} ({count}) with no record of why: the runner was "
                           "killed or lost its connection")
                nxt.append(f"resume with `pgconverge run {ph}` (it goes on from the first step not done)")
            nxt.append(f"or undo the phase: `pgconverge rollback {ph}`")
        else:
            step = next((s for s in ss if s["state"] == stopped["state"]), None)
            err = (step["errors"][-1]["message"] if step and step["errors"] else None) or "no message recorded"
            status = "FAILED" if stopped["state"] == "failed" else "INTERRUPTED"
            blocked = [g for g in d.get("contract_gates") or [] if not g.get("passed")] \
                if step and step["id"] == "contract.gates" else []
            if blocked:  # the gates name their own way out
                err = f"{len(blocked)} gate(s) failed: " + ", ".join(str(g.get("gate")) for g in blocked)
                nxt += [f"{g.get('gate')}: {g.get('unblock')}" for g in blocked if g.get("unblock")]
            verdict = f"{status}: {ph} stopped at {step['id'] if step else '?'}: {_short(err)}"
            nxt.append(f"{'fix what the error names, then ' if status == 'FAILED' else ''}"
                       f"resume with `pgconverge run {ph}`")
            nxt.append(f"or undo the phase: `pgconverge rollback {ph}`")
    elif failed and not all(phases[ph]["state"] == "reverted" for ph in PHASES if ph in phases):
        status = "FAILED"
        verdict = f"FAILED: {len(failed)} check(s) failed: " + ", ".join(c["check"] for c in failed)
    elif done == list(PHASES):
        status = "UNPROVEN" if nothing else "COMPLETE"
        verdict = (f"UNPROVEN: every phase finished, but {len(nothing)} check(s) prove nothing (they saw no rows): "
                   + ", ".join(c["check"] for c in nothing)) if nothing else (
            f"COMPLETE: all {len(PHASES)} phases done; {sum(c['status'] == PASSED for c in checks)} checks passed "
            "over the rows they state")
        if not nothing and (unmeasured or accepted or inapplicable):
            verdict += "; " + ", ".join(x for x in (
                f"{len(unmeasured)} gate(s) not measured" if unmeasured else "",
                f"{len(accepted)} gate(s) accepted by the operator" if accepted else "",
                f"{len(inapplicable)} check(s) not applicable (no RLS identity helper)" if inapplicable else "") if x)
    elif any(ph in phases for ph in PHASES) and all(phases[ph]["state"] == "reverted" for ph in PHASES
                                                    if ph in phases):
        status = "ROLLED BACK"
        verdict = "ROLLED BACK: every phase that ran was undone; the database is as it was before align"
        nxt.append("to migrate again: `pgconverge run --all` (or phase by phase, `pgconverge run align` first)")
    else:
        status = "IN PROGRESS"
        todo = [ph for ph in PHASES if ph not in done]
        verdict = (f"IN PROGRESS: {', '.join(done) or 'no phase'} done; {', '.join(todo)} to run"
                   + (f"; {len(nothing)} check(s) prove nothing so far" if nothing else ""))
        if todo:
            nxt.append(f"next: `pgconverge run {todo[0]}`")
    arch = archives(d)
    if "contract" in done:
        if arch:
            nxt.append("the legacy table and the mapping are archived as " + " and ".join(arch)
                       + ": keep them until the application has run on the canonical table long enough, then drop "
                         "them (nothing reads them any more)")
        nxt.append("to undo contract (restores the legacy table, its columns and triggers from the archive): "
                   "`pgconverge rollback contract`; to undo everything: `pgconverge rollback align`")
    elif done and stopped is None and rollback is None:
        nxt.append(f"to undo {done[-1]}: `pgconverge rollback {done[-1]}`; to undo everything: "
                   "`pgconverge rollback align`")
    if nothing:
        nxt.append("a check that proves nothing saw no rows: look at why (empty tables, tokens missing a claim the "
                   "policies read: `pgconverge inventory` lists them) before relying on it")
    if unmeasured:
        nxt.append("gates not measured: " + "; ".join(f"{c['check']}: {c['looked_at']}" for c in unmeasured))
    nxt.append("every command above takes the same --dsn and --config as the run")
    return {"status": status, "verdict": verdict, "next": nxt, "archives": arch}


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def toml(cfg: dict) -> str:
    """The configuration as pgconverge.toml text."""
    lines: list[str] = []
    for section, values in cfg.items():
        if not isinstance(values, dict):
            lines.append(f"{section} = {_toml_value(values)}")
            continue
        lines += ([""] if lines else []) + [f"[{section}]"]
        lines += [f"{k} = {_toml_value(x)}" for k, x in values.items()]
    return "\n".join(lines)


def _toml_value(x: Any) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in x.items()) + " }" if x else "{}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in x) + "]"
    return json.dumps("" if x is None else str(x), ensure_ascii=False)


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)
