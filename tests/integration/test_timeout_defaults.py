"""A database whose defaults cut sessions short (Supabase caps every statement at two minutes; many servers end idle
sessions and idle transactions): pgconverge's sessions run on their own terms, setting the limits each statement
needs itself, so a long check, a snapshot held while another session reads, or a connection left idle while the
backfill workers write is not cut off half way. The application's sessions keep the database's limits. Date and
interval styles psycopg cannot read (DateStyle 'SQL, DMY'), and a client encoding that cannot carry every
character of the data (LATIN1), are set aside the same way."""

from __future__ import annotations

import psycopg
from psycopg import sql

from pgconverge.connection import connect

from _support import cli_json, has_private_schema, row_owners, schema_dump, write_config

SMALL = 0.1
NO_WINDOW = "[migration]\nobservation_window = 0\n"
SHORT = {"statement_timeout": "150ms", "lock_timeout": "100ms", "idle_in_transaction_session_timeout": "150ms",
         "idle_session_timeout": "300ms"}


# Styles in which psycopg cannot read dates, times or intervals, and an encoding that cannot carry every number.
STYLES = {"DateStyle": "SQL, DMY", "IntervalStyle": "sql_standard", "client_encoding": "LATIN1",
          "standard_conforming_strings": "off"}


def _cut_short(conn, settings: dict = SHORT) -> None:
    db = conn.execute("select current_database()").fetchone()[0]
    for name, value in settings.items():
        conn.execute(sql.SQL("alter database {} set {} = {}").format(sql.Identifier(db), sql.Identifier(name),
                                                                     sql.Literal(value)))


def test_sessions_ignore_the_database_timeouts(conn, fixture_db):
    _cut_short(conn)
    with psycopg.connect(fixture_db) as plain:
        assert plain.execute("show statement_timeout").fetchone()[0] == "150ms"
    with connect(fixture_db) as ours:
        got = dict(ours.execute("select name, setting from pg_settings where name = any(%s)",
                                (list(SHORT),)).fetchall())
        assert got == {name: "0" for name in SHORT}


def test_a_whole_run_and_its_rollback_under_short_database_timeouts(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(SMALL))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("update public.customers set wa_id = '＋２５０ ７８８ １２３ ４５６' "  # typed on a CJK keyboard
                     "where id = (select min(id) from public.customers)")
        _cut_short(conn, {**SHORT, **STYLES})
        # Statements of the application's kind that take longer than its limit: a trigger on every order write.
        conn.execute("create function public.slow_audit() returns trigger language plpgsql as "
                     "$$ begin perform pg_sleep(0.002); return new; end $$")
        conn.execute("create trigger slow_audit before update on public.orders for each row "
                     "execute function public.slow_audit()")
        owners = row_owners(conn)
    cfg = write_config(tmp_path, NO_WINDOW)
    out = cli_json("run", "--all", "--dsn", dsn, "--config", cfg, "--accept-code-references")
    assert out["phases"] == ["align", "expand", "switch", "contract"]
    assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]
    assert cli_json("status", "--dsn", dsn, "--config", cfg)["steps"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("show statement_timeout").fetchone()[0] == "150ms"  # the database's own, left as found
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is None
    cli_json("rollback", "align", "--dsn", dsn, "--config", cfg, "--yes")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert row_owners(conn) == owners


def test_a_read_only_database_is_refused_naming_why(conn, fixture_db):
    db = conn.execute("select current_database()").fetchone()[0]
    conn.execute(sql.SQL("alter database {} set default_transaction_read_only = on").format(sql.Identifier(db)))
    before = schema_dump(conn)
    out = cli_json("run", "align", "--dsn", fixture_db, expect=2)
    assert "read-only" in out["problem"] and "default_transaction_read_only" in out["fix"]
    assert schema_dump(conn) == before and not has_private_schema(conn)
