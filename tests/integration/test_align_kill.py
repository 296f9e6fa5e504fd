"""A run killed in the middle of align (SIGKILL) resumes from its checkpoint and ends with the same mapping; one killed
once its trigger is in place rolls back to the database as it was, the canonical rows the trigger created included."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from pgconverge.ledger import schema as ledger

from _killer import Killer, wait_runner_gone
from _support import cli, cli_json, mapping_problems, mapping_signature, schema_dump, write_config


def _start(dsn: str, cfg: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pgconverge", "run", "align", "--dsn", dsn, "--config", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(conn: psycopg.Connection, query: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            row = conn.execute(query).fetchone()
        except psycopg.errors.UndefinedTable:
            row = None
        if row and row[0]:
            return row[0]
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {query}")


def test_killed_mid_match_resumes_from_checkpoint(make_db, fixture_template, tmp_path):
    killed_dsn, clean_dsn = make_db(fixture_template), make_db(fixture_template)
    cfg = write_config(tmp_path, "[migration]\nbatch_size = 25\nbatch_pause_ms = 20\n")
    with psycopg.connect(killed_dsn, autocommit=True) as conn:
        proc = _start(killed_dsn, cfg)
        done_at_kill = _wait_for(conn, "select max(rows_done) from pgconverge.checkpoints "
                                       "where step = 'align.match' having max(rows_done) >= 200")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        status = cli_json("status", "--dsn", killed_dsn)
        match = next(s for s in status["steps"] if s["step"] == "align.match")
        assert match["state"] == "stopped" and match["rows_done"] >= done_at_kill

        out = cli_json("run", "align", "--dsn", killed_dsn, "--config", cfg)
        by_step = {s["step"]: s for s in out["steps"]}
        assert by_step["align.mapping_table"]["status"] == "skipped"
        assert by_step["align.match"]["resumed_from"] >= done_at_kill
        # The ledger agrees: the resumed run's first checkpoint continues where the killed one stopped.
        first_after = conn.execute("""
            select min(c.rows_done - c.batch_rows) from pgconverge.checkpoints c
            where c.step = 'align.match' and c.run_id = (select max(id) from pgconverge.runs)""").fetchone()[0]
        assert first_after >= done_at_kill
        assert mapping_problems(conn) == []
        killed = mapping_signature(conn)

    cli("run", "align", "--dsn", clean_dsn, "--config", cfg)
    with psycopg.connect(clean_dsn, autocommit=True) as conn:
        assert mapping_signature(conn) == killed


def test_killed_during_index_build_leaves_nothing_broken(make_db, fixture_template, tmp_path):
    """An invalid index left by an interrupted CREATE INDEX CONCURRENTLY is dropped and rebuilt."""
    dsn = make_db(fixture_template)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Simulate the interrupted build: an index with the planned name, marked invalid by Postgres' own rule
        # (a unique build that fails leaves it behind).
        conn.execute("insert into public.profiles (whatsapp_e164) values ('dup-a'), ('dup-b')")
        try:
            conn.execute("create unique index concurrently pgconverge_profiles_match_key on public.profiles "
                         "((left(whatsapp_e164, 3)))")
        except psycopg.errors.UniqueViolation:
            pass
        assert conn.execute("select not indisvalid from pg_index where indexrelid = "
                            "'public.pgconverge_profiles_match_key'::regclass").fetchone()[0]
        conn.execute("delete from public.profiles where whatsapp_e164 in ('dup-a', 'dup-b')")
        cli("run", "align", "--dsn", dsn)
        valid, definition = conn.execute(
            "select indisvalid, pg_get_indexdef(indexrelid) from pg_index where indexrelid = "
            "'public.pgconverge_profiles_match_key'::regclass").fetchone()
        assert valid and "normalize_phone" in definition
        notes = conn.execute("select message from pgconverge.events where event = 'note'").fetchall()
        assert any("dropping invalid index" in m for (m,) in notes)
        assert mapping_problems(conn) == []


PROFILES = "select row_to_json(p)::text from public.profiles p order by p.user_id"
SIGNUPS = (("+250788990001", "Signup One"), ("+250788990002", "Signup Two"), ("+250788990003", "Signup Three"))


def _killed_after_trigger_with_signups(killer, dsn: str, conn: psycopg.Connection) -> int:
    """`run align` killed right after its legacy-table trigger is in place, before the match; then old code signs
    three people up and gives one of their keys to another person: the trigger creates their canonical rows. Returns
    how many it created."""
    answer, log = killer.run(["run", "align", "--dsn", dsn], "align.legacy_trigger:after")
    assert answer["signal"] == signal.SIGKILL, log[-3000:]
    wait_runner_gone(dsn)
    before = conn.execute("select count(*) from public.profiles").fetchone()[0]
    ids = [conn.execute("insert into public.customers (wa_id, display_name) values (%s, %s) returning id",
                        person).fetchone()[0] for person in SIGNUPS]
    # The key of one who left, given to someone else: the mapping is retired, its canonical row kept in the table
    # of retired mappings.
    conn.execute("delete from public.customers where id = %s", (ids[0],))
    conn.execute("insert into public.customers (id, wa_id, display_name) values (%s, '+250788990004', 'Signup Four')",
                 (ids[0],))
    return conn.execute("select count(*) from public.profiles").fetchone()[0] - before


@pytest.fixture
def killer(tmp_path):
    k = Killer(tmp_path)
    yield k
    k.close()


def _assert_as_before_align(conn: psycopg.Connection, schema: list[str], profiles: list) -> None:
    assert conn.execute(PROFILES).fetchall() == profiles  # no canonical row align created is left
    assert schema_dump(conn) == schema
    # Of pgconverge's schema only the ledger is left: no mapping, no function, no table of align's.
    own = set(re.findall(r"\{s\}\.(\w+)", ledger._TABLES + ledger._APPEND_ONLY))
    left = conn.execute("select c.relname::text from pg_class c where c.relnamespace = 'pgconverge'::regnamespace "
                        "and c.relkind not in ('i', 'S') union all select p.proname::text from pg_proc p "
                        "where p.pronamespace = 'pgconverge'::regnamespace").fetchall()
    assert {r for (r,) in left} - own == set()


def test_rollback_after_align_killed_behind_its_trigger_deletes_the_rows_the_trigger_created(make_db, fixture_template,
                                                                                              killer):
    """Align stopped before its match: `rollback align` still deletes the canonical rows its trigger created (the
    retired mapping's too), and says the database is as it was because it is."""
    dsn = make_db(fixture_template)
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema, profiles = schema_dump(conn), conn.execute(PROFILES).fetchall()
        created = _killed_after_trigger_with_signups(killer, dsn, conn)
        assert created == 4  # three sign-ups and the one who took a key that was free again
        assert conn.execute("select count(*) from pgconverge.retired_mappings").fetchone()[0] == 1

        out = cli("rollback", "align", "--yes", "--dsn", dsn)
        assert "the database is as it was before align began" in out, out
        _assert_as_before_align(conn, schema, profiles)


def test_rollback_killed_after_dropping_the_trigger_still_deletes_what_it_created(make_db, fixture_template, killer):
    """The same, with the rollback itself killed once the trigger is gone (marked undone) and before the rows are
    deleted: the resumed rollback deletes them."""
    dsn = make_db(fixture_template)
    with psycopg.connect(dsn, autocommit=True) as conn:
        schema, profiles = schema_dump(conn), conn.execute(PROFILES).fetchall()
        assert _killed_after_trigger_with_signups(killer, dsn, conn) == 4
        answer, log = killer.run(["rollback", "align", "--yes", "--dsn", dsn],
                                 "rollback.align.drop_legacy_trigger:after")
        assert answer["signal"] == signal.SIGKILL, log[-3000:]
        wait_runner_gone(dsn)

        out = cli("rollback", "align", "--yes", "--dsn", dsn)
        assert "the database is as it was before align began" in out, out
        _assert_as_before_align(conn, schema, profiles)
