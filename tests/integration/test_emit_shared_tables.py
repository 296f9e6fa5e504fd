"""The emitted pgTAP tests on a table the application lets every signed-in caller read (its sessions, here, by a
policy `using (true)` beside the owner's): each sample sees all of its own rows there, and the same rows with its
new token as with its old one, instead of exactly its own (which the application's design never promised, and which
failed the tests of a correctly migrated database). The other tables keep their exact checks."""

from __future__ import annotations

import psycopg

from _support import cli, cli_json
from test_emit import SCALE, _apply_split, _config, _dsn, _prove, _psql


def test_the_emitted_tests_pass_with_a_table_every_caller_reads(pg15, tmp_path):
    _psql(pg15, "postgres", "-c", "drop database if exists shared_source", "-c", "create database shared_source")
    cli("fixture", "load", "--dsn", _dsn(pg15, "shared_source"), "--scale", SCALE)
    with psycopg.connect(_dsn(pg15, "shared_source"), autocommit=True) as conn:
        conn.execute("create policy sessions_everyone on public.sessions for select to authenticated using (true)")
    out = tmp_path / "project"
    files = cli_json("emit", str(out), "--dsn", _dsn(pg15, "shared_source"), "--config",
                     _config(tmp_path))["migrations"]
    _apply_split(pg15, "shared_source", files, "shared_switch", "shared_contract")
    for db, where in (("shared_switch", "pgconverge-tests/before_contract"),
                      ("shared_contract", "supabase/tests/database")):
        with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
            conn.execute("create extension if not exists pgtap")
        tests = sorted(str(p) for p in (out / where).glob("*.test.sql"))
        r = _prove(pg15, db, *tests)
        assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr
        text = "\n".join(open(t).read() for t in tests)
        assert "sees all its own rows of public.sessions" in text
        assert "sees exactly its own rows of public.carts" in text
    switch_tests = "\n".join(p.read_text() for p in (out / "pgconverge-tests/before_contract").glob("*.test.sql"))
    assert "sees the rows of public.sessions it sees with its old token" in switch_tests
