"""The application's own BEFORE triggers that set the owner of a row: from the caller's token when the insert
leaves it out (a common Supabase pattern), or back to the old owner on update (an owner that may not change).

pgconverge's sync trigger fires first among BEFORE triggers, so that triggers reading the ids see both. An
application trigger firing after it that writes the legacy id used to leave the new id as the sync trigger had
left it: NULL (the insert then failed on the new column's NOT NULL after expand) or the other owner's (the row
linked to two identities at once). A second, last trigger now brings the two ids back into agreement,
following the one the application's trigger moved.
"""

from __future__ import annotations

import psycopg
import pytest

from pgconverge.verify.tokens import act_as

from _support import cli, cli_json

TRIGGERS = """
create function public.cart_owner_from_token() returns trigger language plpgsql as $f$
begin
  if new.customer_id is null then
    new.customer_id := public.auth_customer_id();
  end if;
  return new;
end $f$;
create trigger set_owner before insert on public.carts for each row execute function public.cart_owner_from_token();
create function public.cart_owner_stays() returns trigger language plpgsql as $f$
begin
  new.customer_id := old.customer_id;
  return new;
end $f$;
create trigger keep_owner before update on public.carts for each row execute function public.cart_owner_stays();
"""


def _run(dsn: str, conn, *phases: str) -> None:
    for phase in phases:
        cli("run", phase, "--dsn", dsn)


def _two_people(conn) -> tuple[tuple[int, str], tuple[int, str]]:
    """Two legacy ids of different persons, with their canonical ids."""
    rows = conn.execute(
        "select m.customer_id, m.profile_id::text from pgconverge.legacy_customer_profile m "
        "where (select count(*) from pgconverge.legacy_customer_profile x where x.profile_id = m.profile_id) = 1 "
        "order by m.customer_id limit 2").fetchall()
    return rows[0], rows[1]


@pytest.mark.parametrize("phases", [("align", "expand"), ("align", "expand", "switch")], ids=["expand", "switch"])
def test_an_owner_set_by_the_applications_trigger_carries_both_ids(conn, fixture_db, phases):
    conn.execute(TRIGGERS)
    _run(fixture_db, conn, *phases)
    assert conn.execute("select count(*) from pg_trigger where tgname = '~pgconverge_sync'").fetchone()[0] == 1
    # Its own triggers are not the application's: none is judged as one.
    judged = cli_json("inventory", "--dsn", fixture_db)["dependent_objects"]
    assert not [f for f in judged if "pgconverge_sync" in f["object"]], judged
    (me, my_profile), (other, other_profile) = _two_people(conn)
    with psycopg.connect(fixture_db) as app:
        # Old code: the insert names no owner; the application's trigger takes it from the token.
        act_as(app, {"customer_id": me, "app_role": "customer"})
        cart = app.execute("insert into public.carts (status) values ('open') returning id").fetchone()[0]
        app.commit()
        # New code moves the cart to another profile; the application's trigger keeps the owner as it was.
        act_as(app, {"customer_id": me, "profile_id": my_profile, "app_role": "customer"})
        app.execute("update public.carts set profile_id = %s::uuid where id = %s", (other_profile, cart))
        app.commit()
    row = conn.execute("select customer_id, profile_id::text from public.carts where id = %s", (cart,)).fetchone()
    assert row == (me, my_profile)
    # And so for a direct write of the legacy id that the application's trigger leaves alone.
    conn.execute("update public.carts set customer_id = %s where id = %s", (other, cart))
    assert conn.execute("select customer_id, profile_id::text from public.carts where id = %s",
                        (cart,)).fetchone() == (me, my_profile)


def test_plan_refuses_an_application_trigger_that_would_fire_after_the_last_sync_trigger(conn, fixture_db):
    conn.execute(TRIGGERS)
    conn.execute('alter trigger set_owner on public.carts rename to "~~after everything"')
    out = " ".join(cli("plan", "--dsn", fixture_db, expect=2).split())
    assert "~~after everything" in out and "rename it so its name sorts before '~pgconverge_sync'" in out, out
