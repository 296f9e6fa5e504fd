"""One batch of a batched step: one transaction, sent in one message, its checkpoint written by its own statement.

A batch's UPDATE takes row locks that the application's writes to those rows wait for, until the batch commits.
So nothing the client does may sit between the batch statement and its COMMIT: the statement writes its
checkpoint itself (a data-modifying CTE over the batch's result, `statement` below), and BEGIN, the transaction's
settings, the statement and COMMIT go out together as one query string. The server runs them back to back; the
locks are held for the statement and the commit only, never while this process waits for a CPU or the GIL between
two statements (several milliseconds per batch on a busy host, during which the application's writes queued).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pgconverge.execution import killpoint, session
from pgconverge.operations.batched import INTEGER_TYPES, Batched


def statement(op: Batched, checkpoints: sql.Composable, *, ranged: bool) -> sql.Composable:
    """OP's batch statement with its checkpoint: an INSERT into CHECKPOINTS (the ledger's table) of the batch's
    position, when it scanned anything, in the same statement. Returns (rows scanned, last key, rows changed) as
    OP's statement does. Parameters besides OP's: %(pgc_run)s, %(pgc_step)s, %(pgc_rows)s (rows done before this
    batch) and, when RANGED (several workers), %(pgc_plan)s and %(pgc_range)s.

    The position is the last key as JSON: a number for an integer key or a page, otherwise its text, cast back by
    the batch statement when the step resumes (the form the ledger has always held)."""
    ctes, result = op.parts
    last = sql.SQL("b.last") if op.key_type in INTEGER_TYPES else sql.SQL("b.last::text")
    position = sql.SQL("pg_catalog.to_jsonb({})").format(last)
    if ranged:
        position = sql.SQL("pg_catalog.jsonb_build_object('plan', %(pgc_plan)s::text, 'range', %(pgc_range)s::int, "
                           "'after', {})").format(position)
    return sql.SQL(
        "with {ctes}, pgc_batch (scanned, last, changed) as (select {result}), "
        "pgc_checkpoint as (insert into {ck} (run_id, step, position, rows_done, batch_rows, batch_ms) "
        "select %(pgc_run)s, %(pgc_step)s, {position}, %(pgc_rows)s::bigint + b.scanned, b.scanned, "
        "extract(epoch from pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp()) * 1000 "
        "from pgc_batch b where b.scanned > 0) "
        "select scanned, last, changed from pgc_batch").format(
        ctes=ctes, result=result, ck=checkpoints, position=position)


def run(conn: psycopg.Connection, stmt: sql.Composable, params: dict[str, Any], *,
        settings: list[tuple[str, str]], fail_point: tuple[str, str] | None = None) -> tuple[int, Any, int]:
    """Run one batch in its own transaction on CONN (autocommit): BEGIN, SETTINGS (name, value: local to the
    transaction), STMT with PARAMS, COMMIT. Returns STMT's row.

    The transaction says READ COMMITTED itself, as pgconverge's sessions default to (connection.connect): the
    match's align_legacy_row must see the canonical row of the transaction whose key lock it waited for, and a
    backfill's UPDATE of a row the application changed meanwhile updates its new version instead of failing.

    They go as one query string, PARAMS bound here, in one message: the server runs it to its COMMIT whatever this
    process does meanwhile. (Sent as separate statements, even pipelined, the COMMIT leaves only when this process
    queues it, after the statement that took the locks may already have run.) On an error the server skips the
    rest of the string, and the failed transaction is rolled back here before the error goes on (to the retry
    policy, or up). The last key comes back as the ledger keeps it: an integer, or text (a uuid, a timestamp…),
    which the batch statement casts back. FAIL_POINT (step id, point) is the test suite's injected failure, sent
    after STMT inside the transaction (execution/killpoint.py)."""
    statements = [sql.SQL("begin isolation level read committed")]
    if settings:
        statements.append(sql.SQL("select {}").format(sql.SQL(", ").join(
            sql.SQL("pg_catalog.set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
            for name, value in settings)))
    result = len(statements)
    statements.append(stmt)
    if fail_point is not None and killpoint.failing(*fail_point):
        statements.append(sql.SQL(killpoint.FAILING_SQL))
    statements.append(sql.SQL("commit"))
    cur = psycopg.ClientCursor(conn)
    try:
        cur.execute(sql.SQL("; ").join(statements), params)
        for _ in range(result):
            cur.nextset()
        row = cur.fetchone()
    except BaseException:
        session.abandon(conn)
        raise
    finally:
        cur.close()
    assert row is not None
    return row[0], key_value(row[1]), row[2]


def key_value(last: Any) -> Any:
    """A key as the ledger keeps it: an integer, or text (a uuid, a timestamp…) the batch statement casts back."""
    return last if isinstance(last, (int, str, type(None))) else str(last)


def settings(op: Batched, lock_timeout_ms: int) -> list[tuple[str, str]]:
    """A batch transaction's settings: its limits, then OP's own."""
    return session.limits(lock_timeout_ms=lock_timeout_ms,
                          statement_timeout_ms=session.BATCH_STATEMENT_TIMEOUT_MS) + list(op.settings)
