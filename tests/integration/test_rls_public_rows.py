"""Rows the application shows everyone do not prove that an owner's token identifies its owner.

The RLS checks count an owner as "seeing its own rows" to know that the test tokens name their holders as the
application's do (a check whose tokens name nobody compares nothing). A row readable by every signed-in caller (a
public listing) is seen by any token: counted, it let a check whose tokens named nobody pass, as long as half the
owners had a public row. Now a row a stranger's token sees too does not count, and an owner whose rows are all
public has nothing private to see: it is no failure, and is counted apart.
"""

from __future__ import annotations

import json

import psycopg

from _support import cli, write_config

PUBLIC = """
alter table public.carts add column is_public boolean not null default false;
alter table public.orders add column is_public boolean not null default false;
alter table public.sessions add column is_public boolean not null default false;
update public.carts set is_public = true where id % 2 = 0;
update public.orders set is_public = true where id % 2 = 0;
update public.sessions set is_public = true where ascii(id::text) % 2 = 0;
create policy carts_public on public.carts for select to authenticated using (is_public);
create policy orders_public on public.orders for select to authenticated using (is_public);
create policy sessions_public on public.sessions for select to authenticated using (is_public);
create policy cart_items_public on public.cart_items for select to authenticated
  using (exists (select 1 from public.carts c where c.id = cart_id and c.is_public));
create policy order_items_public on public.order_items for select to authenticated
  using (exists (select 1 from public.orders o where o.id = order_id and o.is_public));
create policy order_events_public on public.order_events for select to authenticated
  using (order_id in (select o.id from public.orders o where o.is_public));
"""

# The application's tokens also carry an audience the helper requires, which the configuration's token_claims
# leave out: every test token then names nobody, and sees only the public rows.
AUDIENCE = """
create or replace function public.auth_customer_id() returns bigint language sql stable set search_path = '' as $$
  select case when public.auth_claim('aud') = 'shop' then nullif(public.auth_claim('customer_id'), '')::bigint end
$$;
"""


def _verify(dsn: str, cfg: str, expect: int) -> dict:
    return json.loads(cli("verify", "--rls", "--json", "--dsn", dsn, "--config", cfg, expect=expect))


def test_public_rows_do_not_make_a_blind_check_pass(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nrls_sample = 8\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(PUBLIC)
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    out = _verify(dsn, cfg, 0)  # the tokens name their owners: private rows are seen, public ones set aside
    (rls,) = [c for c in out["checks"] if c["step"] == "rls"]
    carts = rls["coverage"]["by_table"]["public.carts"]
    assert carts["owners"] and carts["owners_seeing_own"] == carts["owners"], carts
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(AUDIENCE)
    cli("run", "expand", "--dsn", dsn, "--config", cfg)
    # Every sampled identity's test token names nobody, and sees only the public carts: the switch's comparison of
    # old and new tokens compares nobody's own rows, and must say so rather than rewrite the policies.
    out = " ".join(cli("run", "switch", "--dsn", dsn, "--config", cfg, expect=2).split())
    assert "proves nothing" in out and "token_claims = { aud = " in out, out[-3000:]


ALL_PUBLIC = "\n".join(
    f"create policy {t}_everyone on public.{t} for select to authenticated using (true);"
    for t in ("carts", "cart_items", "orders", "order_items", "order_events", "sessions"))


def test_an_application_that_shows_every_row_to_everyone_still_switches(make_db, template_factory, tmp_path):
    """Every dependent row readable by every signed-in caller (owners only write their own): no owner has a private
    row to see, so the read comparison proves nothing about owner reads, and there are none to prove. The switch must
    not stop as though the tokens were wrong ("raise --sample" would never help); it says what it set aside."""
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nrls_sample = 8\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ALL_PUBLIC)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, "--dsn", dsn, "--config", cfg)
    out = _verify(dsn, cfg, 0)
    (rls,) = [c for c in out["checks"] if c["step"] == "rls"]
    by_table = rls["coverage"]["by_table"]
    assert all(c.get("owners_of_public_rows_only") for c in by_table.values()), by_table


SIGNED_IN = "\n".join(
    f"create policy {t}_signed_in on public.{t} for select using (auth.role() = 'authenticated');"
    for t in ("carts", "cart_items", "orders", "order_items", "order_events", "sessions"))


def test_the_verdict_names_owners_of_public_rows_and_does_not_say_anonymous_callers_read_what_they_do_not(
        make_db, template_factory, tmp_path):
    """A chat application's read policy: `using (auth.role() = 'authenticated')`, for every role. Every sampled
    identity owns rows there, all of them public: the verdict said "no sampled identity owns a row there", and, as the
    policy is for every role and reads no identity, that anonymous callers read its rows, while they read none."""
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nrls_sample = 8\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SIGNED_IN)
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    out = " ".join(cli("verify", "--rls", "--dsn", dsn, "--config", cfg).split())
    assert "public.carts: no sampled identity owns a row there" not in out, out
    assert "public.carts: the 8 sampled owners there own public rows only" in out, out
    assert "public.carts: anonymous callers read its rows" not in out, out
    assert ("public.carts: a policy of the application's own on it, for every role or for anon, reads no identity, "
            "so anonymous callers are not held to reading none of its rows there (they read none of them now)") in out, out
