"""Read-only align steps run beside the steps before them, each in a thread and on a connection of its own.

The phone audit only reads: every distinct legacy number with its SQL key, then phonenumbers' reading of each, in
Python. It needs nothing but the normalize function, and nothing waits for its verdict before align's own
step for it (the report shows it; no gate reads it). So the runner starts it as soon as the function exists, and
the CPU it spends in Python overlaps the matching and the snapshots the database does meanwhile. Its step, when
the runner reaches it, waits for the result and records it as the step always did.

The snapshot of owners before the migration (a CreateTable with `after`) reads every dependent row through the
mapping, which is complete once the coverage gate has passed; the steps between (the report, the phone audit)
read only. It runs in one transaction left open once its statements are done, and its step commits that
transaction together with its done record: nothing of it is committed before its turn.

A run that stops first (an error, a signal, a kill) drops both with the process or the connection: nothing of
them is in the ledger, and their steps run again on resume.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import psycopg

from pgconverge.connection import Target, connect
from pgconverge.execution import session
from pgconverge.identity import phone_audit
from pgconverge.operations.base import Step


def read_and_audit(conn: psycopg.Connection, op, *, between: Callable[[int], None], pool=None,
                   fork: bool = True) -> tuple[phone_audit.Audit, float]:
    """The audit of OP (a PhoneAudit) on CONN: (what it found, seconds the read took before the comparison began).

    WITH HOLD: the result stays on the server once its transaction ends, so no snapshot stays open while the
    numbers are compared, and this process holds one chunk at a time whatever the table's size. BETWEEN, POOL
    and FORK as phone_audit.audit takes them."""
    t0 = time.monotonic()
    with conn.cursor(name=f"pgconverge_phone_audit_{os.getpid()}", withhold=True) as cur:
        cur.execute(op.statements()[0])
        read_s = time.monotonic() - t0

        def chunks():
            while rows := cur.fetchmany(phone_audit.CHUNK):
                yield rows

        return phone_audit.audit(chunks(), op.region, between=between, pool=pool, fork=fork), read_s


class _Stopped(Exception):
    """The runner is leaving: the job ends after the chunk in hand."""


class _Job:
    """A step's work in a thread of its own (named after the step), on a connection of its own."""

    step: Step
    target: Target

    def start(self) -> None:
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"pgconverge:{self.step.id}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def _connect(self) -> psycopg.Connection:
        conn = connect(self.target, application_name="pgconverge")
        session.configure(conn, f"pgconverge:{self.step.id}")
        return conn

    def _halt(self, conn: psycopg.Connection | None, busy: bool) -> None:
        """Cancel CONN's statement in flight (when BUSY) and wait for the thread to end."""
        if busy and conn is not None and not conn.closed:
            try:
                conn.cancel_safe(timeout=5)
            except (psycopg.Error, AttributeError):
                pass
        if self.thread is not None:
            self.thread.join(timeout=30)


class PhoneAuditJob(_Job):
    """One phone audit in a thread: start(), then wait() for its Audit, or stop()."""

    def __init__(self, target: Target, step: Step, stop: threading.Event, *, estimate: int):
        self.target, self.step, self.op = target, step, step.op
        self.stop_event = stop
        self.estimate = estimate  # the legacy table's planner estimate of rows: does a process pool pay?
        self.found: phone_audit.Audit | None = None
        self.error: BaseException | None = None
        self.read_s: float | None = None
        self.seconds: float | None = None
        self.checked = 0
        self.done = threading.Event()
        self.conn: psycopg.Connection | None = None
        self.pool = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        # The worker processes are forked here, from the calling (main) thread, before the job's thread
        # exists; an audit too small for them compares in the job's thread alone.
        if self.estimate >= phone_audit.PARALLEL_FROM:
            self.pool = phone_audit.worker_pool()
        super().start()

    def _run(self) -> None:
        try:
            self.conn = self._connect()

            def between(checked: int) -> None:
                self.checked = checked
                if self.stop_event.is_set():
                    raise _Stopped()

            self.found, read_s = read_and_audit(self.conn, self.op, between=between, pool=self.pool,
                                                fork=self.pool is not None)
            self.read_s = read_s
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the main thread by wait()
            self.error = exc
        finally:
            self.seconds = time.monotonic() - self.started
            if self.conn is not None:
                try:
                    self.conn.close()
                except psycopg.Error:
                    pass
            self.done.set()

    def wait(self, check: Callable[[int], None]) -> phone_audit.Audit:
        """The audit's result, once done; CHECK(numbers compared so far) is called meanwhile and may raise."""
        while not self.done.wait(0.2):
            check(self.checked)
        check(self.checked)
        self._release()
        if self.error is not None:
            raise self.error
        if self.found is None:
            raise RuntimeError(f"{self.step.id}: the audit stopped before its end")
        return self.found

    def stop(self) -> None:
        """End the job (the runner is leaving): its query is cancelled, the chunk in hand finishes."""
        self.stop_event.set()
        self._halt(self.conn, busy=True)
        self._release()

    def _release(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


class SnapshotJob(_Job):
    """A snapshot step's statements (CreateTable with `after`) in one transaction on a connection of its own, left
    open once they are done: start(), then commit() at the step's turn, or stop().

    A job that failed, or whose transaction did not last until its step (the server ends a session idle in a
    transaction after session.IDLE_IN_TRANSACTION_TIMEOUT_MS), commits nothing: its step then runs in place, as it
    would have without the job, and says why."""

    def __init__(self, target: Target, step: Step, *, lock_timeout_ms: int):
        self.target, self.step = target, step
        self.lock_timeout_ms = lock_timeout_ms
        self.error: BaseException | None = None
        self.seconds: float | None = None
        self.done = threading.Event()
        self.stopping = False
        self.conn: psycopg.Connection | None = None
        self.thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            self.conn = self._connect()
            self.conn.autocommit = False  # the next statement opens the transaction the step's turn commits
            # As the step's own run: a lock wait is bounded, a long read is not (it blocks no writer).
            session.set_limits(self.conn, lock_timeout_ms=self.lock_timeout_ms, statement_timeout_ms=0, local=True)
            for s in self.step.op.statements():
                if self.stopping:
                    return
                self.conn.execute(s)
        except BaseException as exc:  # read by commit(): the step then runs in place
            self.error = exc
        finally:
            self.seconds = time.monotonic() - self.started
            self.done.set()

    def commit(self, record: Callable[[psycopg.Connection], None], check: Callable[[], None]) -> str | None:
        """At the step's turn: wait for the statements (CHECK() is called meanwhile and may raise), then
        RECORD(connection) the step as done in the job's transaction and commit both. None once committed;
        otherwise why nothing was (the job failed or its session ended), and the step must run in place."""
        while not self.done.wait(0.2):
            check()
        check()
        if self.error is not None:
            return f"it failed beside the steps before it ({str(self.error).strip() or type(self.error).__name__})"
        conn = self.conn
        assert conn is not None
        try:
            conn.execute("select 1")  # the session may have been ended while it waited
        except psycopg.Error as exc:
            return f"its transaction did not last until this step ({str(exc).strip()})"
        record(conn)
        conn.commit()
        return None

    def stop(self) -> None:
        """End the job: its statement in flight is cancelled, its transaction rolled back with the connection."""
        self.stopping = True
        self._halt(self.conn, busy=not self.done.is_set())
        conn = self.conn  # read again: a thread stopped before its first statement connected all the same
        if conn is not None and not conn.closed:
            try:
                conn.close()
            except psycopg.Error:
                pass
