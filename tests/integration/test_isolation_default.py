"""A database whose default isolation is REPEATABLE READ: pgconverge's sessions still run READ COMMITTED, so what
waits for a lock then sees what the transaction it waited for committed. Here, the match's decision for a key
another writer is deciding at that moment: it waits for the writer and takes the canonical row the writer made,
instead of a second canonical row for the same person."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import sql

from pgconverge.catalog.introspect import load_catalog
from pgconverge.config import Spec
from pgconverge.connection import Target, connect
from pgconverge.errors import PgConvergeError
from pgconverge.execution import killpoint
from pgconverge.execution.runner import Runner
from pgconverge.planning import plan as planner

KEY = "pgconverge.normalize_phone"


def _align(dsn: str, conn) -> dict:
    spec = Spec()
    with Runner(Target(dsn, "--dsn"), spec, planner.build(spec, load_catalog(conn, spec))) as r:
        return {x.step: x for x in r.run_phase("align")}


def test_sessions_run_read_committed_whatever_the_database_default(conn, fixture_db):
    db = conn.execute("select current_database()").fetchone()[0]
    conn.execute(sql.SQL("alter database {} set default_transaction_isolation = 'serializable'").format(
        sql.Identifier(db)))
    with psycopg.connect(fixture_db) as plain:
        assert plain.execute("show transaction_isolation").fetchone()[0] == "serializable"
    with connect(fixture_db, autocommit=False) as ours:
        assert ours.execute("show transaction_isolation").fetchone()[0] == "read committed"


def test_a_key_another_writer_is_deciding_gets_that_writers_row(conn, fixture_db):
    db = conn.execute("select current_database()").fetchone()[0]
    # No unique constraint on the number: nothing but the key's lock keeps two canonical rows for one person apart.
    conn.execute("alter table public.profiles drop constraint profiles_whatsapp_e164_key")
    conn.execute(sql.SQL("alter database {} set default_transaction_isolation = 'repeatable read'").format(
        sql.Identifier(db)))
    killpoint.fail_at("align.match:before")  # functions and trigger in place, nothing mapped yet
    try:
        with pytest.raises(PgConvergeError):
            _align(fixture_db, conn)
    finally:
        killpoint.fail_at(None)
    legacy_id, key = conn.execute(
        f"select c.id, {KEY}(c.wa_id) from public.customers c where {KEY}(c.wa_id) is not null and not exists "
        f"(select 1 from public.profiles p where {KEY}(p.whatsapp_e164) = {KEY}(c.wa_id)) order by c.id limit 1"
    ).fetchone()
    results: dict = {}

    def run() -> None:
        try:
            results.update(_align(fixture_db, conn2))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results["error"] = exc

    # Another writer decides the key as pgconverge's trigger does: its lock, then its canonical row, not committed.
    with psycopg.connect(fixture_db, autocommit=True) as conn2, psycopg.connect(fixture_db) as writer:
        writer.execute("select pg_advisory_xact_lock(pg_catalog.hashtextextended('pgconverge:' || %s, 0))", (key,))
        made = writer.execute("insert into public.profiles (whatsapp_e164, display_name) values ('+' || %s, "
                              "'another writer') returning user_id", (key,)).fetchone()[0]
        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the match waits for the key's lock
            if conn.execute("select count(*) from pg_stat_activity where datname = %s and wait_event_type = 'Lock' "
                            "and wait_event = 'advisory'", (db,)).fetchone()[0]:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the match never waited for the key's lock")
        writer.commit()
        t.join(120)
    assert "error" not in results, results.get("error")
    assert results["align.match"].status == "done"
    assert conn.execute("select profile_id from pgconverge.legacy_customer_profile where customer_id = %s",
                        (legacy_id,)).fetchone()[0] == made
    assert conn.execute(f"select count(*) from public.profiles where {KEY}(whatsapp_e164) = %s",
                        (key,)).fetchone()[0] == 1
