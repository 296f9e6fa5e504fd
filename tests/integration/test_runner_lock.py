"""The migration lock is one database's: a runner migrating another database of the same server is not this one's
runner, and a role that may not see when the runner's session began still gets `status`."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from _small import AUTH_SQL, base_sql, policy_sql, roles_sql
from _support import cli, cli_json, write_config
from pgconverge.execution.runner import LOCK_NAMESPACE

HELPER = """
create function public.auth_customer_id() returns bigint language sql stable as $fn$
  select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'customer_id', '')::bigint $fn$;
"""


def _small_db(make_db) -> str:
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(roles_sql() + AUTH_SQL + base_sql() + HELPER + policy_sql("public.auth_customer_id"))
    return dsn


def _hold(dsn: str) -> psycopg.Connection:
    """A session holding the migration lock of DSN's database, as a runner's control connection does."""
    conn = psycopg.connect(dsn, autocommit=True, application_name="pgconverge:control pid=1 host=elsewhere")
    conn.execute("select pg_advisory_lock(pg_catalog.hashtextextended(%s, 0))", (LOCK_NAMESPACE + "pgconverge",))
    return conn


def test_a_runner_of_another_database_is_not_this_ones(make_db, tmp_path):
    here, there = _small_db(make_db), _small_db(make_db)
    cfg = write_config(tmp_path, "[canonical]\ncopy_columns = []\n[migration]\nrls_sample = 0\n")
    cli("run", "align", "--dsn", here, "--config", cfg)
    holder = _hold(there)
    try:
        assert cli_json("status", "--dsn", here, "--config", cfg)["runner"] is None
        cli("run", "expand", "--dsn", here, "--config", cfg)
        # On its own database the same lock stops a second runner, naming the holder.
        out = " ".join(cli("run", "align", "--dsn", there, "--config", cfg, expect=2).split())
        assert "another pgconverge runner is working on this database" in out, out
    finally:
        holder.close()


def test_status_for_a_role_that_cannot_see_when_the_runner_began(make_db, tmp_path):
    dsn = _small_db(make_db)
    cfg = write_config(tmp_path, "[canonical]\ncopy_columns = []\n[migration]\nrls_sample = 0\n")
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    role = f"pgc_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} login nosuperuser").format(sql.Identifier(role)))
        conn.execute(sql.SQL("grant usage on schema pgconverge to {r}; grant select on all tables in schema "
                             "pgconverge to {r}").format(r=sql.Identifier(role)))
    holder = _hold(dsn)
    try:
        status = cli_json("status", "--dsn", psycopg.conninfo.make_conninfo(dsn, user=role), "--config", cfg)
        assert status["runner"]["pid"] == holder.info.backend_pid and status["runner"]["connected_since"] is None
    finally:
        holder.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop owned by {r}; drop role {r}").format(r=sql.Identifier(role)))
