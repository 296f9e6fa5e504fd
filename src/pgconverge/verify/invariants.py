"""Run the gates of every finished phase again, read-only, and report what they find."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution import session
from pgconverge.execution.sql import qn
from pgconverge.ledger.store import Ledger
from pgconverge.operations.base import PHASES, Plan
from pgconverge.operations.batched import Batched
from pgconverge.operations.check import Check


@dataclass
class CheckResult:
    step: str
    name: str
    passed: bool
    problems: list[list[str]] = field(default_factory=list)
    failure: str = ""
    fix: str = ""
    note: str = ""  # what a pass does not prove (no rows to look at)
    # What the check looked at, where it says (the RLS check: per table, the sampled owners, how many of them saw
    # their own rows, and the rows compared).
    coverage: dict | None = None


def finished_phases(plan: Plan, ledger: Ledger) -> list[str]:
    states = ledger.step_states() if ledger.exists() else {}
    done = [ph for ph in PHASES if plan.phase(ph) and all(
        states.get(s.id) and states[s.id].state == "done" for s in plan.phase(ph))]
    # After contract the legacy side is gone: the earlier phases' checks no longer apply.
    return ["contract"] if "contract" in done else done


def nothing_to_verify(plan: Plan, ledger: Ledger) -> str | None:
    """Why no phase's checks apply (None when one has finished): nothing ran, everything was rolled back,
    or the first phase has not finished. Its mapping and ledger may not exist, so there is nothing to read."""
    if finished_phases(plan, ledger):
        return None
    if not ledger.exists():
        return (f"nothing has run on this database (it has no pgconverge ledger, schema "
                f"{ledger.schema}); `pgconverge plan` shows what `run` would do")
    states = ledger.step_states()
    forward = [s for s in plan.steps if s.phase in PHASES]
    live = [s for s in forward if states.get(s.id) and states[s.id].state in ("done", "pending")]
    if not live:
        if any(states.get(s.id) for s in forward):
            return "every phase was rolled back: the database is as it was before align"
        return "nothing has run on this database yet; `pgconverge plan` shows what `run` would do"
    ph = live[0].phase
    steps = plan.phase(ph)
    done = sum(1 for s in steps if states.get(s.id) and states[s.id].state == "done")
    return (f"no phase has finished yet ({ph}: {done} of {len(steps)} steps done); `pgconverge status` shows "
            f"where it stopped, and `pgconverge run {ph}` resumes it")


def run(conn: psycopg.Connection, plan: Plan, phases: list[str]) -> list[CheckResult]:
    """Every Check step of PHASES, in a read-only snapshot."""
    out = []
    counted: dict[str, int | None] = {}  # each table counted once for every check that covers it (one snapshot)
    with session.transaction(conn, lock_timeout_ms=1000, statement_timeout_ms=0, repeatable_read=True):
        conn.execute("set transaction read only")
        for ph in phases:
            for step in plan.phase(ph):
                if isinstance(step.op, Check) and step.op.standing:
                    conn.execute("savepoint pgc_check")
                    for name, value in step.op.settings:
                        conn.execute("select set_config(%s, %s, true)", (name, value))
                    rows = conn.execute(step.op.query).fetchall()
                    conn.execute("release savepoint pgc_check")
                    # A pass over no rows proves nothing about them: say so, and say what it looked at.
                    tables = step.op.covers or walked(plan, ph)
                    counted.update(rows_in(conn, [t for t in tables if str(t) not in counted]))
                    examined = {str(t): counted[str(t)] for t in tables}
                    empty = [] if rows else [t for t in tables if examined.get(str(t)) == 0]
                    out.append(CheckResult(step.id, step.op.name, not rows,
                                           [[str(x) if x is not None else "" for x in r] for r in rows],
                                           step.op.failure if rows else "", step.op.fix if rows else "",
                                           f"{', '.join(map(str, empty))}: no rows, so it proves nothing there"
                                           if empty else "", {"rows_examined": examined} if examined else None))
    return out


def walked(plan: Plan, phase: str) -> list[QualifiedName]:
    """The tables PHASE's batches walk: the rows its checks are about."""
    return list(dict.fromkeys(s.op.table for s in plan.phase(phase) if isinstance(s.op, Batched)))


# Past this many rows a table's count reads "at least": enough to say what a check looked at, at a bounded cost.
COUNT_CAP = 1_000_000


def rows_in(conn: psycopg.Connection, tables) -> dict[str, int | None]:
    """Rows of each of TABLES a check looked at (None: the table does not exist), counted up to COUNT_CAP."""
    out: dict[str, int | None] = {}
    for t in tables:
        if not conn.execute("select pg_catalog.to_regclass(%s) is not null", (str(t),)).fetchone()[0]:
            out[str(t)] = None
            continue
        out[str(t)] = conn.execute(sql.SQL("select count(*) from (select from {} limit {}) x").format(
            qn(t), sql.Literal(COUNT_CAP + 1))).fetchone()[0]
    return out
