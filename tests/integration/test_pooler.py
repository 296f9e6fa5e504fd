"""Connection poolers between pgconverge and the server (PgBouncer, in front of the test server).

In transaction mode a client holds a server session for one transaction only: pgconverge's session state (its
one-runner lock, row_security = off, its timeouts) would be lost, or handed on to the application's transactions.
pgconverge refuses such a connection before it sets anything. In session mode a client keeps its server session,
and the migration runs as it does directly.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgconverge.connection import TransactionPooler, resolve

from _support import cli_json, has_private_schema, schema_dump


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def bouncer(fixture_db):
    """bouncer(mode) -> DSN of the fixture database through a PgBouncer in MODE (transaction or session)."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    assert os.path.exists(binary), "pgbouncer is missing: scripts/system-deps.sh installs it"
    target = conninfo_to_dict(fixture_db)
    started: list[subprocess.Popen] = []
    # Not under pytest's own directory, which only root may enter.
    base = Path(tempfile.mkdtemp(prefix="pgconverge-bouncer-"))

    def start(mode: str, pool_size: int | None = None) -> str:
        port = _free_port()
        home = base / f"{mode}-{len(started)}"
        home.mkdir()
        (home / "users.txt").write_text('"postgres" ""\n')
        (home / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={target['host']} port={target.get('port', 5432)}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {home / 'users.txt'}\n"
            f"pool_mode = {mode}\ndefault_pool_size = {pool_size or (4 if mode == 'transaction' else 30)}\n"
            "max_client_conn = 200\nquery_wait_timeout = 3\n"
            "ignore_startup_parameters = extra_float_digits,options\n")
        cmd = [binary, str(home / "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer will not run as root: run it as the server's own user
            owner = pwd.getpwuid(Path(target["host"]).stat().st_uid).pw_name
            shutil.chown(base, owner)
            shutil.chown(home, owner)
            for f in home.iterdir():
                shutil.chown(f, owner)
            cmd = ["runuser", "-u", owner, "--", *cmd]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, f"pgbouncer exited: {proc.stderr.read().decode()}"
                time.sleep(0.05)
        return make_conninfo(host="127.0.0.1", port=str(port), user="postgres", dbname=target["dbname"])

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)
    shutil.rmtree(base, ignore_errors=True)


def test_a_transaction_pooler_is_refused_before_anything_is_set(bouncer, conn):
    pooled = bouncer("transaction")
    before = schema_dump(conn)
    out = cli_json("run", "align", "--dsn", pooled, expect=2)
    assert out["error"] == "TransactionPooler" and "transaction mode" in out["problem"], out
    assert "session mode" in out["fix"] and "nothing was changed" in out["problem"]
    assert schema_dump(conn) == before and not has_private_schema(conn)
    # Every server session of the pool is as the application left it: none took pgconverge's settings.
    sessions = [psycopg.connect(pooled) for _ in range(4)]  # each in a transaction: four server sessions at once
    try:
        for s in sessions:
            assert s.execute("select current_setting('row_security'), current_setting('statement_timeout')"
                             ).fetchone() == ("on", "0")
    finally:
        for s in sessions:
            s.close()


def test_a_session_pooler_carries_the_migration(bouncer, conn):
    pooled = bouncer("session")
    out = cli_json("run", "align", "--dsn", pooled)
    assert out["phases"] == ["align"], out
    assert cli_json("verify", "--dsn", pooled)["passed"]
    assert has_private_schema(conn)


def test_supabase_transaction_pooler_is_refused_by_its_address():
    url = "postgresql://postgres.abcdefgh:secret@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"
    with pytest.raises(TransactionPooler, match="transaction pooler") as err:
        resolve(url)
    assert "5432" in err.value.fix and "secret" not in str(err.value)
    # The same host's session pooler, and the direct connection, are taken (not connected to here).
    assert resolve(url.replace(":6543/", ":5432/")).dsn.endswith(":5432/postgres")
    assert resolve("postgresql://postgres:secret@db.abcdefgh.supabase.co:6543/postgres").source == "--dsn"


def test_a_role_allowed_one_connection_is_told_pgconverge_needs_several(conn, fixture_db):
    role = f"one_conn_{os.getpid()}"
    conn.execute(f"create role {role} login connection limit 1")
    try:
        dsn = make_conninfo(fixture_db, user=role)
        out = cli_json("status", "--dsn", dsn, expect=2)
        assert "second connection" in out["problem"] and "CONNECTION LIMIT" in out["fix"], out
    finally:
        conn.execute(f"drop role {role}")


def test_an_orms_connection_uri_is_told_what_to_drop():
    prisma = "postgresql://postgres.abcdefgh:secret@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"
    with pytest.raises(TransactionPooler, match="pgbouncer=true") as err:
        resolve(prisma + "?pgbouncer=true&connection_limit=1")
    assert "5432" in err.value.fix and "connection_limit" in err.value.fix
    out = cli_json("status", "--dsn", prisma.replace(":6543/", ":5432/") + "?connection_limit=1&schema=public",
                   expect=2)
    assert "connection_limit, schema" in out["problem"] and "drop them" in out["fix"], out


def test_a_pooler_with_one_server_session_is_told_pgconverge_needs_several(bouncer, conn):
    pooled = bouncer("session", pool_size=1)
    before = schema_dump(conn)
    out = cli_json("run", "align", "--dsn", pooled, expect=2)
    assert "waited for a server session and got none" in out["problem"] and "pool size" in out["fix"], out
    assert schema_dump(conn) == before and not has_private_schema(conn)
