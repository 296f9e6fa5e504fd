"""`emit` from a database whose legacy table has no rows: there is no identity to test row level security or the
helpers with. Each such pgTAP file says so in one failing assertion that names the fix, and emit warns (before, the
files held plan(0), and pg_prove said only "No tests run!")."""

from __future__ import annotations

import re

import psycopg

from _small import AUTH_SQL, PAIR_SQL, owned, roles_sql
from _support import PLAIN_CONFIG, cli, cli_json, write_config
from pgconverge.emit.pgtap import NO_SAMPLE


def test_emit_without_a_sample_identity_writes_failing_tests_and_warns(make_db, tmp_path):
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(roles_sql() + AUTH_SQL + PAIR_SQL + "create table public.carts (id bigserial primary key, "
                     "customer_id bigint references public.customers(id));\n" + owned("carts"))
    args = ("--dsn", dsn, "--config", write_config(tmp_path, PLAIN_CONFIG))
    out = " ".join(cli("emit", str(tmp_path / "project"), *args).split())
    assert "warning: the RLS and helper tests have no sample identity" in out, out
    assert "emit again from a database with rows" in out, out
    data = cli_json("emit", str(tmp_path / "again"), *args)
    assert data["sample_identities"] == [] and data["warnings"], data
    files = {p.name: p.read_text() for p in (tmp_path / "project").rglob("*.test.sql")}
    for name in ("pgconverge_switch_rls.test.sql", "pgconverge_switch_helper.test.sql",
                 "pgconverge_contract_rls.test.sql", "pgconverge_contract.test.sql"):
        body = files[name]
        assert f"select fail('{NO_SAMPLE}');" in body, (name, body[-1500:])
        assert int(re.search(r"select plan\((\d+)\);", body).group(1)) > 0, name
