"""A legacy column whose default is the legacy helper (`customer_id bigint default auth_customer_id()`, as Supabase
schemas write `user_id uuid default auth.uid()`): the application inserts without naming the owner and the
database fills it from the caller's token.

Until the switch, the legacy column's default fills it and the sync trigger derives the new id. The switch moves
the default to the new column with the canonical helper (`profile_id default auth_profile_id()`), which serves old
tokens and new ones, and the sync trigger derives the legacy id: such an insert is the same statement in old code
and new, so it is not counted as old code's, and contract, which drops the legacy column, finds the default where
it must be. Every rollback gives the legacy column its default back.
"""

from __future__ import annotations

import psycopg
import pytest

from pgconverge.verify.tokens import act_as

from _support import cli, one_person, schema_dump, write_config

NO_WINDOW = "[migration]\nobservation_window = 0\n"
PHASES = ("align", "expand", "switch", "contract")


def _insert_unowned(dsn: str, claims: dict) -> int:
    with psycopg.connect(dsn) as app:
        act_as(app, {**claims, "app_role": "customer"})
        cart = app.execute("insert into public.carts (status) values ('open') returning id").fetchone()[0]
        app.commit()
    return cart


@pytest.mark.parametrize("last", PHASES)
def test_an_owner_filled_by_the_default_at_every_phase_and_after_rollback(conn, fixture_db, tmp_path, last):
    conn.execute("alter table public.carts alter column customer_id set default public.auth_customer_id()")
    before = schema_dump(conn)
    cfg = write_config(tmp_path, NO_WINDOW)
    if last == "align":
        out = " ".join(cli("plan", "--dsn", fixture_db, "--config", cfg).split())
        assert 'the switch moves it to profile_id as "public"."auth_profile_id"()' in out, out
    for ph in PHASES[:PHASES.index(last) + 1]:
        cli("run", ph, "--dsn", fixture_db, "--config", cfg,
            *(("--accept-code-references", "--accept-runtime-use") if ph == "contract" else ()))
    if last == "contract":
        profile = conn.execute("select profile_id::text from public.carts order by id limit 1").fetchone()[0]
        cart = _insert_unowned(fixture_db, {"profile_id": profile})
        assert conn.execute("select profile_id::text from public.carts where id = %s", (cart,)).fetchone()[0] == profile
    else:
        legacy, profile = one_person(conn)
        tokens = [{"customer_id": legacy}] + ([{"customer_id": legacy, "profile_id": profile}]
                                              if last in ("switch",) else [])
        for claims in tokens:
            cart = _insert_unowned(fixture_db, claims)
            row = conn.execute("select customer_id from public.carts where id = %s", (cart,)).fetchone()
            assert row[0] == legacy
            if last != "align":
                assert conn.execute("select profile_id::text from public.carts where id = %s",
                                    (cart,)).fetchone()[0] == profile
    cli("rollback", "align", "--dsn", fixture_db, "--config", cfg)
    assert schema_dump(conn) == before
    legacy = conn.execute("select id from public.customers order by id limit 1").fetchone()[0]
    cart = _insert_unowned(fixture_db, {"customer_id": legacy})
    assert conn.execute("select customer_id from public.carts where id = %s", (cart,)).fetchone()[0] == legacy


def test_new_code_leaving_the_owner_to_the_default_lets_contract_through(conn, fixture_db, tmp_path):
    """After the switch, new code (canonical claim only) and old code (legacy claim only) insert without naming the
    owner: both rows get both ids, neither counts as old code's writing or as a call of the legacy helper, and the
    runtime gate lets contract through without --accept-runtime-use (before, the legacy default called the legacy
    helper and wrote the legacy column alone, so the gate refused contract for a statement new code keeps)."""
    conn.execute("alter table public.carts alter column customer_id set default public.auth_customer_id()")
    cfg = write_config(tmp_path, NO_WINDOW)
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", fixture_db, "--config", cfg)
    legacy, profile = one_person(conn)
    for claims in ({"profile_id": profile}, {"customer_id": legacy}):
        cart = _insert_unowned(fixture_db, claims)
        assert conn.execute("select customer_id, profile_id::text from public.carts where id = %s",
                            (cart,)).fetchone() == (legacy, profile), claims
    cli("audit", "runtime", "--fail-on-use", "--dsn", fixture_db, "--config", cfg)
    cli("run", "contract", "--accept-code-references", "--dsn", fixture_db, "--config", cfg)
