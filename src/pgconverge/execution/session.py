"""Session settings for the work connection, in one place."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import psycopg
from psycopg import pq, sql

from pgconverge.connection import STATEMENT_MARK
from pgconverge.execution import killpoint

DDL_STATEMENT_TIMEOUT_MS = 30_000
BATCH_STATEMENT_TIMEOUT_MS = 120_000
# A transaction that only reads (a check, a snapshot) may sit idle while this process reads its results.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
# A step's own transaction (a DDL, a policy rewrite, a group of them) holds locks that stop the application's
# statements on its tables (ACCESS EXCLUSIVE, SHARE ROW EXCLUSIVE): it goes out in one message (at_once) and is
# never idle. Should one be all the same (the tests' pause point inside it), the server ends the session after this
# long, and the locks go with it, well within an application's statement_timeout (Supabase gives its API roles 3 s
# and 8 s).
LOCKS_IDLE_TIMEOUT_MS = 2_000


def configure(conn: psycopg.Connection, application_name: str) -> None:
    """Settings that hold for the whole session."""
    conn.execute("select set_config('application_name', %s, false), "
                 "set_config('idle_in_transaction_session_timeout', %s, false)",
                 (application_name[:63], str(IDLE_IN_TRANSACTION_TIMEOUT_MS)))


@contextmanager
def transaction(conn: psycopg.Connection, *, lock_timeout_ms: int,
                statement_timeout_ms: int = DDL_STATEMENT_TIMEOUT_MS,
                repeatable_read: bool = False) -> Iterator[psycopg.Connection]:
    """A transaction whose lock waits are short: a DDL waiting for its lock blocks every writer queued behind it."""
    with conn.transaction():
        if repeatable_read:
            conn.execute("set transaction isolation level repeatable read")
        set_limits(conn, lock_timeout_ms=lock_timeout_ms, statement_timeout_ms=statement_timeout_ms, local=True)
        yield conn


def limits(*, lock_timeout_ms: int, statement_timeout_ms: int) -> list[tuple[str, str]]:
    """How long a statement may wait for a lock and run, as settings (name, value)."""
    return [("lock_timeout", f"{lock_timeout_ms}ms"), ("statement_timeout", f"{statement_timeout_ms}ms")]


def set_limits(conn: psycopg.Connection, *, lock_timeout_ms: int, statement_timeout_ms: int, local: bool) -> None:
    """The limits above, for the transaction open (LOCAL) or for the session."""
    settings = limits(lock_timeout_ms=lock_timeout_ms, statement_timeout_ms=statement_timeout_ms)
    conn.execute("select set_config(%s, %s, %s), set_config(%s, %s, %s)",
                 [v for name, value in settings for v in (name, value, local)])


def set_outside_transaction(conn: psycopg.Connection, *, lock_timeout_ms: int, statement_timeout_ms: int) -> None:
    """For statements that cannot run in a transaction block (CONCURRENTLY)."""
    set_limits(conn, lock_timeout_ms=lock_timeout_ms, statement_timeout_ms=statement_timeout_ms, local=False)


class Collected:
    """Statements gathered to go out in one transaction (at_once). It takes what a connection's execute(query,
    params) does, so that code writing a ledger record on a connection can write it here; nothing is sent, and
    nothing comes back."""

    def __init__(self) -> None:
        self.parts: list[tuple[Any, Any]] = []

    def execute(self, query: Any, params: Any = None) -> None:
        self.parts.append((query, params))


def at_once(conn: psycopg.Connection, statements: Collected, *, lock_timeout_ms: int,
            statement_timeout_ms: int = DDL_STATEMENT_TIMEOUT_MS, point: str | None = None) -> None:
    """Run STATEMENTS in one transaction on CONN (autocommit): BEGIN, the limits, the statements, COMMIT, as one
    query string (their parameters bound here) in one message, as a backfill batch goes (execution/batch.py).

    The server runs it to its COMMIT whatever this process does meanwhile: the locks the statements take are held
    while they run and commit, never while this process waits for a CPU, is stopped (a paused VM, a stalled
    client) or dies half way. On an error the server skips the rest and releases the locks (the transaction is
    aborted), and it is rolled back here before the error goes on (to the retry policy, or up). The transaction
    also says how long it may sit idle (LOCKS_IDLE_TIMEOUT_MS), for the one case where it does.

    POINT ("<step id>:commit") is the test suite's point inside the transaction (execution/killpoint.py): a
    failure there is sent before the COMMIT; a kill or a pause there sends the COMMIT on its own afterwards, so
    that the process ends or stops with the transaction open, as it would only under the test."""
    texts = [sql.SQL("begin isolation level read committed"), sql.SQL("select {}").format(sql.SQL(", ").join(
        sql.SQL("pg_catalog.set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
        for name, value in [*limits(lock_timeout_ms=lock_timeout_ms, statement_timeout_ms=statement_timeout_ms),
                            ("idle_in_transaction_session_timeout", f"{LOCKS_IDLE_TIMEOUT_MS}ms")]))]
    cur = psycopg.ClientCursor(conn)
    try:
        rendered = [cur.mogrify(q) for q in texts]
        rendered += [cur.mogrify(q, p) for q, p in statements.parts]
        step, _, where = (point or "").rpartition(":")
        if point is not None and killpoint.failing(step, where):
            rendered.append(killpoint.FAILING_SQL)
        pause = point is not None and killpoint.armed(step, where)
        if not pause:
            rendered.append("commit")
        # One statement a line: a statement ending in a comment does not swallow the next.
        cur.execute(STATEMENT_MARK + ";\n".join(rendered))
        if pause:
            killpoint.reached(step, where)
            cur.execute(STATEMENT_MARK + "commit")
    except BaseException:
        abandon(conn)
        raise
    finally:
        cur.close()


def abandon(conn: psycopg.Connection) -> None:
    """Roll back CONN's transaction if it is still open (a failed one, or one cut off by a signal); a connection that
    cannot even do that is left to the caller's error."""
    if conn.closed or conn.info.transaction_status not in (pq.TransactionStatus.INTRANS,
                                                           pq.TransactionStatus.INERROR):
        return
    try:
        conn.rollback()
    except psycopg.Error:
        pass
