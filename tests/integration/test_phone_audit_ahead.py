"""The phone audit runs beside the align steps before it: same result as alone, and nothing left when a run stops."""

from __future__ import annotations

import threading

import psycopg
import pytest

from pgconverge.catalog.introspect import load_catalog
from pgconverge.config import Spec
from pgconverge.connection import Target
from pgconverge.errors import PgConvergeError
from pgconverge.execution import killpoint
from pgconverge.execution.runner import Runner
from pgconverge.identity import phone_audit
from pgconverge.planning import plan as planner

from _support import RecordProgress


def _audit_alone(conn: psycopg.Connection, spec: Spec, cat) -> phone_audit.Audit:
    step = next(s for s in planner.build(spec, cat).phase("align") if s.op.executor == "phone_audit")
    rows = conn.execute(step.op.statements()[0]).fetchall()
    return phone_audit.audit([rows], step.op.region, fork=False)


def _audit_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "pgconverge:align.phone_audit" and t.is_alive()]


def _align_failing_at(dsn: str, spec: Spec, cat, where: str) -> None:
    """Run align with a failure injected at WHERE (step:point); it must stop there."""
    killpoint.fail_at(where)
    try:
        with pytest.raises(PgConvergeError), Runner(Target(dsn, "--dsn"), spec, planner.build(spec, cat)) as r:
            r.run_phase("align")
    finally:
        killpoint.fail_at(None)


def test_audit_starts_before_match_and_finds_what_it_finds_alone(conn, fixture_db):
    spec = Spec()
    cat = load_catalog(conn, spec)
    progress = RecordProgress()
    with Runner(Target(fixture_db, "--dsn"), spec, planner.build(spec, cat), progress=progress) as r:
        r.run_phase("align")
    ev = progress.events
    started = next(i for i, e in enumerate(ev) if e.startswith("note align.phone_audit starts now"))
    assert started < ev.index("start align.match") < ev.index("start align.phone_audit")
    assert started > ev.index("done align.normalize_function")
    assert any("waited" in e for e in ev if e.startswith("note read "))
    # The same comparison, alone, on the same numbers (align does not change the legacy table's numbers).
    alone = _audit_alone(conn, spec, cat)
    snap = conn.execute("select data from pgconverge.snapshots where name = 'phone_audit'").fetchone()[0]
    assert alone.checked > 100
    assert (snap["checked"], snap["disagreements"], snap["by_reason"]) == (
        alone.checked, alone.disagreements, alone.by_reason or {})
    done = conn.execute("select detail from pgconverge.events where step = 'align.phone_audit' and event = 'done'"
                        ).fetchone()[0]
    assert done["checked"] == alone.checked and "waited_s" in done
    assert _audit_threads() == []


@pytest.mark.parametrize("where", ["align.match:before", "align.report:before"])
def test_a_run_that_fails_before_the_audit_step_drops_the_job(conn, fixture_db, where):
    spec = Spec()
    cat = load_catalog(conn, spec)
    _align_failing_at(fixture_db, spec, cat, where)
    assert _audit_threads() == []
    # Its session is gone too, and the ledger knows nothing of it: the step is still to do.
    assert conn.execute("select count(*) from pg_stat_activity where application_name = 'pgconverge:align.phone_audit'"
                        ).fetchone()[0] == 0
    assert conn.execute("select count(*) from pgconverge.events where step = 'align.phone_audit'").fetchone()[0] == 0
    with Runner(Target(fixture_db, "--dsn"), spec, planner.build(spec, cat)) as r:
        results = {x.step: x for x in r.run_phase("align")}
    assert results["align.phone_audit"].status == "done" and results["align.phone_audit"].rows > 100


def test_a_run_resumed_at_the_audit_step_audits_there_and_finds_the_same(conn, fixture_db):
    """Everything before the audit is done: nothing is left to run beside it, so its own step reads and compares."""
    spec = Spec()
    cat = load_catalog(conn, spec)
    _align_failing_at(fixture_db, spec, cat, "align.phone_audit:before")
    assert _audit_threads() == []
    progress = RecordProgress()
    with Runner(Target(fixture_db, "--dsn"), spec, planner.build(spec, cat), progress=progress) as r:
        r.run_phase("align")
    assert not any(e.startswith("note align.phone_audit starts now") for e in progress.events)
    done = conn.execute("select detail from pgconverge.events where step = 'align.phone_audit' and event = 'done'"
                        ).fetchone()[0]
    alone = _audit_alone(conn, spec, cat)
    assert "waited_s" not in done and (done["checked"], done["disagreements"]) == (alone.checked, alone.disagreements)
    assert alone.checked > 100
