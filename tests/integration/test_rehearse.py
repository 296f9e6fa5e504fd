"""`pgconverge rehearse`: a copy of a database on the test server, migrated on another server, source untouched."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pgconverge import embedded, rehearse
from pgconverge.errors import PgConvergeError

from _support import cli, write_config


@pytest.fixture
def target_dir(monkeypatch):
    """A fresh embedded server of its own for the copy (the source lives on the test server)."""
    base = Path(tempfile.mkdtemp(prefix="pgc-rh-", dir="/tmp"))  # short: the socket path has a length limit
    monkeypatch.delenv(rehearse.TARGET_ENV, raising=False)
    monkeypatch.setenv(embedded.ENV_DIR, str(base / "pgdata"))
    yield base / "pgdata"
    embedded.stop(base / "pgdata")
    shutil.rmtree(base, ignore_errors=True)


def plain_dump(dsn: str) -> bytes:
    """A full plain-format dump (schema, data, owners, grants, policies): deterministic for an unchanged database."""
    params = conninfo_to_dict(dsn)
    args = [str(rehearse.bin_path("pg_dump")), "--format=plain", "--no-password"]
    for key, flag in (("host", "--host"), ("port", "--port"), ("user", "--username")):
        if params.get(key):
            args.append(f"{flag}={params[key]}")
    out = subprocess.run([*args, params["dbname"]], capture_output=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PGPASSWORD": params.get("password") or ""})
    return out.stdout


def test_rehearse_copies_migrates_and_leaves_source_unchanged(make_db, template_factory, admin_dsn, target_dir,
                                                              tmp_path):
    source = make_db(template_factory(0.1))
    # A role the target server lacks that owns a table with a policy: the copy must keep owner and policy.
    role = f"rh owner {uuid.uuid4().hex[:6]}"
    with psycopg.connect(source, autocommit=True) as c:
        c.execute(sql.SQL("create role {} nologin noinherit bypassrls").format(sql.Identifier(role)))
        c.execute("create table public.rh_notes (id int primary key, body text)")
        c.execute("insert into public.rh_notes values (1, 'kept')")
        c.execute(sql.SQL("alter table public.rh_notes owner to {}").format(sql.Identifier(role)))
        c.execute("alter table public.rh_notes enable row level security")
        c.execute("create policy rh_notes_read on public.rh_notes for select to authenticated using (id > 0)")
    try:
        before = plain_dump(source)
        report_dir = tmp_path / "reports"
        config = write_config(tmp_path, "[migration]\nrls_sample = 10\n")
        out = cli("rehearse", "--from", source, "--config", config, "--report-dir", str(report_dir),
                  "--database", "rehearsal_copy", "--keep", "--json")
        data, _ = json.JSONDecoder().raw_decode(out[out.index("{\n"):])  # stderr lines may follow
        after = plain_dump(source)
        assert before == after, "the source changed"

        assert data["passed"] is True
        assert [p["phase"] for p in data["phases"]] == ["align", "expand", "switch", "contract"]
        assert all(p["passed"] and not p["failed"] for p in data["phases"])
        assert data["rls_equivalence"]["problems"] == [] and data["rls_equivalence"]["identities"] == 10
        # The fresh server had none of the fixture's API roles, nor the extra one.
        assert {"anon", "authenticated", "service_role", role} <= set(data["copy"]["roles_created"])
        md = Path(data["report"]["md"])
        html = Path(data["report"]["html"])
        assert md.parent == report_dir and md.exists() and html.exists()
        text = md.read_text()
        assert "Rehearsal passed" in text and "FAILED" not in text
        verified = re.findall(r"^\| (\w+) \| \d+ \| [\d.]+ \| passed \|", text, flags=re.M)
        assert verified == ["align", "expand", "switch", "contract"]  # the rehearsal's verification table
        assert "RLS equivalence: passed" in text
        assert "contract.final_validation" in html.read_text()

        copy = embedded.with_database(embedded.ensure_running(target_dir, "postgres"), "rehearsal_copy")
        with psycopg.connect(copy) as c:
            roles = dict((r[0], r[1:]) for r in c.execute(
                "select rolname, rolcanlogin, rolinherit, rolbypassrls from pg_roles "
                "where rolname = any(%s)", (["anon", "service_role", role],)).fetchall())
            assert roles == {"anon": (False, False, False), "service_role": (False, False, True),
                             role: (False, False, True)}
            owner, rls = c.execute("select relowner::regrole::text, relrowsecurity from pg_class "
                                   "where oid = 'public.rh_notes'::regclass").fetchone()
            assert owner == sql.Identifier(role).as_string(c) and rls
            assert c.execute("select polroles::regrole[]::text[] from pg_policy where polname = 'rh_notes_read'"
                             ).fetchone()[0] == ["authenticated"]
            # Supabase-style grants came across: the API roles may read the application tables (RLS filters rows).
            assert c.execute("select has_table_privilege('authenticated', 'public.orders', 'select'), "
                             "has_table_privilege('anon', 'auth.users', 'select')").fetchone() == (True, False)
            # The migration ran on the copy: the legacy table is archived there, not at the source.
            assert c.execute("select to_regclass('public.customers')").fetchone()[0] is None
        with psycopg.connect(source) as c:
            assert c.execute("select to_regclass('public.customers') is not null, "
                             "to_regnamespace('pgconverge') is null").fetchone() == (True, True)
    finally:
        with psycopg.connect(source, autocommit=True) as c:
            c.execute("drop table public.rh_notes")
            c.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


def test_source_sessions_are_read_only(fixture_db):
    with rehearse.connect_source(fixture_db) as c:
        assert c.execute("show default_transaction_read_only").fetchone()[0] == "on"
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            c.execute("create table public.should_not_exist (id int)")
    # The option is added to a DSN's own options, which would otherwise override PGOPTIONS.
    dsn = rehearse.read_only_dsn(fixture_db + " options='-c search_path=public'")
    assert conninfo_to_dict(dsn)["options"] == "-c search_path=public -c default_transaction_read_only=on"


def test_unreachable_source_is_a_clear_error(target_dir):
    out = cli("rehearse", "--from", "postgresql://nobody@127.0.0.1:1/nowhere", expect=1)
    text = " ".join(out.split())
    assert "error: could not connect to the source user=nobody dbname=nowhere host=127.0.0.1 port=1:" in text
    assert "accepting TCP/IP connections" in text and "fix: check that the server runs" in text
    assert not target_dir.exists()  # failed before the embedded server was even started


def test_target_that_is_the_source_is_refused(fixture_db, admin_dsn, monkeypatch):
    monkeypatch.setenv(rehearse.TARGET_ENV, admin_dsn)
    name = conninfo_to_dict(fixture_db)["dbname"]
    before = plain_dump(fixture_db)
    out = cli("rehearse", "--from", fixture_db, "--database", name, expect=1)
    assert "the copy would be written over the source" in " ".join(out.split())
    assert plain_dump(fixture_db) == before


def test_newer_source_and_failed_dump_are_clear(fixture_db):
    src = rehearse.inspect_source(fixture_db)
    newer = rehearse.Source(src.dsn, rehearse.ServerIdentity(None, "", "x", 1, 170002, "17.2"), [], [], [], 0)
    with pytest.raises(PgConvergeError, match=r"source runs PostgreSQL 17\.2, newer than the embedded server's "
                                              r"pg_dump 16\."):
        rehearse.check_version(newer)
    # pg_dump's own message reaches the user: here, a role that does not exist.
    bad = rehearse.Source(src.dsn + " user=no_such_role_rh", src.identity, [], [], [], 0)
    with pytest.raises(rehearse.RehearsalError, match=r"(?s)pg_dump of the source failed.*no_such_role_rh"):
        rehearse.dump(bad, Path(tempfile.mkdtemp()) / "x.dump")


def test_missing_extensions_refused_or_left_out(make_db, admin_dsn, tmp_path):
    source = make_db()
    with psycopg.connect(source, autocommit=True) as c:
        c.execute("create extension vector")
        c.execute("create table public.items (id int primary key, embedding vector(3))")
        c.execute("create table public.plain (id int primary key)")
        c.execute("insert into public.plain values (1), (2)")
    src = rehearse.inspect_source(source)
    assert ("vector", src.extensions[-1][1]) in src.extensions
    # Refused up front, naming the extension, when the target cannot create it (pgcrypto is not bundled).
    lacking = rehearse.Source(src.dsn, src.identity, [*src.extensions, ("pgcrypto", "1.3")], src.roles,
                              src.memberships, 0)
    copy_name = f"rh_ext_{uuid.uuid4().hex[:6]}"
    with pytest.raises(rehearse.RehearsalError, match="extensions the embedded server cannot create: pgcrypto"):
        rehearse.make_copy(lacking, admin_dsn, copy_name)
    with psycopg.connect(admin_dsn) as c:
        assert c.execute("select count(*) from pg_database where datname = %s", (copy_name,)).fetchone()[0] == 0
    # Left out on request: the extension and what needs it fail alone, the rest is restored and listed.
    path = tmp_path / "s.dump"
    rehearse.dump(src, path)
    target = make_db()
    _, errors = rehearse.restore(path, target, ["vector"])
    assert any("items" in e or "vector" in e for e in errors), errors
    with psycopg.connect(target) as c:
        assert c.execute("select count(*) from public.plain").fetchone()[0] == 2
        assert c.execute("select to_regclass('public.items')").fetchone()[0] is None
        assert c.execute("select count(*) from pg_extension where extname = 'vector'").fetchone()[0] == 0


def test_failed_rehearsal_keeps_its_copy(make_db, admin_dsn, monkeypatch):
    """A source without the configured legacy table: the catalog error is shown and the copy stays to inspect."""
    source = make_db()
    with psycopg.connect(source, autocommit=True) as c:
        c.execute("create table public.unrelated (id int primary key)")
    monkeypatch.setenv(rehearse.TARGET_ENV, admin_dsn)
    name = f"rh_failed_{uuid.uuid4().hex[:6]}"
    try:
        out = " ".join(cli("rehearse", "--from", source, "--database", name, expect=2).split())
        assert "the copy is kept for inspection" in out and f"dbname={name}" in out
        assert "public.customers" in out  # the catalog error names what is missing
        with psycopg.connect(embedded.with_database(admin_dsn, name)) as c:
            assert c.execute("select to_regclass('public.unrelated') is not null").fetchone()[0]
    finally:
        rehearse.drop_database(admin_dsn, name)
