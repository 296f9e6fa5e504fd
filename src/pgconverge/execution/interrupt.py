"""Clean interrupts: SIGINT and SIGTERM stop a run at its next safe point.

While a runner is active (execution/runner.py installs the handlers for its lifetime, in the main
thread), the first signal only asks it to stop. The runner stops where a failure there would leave
the database: after a backfill batch has committed together with its checkpoint (every worker
thread of a parallel backfill too: they watch an Event this sets), between two steps, between two
lock retries, between two identities or tokens of the switch's RLS equivalence check (whose
rewrite is then undone, as a failed check undoes it). The runner records an `interrupted` event
saying where, and the command prints one line with the command that resumes, exiting 128 + the
signal's number: 130 for SIGINT, 143 for SIGTERM.

A second signal while stopping aborts at once: `Abort` (a KeyboardInterrupt, so psycopg cancels the
statement in flight on the server) is raised wherever the main thread is; the open transaction rolls
back, so a batch is still committed with its checkpoint or not at all. Inside `shielded()` (restoring
the old policies) the second signal waits for the block to end. A third signal ends the process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

from pgconverge.errors import PgConvergeError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_S = 0.05  # how often a pause between batches looks for a stop request


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Abort(KeyboardInterrupt):
    """The second signal: stop now, cancelling the statement in flight."""


class Interrupted(PgConvergeError):
    """A signal stopped the run at a safe point; the ledger has an `interrupted` event. Exit 128 + signal."""

    def __init__(self, signum: int, where: str, *, step: str | None = None, phase: str | None = None,
                 detail: dict[str, Any] | None = None, hint: str | None = None):
        super().__init__(f"interrupted {where}", fix=hint)
        self.signum, self.where, self.step, self.phase = signum, where, step, phase
        self.detail = dict(detail or {})
        self.exit_code = 128 + signum

    @property
    def hint(self) -> str | None:
        return self.fix

    @hint.setter
    def hint(self, value: str | None) -> None:
        self.fix = value

    def line(self) -> str:
        """The one line a command prints: where it stopped and how to resume."""
        return self.problem + (f"; {self.fix}" if self.fix else "")

    def as_dict(self) -> dict:
        return {**super().as_dict(), "interrupted": {"signal": signal_name(self.signum), "exit": self.exit_code,
                                                     "phase": self.phase, "step": self.step, **self.detail},
                "resume": self.fix}


def rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")


class Interrupts:
    """The stop request of one runner, and the signal handlers that make it."""

    def __init__(self, hint: str | None = None):
        self.hint = hint  # "resume with: pgconverge run expand --dsn …", for the line the command prints
        self.signum: int | None = None
        self.count = 0
        self._events: weakref.WeakSet[threading.Event] = weakref.WeakSet()
        self._previous: dict[int, Any] = {}
        self._shield = 0

    # -- handlers -----------------------------------------------------------------------------

    def install(self) -> None:
        """Catch SIGINT and SIGTERM until uninstall(); only the main thread can (elsewhere: nothing happens)."""
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Put the previous handlers back; once a stop was requested, the command is on its way out with 130/143:
        until release(), a further signal ends the process at once with that status (the runner is closed)."""
        global _leaving
        if not self._previous:
            return
        if self.requested:
            code = 128 + (self.signum or signal.SIGINT)
            _leaving = (self._previous, code)
            for sig in self._previous:
                signal.signal(sig, lambda signum, frame: os._exit(code))
        else:
            _restore(self._previous)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
        for event in list(self._events):
            event.set()  # backfill workers stop after their batch (the main thread never holds these)
        if self.count >= 3:
            os._exit(128 + self.signum)
        if self.count == 2 and not self._shield:
            raise Abort()

    # -- what the runner asks -----------------------------------------------------------------

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def event(self) -> threading.Event:
        """An Event set when a stop is requested (already set if it was): for worker threads to watch."""
        event = threading.Event()
        if self.requested:
            event.set()
        self._events.add(event)
        return event

    def sleep(self, seconds: float) -> None:
        """time.sleep that ends early when a stop is requested."""
        deadline = time.monotonic() + seconds
        while not self.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(POLL_S, left))

    def stop(self, where: str, *, step: Any = None, **detail: Any) -> Interrupted:
        """The Interrupted to raise at this safe point (STEP: the plan step it stopped in or before)."""
        return Interrupted(self.signum or signal.SIGINT, where, step=getattr(step, "id", None),
                           phase=getattr(step, "phase", None), detail=detail, hint=self.hint)

    def check(self, where: str, *, step: Any = None, **detail: Any) -> None:
        """Raise Interrupted if a stop was requested: the caller is at a safe point."""
        if self.requested:
            raise self.stop(where, step=step, **detail)

    def after_batch(self, step: Any, rows_done: int, total: int | None = None) -> None:
        """A backfill's batches stopped (every batch so far committed with its checkpoint): raise Interrupted."""
        if self.requested:
            raise self.stop(f"during {step.id} after {rows(rows_done)}", step=step, stopped="batch",
                            rows_done=rows_done, rows_total=total)

    @contextmanager
    def shielded(self) -> Iterator[None]:
        """A block the second signal does not abort (the third still ends the process)."""
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1


# The handlers of the runner that is active now, for a command to name where an Abort stopped it.
_active: Interrupts | None = None
# After a stop: the handlers to put back once the command has said where it stopped, and its exit status.
_leaving: tuple[dict[int, Any], int] | None = None


def _restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


# True in the `pgconverge` process itself (cli.main): it ends with the command, so after a stop a further signal
# keeps ending it with 130/143 until it is gone. A command run in-process (the tests) gets its handlers back.
WHOLE_PROCESS = False


def leave(code: Any) -> None:
    """After a stop, end the process with CODE at once: Python's teardown puts the default handlers back (a
    signal there would end it by the signal instead), and a backfill worker still in its batch is cut off (its
    transaction rolls back, as any failure leaves it). Nothing to do when no signal stopped a runner."""
    if _leaving is None:
        return
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else _leaving[1])


def release() -> None:
    """The command has printed where it stopped: the handlers from before the runner apply again."""
    global _leaving
    if WHOLE_PROCESS:
        return
    if _leaving is not None and threading.current_thread() is threading.main_thread():
        _restore(_leaving[0])
    _leaving = None


def activate(interrupts: Interrupts | None) -> None:
    global _active
    _active = interrupts


def aborted(exc: BaseException | None = None) -> Interrupted:
    """The Interrupted for an Abort that reached a command outside any step."""
    cur = _active
    signum = (cur.signum if cur is not None else None) or signal.SIGINT
    return Interrupted(signum, "at once (the statement in flight was cancelled)", detail={"stopped": "abort"},
                       hint=cur.hint if cur is not None else None)
