"""Fault-injection hooks for the test suite: end the process, or fail a step, at a named point of a step.

PGCONVERGE_KILL_AT="<step id>:<point>" SIGKILLs this process at the point; PGCONVERGE_STOP_AT="<step id>:<point>"
SIGSTOPs it there instead (a paused VM, a stalled client: its connections stay open until SIGCONT or a kill);
PGCONVERGE_FAIL_AT="<step id>:<point>" makes the step fail there with a real SQL error, which the runner handles as
it handles any other (a failed statement: its transaction rolls back, the ledger records the error, the run stops).
Points:

- ``before``: the step is about to start (nothing of it written yet); a failure there is the step's first
  statement failing;
- ``after``: the step has committed and is recorded as done (kills only);
- ``commit``: inside the step's transaction, its statements executed and its "done" record written,
  just before COMMIT (for the policy rewrite: the new policies in place but not committed). A step's transaction
  goes out in one message with its COMMIT (session.at_once), so outside the tests no process ever stops there;
  with a kill or a pause armed there, the COMMIT goes on its own after the point;
- ``batch:<k>``: a batched step has committed its k-th batch of this run (with several backfill workers,
  the k-th of any worker: the others die in the middle of theirs); a failure there is the k-th batch's
  statement failing, so batches before it stay committed and the k-th rolls back;
- ``rls_check`` (the policy rewrite): the new policies committed and recorded done but not proven, the
  equivalence check on them about to run (a failure: that check failing with an SQL error).

The variables are read once per process (``fail_at`` changes the failure point in-process); when they are unset
(always, outside the tests) ``reached`` and ``fail`` return after one comparison with None.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Iterator

import psycopg

_AT = os.environ.get("PGCONVERGE_KILL_AT") or None
_STOP = os.environ.get("PGCONVERGE_STOP_AT") or None
_FAIL = os.environ.get("PGCONVERGE_FAIL_AT") or None

# The statement an injected failure sends: a division by zero (SQLSTATE 22012), never retried.
FAILING_SQL = "select 1 / 0 as pgconverge_injected_failure"


def reached(step_id: str, point: str) -> None:
    if _AT is not None and _AT == f"{step_id}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)
    if _STOP is not None and _STOP == f"{step_id}:{point}":
        os.kill(os.getpid(), signal.SIGSTOP)


def armed(step_id: str, point: str) -> bool:
    """True when reaching step:point ends or stops this process."""
    return f"{step_id}:{point}" in (_AT, _STOP)


def fail_at(where: str | None) -> None:
    """Make step:point fail from now on in this process (None: no failure), as PGCONVERGE_FAIL_AT does."""
    global _FAIL
    _FAIL = where or None


@contextmanager
def suspended() -> Iterator[None]:
    """No kill or failure point fires inside (the preflight runs the same steps on its copy first: a point
    meant for the target must not end or fail the process there)."""
    global _AT, _STOP, _FAIL
    saved = _AT, _STOP, _FAIL
    _AT = _STOP = _FAIL = None
    try:
        yield
    finally:
        _AT, _STOP, _FAIL = saved


def failing(step_id: str, point: str) -> bool:
    """True at the failure point: the caller sends FAILING_SQL where its step's statement would fail."""
    return _FAIL is not None and _FAIL == f"{step_id}:{point}"


def fail(step_id: str, point: str, conn: psycopg.Connection) -> None:
    """At the failure point, send the failing statement on CONN: in its transaction, which it aborts."""
    if failing(step_id, point):
        conn.execute(FAILING_SQL)
