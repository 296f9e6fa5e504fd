"""Contract's archive steps: a failure there, an archive schema that exists already, the archived table's sequence."""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest
from psycopg import errors, sql

from _support import cli, cli_json, schema_dump, write_config

from pgconverge.execution import killpoint, preflight_copy

SMALL = 0.1
NO_WINDOW = "[migration]\nobservation_window = 0\n"
ACCEPT = ("--accept-code-references", "--accept-runtime-use")
API = ("anon", "authenticated", "service_role")


def _flat(text: str) -> str:
    return " ".join(text.split())


def _legacy_columns(conn) -> list:
    return conn.execute("select table_name from information_schema.columns where table_schema = 'public' "
                        "and column_name = 'customer_id' order by 1").fetchall()


def _acls(conn) -> list:
    """Every ACL of the schemas, tables and sequences outside the system and pgconverge's own schema."""
    return conn.execute("""
        select 'schema ' || nspname || ' ' || coalesce(nspacl::text, '-') from pg_namespace
        where nspname !~ '^pg_' and nspname not in ('information_schema', 'pgconverge')
        union all
        select c.relkind::text || ' ' || c.oid::regclass::text || ' ' || coalesce(c.relacl::text, '-')
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'p', 'S') and n.nspname !~ '^pg_'
          and n.nspname not in ('information_schema', 'pgconverge')
        order by 1""").fetchall()


@pytest.mark.parametrize("step", ["contract.archive_legacy_table", "contract.archive_mapping"])
@pytest.mark.parametrize("then", ["rollback", "resume"])
def test_a_contract_stopped_at_an_archive_step_rolls_back_and_resumes(make_db, template_factory, tmp_path,
                                                                       monkeypatch, admin_dsn, step, then):
    """The archive step fails (a permission error or a lock that never came would do the same) after contract has
    dropped the legacy columns. Its rollback moved back a table that never moved ("relation archive.customers_…
    does not exist") on every retry; and `run contract` failed in its preflight, which read the dropped columns."""
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, NO_WINDOW)
    args = ("--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for ph in ("align", "expand", "switch"):
            cli("run", ph, *args)
        switched, acls = schema_dump(conn, ("public", "archive")), _acls(conn)
        killpoint.fail_at(f"{step}:before")
        try:
            out = cli("run", "contract", *args, *ACCEPT, expect=2)
        finally:
            killpoint.fail_at(None)
        assert f"step {step} failed" in out, out
        assert _legacy_columns(conn) == []  # the columns went before the step that failed
        if then == "rollback":
            cli("rollback", "contract", *args, "--yes")
            assert schema_dump(conn, ("public", "archive")) == switched
            # (Where the legacy table went before the failure, the archive schema made for it stays, empty.)
            assert [a for a in _acls(conn) if not a[0].startswith("schema archive ")] == acls
        # The same command goes on (or forward again), its preflight included.
        monkeypatch.setenv(preflight_copy.ENABLE_ENV, "on")
        monkeypatch.setenv(preflight_copy.SERVER_ENV, admin_dsn)
        cli("run", "contract", *args, *ACCEPT)
        monkeypatch.setenv(preflight_copy.ENABLE_ENV, "off")
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is None
        assert cli_json("verify", *args)["passed"]
        cli("rollback", "contract", *args, "--yes")
        assert schema_dump(conn, ("public", "archive")) == switched
