"""Resolve where to connect (--dsn, DATABASE_URL, embedded) and open connections."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgconverge import embedded
from pgconverge.errors import ConnectionFailed

APPLICATION_NAME = "pgconverge"
CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Target:
    """Where pgconverge connects, and how that was decided."""

    dsn: str
    source: str  # "--dsn", "DATABASE_URL" or "embedded"

    @property
    def display(self) -> str:
        return redact(self.dsn)


def resolve(dsn: str | None = None, database: str | None = None) -> Target:
    """Pick the target: an explicit DSN, then DATABASE_URL, then the embedded server."""
    if dsn:
        return Target(_validated(dsn, "--dsn"), "--dsn")
    env = os.environ.get("DATABASE_URL")
    if env:
        return Target(_validated(env, "DATABASE_URL"), "DATABASE_URL")
    return Target(embedded.ensure_running(database=database or "postgres"), "embedded")


def _validated(dsn: str, source: str) -> str:
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConnectionFailed(
            f"{source} is not a valid connection string: {exc}",
            fix="use a URI like postgresql://user:password@host:5432/dbname or key=value pairs",
        ) from exc
    return dsn


def shown(dsn: str) -> str:
    """DSN as the user wrote it when it holds no password, else redacted (for commands shown to the user)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return redact(dsn)
    return redact(dsn) if params.get("password") else dsn


def redact(dsn: str) -> str:
    """Return DSN with any password masked, for messages and reports."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable connection string>"
    if params.get("password"):
        params["password"] = "***"
    return make_conninfo(**params)


# What every pgconverge session runs with, whatever the server, database or role default: Postgres's own defaults.
# Its transactions are READ COMMITTED unless one asks for another level (the snapshots do): a statement that waits
# for a lock and then reads (align_legacy_row after a key's lock, a DDL step after its lock wait) must see what the
# transaction it waited for committed. No timeout cuts a session short: a check that reads a large table through a
# policy, a snapshot held open while other sessions read, a connection idle while the backfill workers write (the
# one that holds the one-runner lock among them) run as long as they need, as pg_dump's sessions do; a statement
# that must not wait or run long sets its own limits (execution/session.py). The search path stays the session's:
# pgconverge qualifies every name, and the user's triggers that fire on its writes may rely on it.
SESSION_TERMS = {
    "default_transaction_isolation": "read committed",
    "statement_timeout": "0",
    "lock_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
    "idle_session_timeout": "0",  # Postgres 14 and later
    "transaction_timeout": "0",  # Postgres 17 and later
}


def own_terms(conn: psycopg.Connection, *, row_security: bool = False) -> None:
    """Set SESSION_TERMS on CONN (and row_security = off unless ROW_SECURITY): session settings, not startup
    options, which connection poolers refuse. Those this server does not know are left out."""
    terms = {**SESSION_TERMS, **({} if row_security else {"row_security": "off"})}
    conn.execute("select pg_catalog.set_config(x.name, x.value, false) from rows from (pg_catalog.unnest(%s::text[]), "
                 "pg_catalog.unnest(%s::text[])) as x(name, value) where exists (select from pg_catalog.pg_settings s "
                 "where s.name = x.name)", (list(terms), list(terms.values())))


def connect(target: Target | str, *, autocommit: bool = True, application_name: str = APPLICATION_NAME,
            row_security: bool = False, **kwargs) -> psycopg.Connection:
    """Open a connection, turning failures into an error that says what to check.

    pgconverge's own work must see every row: its sessions run with `row_security = off`, so a query
    that a row level security policy would filter for this role fails ("query would be affected by
    row-level security policy") instead of silently reading or updating part of a table. Code that
    acts as an application role to test policies turns it back on for that transaction
    (verify/tokens.py `act_as`); ROW_SECURITY=True leaves the server's default (on) for the session.

    The session runs on pgconverge's terms, whatever the server, database or role sets (own_terms).
    """
    t = target if isinstance(target, Target) else Target(target, "--dsn")
    try:
        conn = psycopg.connect(
            t.dsn,
            autocommit=autocommit,
            application_name=application_name,
            connect_timeout=CONNECT_TIMEOUT_S,
            **kwargs,
        )
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConnectionFailed(
            f"could not connect to {t.display} (from {t.source}): {reason}",
            fix="check that the server runs and the host, port, user, password and database are right; "
            "omit --dsn and DATABASE_URL to use the embedded Postgres",
        ) from exc
    try:
        own_terms(conn, row_security=row_security)
        if not autocommit:
            conn.commit()
    except BaseException:
        conn.close()
        raise
    return conn
