"""The policy rewrite with its equivalence check on one data snapshot (see verify/rls.py)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import psycopg

from psycopg import sql

from pgconverge.config import parse_qualified
from pgconverge.connection import connect
from pgconverge.execution import retry, session
from pgconverge.operations.base import Step
from pgconverge.verify import rls

if TYPE_CHECKING:
    from pgconverge.execution.runner import Runner, StepResult


def run(runner: Runner, step: Step, resuming: bool) -> StepResult:
    from pgconverge.execution.runner import GateFailed, StepResult

    op = step.op
    spec, cat = runner.spec, runner.catalogs.for_phase(step.phase)
    targets = rls.targets(spec, cat, [parse_qualified(t) for t in op.tables])
    # The exporting transaction only holds the snapshot; it touches no table, so it holds no lock the
    # rewrite would wait for. Both captures import the snapshot; the first ends before the rewrite.
    with connect(runner.target, application_name="pgconverge:rls-snapshot") as exporter:
        exporter.autocommit = False
        exporter.execute("set transaction isolation level repeatable read")
        snapshot = exporter.execute("select pg_export_snapshot()").fetchone()[0]
        with _at(runner, snapshot, "pgconverge:rls-before") as conn:
            identities = rls.sample(conn, spec, spec.migration.rls_sample)
            before = rls.capture(conn, spec, targets, identities, legacy=True, canonical=False)
        result = runner._run_sql(step, resuming)  # the rewrite itself: one transaction, with retries
        with _at(runner, snapshot, "pgconverge:rls-after") as conn:
            after = rls.capture(conn, spec, targets, identities, legacy=True, canonical=True, others=before.others)
        exporter.rollback()
    problems = rls.compare(before, after, identities)
    summary = {"identities": len(identities), "tokens": len(after.seen), "tables": list(op.tables),
               "write_probes": len(after.writes), "rows_seen": rls.rows_seen(before), "problems": problems[:200],
               # Tables whose old policy reads a whole table per caller: checked for fewer tokens (see rls.py).
               "scan_bound": rls.scan_bound_summary(before, after)}
    runner.ledger.snapshot(runner.run_id, "rls_equivalence", summary)
    if problems:
        undo = op.reverse()

        def restore(attempt: int) -> None:
            with session.transaction(runner.work, lock_timeout_ms=runner.lock_timeout_ms):
                for s in undo.statements():
                    runner.work.execute(s)

        retry.run(restore, runner.policy)
        runner.ledger.event(runner.run_id, step.phase, step.id, "reverted",
                            message=f"policies restored: the equivalence check found {len(problems)} differences")
        raise GateFailed(
            f"RLS equivalence failed after rewriting the policies ({len(problems)} differences; the original "
            f"policies were restored): " + "; ".join(problems[:5]),
            fix="review the listed policies; a policy pgconverge cannot rewrite safely can be excluded with "
                "migration.accept_policies and rewritten by hand")
    result.detail.update({k: v for k, v in summary.items() if k != "problems"})
    return result


@contextmanager
def _at(runner: Runner, snapshot: str, name: str) -> Iterator[psycopg.Connection]:
    """A read transaction on SNAPSHOT's data, rolled back (and its locks released) on exit."""
    with connect(runner.target, application_name=name) as conn:
        conn.autocommit = False
        conn.execute("set transaction isolation level repeatable read")
        conn.execute(sql.SQL("set transaction snapshot {}").format(sql.Literal(snapshot)))
        try:
            yield conn
        finally:
            conn.rollback()
