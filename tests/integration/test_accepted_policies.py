"""Policies left to the user (migration.accept_policies) and rewritten by hand.

Where every dependent's policy was left to the user, the switch rewrote none, and the RLS equivalence check read
only the tables whose policies it rewrote: it compared nothing, and contract's "switch verified" gate could never
pass ("none of the sampled identities owns a row", whatever rls_sample). The check now reads the tables of accepted
policies too, once the switch has run (`verify --rls` and contract's gate), so a hand rewrite is proven or refuted
like pgconverge's own: old and new tokens of every sampled identity see the same rows there.
"""

from __future__ import annotations

import psycopg

from _support import cli, write_config
from _zoo import ZooRun, build, load

INLINE = """
drop policy orders_own on public.orders;
create policy orders_own on public.orders for all to authenticated
  using (customer_id in (select c.id from public.customers c where c.id = public.auth_customer_id()))
  with check (customer_id in (select c.id from public.customers c where c.id = public.auth_customer_id()));
"""
BY_HAND = """
drop policy orders_own on public.orders;
create policy orders_own on public.orders for all to authenticated
  using (profile_id = (select public.auth_profile_id()))
  with check (profile_id = (select public.auth_profile_id()));
"""
WRONG = """
drop policy orders_own on public.orders;
create policy orders_own on public.orders for all to authenticated using (true) with check (true);
"""


def _migrate_to_switch(make_db, tmp_path):
    zoo = build()
    dsn = make_db()
    load(dsn, zoo)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(INLINE)
    run = ZooRun(dsn, zoo)
    cfg = write_config(tmp_path, zoo.config + 'accept_policies = ["public.orders.orders_own"]\n'
                                              "observation_window = 0\n")
    args = ("--dsn", dsn, "--config", cfg)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    return run, dsn, args


def test_every_policy_left_to_the_user_and_rewritten_by_hand_is_proven(make_db, tmp_path):
    run, dsn, args = _migrate_to_switch(make_db, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(BY_HAND)
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "proves nothing" not in out, out
    cli("run", "contract", "--accept-code-references", "--accept-runtime-use", *args)
    assert run.check("contract") == []


def test_a_wrong_rewrite_by_hand_stops_contract(make_db, tmp_path):
    run, dsn, args = _migrate_to_switch(make_db, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(WRONG)  # everyone sees every order
    out = " ".join(cli("run", "contract", "--accept-code-references", "--accept-runtime-use", *args,
                       expect=2).split())
    assert "switch verified" in out and "public.orders" in out, out
    with psycopg.connect(dsn) as c:
        assert c.execute("select to_regclass('public.customers')").fetchone()[0] is not None  # nothing archived
