"""Shared test harness: a real Postgres (embedded unless PGCONVERGE_TEST_DSN is set) and fresh databases."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgconverge import embedded

# Small enough that a database copy takes well under a second, big enough to hold every identity case.
TEST_SCALE = float(os.environ.get("PGCONVERGE_TEST_SCALE", "0.5"))

_counter = itertools.count()

# `run` preflights on a copy by default; the suite runs it many times, so only tests/integration/test_preflight.py
# turns it on.
os.environ.setdefault("PGCONVERGE_PREFLIGHT", "off")


@pytest.fixture
def preflight_on(monkeypatch, admin_dsn):
    """`run` preflights on a copy, made on the test server (not another one), for a module that says
    `pytestmark = pytest.mark.usefixtures("preflight_on")`."""
    from pgconverge.execution import preflight_copy

    monkeypatch.setenv(preflight_copy.ENABLE_ENV, "on")
    monkeypatch.setenv(preflight_copy.SERVER_ENV, admin_dsn)


@pytest.fixture(scope="session")
def admin_dsn(tmp_path_factory) -> str:
    """DSN of a superuser connection to the test server's maintenance database."""
    if os.environ.get("PGCONVERGE_TEST_DSN"):
        yield os.environ["PGCONVERGE_TEST_DSN"]
        return
    # A short fixed path keeps the Unix socket under the 107-byte limit.
    base = Path(f"/tmp/pgconverge-test-{os.getpid()}")
    base.mkdir(exist_ok=True)
    data = base / "pgdata"
    uri = embedded.ensure_running(data, database="postgres")
    yield uri
    embedded.stop(data)
    shutil.rmtree(base, ignore_errors=True)


def _create_database(admin: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        q = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            q += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(q)
    return embedded.with_database(admin, name)


def _drop_database(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _databases(admin: str, prefix: str):
    """A make_db factory on ADMIN's server, and the teardown that drops what it made (a generator fixture's body)."""
    made: list[str] = []

    def factory(template: str | None = None) -> str:
        name = f"{prefix}_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
        made.append(name)
        return _create_database(admin, name, template)

    yield factory
    for name in made:
        _drop_database(admin, name)


@pytest.fixture
def make_db(admin_dsn):
    """Factory: make_db(template=None) -> DSN of a new empty (or copied) database, dropped afterwards."""
    yield from _databases(admin_dsn, "t")


PG15_BIN = Path("/usr/lib/postgresql/15/bin")  # Supabase's major version, from the Debian packages (system-deps.sh)
PG15_USER = "postgres"  # the server refuses to run as root; the Debian package's system user runs it


def as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", PG15_USER, "--", *cmd] if os.geteuid() == 0 else list(cmd)


def _pg15_server(options: str = ""):
    """Start a PostgreSQL 15 server from the Debian binaries on a Unix socket in /tmp, yield (socket dir, port), stop
    it. OPTIONS: more server settings (`-c name=value`)."""
    base = Path(tempfile.mkdtemp(prefix="pgc-15-", dir="/tmp"))
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, PG15_USER)
    subprocess.run(as_postgres(str(PG15_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                               "--no-sync"), check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(as_postgres(str(PG15_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"), "-o",
                               f"-k {base} -p {port} -c listen_addresses='' -c fsync=off {options}", "start"),
                   check=True, capture_output=True)
    try:
        yield str(base), port
    finally:
        subprocess.run(as_postgres(str(PG15_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg15():
    """A PostgreSQL 15 server from the Debian binaries (with pgTAP), on a Unix socket in /tmp: (socket dir, port).
    Most of the suite runs on the embedded server (pgserver's 16); some behaviour differs by version."""
    yield from _pg15_server()


@pytest.fixture(scope="session")
def pg15_statements():
    """A PostgreSQL 15 server that loads pg_stat_statements at start (as Supabase's do), for the runtime audit's
    statement signal; the embedded server does not ship the library."""
    yield from _pg15_server("-c shared_preload_libraries=pg_stat_statements")


@pytest.fixture
def make_db15(pg15):
    """make_db on the PostgreSQL 15 server."""
    yield from _databases(f"host={pg15[0]} port={pg15[1]} user=postgres dbname=postgres", "t15")


@pytest.fixture
def make_db15_statements(pg15_statements):
    """make_db on the PostgreSQL 15 server with pg_stat_statements loaded."""
    yield from _databases(f"host={pg15_statements[0]} port={pg15_statements[1]} user=postgres dbname=postgres",
                          "t15s")


@pytest.fixture
def empty_db(make_db) -> str:
    """DSN of a new empty database."""
    return make_db()


@pytest.fixture(scope="session")
def fixture_template(admin_dsn) -> str:
    """Name of a template database holding the bundled fixture at TEST_SCALE (loaded once per session)."""
    from pgconverge import fixtures

    name = f"tmpl_fixture_{os.getpid()}"
    dsn = _create_database(admin_dsn, name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        fixtures.load(conn, scale=TEST_SCALE)
    yield name
    _drop_database(admin_dsn, name)


@pytest.fixture
def fixture_db(make_db, fixture_template) -> str:
    """DSN of a fresh copy of the fixture database."""
    return make_db(template=fixture_template)


@pytest.fixture
def conn(fixture_db):
    """Autocommit superuser connection to a fresh fixture database."""
    with psycopg.connect(fixture_db, autocommit=True) as c:
        yield c


@pytest.fixture(scope="session")
def template_factory(admin_dsn):
    """make(scale, helper_style) -> name of a template database holding that fixture variant (made once)."""
    from pgconverge import fixtures

    made: dict[tuple, str] = {}

    def make(scale: float = TEST_SCALE, helper_style: str = "claims_json") -> str:
        key = (scale, helper_style)
        if key not in made:
            name = f"tmpl_{helper_style}_{str(scale).replace('.', '_')}_{os.getpid()}"
            dsn = _create_database(admin_dsn, name)
            with psycopg.connect(dsn, autocommit=True) as conn:
                fixtures.load(conn, scale=scale, helper_style=helper_style)
            made[key] = name
        return made[key]

    yield make
    for name in made.values():
        _drop_database(admin_dsn, name)
