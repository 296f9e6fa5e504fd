"""DDL of the ledger tables (idempotent) and of the private schema's privileges."""

from __future__ import annotations

from psycopg import sql

from pgconverge.config import Spec
from pgconverge.execution.sql import ident

# Every kind of event the runner writes. `interrupted`: a signal stopped the step (or the run before it) at a
# safe point; detail says where (batch and rows done, the RLS check, before the step).
EVENT_KINDS = ("start", "done", "skip", "retry", "error", "reverted", "note", "interrupted")

# The text below is part of align.private_schema's fingerprint, so it stays as first released (its check lists
# the first kinds); upgrade_statements() widens the check to EVENT_KINDS whenever a runner opens the ledger.
_TABLES = """
create table if not exists {s}.runs (
    id bigint generated always as identity primary key,
    command text not null,
    started_at timestamptz not null default clock_timestamp(),
    pid int not null default pg_backend_pid(),
    client text,
    spec jsonb not null
);
create table if not exists {s}.events (
    id bigint generated always as identity primary key,
    run_id bigint not null references {s}.runs (id),
    phase text not null,
    step text not null,
    event text not null check (event in ('start', 'done', 'skip', 'retry', 'error', 'reverted', 'note')),
    attempt int not null default 1,
    sql text,
    sqlstate text,
    message text,
    duration_ms double precision,
    fingerprint text,
    detail jsonb,
    at timestamptz not null default clock_timestamp()
);
create index if not exists events_step on {s}.events (step, id);
create table if not exists {s}.checkpoints (
    id bigint generated always as identity primary key,
    run_id bigint not null references {s}.runs (id),
    step text not null,
    position jsonb,
    rows_done bigint not null,
    batch_rows int not null,
    batch_ms double precision not null,
    at timestamptz not null default clock_timestamp()
);
create index if not exists checkpoints_step on {s}.checkpoints (step, id);
create table if not exists {s}.snapshots (
    id bigint generated always as identity primary key,
    run_id bigint references {s}.runs (id),
    name text not null,
    data jsonb not null,
    at timestamptz not null default clock_timestamp()
);
create table if not exists {s}.saved_definitions (
    id bigint generated always as identity primary key,
    run_id bigint references {s}.runs (id),
    step text not null,
    kind text not null,
    name text not null,
    definition text not null,
    at timestamptz not null default clock_timestamp()
);
"""

# Append-only: nothing may rewrite history, not even the tool's own code by mistake.
_APPEND_ONLY = """
create or replace function {s}.ledger_append_only() returns trigger language plpgsql as $$
begin
  raise exception 'the pgconverge ledger is append-only (% on %)', tg_op, tg_table_name;
end $$;
"""


def statements(spec: Spec, roles: frozenset[str] | set[str]) -> list[sql.Composable]:
    """Create the private schema and the ledger, closed to PUBLIC and the API roles that exist."""
    s = ident(spec.migration.private_schema)
    out: list[sql.Composable] = [sql.SQL("create schema if not exists {}").format(s)]
    out.append(sql.SQL(_TABLES).format(s=s))
    out.append(sql.SQL(_APPEND_ONLY).format(s=s))
    for table in ("runs", "events", "checkpoints", "snapshots", "saved_definitions"):
        trg = sql.Identifier(f"{table}_append_only")
        tbl = sql.Identifier(spec.migration.private_schema, table)
        out.append(sql.SQL("drop trigger if exists {t} on {tbl}; create trigger {t} before update or delete on {tbl} "
                           "for each row execute function {s}.ledger_append_only()").format(t=trg, tbl=tbl, s=s))
    out.extend(revoke_statements(spec, roles))
    return out


def _kinds() -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Literal, EVENT_KINDS))


def upgrade_statements(spec: Spec, current_check: str | None) -> list[sql.Composable]:
    """A ledger made by an earlier version accepts fewer event kinds: widen its check (CURRENT_CHECK: its definition)."""
    if current_check is not None and all(f"'{k}'" in current_check for k in EVENT_KINDS):
        return []
    events = sql.Identifier(spec.migration.private_schema, "events")
    return [sql.SQL("alter table {t} drop constraint if exists events_event_check").format(t=events),
            sql.SQL("alter table {t} add constraint events_event_check check (event in ({k}))").format(
                t=events, k=_kinds())]


def revoke_statements(spec: Spec, roles: frozenset[str] | set[str]) -> list[sql.Composable]:
    """Close the private schema to PUBLIC and every existing API role.

    Without USAGE on the schema nothing inside it can be reached, whatever object grants say;
    the object-level revokes also undo global default privileges some projects set.
    Run again after each phase, since new objects pick up default privileges.
    """
    s = ident(spec.migration.private_schema)
    grantees = sql.SQL(", ").join(
        [sql.SQL("public")] + [sql.Identifier(r) for r in spec.migration.api_roles if r in roles])
    return [sql.SQL("revoke all on {} {} from {}").format(sql.SQL(what), s, grantees)
            for what in ("schema", "all tables in schema", "all sequences in schema")]
