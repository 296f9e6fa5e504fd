"""The stop request a signal makes (execution/interrupt.py), and how the report reads interrupted attempts.

Real signals sent to a real run are in tests/integration/test_interrupts.py; here the handler is called as the
interpreter would call it.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from pgconverge.execution import interrupt
from pgconverge.report.data import _phases

STEP = SimpleNamespace(id="expand.carts.backfill", phase="expand")


def test_nothing_is_asked_until_a_signal_comes():
    stop = interrupt.Interrupts(hint="resume with: pgconverge run expand")
    assert not stop.requested
    stop.check("before x", step=STEP)
    stop.after_batch(STEP, 1200, 4000)
    t0 = time.monotonic()
    stop.sleep(0.05)
    assert time.monotonic() - t0 >= 0.05
    assert not stop.event().is_set()


def test_the_first_signal_asks_to_stop_at_the_next_safe_point():
    stop = interrupt.Interrupts(hint="resume with: pgconverge run expand")
    worker = stop.event()
    stop._handle(signal.SIGTERM, None)
    assert stop.requested and worker.is_set() and stop.event().is_set()
    t0 = time.monotonic()
    stop.sleep(5)  # a pause between batches ends at once
    assert time.monotonic() - t0 < 1
    with pytest.raises(interrupt.Interrupted) as caught:
        stop.after_batch(STEP, 12000, 40000)
    exc = caught.value
    assert exc.exit_code == 143 and exc.step == "expand.carts.backfill" and exc.phase == "expand"
    assert exc.line() == ("interrupted during expand.carts.backfill after 12,000 rows; "
                          "resume with: pgconverge run expand")
    assert exc.detail == {"stopped": "batch", "rows_done": 12000, "rows_total": 40000}
    assert exc.as_dict()["interrupted"]["signal"] == "SIGTERM"


def test_a_second_signal_aborts_unless_shielded_and_sigint_exits_130():
    stop = interrupt.Interrupts()
    stop._handle(signal.SIGINT, None)
    with stop.shielded():
        stop._handle(signal.SIGINT, None)  # restoring the policies: it waits for the block to end
    assert stop.stop("x").exit_code == 130
    stop = interrupt.Interrupts()
    stop._handle(signal.SIGINT, None)
    with pytest.raises(interrupt.Abort):
        stop._handle(signal.SIGINT, None)
    assert issubclass(interrupt.Abort, KeyboardInterrupt)  # psycopg cancels the statement in flight on it


def _events(*kinds: tuple) -> list[dict]:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    out = []
    for i, (run, step, kind, extra) in enumerate(kinds):
        out.append({"id": i + 1, "run_id": run, "phase": step.split(".")[0], "step": step, "event": kind,
                    "attempt": extra.get("attempt", 1), "sql": extra.get("sql"), "sqlstate": extra.get("sqlstate"),
                    "message": extra.get("message"), "duration_ms": None, "detail": extra.get("detail"),
                    "at": t0 + timedelta(seconds=i)})
    return out


def test_the_report_counts_interrupted_and_failed_attempts_with_their_errors_and_durations():
    b, p = "expand.carts.backfill", "switch.policies"
    phases = _phases(_events(
        (1, b, "start", {"detail": {"fresh": True}}),
        (1, b, "interrupted", {"message": "interrupted during expand.carts.backfill after 200 rows"}),
        (2, b, "start", {}),
        (2, b, "error", {"sqlstate": "40P01", "message": "deadlock detected"}),
        (3, b, "start", {}),
        (3, b, "retry", {"attempt": 1, "sqlstate": "55P03"}),
        (3, b, "done", {"attempt": 2, "sql": "update …"}),
        (3, p, "start", {}),
        (3, p, "done", {}),
        (3, p, "reverted", {"message": "policies restored: the run was interrupted during the equivalence check"}),
        (3, p, "interrupted", {"message": "interrupted during the RLS equivalence check of switch.policies"}),
    ))
    steps = {s["id"]: s for ph in phases for s in ph["steps"]}
    backfill = steps[b]
    assert backfill["state"] == "done" and backfill["executions"] == 3
    assert backfill["attempts"] == 4  # interrupted, failed, and two tries (one lock retry) of the last
    assert [h["outcome"] for h in backfill["history"]] == ["interrupted", "failed", "done"]
    assert backfill["history"][0]["duration_ms"] == 1000.0 and backfill["history"][1]["sqlstate"] == "40P01"
    assert [e["message"] for e in backfill["errors"]] == [
        "interrupted during expand.carts.backfill after 200 rows", "deadlock detected"]
    policies = steps[p]
    assert policies["state"] == "interrupted" and policies["attempts"] == 1
    assert [h["outcome"] for h in policies["history"]] == ["interrupted"]
    assert {ph["phase"]: ph["state"] for ph in phases} == {"expand": "done", "switch": "interrupted"}
