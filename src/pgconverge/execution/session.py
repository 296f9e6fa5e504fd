"""Session settings for the work connection, in one place."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import psycopg

DDL_STATEMENT_TIMEOUT_MS = 30_000
BATCH_STATEMENT_TIMEOUT_MS = 120_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000


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
