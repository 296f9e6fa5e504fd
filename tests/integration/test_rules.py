"""Rewrite rules (CREATE RULE) on the tables pgconverge writes. A rule rewrites a statement before any trigger fires,
and Postgres refuses some of pgconverge's statements on a table with rules: refused at plan and before align changes
anything, naming the rule; a rule that only reads the legacy column on DELETE is listed, and contract's gate names it
as a rule, not as a view."""

from __future__ import annotations

import psycopg
import pytest

from _support import cli, write_config
from test_bad_input_schema import _refused

SMALL = 0.1
LOG = "create table public.order_log (at timestamptz default now(), customer_id bigint, what text);\n"
RULES = {
    "update rule on a dependent": (
        LOG + "create rule orders_audit as on update to public.orders do also "
              "insert into public.order_log (customer_id, what) values (new.customer_id, 'update')",
        ["rule orders_audit on public.orders", "DO ALSO rule on UPDATE", "expand's backfill updates every row"]),
    "insert rule reading the legacy column": (
        LOG + "create rule orders_log as on insert to public.orders do also "
              "insert into public.order_log (customer_id, what) values (new.customer_id, 'insert')",
        ["rule orders_log on public.orders", "reading customer_id", "reads customer_id as NULL for every row new "
                                                                    "code writes"]),
    "insert rule on the canonical table": (
        "create table public.profile_log (at timestamptz default now(), who uuid);\n"
        "create rule profiles_log as on insert to public.profiles do also "
        "insert into public.profile_log (who) values (new.user_id)",
        ["rule profiles_log on public.profiles", "of the canonical table", "INSERT … ON CONFLICT"]),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_a_rule_pgconverge_cannot_write_through_is_refused_before_any_change(make_db, template_factory, tmp_path,
                                                                              name):
    ddl, needles = RULES[name]
    dsn = make_db(template_factory(SMALL))
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(ddl)
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")
    planned = " ".join(cli("plan", "--dsn", dsn, "--config", cfg, expect=2).split())
    for n in needles:
        assert n in planned, f"{n!r} not in {planned[-2000:]}"
    assert "replace it by a trigger" in planned, planned[-2000:]
    _refused(dsn, ["run", "align", "--config", cfg], needles[0])


def test_a_delete_rule_reading_the_legacy_column_is_listed_and_named_as_a_rule_by_contract(make_db, template_factory,
                                                                                            tmp_path):
    dsn = make_db(template_factory(SMALL))
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(LOG + "create rule carts_gone as on delete to public.carts do also "
                        "insert into public.order_log (customer_id, what) values (old.customer_id, 'cart deleted')")
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")
    planned = " ".join(cli("plan", "--dsn", dsn, "--config", cfg).split())
    assert ("rule carts_gone on public.carts: a DO ALSO rule on DELETE reading customer_id, which contract drops"
            in planned), planned[-2000:]
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    out = " ".join(cli("run", "contract", "--accept-code-references", "--dsn", dsn, "--config", cfg,
                       expect=2).split())
    assert "rule carts_gone on public.carts uses public.carts.customer_id" in out, out
    assert "view public.carts" not in out, out


def test_a_polymorphic_reference_without_a_foreign_key_is_listed(make_db, template_factory, tmp_path):
    """Rails' activities(owner_id, owner_type): no foreign key says owner_id holds customers ids, so pgconverge moves
    none of them; plan names the column and the way through the mapping."""
    dsn = make_db(template_factory(SMALL))
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table public.activities (id bigserial primary key, owner_id bigint, owner_type text, "
                  "subject_id uuid, subject_type text); "
                  "insert into public.activities (owner_id, owner_type) values (1, 'Customer'), (2, 'Product')")
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")
    planned = " ".join(cli("plan", "--dsn", dsn, "--config", cfg).split())
    assert ("column public.activities.owner_id: beside owner_type, with no foreign key: it may hold "
            "public.customers ids") in planned, planned[-2000:]
    assert "pgconverge.legacy_customer_profile: customer_id → profile_id" in planned, planned[-2000:]
    assert "activities.subject_id" not in planned  # not of the legacy key's type
