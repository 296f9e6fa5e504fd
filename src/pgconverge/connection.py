"""Resolve where to connect (--dsn, DATABASE_URL, embedded) and open connections."""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgconverge import embedded
from pgconverge.errors import ConnectionFailed, PgConvergeError

APPLICATION_NAME = "pgconverge"
# pgconverge's own sessions (APPLICATION_NAME and its suffixes, as LIKE patterns): whatever else writes is the
# application.
OWN_APPLICATION_NAMES = (APPLICATION_NAME, f"{APPLICATION_NAME}:%")
CONNECT_TIMEOUT_S = 10
# Every statement pgconverge's sessions send starts with this comment. pg_stat_statements keeps a leading comment in
# the text it stores, so the runtime audit tells pgconverge's own reads of the legacy columns (verify, the contract
# gates, the preflight's copy) from the application's (audit/runtime.py own_statements).
STATEMENT_MARK = "/* pgconverge */ "


def _marked(query):
    if isinstance(query, str):
        return STATEMENT_MARK + query
    if isinstance(query, bytes):
        return STATEMENT_MARK.encode() + query
    if isinstance(query, sql.Composable):
        return sql.Composed([sql.SQL(STATEMENT_MARK), query])
    return query


class MarkedCursor(psycopg.Cursor):
    """A cursor whose statements carry STATEMENT_MARK (a comment: the server runs them unchanged)."""

    def execute(self, query, params=None, **kwargs):
        return super().execute(_marked(query), params, **kwargs)

    def executemany(self, query, params_seq, **kwargs):
        return super().executemany(_marked(query), params_seq, **kwargs)

    def stream(self, query, params=None, **kwargs):
        return super().stream(_marked(query), params, **kwargs)

    def copy(self, statement, params=None, **kwargs):
        return super().copy(_marked(statement), params, **kwargs)


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
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        query = parse_qs(urlsplit(dsn).query) if "://" in dsn else {}
        if any(v.lower() == "true" for v in query.get("pgbouncer", [])):
            raise TransactionPooler(
                f"{source} says pgbouncer=true (an ORM's mark for a pooler in transaction mode): {POOLER_WHY}",
                fix=POOLER_FIX + "; drop the ORM's query parameters (pgbouncer, connection_limit, …) from the URI, "
                                 "which libpq does not know") from exc
        orm = sorted(k for k in query if k in ORM_PARAMETERS)
        if orm:
            raise ConnectionFailed(
                f"{source} carries query parameters an ORM reads and libpq does not know: {', '.join(orm)}",
                fix="drop them from the URI (pgconverge opens its own connections)") from exc
        raise ConnectionFailed(
            f"{source} is not a valid connection string: {exc}",
            fix="use a URI like postgresql://user:password@host:5432/dbname or key=value pairs",
        ) from exc
    hosts = [h.strip().lower() for h in str(params.get("host") or "").split(",")]
    ports = [p.strip() for p in str(params.get("port") or "").split(",")]
    for i, host in enumerate(hosts):
        port = ports[i] if i < len(ports) else (ports[0] if len(ports) == 1 else "")
        if host.endswith(".pooler.supabase.com") and port == "6543":
            raise TransactionPooler(
                f"{source} names Supabase's transaction pooler ({host}:6543), which hands each transaction to "
                f"whichever server session is free: {POOLER_WHY}",
                fix=POOLER_FIX)
    return dsn


class TransactionPooler(PgConvergeError):
    """The connection goes through a pooler that moves a client between server sessions."""


# Query parameters of ORMs' connection URIs (Prisma's, mostly) that libpq refuses.
ORM_PARAMETERS = frozenset({"pgbouncer", "connection_limit", "pool_timeout", "schema", "sslaccept", "socket_timeout",
                            "statement_cache_size", "sslidentity", "sslpassword"})
POOLER_WHY = ("pgconverge keeps state in its sessions (the one-runner lock, row_security = off, its own timeouts), "
              "which such a pooler would lose or hand on to the application's transactions; nothing was changed")
POOLER_FIX = ("connect directly to the server, or through a pooler in session mode: on Supabase, the direct "
              "connection (db.<project>.supabase.co:5432) or the session pooler (port 5432 on the pooler host)")
PROBE_SETTING = "pgconverge.session_probe"
PROBE_WAIT_S = 10.0
# What the server says when it has no connection slot for one more session (SQLSTATE 53300): not a wrong address.
NO_SLOT = ("too many clients already", "remaining connection slots are reserved", "too many connections for role",
           "too many connections for database")

_probed: set[str] = set()  # connection strings this process found to be one session per connection


def refuse_transaction_pooler(conn: psycopg.Connection, t: Target) -> None:
    """Raise TransactionPooler when CONN (just opened, autocommit, nothing set yet) does not keep one server session.

    A transaction-mode pooler (PgBouncer or Supavisor with pool_mode = transaction) gives a client a server session
    for one transaction at a time. Probe: CONN marks its server session with a random value; a second connection,
    inside a transaction (so it holds a server session), reads the mark, then CONN reads it again. Directly or
    through a session-mode pooler, the second session never sees the mark and CONN always does. A pooler that hands
    the second connection the session CONN just used (PgBouncer's default, most recently used first) shows the mark
    there; one that hands CONN another session loses the mark. The mark is a setting no code reads. Once per
    process and connection string; the embedded server is pgconverge's own and is not probed.
    """
    if t.source == "embedded" or t.dsn in _probed:
        return
    token = secrets.token_hex(8)
    conn.execute("select pg_catalog.set_config(%s, %s, false)", (PROBE_SETTING, token))
    try:
        other = psycopg.connect(t.dsn, autocommit=False, application_name=f"{APPLICATION_NAME}:probe",
                                connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConnectionFailed(
            f"a second connection to {t.display} failed while the first was open: {reason}; pgconverge needs "
            "several sessions at once (its runner, its batch workers, its snapshots); nothing was changed",
            fix="raise the role's CONNECTION LIMIT or the server's max_connections, or close idle sessions "
                "(pg_stat_activity names them)") from exc
    # A pooler with no server session free for a second client makes it wait: cancel after a while.
    timer = threading.Timer(PROBE_WAIT_S, other.cancel_safe)
    try:
        timer.start()
        try:
            seen_there = other.execute("select pg_catalog.current_setting(%s, true)", (PROBE_SETTING,)).fetchone()[0]
        except psycopg.OperationalError as exc:  # cancelled by the timer, or by the pooler's own wait limit
            raise TransactionPooler(
                f"a second connection to {t.display} waited for a server session and got none: "
                "the connection goes through a pooler with one server session, and pgconverge needs several at "
                "once (its runner, its batch workers, its snapshot); nothing was changed",
                fix="connect directly to the server, or raise the pooler's pool size") from exc
        finally:
            timer.cancel()
        seen_here = conn.execute("select pg_catalog.current_setting(%s, true)", (PROBE_SETTING,)).fetchone()[0]
        other.rollback()
    finally:
        other.close()
    if seen_there == token or seen_here != token:
        raise TransactionPooler(
            f"{t.display} goes through a pooler in transaction mode: "
            + ("a second connection was given this one's server session" if seen_there == token
               else "this connection was moved to another server session between two statements")
            + f"; {POOLER_WHY}", fix=POOLER_FIX)
    _probed.add(t.dsn)


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
    # psycopg reads dates, times and intervals only in these styles (a server default of 'SQL, DMY' made every
    # command stop on the first timestamp it read); ISO keeps the default's day/month order for input.
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    # Every character of the data reaches pgconverge (the phone audit reads numbers typed as '＋２５０…'), whatever
    # encoding the database gives its clients; psycopg follows the change.
    "client_encoding": "UTF8",
    # The SQL pgconverge writes quotes strings the standard way (psycopg's Literal without a connection does).
    "standard_conforming_strings": "on",
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
            **{"cursor_factory": MarkedCursor, **kwargs},
        )
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if any(x in str(exc) for x in NO_SLOT):
            raise ConnectionFailed(
                f"could not connect to {t.display} (from {t.source}): {reason}: the server has no connection slot "
                "left for this session; pgconverge needs several at once (its runner, each of "
                "migration.backfill_workers, the RLS check's three, a snapshot's)",
                fix="close idle sessions (pg_stat_activity names them: an application pool holding more than it "
                    "uses), or raise the server's max_connections (a restart), the role's or the database's "
                    "CONNECTION LIMIT, or lower migration.backfill_workers; then run the same command again "
                    "(finished steps are not repeated)",
            ) from exc
        raise ConnectionFailed(
            f"could not connect to {t.display} (from {t.source}): {reason}",
            fix="check that the server runs and the host, port, user, password and database are right; "
            "omit --dsn and DATABASE_URL to use the embedded Postgres",
        ) from exc
    try:
        conn.autocommit = True  # the probe's statements are not one transaction
        refuse_transaction_pooler(conn, t)
        conn.autocommit = autocommit
        own_terms(conn, row_security=row_security)
        if not autocommit:
            conn.commit()
    except BaseException:
        conn.close()
        raise
    return conn
