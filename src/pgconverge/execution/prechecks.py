"""Data checks `plan` runs ahead of the phase whose first step runs them too, so both refuse alike."""

from __future__ import annotations

import psycopg

from pgconverge.config import Spec
from pgconverge.errors import PgConvergeError
from pgconverge.ledger.store import Ledger
from pgconverge.operations.base import Plan
from pgconverge.operations.check import Check

COLLISIONS_STEP = "expand.unique_collisions"


class RowsCollide(PgConvergeError):
    """Rows merged onto one canonical row would break a mirrored unique rule; nothing was changed."""


def collisions(conn: psycopg.Connection, spec: Spec, plan: Plan) -> None:
    """Once align is done and before expand has run its first step: refuse the rows expand's first step would."""
    step = next((s for s in plan.steps if s.id == COLLISIONS_STEP), None)
    if step is None or not isinstance(step.op, Check):
        return
    ledger = Ledger(conn, spec)
    if not ledger.exists():
        return
    states = ledger.step_states()
    if not all(states.get(s.id) is not None and states[s.id].state == "done" for s in plan.phase("align")):
        return  # no mapping yet: the rows cannot be grouped by canonical row
    if any(states.get(s.id) is not None and states[s.id].state in ("done", "pending") for s in plan.phase("expand")):
        return  # expand has started: its own first step decided
    with conn.transaction():
        conn.execute("set transaction isolation level repeatable read, read only")
        rows = conn.execute(step.op.query).fetchall()
    if rows:
        raise RowsCollide(f"{step.op.failure} ({len(rows)} group(s)); expand would refuse them at its first step:\n"
                          + "\n".join(f"  - {a}: {b}" if b is not None else f"  - {a}" for a, b in rows),
                          fix=step.op.fix)


class ReadOnly(PgConvergeError):
    """The server or the session takes no writes."""


def writable(conn: psycopg.Connection) -> None:
    """Refuse, before anything changes, a server in recovery (a standby) or a session whose transactions are
    read-only by default (default_transaction_read_only set on the server, database or role)."""
    standby, read_only, source = conn.execute(
        "select pg_catalog.pg_is_in_recovery(), s.setting = 'on', s.source from pg_catalog.pg_settings s "
        "where s.name = 'default_transaction_read_only'").fetchone()
    if standby:
        raise ReadOnly("the server is a standby (in recovery): it takes no writes; nothing was changed",
                       fix="connect to the primary: --dsn or DATABASE_URL naming the primary's host")
    if read_only:
        raise ReadOnly(f"this session's transactions are read-only by default (default_transaction_read_only = on, "
                       f"set in the {source} settings); nothing was changed",
                       fix="connect as a role, or to a database, that may write, or `ALTER DATABASE <db> RESET "
                           "default_transaction_read_only;` (or ALTER ROLE … RESET) if the setting is left over")
