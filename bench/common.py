"""Shared bench plumbing: a server, fixture copies, timing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from pgconverge import embedded, fixtures
from pgconverge.catalog import baseline
from pgconverge.config import Spec
from pgconverge.connection import Target
from pgconverge.execution.runner import Runner
from pgconverge.planning import plan as planner

BENCH_DIR = Path(os.environ.get("PGCONVERGE_BENCH_DIR", "/tmp/pgconverge-bench"))


def admin_dsn(dsn: str | None) -> str:
    """The given server, or a bench-only embedded Postgres (kept between runs)."""
    if dsn:
        return dsn
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    return embedded.ensure_running(BENCH_DIR / "pgdata", database="postgres")


def recreate(admin: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        q = sql.SQL("create database {}").format(sql.Identifier(name))
        if template:
            q += sql.SQL(" template {}").format(sql.Identifier(template))
            if c.info.server_version >= 150000:
                # A file copy after one checkpoint, instead of WAL-logging every block of a large database.
                q += sql.SQL(" strategy file_copy")
        c.execute(q)
    return embedded.with_database(admin, name)


def load_fixture(admin: str, name: str, scale: float) -> tuple[str, float]:
    dsn = recreate(admin, name)
    t = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as c:
        fixtures.load(c, scale=scale)
    return dsn, time.monotonic() - t


def run_phases(dsn: str, phases: list[str], spec: Spec | None = None) -> dict:
    spec = spec or Spec()
    with psycopg.connect(dsn, autocommit=True) as c:
        cats = baseline.load(c, spec)
    p = planner.build(spec, cats)
    out = {}
    with Runner(Target(dsn, "--dsn"), spec, p, catalogs=cats) as r:
        for ph in phases:
            t = time.monotonic()
            r.run_phase(ph)
            out[ph] = time.monotonic() - t
    return out


@contextmanager
def timed():
    box = {}
    t = time.monotonic()
    yield box
    box["seconds"] = time.monotonic() - t


def vacuum_analyze(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("vacuum analyze")


# The bench's own embedded server gets memory and WAL room for tables of millions of rows; the
# same settings hold for every mode of a run. A server given with --dsn is left as it is.
BENCH_SETTINGS = {"shared_buffers": "2GB", "max_wal_size": "8GB", "checkpoint_timeout": "15min",
                  "maintenance_work_mem": "256MB"}


def tune_server(admin: str, defaults: bool = False) -> None:
    """BENCH_SETTINGS on the bench's embedded server (restarting it if they change), or Postgres' defaults."""
    with psycopg.connect(admin, autocommit=True) as c:
        current = {k: c.execute(sql.SQL("show {}").format(sql.Identifier(k))).fetchone()[0] for k in BENCH_SETTINGS}
        tuned = c.execute("select count(*) from pg_catalog.pg_file_settings where name = any(%s) and applied",
                          (list(BENCH_SETTINGS),)).fetchone()[0]
        if (current == BENCH_SETTINGS and not defaults) or (defaults and not tuned):
            return
        for k, v in BENCH_SETTINGS.items():
            if defaults:
                c.execute(sql.SQL("alter system reset {}").format(sql.Identifier(k)))
            else:
                c.execute(sql.SQL("alter system set {} = {}").format(sql.Identifier(k), sql.Literal(v)))
    embedded.stop(BENCH_DIR / "pgdata")
    # Started from a new process: this one remembers the server it stopped as running.
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from pgconverge import embedded; "
                    "embedded.ensure_running(Path(sys.argv[1]), database='postgres')", str(BENCH_DIR / "pgdata")],
                   check=True)


def server_settings(admin: str) -> dict:
    names = ("server_version", "shared_buffers", "max_wal_size", "synchronous_commit", "fsync", "work_mem",
             "maintenance_work_mem")
    with psycopg.connect(admin, autocommit=True) as c:
        return {k: c.execute(sql.SQL("show {}").format(sql.Identifier(k))).fetchone()[0] for k in names}
