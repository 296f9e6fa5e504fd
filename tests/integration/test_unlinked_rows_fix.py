"""Rows written with the sync trigger bypassed (session_replication_role = replica: a bulk load, a restore) after
expand have a legacy id and no new id. verify and contract's gate name them with a fix that fills them: the UPDATE
from the mapping, not `run expand` again (which, once expand is done, runs nothing)."""

from __future__ import annotations

import re

import psycopg

from _support import cli, cli_json, write_config

CONFIG = "[migration]\nobservation_window = 0\nrls_sample = 5\n"


def test_rows_written_with_the_sync_trigger_bypassed_get_a_fix_that_fills_them(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, CONFIG)
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as c:
        customer = c.execute("select min(id) from public.customers").fetchone()[0]
        with c.transaction():
            c.execute("set local session_replication_role = replica")
            c.execute("insert into public.orders (customer_id) values (%s)", (customer,))
    v = cli_json("verify", "--dsn", dsn, "--config", cfg, expect=1)
    assert not v["passed"]
    bad = next(r for r in v["checks"] if not r["passed"] and r["step"] == "expand.invariants")
    assert any("public.orders" in " ".join(p) and "no profile_id" in " ".join(p) for p in bad["problems"]), bad
    assert "run expand` again (the backfill" not in bad["fix"], bad["fix"]
    fill = re.search(r'update "public"\."orders" d set [^;)]*', bad["fix"])
    assert fill, bad["fix"]

    # following it fills the row; verify passes
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute(fill.group(0)).rowcount == 1
        assert c.execute("select count(*) from public.orders where customer_id is not null and profile_id is null"
                         ).fetchone()[0] == 0
    assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]

    # Another such row, found by contract's gate: it sends expand's backfills back, and says to run expand,
    # which then fills it.
    with psycopg.connect(dsn, autocommit=True) as c:
        with c.transaction():
            c.execute("set local session_replication_role = replica")
            c.execute("insert into public.orders (customer_id) values (%s)", (customer,))
    contract = ["run", "contract", "--accept-code-references", "--accept-runtime-use", "--yes", "--dsn", dsn,
                "--config", cfg]
    out = " ".join(cli(*contract, expect=2).split())
    assert "run `pgconverge run expand`, then contract again" in out and "expand.orders.backfill" in out, out
    cli("run", "expand", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select count(*) from public.orders where customer_id is not null and profile_id is null"
                         ).fetchone()[0] == 0
    assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]
    cli(*contract)
