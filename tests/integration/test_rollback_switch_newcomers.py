"""A person who signs up after the switch through the canonical table alone (a profile, no customers row) reads and
writes its rows through the derived lookup helper. `rollback switch` gives the policies back their reading of the legacy
helper, which finds a caller only through its customers row: the rollback makes that row, and gives the person's rows
their customer_id, before it restores them, and says for how many people it did. Before, the person saw none of its
rows and was refused its inserts afterwards, and the rollback said nothing. Going forward again makes no legacy row for
anyone (those steps belong to the rollback alone)."""

from __future__ import annotations

import uuid

import psycopg

from _support import cli, cli_json, schema_db
from test_lookup_newcomers import CONFIG, SCHEMA, _as


def _sign_up(conn, number: str) -> uuid.UUID:
    """New code's sign-up: an auth user and a profile, no customers row; then an order by the new id."""
    sub = uuid.uuid4()
    conn.execute("insert into auth.users (id) values (%s)", (sub,))
    conn.execute("insert into public.profiles (id, whatsapp_e164) values (%s, %s)", (sub, number))
    assert _as(conn, sub, "insert into public.orders (profile_id, total) values (%s, 5) returning total", sub) == 5
    return sub


def _old_code_insert(conn, sub: uuid.UUID) -> str:
    try:
        _as(conn, sub, "insert into public.orders (customer_id, total) values (public.auth_customer_id(), 7) "
                       "returning total")
        return "ok"
    except psycopg.Error as exc:
        return exc.sqlstate or "error"


def test_rollback_switch_gives_newcomers_legacy_rows_and_switch_again_makes_none(make_db, tmp_path):
    dsn, args = schema_db(make_db, tmp_path, SCHEMA, CONFIG)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    old = uuid.UUID("00000000-0000-4000-8000-000000000007")
    with psycopg.connect(dsn, autocommit=True) as conn:
        newcomer = _sign_up(conn, "+250788000901")
        assert _as(conn, newcomer, "select count(*) from public.orders") == 1
        customers = conn.execute("select count(*) from public.customers").fetchone()[0]
    out = " ".join(cli("rollback", "switch", "--yes", *args).split())
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select count(*) from public.customers").fetchone()[0] == customers + 1
        row = conn.execute("select c.user_id, o.customer_id = c.id from public.orders o join public.customers c "
                           "on c.id = o.customer_id where o.profile_id = %s", (newcomer,)).fetchall()
        assert row == [(newcomer, True)], row
        # the restored policies read auth_customer_id(): the newcomer sees its order and old code writes for it
        assert _as(conn, newcomer, "select count(*) from public.orders") == 1
        assert _old_code_insert(conn, newcomer) == "ok"
        assert _as(conn, newcomer, "select count(*) from public.orders") == 2
        assert _as(conn, old, "select count(*) from public.orders") == 4
        assert conn.execute("select count(*) from public.orders where customer_id is null").fetchone()[0] == 0
    assert "made 1 public.customers row for 1 person" in out and "(1 in public.orders)" in out, out
    # forward again: the derived helper serves a later newcomer without a customers row being made for it
    cli("run", "switch", *args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        later = _sign_up(conn, "+250788000902")
        assert _as(conn, later, "select count(*) from public.orders") == 1
        assert _as(conn, newcomer, "select count(*) from public.orders") == 2
        assert conn.execute("select count(*) from public.customers").fetchone()[0] == customers + 1
        assert conn.execute("select customer_id from public.orders where profile_id = %s", (later,)).fetchall() == [
            (None,)]
    plan = " ".join(cli("plan", "--rollback-to", "switch", *args).split())
    assert "rollback.switch.legacy_ids.orders" in plan, plan
    # and a second rollback gives that one its row too (the steps run again after a forward run)
    res = cli_json("rollback", "switch", "--yes", *args)
    assert res["legacy_rows_made"]["people"] == 1, res
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _as(conn, later, "select count(*) from public.orders") == 1
        assert _old_code_insert(conn, later) == "ok"
