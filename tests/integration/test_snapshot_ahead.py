"""The snapshot of owners before the migration runs beside the align steps after the coverage gate: committed with
its done record at its own turn, nothing of it left when a run stops first, and taken in place when its
transaction did not last."""

from __future__ import annotations

import threading
import time

import pytest

from pgconverge.catalog.introspect import load_catalog
from pgconverge.config import Spec
from pgconverge.connection import STATEMENT_MARK, Target
from pgconverge.errors import PgConvergeError
from pgconverge.execution import killpoint
from pgconverge.execution.runner import Runner
from pgconverge.planning import plan as planner

from _support import RecordProgress, wait_disconnected

STEP = "align.linkage_before"
APP = f"pgconverge:{STEP}"
# Every dependent row of the fixture, each once (their keys are their ids).
DEPENDENT_ROWS = "select (select count(*) from public.carts) + (select count(*) from public.orders) + " \
                 "(select count(*) from public.sessions)"


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == APP and t.is_alive()]


def _run(dsn: str, conn, progress=None):
    spec = Spec()
    with Runner(Target(dsn, "--dsn"), spec, planner.build(spec, load_catalog(conn, spec)), progress=progress) as r:
        return {x.step: x for x in r.run_phase("align")}


def test_snapshot_starts_after_the_gate_and_commits_at_its_turn(conn, fixture_db):
    progress = RecordProgress()
    _run(fixture_db, conn, progress)
    ev = progress.events
    started = next(i for i, e in enumerate(ev) if e.startswith(f"note {STEP} starts now"))
    assert ev.index("done align.coverage_gate") < started < ev.index("start align.report")
    assert ev.index("done align.phone_audit") < ev.index(f"start {STEP}") < ev.index(f"done {STEP}")
    assert not any(e.startswith("note reading") and "carts" in e for e in ev)  # said once, when it started
    events = conn.execute("select event, detail from pgconverge.events where step = %s order by id", (STEP,)).fetchall()
    assert [e for e, _ in events] == ["start", "done"]
    assert {"seconds", "waited_s"} <= set(events[1][1])
    assert conn.execute("select count(*) from pgconverge.linkage_before").fetchone()[0] == \
        conn.execute(DEPENDENT_ROWS).fetchone()[0] > 100
    assert _threads() == []
    wait_disconnected(fixture_db, APP)


@pytest.mark.parametrize("where", ["align.report:before", "align.phone_audit:before", f"{STEP}:commit"])
def test_a_run_that_stops_before_the_commit_leaves_nothing_of_it(conn, fixture_db, where):
    killpoint.fail_at(where)
    try:
        with pytest.raises(PgConvergeError):
            _run(fixture_db, conn)
    finally:
        killpoint.fail_at(None)
    assert _threads() == []
    wait_disconnected(fixture_db, APP)
    # Its table was created in the job's transaction: rolled back with it; the ledger has no done record.
    assert conn.execute("select to_regclass('pgconverge.linkage_before')").fetchone()[0] is None
    assert conn.execute("select count(*) from pgconverge.events where step = %s and event = 'done'",
                        (STEP,)).fetchone()[0] == 0
    results = _run(fixture_db, conn)
    assert results[STEP].status == "done"
    assert conn.execute("select count(*) from pgconverge.linkage_before").fetchone()[0] == \
        conn.execute(DEPENDENT_ROWS).fetchone()[0]


def test_a_snapshot_whose_session_ended_is_taken_in_place(conn, fixture_db):
    """The job's session is ended while it waits for its turn (as the server's idle-in-transaction timeout would):
    nothing was committed, and the step takes the snapshot itself."""

    def end_the_job(step_id: str) -> None:
        if step_id != "align.phone_audit":
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # Idle in its transaction after its last statement (the DO block keying the table), not between two
            # of them: ended between statements, the job fails instead, which is another path.
            pids = [r[0] for r in conn.execute("select pid from pg_stat_activity where application_name = %s and "
                                               "state = 'idle in transaction' and query ilike %s",
                                               (APP, STATEMENT_MARK + "do %")).fetchall()]
            if pids:
                conn.execute("select pg_terminate_backend(%s)", (pids[0],))
                return
            time.sleep(0.05)
        raise AssertionError("the snapshot job never finished its statements")

    progress = RecordProgress(end_the_job)
    results = _run(fixture_db, conn, progress)
    assert results[STEP].status == "done"
    assert any(e.startswith(f"note {STEP} runs in place: its transaction did not last") for e in progress.events)
    notes = conn.execute("select message from pgconverge.events where step = %s and event = 'note'",
                         (STEP,)).fetchall()
    assert [m for (m,) in notes if m.startswith("run in place")]
    assert conn.execute("select count(*) from pgconverge.linkage_before").fetchone()[0] == \
        conn.execute(DEPENDENT_ROWS).fetchone()[0]
    assert _threads() == []
