"""The switch phase: policies and helpers move to the canonical id with no authorization gap."""

from __future__ import annotations

import re

import threading

import psycopg
import pytest
from psycopg import errors

from _support import cli, cli_json, schema_dump, write_config
from pgconverge.fixtures import HELPER_STYLES
from pgconverge.verify.tokens import act_as

SMALL = 0.1  # 200 customers: every identity is checked in a few seconds


def _migrated_to_expand(make_db, template_factory, style="claims_json"):
    dsn = make_db(template_factory(SMALL, style))
    cli("run", "align", "--dsn", dsn)
    cli("run", "expand", "--dsn", dsn)
    return dsn


@pytest.mark.parametrize("style", HELPER_STYLES)
def test_every_identity_sees_the_same_rows_after_the_switch(make_db, template_factory, tmp_path, style):
    dsn = _migrated_to_expand(make_db, template_factory, style)
    cfg = write_config(tmp_path, "[migration]\nrls_sample = 0\n")  # every identity
    out = cli_json("run", "switch", "--dsn", dsn, "--config", cfg)
    step = next(s for s in out["steps"] if s["step"] == "switch.policies")
    with psycopg.connect(dsn, autocommit=True) as conn:
        identities = conn.execute("select count(distinct profile_id) from pgconverge.legacy_customer_profile"
                                  ).fetchone()[0]
        assert step["identities"] == identities and step["write_probes"] > 0
        summary = conn.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                               "order by id desc limit 1").fetchone()[0]
        assert summary["problems"] == []
        policies = dict(conn.execute("select policyname, coalesce(qual, '') || ' ' || coalesce(with_check, '') "
                                     "from pg_policies where schemaname = 'public'").fetchall())
        for name in ("carts_owner", "cart_items_owner", "orders_owner_select", "order_events_owner",
                     "sessions_access"):
            assert "auth_profile_id()" in policies[name] and "customer_id" not in policies[name], policies[name]
        assert "device_id" in policies["sessions_access"]  # the other branch is untouched
        assert "auth_customer_id()" in policies["customers_self_select"]  # the legacy table keeps its own
    verdict = cli_json("verify", "--rls", "--sample", "0", "--dsn", dsn, "--config", cfg)
    assert verdict["passed"], verdict


def _flow(conn, claims: dict, owner_column: str, owner_value) -> dict:
    """Open a cart, add an item, place an order, read it back, touch a session — as role authenticated."""
    with conn.transaction():
        act_as(conn, claims, clear=("customer_id", "profile_id", "app_role"))
        cart = conn.execute(f"insert into public.carts ({owner_column}) values (%s) returning id",
                            (owner_value,)).fetchone()[0]
        product = conn.execute("select id, price from public.products limit 1").fetchone()
        conn.execute("insert into public.cart_items (cart_id, product_id, quantity, unit_price) "
                     "values (%s, %s, 2, %s)", (cart, product[0], product[1]))
        order = conn.execute(f"insert into public.orders ({owner_column}, cart_id, total) values (%s, %s, %s) "
                             "returning id", (owner_value, cart, product[1] * 2)).fetchone()[0]
        conn.execute("insert into public.order_items (order_id, product_id, quantity, unit_price) "
                     "values (%s, %s, 2, %s)", (order, product[0], product[1]))
        session = conn.execute(f"insert into public.sessions ({owner_column}) values (%s) returning id",
                               (owner_value,)).fetchone()[0]
        seen = {
            "orders": conn.execute("select count(*) from public.orders where id = %s", (order,)).fetchone()[0],
            "items": conn.execute("select count(*) from public.cart_items where cart_id = %s", (cart,)).fetchone()[0],
            "order_items": conn.execute("select count(*) from public.order_items where order_id = %s",
                                        (order,)).fetchone()[0],
            "sessions": conn.execute("select count(*) from public.sessions where id = %s", (session,)).fetchone()[0],
        }
    return {"cart": cart, "order": order, "session": session, "seen": seen}


def _invisible(conn, claims: dict | None, flow: dict) -> bool:
    with conn.transaction():
        act_as(conn, claims, clear=("customer_id", "profile_id", "app_role"))
        n = conn.execute("select (select count(*) from public.orders where id = %s) + "
                         "(select count(*) from public.carts where id = %s) + "
                         "(select count(*) from public.sessions where id = %s)",
                         (flow["order"], flow["cart"], flow["session"])).fetchone()[0]
    return n == 0


def test_old_and_new_clients_work_before_during_and_after_the_switch(make_db, template_factory):
    dsn = _migrated_to_expand(make_db, template_factory)
    with psycopg.connect(dsn, autocommit=True) as conn:
        (c1, p1), (c2, p2) = conn.execute(
            "select min(customer_id), profile_id from pgconverge.legacy_customer_profile group by profile_id "
            "having count(*) = 1 order by 1 limit 2").fetchall()
    old1 = {"app_role": "customer", "customer_id": c1}
    dual1 = {**old1, "profile_id": str(p1)}
    new1 = {"app_role": "customer", "profile_id": str(p1)}
    old2 = {"app_role": "customer", "customer_id": c2}
    new2 = {"app_role": "customer", "profile_id": str(p2)}
    complete = {"orders": 1, "items": 1, "order_items": 1, "sessions": 1}

    with psycopg.connect(dsn, autocommit=True) as conn:
        for claims, col, val in ((old1, "customer_id", c1), (dual1, "profile_id", p1)):
            f = _flow(conn, claims, col, val)
            assert f["seen"] == complete
            assert _invisible(conn, old2, f) and _invisible(conn, None, f)

    failures: list[str] = []
    stop = threading.Event()

    def client():
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                for claims, col, val in ((old1, "customer_id", c1), (dual1, "profile_id", p1)):
                    try:
                        f = _flow(c, claims, col, val)
                        if f["seen"] != complete:
                            failures.append(f"{claims}: {f['seen']}")
                    except psycopg.Error as exc:
                        failures.append(f"{claims}: {exc}")

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        cli("run", "switch", "--dsn", dsn)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []

    with psycopg.connect(dsn, autocommit=True) as conn:
        for claims, col, val in ((old1, "customer_id", c1), (dual1, "profile_id", p1), (new1, "profile_id", p1),
                                 (new1, "customer_id", c1)):
            f = _flow(conn, claims, col, val)
            assert f["seen"] == complete, claims
            for other in (old2, new2, None):
                assert _invisible(conn, other, f), other
        # A new token cannot write a row for another identity.
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
            with conn.transaction():
                act_as(conn, new2, clear=("customer_id", "profile_id", "app_role"))
                conn.execute("insert into public.carts (profile_id) values (%s)", (p1,))


def test_rollback_of_the_switch_restores_every_definition_exactly(make_db, template_factory):
    dsn = _migrated_to_expand(make_db, template_factory)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = schema_dump(conn)
        out = " ".join(cli("run", "switch", "--dsn", dsn).split())
        # The RLS check says how far it got (a line per quarter when the output is not a terminal).
        n = re.search(r"RLS check, before the rewrite: (\d+) of \1 identities", out)
        assert n and int(n[1]) > 0, out
        assert re.search(rf"RLS check, after the rewrite: {n[1]} of {n[1]} identities", out), out
        assert schema_dump(conn) != before
        saved = conn.execute("select kind, count(*) from pgconverge.saved_definitions group by 1").fetchall()
        assert dict(saved) == {"function": 1, "policy": 8}
        cli("rollback", "switch", "--dsn", dsn)
        assert schema_dump(conn) == before  # policies as pg_get_expr text, functions by definition
        assert conn.execute("select to_regprocedure('public.auth_profile_id()')").fetchone()[0] is None
    assert cli_json("verify", "--rls", "--sample", "0", "--dsn", dsn)["passed"]
    assert re.search(r"RLS check: (\d+) of \1 identities", cli("verify", "--rls", "--dsn", dsn))
    cli("run", "switch", "--dsn", dsn)  # and forward again


def test_a_policy_that_cannot_be_rewritten_safely_stops_the_switch(make_db, template_factory, tmp_path):
    dsn = _migrated_to_expand(make_db, template_factory)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""
            create function public.owns_cart(p_cart bigint) returns boolean language sql stable as
              $$ select exists (select 1 from public.carts where id = p_cart and customer_id = public.auth_customer_id()) $$;
            create policy cart_items_update on public.cart_items for update to authenticated
              using (public.owns_cart(cart_id));""")
        before = schema_dump(conn)
        # Said by plan before anything runs (here, as the switch is next), not only by the switch's gate.
        planned = " ".join(cli("plan", "--dsn", dsn).split())
        assert ("listed function public.owns_cart(bigint): its body uses the legacy column, and 1 policy calls it "
                "(public.cart_items.cart_items_update)" in planned), planned
        out = cli("run", "switch", "--dsn", dsn, expect=2)
        assert "public.cart_items.cart_items_update" in out and "owns_cart" in out
        assert "migration.accept_policies" in out
        assert schema_dump(conn) == before
        cfg = write_config(tmp_path, '[migration]\naccept_policies = ["public.cart_items.cart_items_update"]\n')
        cli("run", "switch", "--dsn", dsn, "--config", cfg)
        assert "owns_cart(cart_id)" in conn.execute(
            "select qual from pg_policies where policyname = 'cart_items_update'").fetchone()[0]


def test_a_policy_helper_the_role_may_not_execute_fails_the_rls_check(make_db, template_factory):
    """Refused with the grant in place is not "sees nothing": the application would fail on the table."""
    dsn = make_db(template_factory(0.1))
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("revoke execute on function public.auth_profile_id() from public, anon, authenticated")
    out = cli("verify", "--rls", "--dsn", dsn, expect=2)
    assert "may read" in out and "but is refused" in out and "EXECUTE" in out
