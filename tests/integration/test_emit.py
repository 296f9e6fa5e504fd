"""`pgconverge emit`: files applied to a real PostgreSQL 15, pgTAP tests passing, reverse files restoring the schema."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from _support import cli, cli_json

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"  # the server refuses to run as root; the Debian package's system user runs it
SCALE = "0.1"  # the fixture's minimum (200 customers): every identity case, quick to copy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *cmd] if os.geteuid() == 0 else list(cmd)


@pytest.fixture(scope="session")
def pg15():
    """A PostgreSQL 15 server from the Debian binaries (with pgTAP), on a Unix socket in /tmp: (socket dir, port)."""
    base = Path(tempfile.mkdtemp(prefix="pgc-emit-", dir="/tmp"))
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, PG_USER)
    subprocess.run(_as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                "--no-sync"), check=True, capture_output=True)
    port = _free_port()
    subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"), "-o",
                                f"-k {base} -p {port} -c listen_addresses='' -c fsync=off", "start"),
                   check=True, capture_output=True)
    try:
        yield str(base), port
    finally:
        subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _dsn(pg15, db: str) -> str:
    host, port = pg15
    return f"host={host} port={port} user=postgres dbname={db}"


def _psql(pg15, db: str, *args: str) -> subprocess.CompletedProcess:
    host, port = pg15
    return subprocess.run([str(PG_BIN / "psql"), "-X", "-q", "-h", host, "-p", str(port), "-U", "postgres", "-d", db,
                           "-v", "ON_ERROR_STOP=1", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def fixture15(pg15):
    """A template database on the v15 server holding the bundled fixture, loaded with `pgconverge fixture load`."""
    _psql(pg15, "postgres", "-c", "create database emit_fixture")
    cli("fixture", "load", "--dsn", _dsn(pg15, "emit_fixture"), "--scale", SCALE)
    return "emit_fixture"


def _copy(pg15, template: str, name: str) -> str:
    r = _psql(pg15, "postgres", "-c", f'drop database if exists "{name}"', "-c",
              f'create database "{name}" template "{template}"')
    assert r.returncode == 0, r.stderr
    return name


def _dump(pg15, db: str) -> list[str]:
    host, port = pg15
    out = subprocess.run([str(PG_BIN / "pg_dump"), "--schema-only", "-h", host, "-p", str(port), "-U", "postgres",
                          db], capture_output=True, text=True, check=True).stdout
    # \restrict carries a random key per dump; comments carry nothing of the schema.
    return [line for line in out.splitlines()
            if line.strip() and not line.startswith(("\\restrict", "\\unrestrict", "--"))]


def _code(path: Path) -> str:
    """A file's SQL without its comment lines."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))


@pytest.fixture(scope="module")
def emitted(pg15, fixture15, tmp_path_factory):
    out = tmp_path_factory.mktemp("emit") / "project"
    db = _copy(pg15, fixture15, "emit_source")
    data = cli_json("emit", str(out), "--dsn", _dsn(pg15, db))
    return out, data


def test_layout(emitted):
    out, data = emitted
    migrations = sorted((out / "supabase" / "migrations").iterdir())
    assert [str(p) for p in migrations] == data["migrations"]
    names = [p.name for p in migrations]
    assert len(names) > 30
    assert all(re.fullmatch(r"\d{14}_[a-z0-9_]+\.sql", n) for n in names), names
    stamps = [n[:14] for n in names]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), "timestamps strictly increasing"
    concurrently = 0
    for p in migrations:
        code = _code(p)
        statements = [s for s in code.split(";") if s.strip()]
        if re.search(r"\bconcurrently\b", code, re.I):
            concurrently += 1
            assert len(statements) == 1, f"{p.name} holds more than its CONCURRENTLY statement"
            assert not re.search(r"\b(begin|commit|start transaction)\b", code, re.I), p.name
        if re.search(r"^\s*call\b", code, re.I | re.M):
            assert len(statements) == 1 and not re.search(r"\bbegin\s*;", code, re.I), p.name
        if not re.search(r"\bconcurrently\b|^\s*call\b", code, re.I | re.M):
            assert re.match(r"\s*begin;", code) and code.rstrip().endswith("commit;"), f"{p.name} is one transaction"
    assert concurrently >= 4  # the mapping's match index and one mirrored index per dependent table
    # Every forward file has its reverse; the batched backfill is a CALL, never a whole-table UPDATE.
    rollback = sorted(p.name for p in (out / "supabase" / "rollback").iterdir())
    assert rollback == [n[:-4] + ".down.sql" for n in names]
    backfill = next(p for p in migrations if "carts_backfill" in p.name)
    assert re.search(r"^call \"pgconverge\".\"run_batches\"", _code(backfill), re.M)
    assert "pgconverge run expand" in backfill.read_text() or "pgconverge run" in backfill.read_text()
    # Runner-only steps are said, not dropped.
    assert any("align.report" in s for s in data["not_emitted"])
    assert any("align.phone_audit" in n.read_text() for n in migrations)
    tests = sorted((out / "supabase" / "tests" / "database").glob("*.test.sql"))
    assert len(tests) == 4
    for t in tests:
        code = _code(t)
        assert code.startswith("begin;") and "select * from finish();" in code and code.rstrip().endswith("rollback;")
        n = int(re.search(r"select plan\((\d+)\);", code).group(1))
        assert n == len(re.findall(r"^select (?!plan\(|\* from finish|pg_temp\.)", code, re.M))


def test_apply_prove_and_reverse(pg15, fixture15, emitted):
    out, data = emitted
    db = _copy(pg15, fixture15, "emit_apply")
    before = _dump(pg15, db)
    for f in data["migrations"]:
        r = _psql(pg15, db, "-f", f)
        assert r.returncode == 0, f"{f}:\n{r.stderr}"
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        # The backfill ran in batches to the end: every dependent row is linked through the mapping.
        for t in ("carts", "orders", "sessions"):
            assert conn.execute(f"select count(*) from public.{t} d join pgconverge.legacy_customer_profile m "
                                "on m.customer_id = d.customer_id where d.profile_id is distinct from m.profile_id"
                                ).fetchone()[0] == 0
        assert conn.execute("select count(*) from pg_policies where qual like '%auth_profile_id%'").fetchone()[0] >= 5
        conn.execute("create extension pgtap")
    tests = sorted(str(p) for p in (out / "supabase" / "tests" / "database").glob("*.test.sql"))
    host, port = pg15
    prove = ["pg_prove", "-h", host, "-p", str(port), "-U", "postgres", "-d", db, *tests]
    r = subprocess.run(prove, capture_output=True, text=True)
    expected = sum(t["assertions"] for t in data["tests"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "All tests successful." in r.stdout and f"Tests={expected}," in r.stdout, r.stdout
    assert expected >= 60

    # A policy that leaks every cart is caught by the RLS tests (the rollback below restores the original).
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        conn.execute("alter policy carts_owner on public.carts using (true) with check (true)")
    rls_file = next(t for t in tests if t.endswith("pgconverge_switch_rls.test.sql"))
    r = subprocess.run([*prove[:-len(tests)], rls_file], capture_output=True, text=True)
    assert r.returncode != 0, r.stdout
    assert "sees exactly its own rows of public.carts" in r.stdout + r.stderr

    for f in reversed(data["rollback"]):
        r = _psql(pg15, db, "-f", f)
        assert r.returncode == 0, f"{f}:\n{r.stderr}"
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        conn.execute("drop extension pgtap")
    assert _dump(pg15, db) == before
    # The same tests now fail: they check the migrated state, not just anything.
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        conn.execute("create extension pgtap")
    r = subprocess.run(prove, capture_output=True, text=True)
    assert r.returncode != 0 and "All tests successful." not in r.stdout


def test_not_empty_dir_is_refused(pg15, fixture15, tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    msg = cli("emit", str(out), "--dsn", _dsn(pg15, fixture15), expect=2)
    assert "is not empty" in msg and "--force" in msg
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    msg = cli("emit", str(out), "--dsn", _dsn(pg15, fixture15), "--through", "contract", expect=2)
    assert "contract" in msg


def test_help_teaches():
    text = cli("emit", "--help")
    for phrase in ("supabase db push", "pg_prove", "supabase test db", "supabase/rollback", "psql"):
        assert phrase in text
