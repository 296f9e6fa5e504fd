"""A legacy column whose default is the legacy helper (`customer_id bigint default auth_customer_id()`, as Supabase
schemas write `user_id uuid default auth.uid()`): the application inserts without naming the owner and the
database fills it from the caller's token.

Until contract, the legacy column's default fills it and the sync trigger derives the new id. Contract drops the
legacy column, and with it the default: the new column takes the same default with the canonical helper
(`profile_id default auth_profile_id()`) in the same transaction, so code that never named the owner keeps
inserting owned rows. Every rollback gives the legacy column its default back.
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
        assert 'contract gives profile_id the default "public"."auth_profile_id"()' in out, out
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
