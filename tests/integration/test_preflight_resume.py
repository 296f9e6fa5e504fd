"""A run killed before its first trigger exists resumes with the same command, the preflight on.

The preflight copies the ledger into its sampled copy, so that a resumed run is tried there from where it stopped.
The ledger records the database it belongs to, and a ledger in another database is taken at its word only where the
migration's triggers are there too. A run of align killed before its trigger existed (its concurrent index build
waiting for an application transaction) left a ledger whose copy had none: every resume's preflight refused on its
own copy ("written in another database"), with a fix meant for the target (drop the ledger schema). The copy now
records itself as the ledger's home once the target's own record is found to be the target's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from _small import AUTH_SQL, base_sql, config, policy_sql, roles_sql
from _support import cli, cli_json, write_config

from pgconverge.execution import preflight_copy

HELPER = ("create function public.auth_customer_id() returns bigint language sql stable as $$ "
          "select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'customer_id', '')::bigint $$;")


pytestmark = pytest.mark.usefixtures("preflight_on")


def _small(make_db, tmp_path) -> tuple[str, str]:
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(roles_sql() + AUTH_SQL + base_sql() + HELPER + policy_sql("public.auth_customer_id"))
        conn.execute("analyze")
    return dsn, write_config(tmp_path, config("public.auth_customer_id"))


def _run(dsn: str, cfg: str, phase: str, kill_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, preflight_copy.ENABLE_ENV: "off"}
    if kill_at:
        env["PGCONVERGE_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, "-m", "pgconverge", "run", phase, "--dsn", dsn, "--config", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _sync_triggers(dsn: str) -> int:
    """Triggers of pgconverge's functions on tables outside its private schema (the ledger's own guards left out)."""
    with psycopg.connect(dsn) as conn:
        return conn.execute("select count(*) from pg_trigger t join pg_proc p on p.oid = t.tgfoid join pg_class c "
                            "on c.oid = t.tgrelid where p.pronamespace = 'pgconverge'::regnamespace "
                            "and c.relnamespace <> 'pgconverge'::regnamespace").fetchone()[0]


def _resume(dsn: str, cfg: str, phase: str) -> None:
    """The same command again, the preflight on: it passes on its copy and the phase finishes."""
    out = cli_json("run", phase, "--dsn", dsn, "--config", cfg)
    assert out["preflight"]["verdict"] == "passed", out["preflight"]
    assert any(s["status"] == "skipped" for s in out["steps"]), out["steps"]  # resumed, not started over
    status = " ".join(cli("status", "--dsn", dsn, "--config", cfg).split())
    assert f"{phase} done" in status, status


# Points where a killed run leaves no trigger of its own on any table yet (align), and one after align (expand).
@pytest.mark.parametrize("kill_at", ["align.match_index:before", "align.match_index:after",
                                     "align.legacy_trigger:before", "expand.coverage:after"])
def test_a_run_killed_before_its_first_trigger_resumes_with_the_preflight_on(kill_at, make_db, tmp_path):
    dsn, cfg = _small(make_db, tmp_path)
    phase = kill_at.split(".")[0]
    if phase != "align":
        cli("run", "align", "--skip-preflight", "--dsn", dsn, "--config", cfg)
    p = _run(dsn, cfg, phase, kill_at)
    _, err = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, (p.returncode, err)
    if phase == "align":
        assert _sync_triggers(dsn) == 0
    _resume(dsn, cfg, phase)


def test_align_killed_while_its_index_build_waits_resumes(make_db, tmp_path):
    """As it happens: `run align` killed while CREATE INDEX CONCURRENTLY waits for an open application transaction
    (an invalid index left on the canonical table, which a schema dump leaves out of the copy)."""
    dsn, cfg = _small(make_db, tmp_path)
    holder = psycopg.connect(dsn)
    holder.execute("set transaction isolation level repeatable read")
    holder.execute("select count(*) from public.customers")
    p = _run(dsn, cfg, "align")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                waiting = conn.execute(
                    "select count(*) from pg_stat_activity where query ilike '%create index concurrently%' "
                    "and wait_event_type = 'Lock' and datname = current_database()").fetchone()[0]
                if waiting:
                    break
                assert p.poll() is None, p.communicate()
                time.sleep(0.05)
            else:
                raise AssertionError("the index build never waited")
    finally:
        p.kill()
        p.communicate()
        holder.rollback()
        holder.close()
    assert _sync_triggers(dsn) == 0
    _resume(dsn, cfg, "align")
