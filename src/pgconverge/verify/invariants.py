"""Run the gates of every finished phase again, read-only, and report what they find."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution import session
from pgconverge.execution.sql import qn, text
from pgconverge.ledger.store import Ledger
from pgconverge.operations.base import PHASES, Plan
from pgconverge.operations.batched import Batched
from pgconverge.operations.check import Check, Rows
from pgconverge.verify import installed


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
    # Why the check has nothing to look at by the database's design ("": it applies): said, never counted a pass.
    not_applicable: str = ""
    # It saw nothing: a check of rows that judged no row of any table it covers, or the RLS check failing only
    # because it compared nothing. Never counted a pass of the migration (see summary).
    proves_nothing: bool = False


def finished_phases(plan: Plan, ledger: Ledger) -> list[str]:
    states = ledger.step_states() if ledger.exists() else {}
    done = [ph for ph in PHASES if plan.phase(ph) and all(
        states.get(s.id) and states[s.id].state == "done" for s in plan.phase(ph))]
    # After contract the legacy side is gone: the earlier phases' checks no longer apply.
    return ["contract"] if "contract" in done else done


def unproven_policies(plan: Plan, ledger: Ledger) -> list[CheckResult]:
    """A failed check per policy rewrite in force whose equivalence check never finished (a run stopped between the
    rewrite and its check): the policies the application reads now are proven by nothing, whatever else passes."""
    if not ledger.exists():
        return []
    return [CheckResult(
        s.id, "the live policies are the rewrite its RLS equivalence check proved", False,
        [[f"the live policies are unproven: the check did not finish ({s.id} rewrote them and the run stopped "
          "before their RLS equivalence check ended)"]],
        "the live policies are unproven: the check did not finish",
        f"resume with `pgconverge run {s.phase}` (it puts the original policies back and checks the rewrite again)")
        for s in plan.steps if s.phase in PHASES and s.op.executor == "policies" and ledger.unproven(s.id)]


def unfinished_rollback(ledger: Ledger) -> list[CheckResult]:
    """A failed check when a rollback stopped part way (catalog/baseline.py unfinished_rollback): the phases it was
    undoing are half undone, a state no phase's checks describe (the switch's helpers with the old policies, say), so
    whatever else passes, verify does not."""
    from pgconverge.catalog import baseline

    stopped = baseline.unfinished_rollback(ledger)
    if stopped is None:
        return []
    ph = stopped["phase"]
    where = (f"after {stopped['step']}" if stopped["event"] == "done" else f"at {stopped['step']}")
    return [CheckResult(
        f"rollback.{ph}", f"the rollback of {ph} finished", False,
        [[f"rollback {ph} stopped {where} with steps still to run: {', '.join(PHASES[PHASES.index(ph):])} are "
          "half undone"]],
        f"rollback {ph} did not finish",
        f"finish it with `pgconverge rollback {ph}` (or go forward again with `pgconverge run {ph}`)")]


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
    counted: dict[tuple[str, str], int | None] = {}  # each count made once for every check that needs it (one snapshot)
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
                    cov = coverage(conn, step.op.covers or walked(plan, ph), counted)
                    out.append(CheckResult(step.id, step.op.name, not rows,
                                           [[str(x) if x is not None else "" for x in r] for r in rows],
                                           step.op.failure if rows else "", step.op.fix if rows else "",
                                           "" if rows else "; ".join(proves_nothing(cov)),
                                           cov if cov["rows_examined"] else None,
                                           proves_nothing=not rows and judged_none(cov)))
        # What the phases installed, against what their plans made: catalog reads, no rows judged.
        for sid, check in installed.checks(plan, phases):
            rows = conn.execute(check.query).fetchall()
            out.append(CheckResult(sid, check.name, not rows, [[str(x) if x is not None else "" for x in r]
                                                             for r in rows],
                                   check.failure if rows else "", check.fix if rows else ""))
    return out


def walked(plan: Plan, phase: str) -> list[QualifiedName]:
    """The tables PHASE's batches walk: the rows its checks are about."""
    return list(dict.fromkeys(s.op.table for s in plan.phase(phase) if isinstance(s.op, Batched)))


# Past this many rows a table's count reads "at least": enough to say what a check looked at, at a bounded cost.
COUNT_CAP = 1_000_000


def coverage(conn: psycopg.Connection, covers, counted: dict | None = None) -> dict:
    """What a check covering COVERS (tables, or Rows: the rows of a table it judges) looked at: {"rows_examined":
    {table: rows it judged}}, and for each table it judges only some rows of, "judged_only": {table: {"which": those
    rows ("with customer_id set"), "table_rows": all its rows}}. Counted up to COUNT_CAP; None: the table does not
    exist. COUNTED keeps the counts already made in this snapshot, keyed by table and condition."""
    counted = {} if counted is None else counted

    def count(t: QualifiedName, where: sql.Composable | None) -> int | None:
        key = (str(t), "" if where is None else text(where))
        if key not in counted:
            counted[key] = _count(conn, t, where)
        return counted[key]

    # A table named more than once (several references to the legacy table): the rows any of them judges; every row
    # where one of them judges every row.
    tables: dict[str, tuple[QualifiedName, list[Rows] | None]] = {}
    for c in covers:
        t = c.table if isinstance(c, Rows) else c
        judged = tables.get(str(t), (t, []))[1]
        tables[str(t)] = (t, None if judged is None or not isinstance(c, Rows) else [*judged, c])
    examined: dict[str, int | None] = {}
    only: dict[str, dict] = {}
    for key, (t, judged) in tables.items():
        if judged is None:
            examined[key] = count(t, None)
            continue
        where = (judged[0].where if len(judged) == 1
                 else sql.SQL(" or ").join(sql.SQL("({})").format(r.where) for r in judged))
        examined[key] = count(t, where)
        only[key] = {"which": " or ".join(dict.fromkeys(r.which for r in judged)), "table_rows": count(t, None)}
    return {"rows_examined": examined, **({"judged_only": only} if only else {})}


def judged_none(cov: dict) -> bool:
    """Whether a check of coverage COV covers tables and judged no row of any of them."""
    return bool(cov["rows_examined"]) and not any(cov["rows_examined"].values())


def proves_nothing(cov: dict) -> list[str]:
    """Where a check of coverage COV judged no row: the tables with none, and those whose rows it says nothing
    about (an invariant of the legacy id on a table where no row has one)."""
    examined, only = cov["rows_examined"], cov.get("judged_only") or {}
    empty = [t for t, c in examined.items() if c == 0 and not (only.get(t) or {}).get("table_rows")]
    out = [f"{', '.join(empty)}: no rows, so it proves nothing there"] if empty else []
    out += [f"{t}: {only[t]['table_rows']:,} rows, none {only[t]['which']}, so it proves nothing there"
            for t, c in examined.items() if c == 0 and (only.get(t) or {}).get("table_rows")]
    return out


def _count(conn: psycopg.Connection, t: QualifiedName, where: sql.Composable | None) -> int | None:
    if not conn.execute("select pg_catalog.to_regclass(%s) is not null", (str(t),)).fetchone()[0]:
        return None
    return conn.execute(sql.SQL("select count(*) from (select from {} {} limit {}) x").format(
        qn(t), sql.SQL("") if where is None else sql.SQL("where ") + where,
        sql.Literal(COUNT_CAP + 1))).fetchone()[0]


# verify's overall outcomes: a verdict over checks that saw nothing is neither a pass nor a failure of an invariant.
PASSED, FAILED, NOTHING, NOTHING_TO_VERIFY = "passed", "failed", "proves nothing", "nothing to verify"


def summary(phases: list[str], results: list[CheckResult]) -> dict:
    """What the checks of each finished phase looked at together, and the outcome that follows.

    {"outcome", "coverage": {"rows_examined": rows judged over every phase, "tables": tables judged,
    "phases": {phase: {"checks", "row_checks", "rows_examined", "tables": {table: rows}}}, "proves_nothing": {table:
    why} for each table no check judged a row of}, and where the outcome is "proves nothing", "reason" and "fix"}.
    A table's rows in a phase are the most any of its checks judged there (two checks of one table count its rows
    once). A phase whose checks of rows judged no row together proves nothing, and so does the RLS check when it
    compared nothing; a phase with only catalog checks (the switch's) has no rows to judge. Where some tables have
    no rows and others do, the checks prove something and the outcome is a pass that names the tables."""
    per_phase: dict[str, dict] = {}
    most: dict[str, int] = {}
    why: dict[str, str] = {}
    for ph in phases:
        mine = [r for r in results if r.step.split(".")[0] == ph]
        rowed = [r for r in mine if r.coverage and r.coverage.get("rows_examined")]
        tables: dict[str, int] = {}
        for r in rowed:
            only = r.coverage.get("judged_only") or {}
            for t, c in r.coverage["rows_examined"].items():
                tables[t] = max(tables.get(t, 0), c or 0)
                most[t] = max(most.get(t, 0), c or 0)
                if not c:
                    part = only.get(t) or {}
                    why[t] = (f"{part['table_rows']:,} rows, none {part['which']}" if part.get("table_rows")
                              else why.get(t) or ("no rows" if c == 0 else "not found"))
        per_phase[ph] = {"checks": len(mine), "row_checks": len(rowed), "rows_examined": sum(tables.values()),
                         "tables": tables}
    unseen = {t: why[t] for t, c in most.items() if not c}
    cov = {"rows_examined": sum(p["rows_examined"] for p in per_phase.values()), "tables": len(most),
           "phases": per_phase, "proves_nothing": unseen}
    rls = next((r for r in results if r.step == "rls"), None)
    if rls is not None and rls.coverage and "rows_seen" in rls.coverage:
        cov["rls"] = {"identities": rls.coverage.get("identities"), "rows_seen": rls.coverage["rows_seen"]}
    if any(not r.passed and not r.proves_nothing for r in results):
        return {"outcome": FAILED, "coverage": cov}
    blind = [ph for ph, p in per_phase.items() if p["row_checks"] and not p["rows_examined"]]
    blind_rls = [r for r in results if not r.passed and r.proves_nothing]
    if not blind and not blind_rls:
        return {"outcome": PASSED, "coverage": cov}
    reasons = [f"the checks of {ph} judged no row ("
               + why_tables({t: unseen.get(t, "no rows") for t in per_phase[ph]["tables"]}) + ")" for ph in blind]
    reasons += [r.failure for r in blind_rls]
    fixes = (["verify again once those tables hold rows (with a legacy id, where a check judges only those): a check "
              "proves nothing about rows it never saw. Tables empty on purpose leave nothing to verify yet; "
              "`pgconverge report` reads these checks as \"proves nothing\" too"]
             if blind else []) + [r.fix for r in blind_rls if r.fix]
    return {"outcome": NOTHING, "coverage": cov, "reason": "; ".join(reasons), "fix": "; ".join(fixes)}


def why_tables(why: dict[str, str]) -> str:
    """"public.carts, public.orders: no rows; public.sessions: 608 rows, none with customer_id set": tables grouped by
    why no row of them was judged."""
    grouped: dict[str, list[str]] = {}
    for t, w in why.items():
        grouped.setdefault(w, []).append(t)
    return "; ".join(f"{', '.join(ts)}: {w}" for w, ts in grouped.items())
