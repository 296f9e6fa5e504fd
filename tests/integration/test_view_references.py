"""Contract's code gate names only the views that read the legacy table or a legacy column, from what Postgres
records of each view (pg_depend) and its definition's whole-row references. A view over a dependent that reads only
its other columns, a count(*) view with security_invoker, a view over the canonical table and a view over such a
view pass, and the gate says how many views it looked at. A view reading the legacy column, one reading a
dependent's whole row (which loses the column with it) and a view over such a view still block contract, named with
what they read; `plan` lists the same ones."""

from __future__ import annotations

import psycopg

from _small import OWNED_ORDERS, PARTITIONED_EVENTS
from _support import cli, cli_json, schema_db

SCHEMA = OWNED_ORDERS + """
create view public.order_totals as select id, total from public.orders;
create view public.order_count with (security_invoker = true) as select count(*) as n from public.orders;
create view public.profile_names as select user_id, display_name from public.profiles;
create view public.big_orders as select id from public.order_totals where total > 5;
"""
HARMLESS = ("public.order_totals", "public.order_count", "public.profile_names", "public.big_orders")
# Each reads the legacy column: directly, through the whole row, or through a view that does.
READERS = """
create view public.order_owners as select id, customer_id from public.orders;
create view public.order_rows as select to_jsonb(o) as line from public.orders o;
create view public.order_ids as select id from public.order_owners;
"""
ACCEPTED = ("public.order_owners", "public.order_rows", "public.order_ids")
CONFIG = "[migration]\nobservation_window = 0\ntoken_claims = {}\n"


def _code(tmp_path) -> str:
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("def total(row):\n    return row['total']\n")
    return str(app)


def test_views_reading_no_legacy_column_pass_the_code_gate(make_db, tmp_path):
    dsn, args = schema_db(make_db, tmp_path, SCHEMA, CONFIG)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    out = " ".join(cli("run", "contract", "--yes", "--accept-runtime-use", "--code", _code(tmp_path), *args).split())
    assert "contract is blocked" not in out, out
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select to_regclass('public.customers') is null").fetchone()[0]
        assert conn.execute("select n from public.order_count").fetchone()[0] == 12
    checks = {c["check"]: c for c in cli_json("report", *args)["checks"]}
    gate = checks["contract gate: no code references"]
    assert gate["status"] == "passed", gate
    assert "4 view(s) over the legacy, canonical and dependent tables (or over such views) looked at, 0 reading" \
        in gate["looked_at"], gate


def test_views_reading_a_legacy_column_still_block_contract(make_db, tmp_path):
    accept = "accept_views = [" + ", ".join(f'"{v}"' for v in ACCEPTED) + "]\n"
    dsn, args = schema_db(make_db, tmp_path, SCHEMA + READERS, CONFIG + accept)
    plan = " ".join(cli("plan", *args).split())
    for v in ACCEPTED:
        assert f"view {v}" in plan, plan
    for v in HARMLESS:
        assert f"view {v}" not in plan, plan
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    out = " ".join(cli("run", "contract", "--yes", "--accept-runtime-use", "--code", _code(tmp_path), *args,
                       expect=2).split())
    assert "contract is blocked, nothing was dropped" in out, out
    assert "3 view(s) of the 7 over the legacy, canonical and dependent tables (or over such views) read the legacy " \
           "table or a legacy column" in out, out
    assert "view public.order_owners reads public.orders.customer_id" in out, out
    assert "view public.order_rows reads the whole row of public.orders, so public.orders.customer_id" in out, out
    assert "view public.order_ids reads view public.order_owners, which reads public.orders.customer_id" in out, out
    for v in HARMLESS:
        assert f"view {v} " not in out, out
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select to_regclass('public.customers') is not null").fetchone()[0]


# A partitioned dependent, and views over one of its partitions: Postgres records them against the partition, not
# the partitioned table, and contract's DROP COLUMN on the partitioned table fails on the first of them.
PARTITIONED = PARTITIONED_EVENTS + """
create view public.low_kinds as select id, kind from public.events_low;
create view public.low_owners as select id, customer_id from public.events_low;
create view public.low_rows as select to_jsonb(e) as line from public.events_high e;
"""


def test_views_over_one_partition_are_looked_at_too(make_db, tmp_path):
    dsn, args = schema_db(make_db, tmp_path, PARTITIONED, CONFIG)
    out = " ".join(cli("plan", *args, expect=2).split())
    assert "view public.low_owners" in out and "reads public.events_low.customer_id" in out, out
    assert "view public.low_rows" in out and "the whole row of public.events_high" in out, out
    assert "view public.low_kinds" not in out, out
    accept = 'accept_views = ["public.low_owners", "public.low_rows"]\n'
    dsn, args = schema_db(make_db, tmp_path, PARTITIONED, CONFIG + accept)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    code = _code(tmp_path)
    out = " ".join(cli("run", "contract", "--yes", "--accept-runtime-use", "--code", code, *args,
                       expect=2).split())
    assert "contract is blocked, nothing was dropped" in out, out
    assert "view public.low_owners reads public.events_low.customer_id" in out, out
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select to_regclass('public.customers') is not null").fetchone()[0]
        conn.execute("drop view public.low_owners, public.low_rows")
    cli("run", "contract", "--yes", "--accept-runtime-use", "--code", code, *args)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select count(*) from public.low_kinds").fetchone()[0] == 4
