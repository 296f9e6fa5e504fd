"""Reading and appending ledger rows. Nothing here updates or deletes."""

from __future__ import annotations

import os
import socket
import weakref
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pgconverge import __version__
from pgconverge.config import Spec
from pgconverge.errors import PgConvergeError
from pgconverge.ledger import schema


_HOME_CHECKED: "weakref.WeakSet[psycopg.Connection]" = weakref.WeakSet()  # connections whose ledger was checked


@dataclass(frozen=True)
class StepState:
    step: str
    state: str  # "done", "reverted" or "pending" (started or failed, never finished)
    fingerprint: str | None
    at: Any
    # Pending: whether its latest done or reverted record is a done, an earlier run's change still in force while it
    # runs again (the policy rewrite, recorded done before its equivalence check, is run again when that never ended).
    earlier_done: bool = False


class LedgerElsewhere(PgConvergeError):
    """The ledger records another database as its home, and this one lacks what it says the migration made."""


class Ledger:
    """Append-only access to the ledger tables of one private schema."""

    def __init__(self, conn: psycopg.Connection, spec: Spec):
        self.conn, self.spec = conn, spec
        self.schema = spec.migration.private_schema

    def t(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    def exists(self) -> bool:
        row = self.conn.execute("select to_regclass(%s) is not null",
                                (f'"{self.schema.replace(chr(34), 2 * chr(34))}".events',)).fetchone()
        there = bool(row and row[0])
        if there and self.conn not in _HOME_CHECKED:
            self.check_home()
            _HOME_CHECKED.add(self.conn)
        return there

    IDENTITY = "database_identity"

    def identity(self) -> dict:
        """This database: its name and oid, and the server's system identifier (pg_control_system())."""
        name, oid, system = self.conn.execute(
            "select d.datname, d.oid::bigint, (select s.system_identifier::text from pg_catalog.pg_control_system() s) "
            "from pg_catalog.pg_database d where d.datname = pg_catalog.current_database()").fetchone()
        return {"database": name, "oid": oid, "system_identifier": system}

    def check_home(self) -> None:
        """Refuse a ledger written in another database: a private schema restored or copied on its own into a
        database that never ran the migration would otherwise be taken at its word.

        The ledger records the database it belongs to (name, oid, system identifier) when a run writes it. A database
        that does not match is still this ledger's home when the migration's own objects are there: a copy of the
        whole database (CREATE DATABASE … TEMPLATE, a full restore, a rename) carries them along, and the ledger is
        then adopted silently (the next run records the copy). Only where they are missing (the private schema came
        alone) is every command refused, naming both databases and the fix. Nothing is written here: a command that
        only reads the ledger, or refuses, leaves it as it was."""
        mine = self.identity()
        home = self.latest_snapshot(self.IDENTITY)
        if not home or (home.get("oid"), home.get("system_identifier")) == (mine["oid"], mine["system_identifier"]):
            return  # none recorded yet (the next run records it: record_home), or this database
        missing = self._missing_objects()
        if not missing:
            return  # a whole copy: adopted, and recorded by the next run that writes the ledger (record_home)
        raise LedgerElsewhere(
            f"the private schema {self.schema} was written in another database: database "
            f"{home.get('database')} (oid {home.get('oid')}) on server {home.get('system_identifier')}, and "
            f"this is database {mine['database']} (oid {mine['oid']}) on server {mine['system_identifier']}; "
            f"{missing}, so its record of the migration does not describe this database",
            fix=f"if it was copied here by a restore, drop it (drop schema {self.schema} cascade) and start "
                "from `pgconverge run align`; if this database is the migrated one, restored or renamed on "
                f"purpose, adopt the ledger: delete from {self.schema}.snapshots where name = "
                f"'{self.IDENTITY}'")

    def record_home(self) -> None:
        """Record this database as the ledger's home where the latest record names another (or none): a new ledger,
        one older than the record, or a whole copy adopted by check_home."""
        mine = self.identity()
        home = self.latest_snapshot(self.IDENTITY)
        if not home or (home.get("oid"), home.get("system_identifier")) != (mine["oid"], mine["system_identifier"]):
            self.snapshot(None, self.IDENTITY, mine)

    def _missing_objects(self) -> str:
        """What the ledger says the migration made outside its private schema and this database lacks ('' when
        all is there): expand's and align's triggers while the legacy table is in place, its absence after contract."""
        done = {s.step for s in self.step_states().values() if s.state == "done"}
        phases = {s.split(".")[0] for s in done}
        if "contract.archive_legacy_table" in done:
            gone = self.conn.execute("select to_regclass(%s) is null", (str(self.spec.legacy.table),)).fetchone()[0]
            return "" if gone else f"the ledger says contract archived {self.spec.legacy.table}, which is still here"
        if "contract" in phases or not phases & {"align", "expand", "switch"}:
            return ""  # nothing made yet, or a contract stopped part way (its triggers may be gone already)
        n = self.conn.execute(
            "select count(*) from pg_catalog.pg_trigger t join pg_catalog.pg_proc p on p.oid = t.tgfoid "
            "join pg_catalog.pg_class c on c.oid = t.tgrelid "
            "where p.pronamespace = to_regnamespace(%s) and c.relnamespace <> to_regnamespace(%s)",
            (sql.Identifier(self.schema).as_string(self.conn),) * 2).fetchone()[0]
        return "" if n else ("the ledger says " + ", ".join(sorted(phases & {"align", "expand", "switch"}))
                             + " ran, but no trigger of its sync functions is on a table here")

    def ensure(self, roles: frozenset[str] | set[str]) -> None:
        with self.conn.transaction():
            for stmt in schema.statements(self.spec, roles):
                self.conn.execute(stmt)
            check = self.conn.execute(
                "select pg_get_constraintdef(oid) from pg_catalog.pg_constraint where conrelid = %s::regclass "
                "and conname = 'events_event_check'", (self.t("events").as_string(self.conn),)).fetchone()
            for stmt in schema.upgrade_statements(self.spec, check[0] if check else None):
                self.conn.execute(stmt)
            self.record_home()

    def run_of(self, pid: int, since) -> tuple[int, str] | None:
        """(id, command) of the run the session PID started, connected SINCE (a pid can be reused: only runs since
        it connected)."""
        row = self.conn.execute(sql.SQL("select id, command from {} where pid = %s and started_at >= "
                                        "coalesce(%s::timestamptz, '-infinity') order by id desc limit 1").format(
            self.t("runs")), (pid, since)).fetchone()
        return (row[0], row[1]) if row else None

    def start_run(self, command: str) -> int:
        client = f"{socket.gethostname()}:{os.getpid()} pgconverge {__version__}"
        row = self.conn.execute(
            sql.SQL("insert into {} (command, client, spec) values (%s, %s, %s) returning id").format(self.t("runs")),
            (command, client, Jsonb(self.spec.as_dict()))).fetchone()
        return row[0]

    def event(self, run_id: int, phase: str, step: str, event: str, *, conn: psycopg.Connection | None = None,
              **fields: Any) -> None:
        cols = ["run_id", "phase", "step", "event", *fields]
        vals = [run_id, phase, step, event, *(Jsonb(v) if k == "detail" else v for k, v in fields.items())]
        (conn or self.conn).execute(
            sql.SQL("insert into {} ({}) values ({})").format(
                self.t("events"), sql.SQL(", ").join(map(sql.Identifier, cols)),
                sql.SQL(", ").join(sql.Placeholder() * len(vals))), vals)

    def step_states(self) -> dict[str, StepState]:
        """The latest of done/reverted per step; a step that only started counts as pending."""
        rows = self.conn.execute(sql.SQL(
            "select distinct on (step) step, event, fingerprint, at from {} "
            "where event in ('start', 'done', 'reverted') order by step, id desc").format(self.t("events"))).fetchall()
        settled = dict(self.conn.execute(sql.SQL(
            "select distinct on (step) step, event from {} where event in ('done', 'reverted') "
            "order by step, id desc").format(self.t("events"))).fetchall())
        out = {}
        for step, event, fp, at in rows:
            out[step] = StepState(step, event if event != "start" else "pending", fp, at,
                                  earlier_done=event == "start" and settled.get(step) == "done")
        return out

    def latest_start(self, phases: set[str]) -> Any | None:
        """When a forward step of one of PHASES last started (rollback steps have ids of their own)."""
        return self.conn.execute(sql.SQL(
            "select max(at) from {} where event = 'start' and split_part(step, '.', 1) = any(%s)").format(
            self.t("events")), (sorted(phases),)).fetchone()[0]

    def last_checkpoint_since_fresh_start(self, step: str) -> tuple[Any, int] | None:
        """Where a resumed batched step continues: its last checkpoint since it last started from scratch."""
        row = self.conn.execute(sql.SQL(
            "select c.position, c.rows_done from {c} c where c.step = %(s)s and c.at >= coalesce("
            "(select max(e.at) from {e} e where e.step = %(s)s and e.event = 'start' "
            "and (e.detail ->> 'fresh')::boolean), '-infinity') order by c.id desc limit 1").format(
            c=self.t("checkpoints"), e=self.t("events")), {"s": step}).fetchone()
        return (row[0], row[1]) if row else None

    def rows_done(self, step: str) -> int:
        """Rows a batched step has got through since it last started from scratch (0: none, or it never ran).

        One worker checkpoints a running count; several workers (execution/backfill_workers.py) checkpoint
        one count per key range of the latest range plan, which also records the rows done before it.
        """
        row = self.conn.execute(sql.SQL("""
            with fresh as (select coalesce(max(at), '-infinity') as at from {e}
                           where step = %(s)s and event = 'start' and (detail ->> 'fresh')::boolean),
            plan as (select detail from {e} where step = %(s)s and event = 'note' and detail ? 'ranges'
                     and at >= (select at from fresh) order by id desc limit 1)
            select case when exists (select 1 from plan) then
                     coalesce(((select detail from plan) ->> 'rows_before')::bigint, 0)
                     + coalesce((select sum(r.rows_done) from (
                         select distinct on (position ->> 'range') rows_done from {c}
                         where step = %(s)s and position ->> 'plan' = (select detail ->> 'plan' from plan)
                           and at >= (select at from fresh)
                         order by position ->> 'range', id desc) r), 0)
                   else coalesce((select rows_done from {c} where step = %(s)s and at >= (select at from fresh)
                                  order by id desc limit 1), 0) end""").format(
            e=self.t("events"), c=self.t("checkpoints")), {"s": step}).fetchone()
        return int(row[0] or 0)

    def last_outcome(self, step: str) -> str | None:
        """The kind of STEP's latest start/done/error/interrupted/reverted event."""
        row = self.conn.execute(sql.SQL(
            "select event from {} where step = %s and event in ('start', 'done', 'error', 'interrupted', 'reverted') "
            "order by id desc limit 1").format(self.t("events")), (step,)).fetchone()
        return row[0] if row else None

    def unproven(self, step: str) -> bool:
        """Whether STEP's latest done or reverted record is a `done` its own check has not confirmed (the policy
        rewrite commits before its equivalence check runs: a run that stopped in between leaves it so; a start
        since then does not change it)."""
        row = self.conn.execute(sql.SQL(
            "select event = 'done' and detail ->> 'proven' = 'false' from {} where step = %s "
            "and event in ('done', 'reverted') order by id desc limit 1").format(self.t("events")),
            (step,)).fetchone()
        return bool(row and row[0])

    def outcomes(self) -> dict[str, dict]:
        """Per step: its latest start/done/error/interrupted/reverted event (run, kind, message, detail, at)
        and how many times it started."""
        cur = self.conn.execute(sql.SQL(
            "select distinct on (step) step, id, phase, run_id, event, message, sqlstate, detail, at, "
            "count(*) filter (where event = 'start') over (partition by step) as starts from {} "
            "where event in ('start', 'done', 'error', 'interrupted', 'reverted') order by step, id desc").format(
            self.t("events")))
        names = [d.name for d in cur.description]
        return {r[0]: dict(zip(names, r)) for r in cur.fetchall()}

    def checkpoints(self, step: str) -> list[tuple]:
        return self.conn.execute(sql.SQL(
            "select id, run_id, position, rows_done, batch_rows, batch_ms, at from {} where step = %s "
            "order by id").format(self.t("checkpoints")), (step,)).fetchall()

    def snapshot(self, run_id: int | None, name: str, data: Any, *, conn: psycopg.Connection | None = None) -> None:
        (conn or self.conn).execute(
            sql.SQL("insert into {} (run_id, name, data) values (%s, %s, %s)").format(self.t("snapshots")),
            (run_id, name, Jsonb(data)))

    def latest_snapshot(self, name: str) -> Any | None:
        row = self.conn.execute(sql.SQL("select data from {} where name = %s order by id desc limit 1").format(
            self.t("snapshots")), (name,)).fetchone()
        return row[0] if row else None

    def save_definition(self, run_id: int, step: str, kind: str, name: str, definition: str, *,
                        conn: psycopg.Connection | None = None) -> None:
        (conn or self.conn).execute(
            sql.SQL("insert into {} (run_id, step, kind, name, definition) values (%s, %s, %s, %s, %s)").format(
                self.t("saved_definitions")), (run_id, step, kind, name, definition))

    def saved_definitions(self, step: str) -> list[tuple[str, str, str]]:
        return self.conn.execute(sql.SQL(
            "select distinct on (kind, name) kind, name, definition from {} where step = %s "
            "order by kind, name, id").format(self.t("saved_definitions")), (step,)).fetchall()

    def events(self, limit: int | None = None) -> list[dict]:
        q = sql.SQL("select id, run_id, phase, step, event, attempt, sql, sqlstate, message, duration_ms, detail, at "
                    "from {} order by id").format(self.t("events"))
        cur = self.conn.execute(q)
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
        return rows[-limit:] if limit else rows

