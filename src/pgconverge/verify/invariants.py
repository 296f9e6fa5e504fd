"""Run the gates of every finished phase again, read-only, and report what they find."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from pgconverge.execution import session
from pgconverge.ledger.store import Ledger
from pgconverge.operations.base import PHASES, Plan
from pgconverge.operations.check import Check


@dataclass
class CheckResult:
    step: str
    name: str
    passed: bool
    problems: list[list[str]] = field(default_factory=list)
    failure: str = ""
    fix: str = ""


def finished_phases(plan: Plan, ledger: Ledger) -> list[str]:
    states = ledger.step_states() if ledger.exists() else {}
    done = [ph for ph in PHASES if plan.phase(ph) and all(
        states.get(s.id) and states[s.id].state == "done" for s in plan.phase(ph))]
    # After contract the legacy side is gone: the earlier phases' checks no longer apply.
    return ["contract"] if "contract" in done else done


def run(conn: psycopg.Connection, plan: Plan, phases: list[str]) -> list[CheckResult]:
    """Every Check step of PHASES, in a read-only snapshot."""
    out = []
    with session.transaction(conn, lock_timeout_ms=1000, statement_timeout_ms=0, repeatable_read=True):
        conn.execute("set transaction read only")
        for ph in phases:
            for step in plan.phase(ph):
                if isinstance(step.op, Check):
                    conn.execute("savepoint pgc_check")
                    for name, value in step.op.settings:
                        conn.execute("select set_config(%s, %s, true)", (name, value))
                    rows = conn.execute(step.op.query).fetchall()
                    conn.execute("release savepoint pgc_check")
                    out.append(CheckResult(step.id, step.op.name, not rows,
                                           [[str(x) if x is not None else "" for x in r] for r in rows],
                                           step.op.failure if rows else "", step.op.fix if rows else ""))
    return out
