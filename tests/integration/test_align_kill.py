"""A run killed in the middle of align (SIGKILL) resumes from its checkpoint and ends with the same mapping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg

from _support import cli, cli_json, mapping_problems, mapping_signature, write_config


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
