"""The write probe copies a row its owner owns, never merely one its token sees.

A research platform's shape: studies marked public are readable by everyone (a second SELECT policy), and repository
links (`notes` here) by every signed-in user (`using (true)`), while inserts stay the owner's. Before, the probe took
"the first row the owner's token sees" as its model: on such a table that is usually another person's row, whose copy
row level security rightly refuses. After contract, `verify --rls` then said "no sampled owner may insert a row of
its own into public.orders … new code cannot write it — fix: roll back the switch", although every owner could.
An identity that owns no row of a table is not probed there (no refusal), and the verdict counts the owners probed.
"""

from __future__ import annotations

import psycopg

from _support import IDENTITY_CONFIG, IDENTITY_TABLES, cli, cli_json, shim_db

SCHEMA = IDENTITY_TABLES + r"""
create table public.orders (id bigserial primary key, customer_id bigint not null references public.customers(id),
  is_public boolean not null default false);
create table public.notes (id bigserial primary key, customer_id bigint not null references public.customers(id),
  body text);
alter table public.customers enable row level security;
alter table public.profiles enable row level security;
alter table public.orders enable row level security;
alter table public.notes enable row level security;
create policy customers_self on public.customers for select to authenticated using (auth_user_id = auth.uid());
create policy orders_own on public.orders for all to authenticated using (customer_id = auth_customer_id());
create policy orders_public on public.orders for select to anon, authenticated using (is_public);
create policy notes_read on public.notes for select to authenticated using (true);
create policy notes_write on public.notes for insert to authenticated with check (customer_id = auth_customer_id());
grant select, insert, update, delete on public.orders, public.notes to authenticated;
grant select on public.orders to anon;
grant usage on sequence public.orders_id_seq, public.notes_id_seq to authenticated;
insert into auth.users (id) select ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid from generate_series(1, 20) i;
insert into public.customers (wa_id, display_name, auth_user_id)
  select '0788' || lpad(i::text, 6, '0'), 'c' || i, ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid
  from generate_series(1, 20) i;
insert into public.orders (customer_id) select 1 + (i % 20) from generate_series(1, 60) i;
-- public rows whose keys sort first (as text: 1, 10, 11, …, 19)
update public.orders set is_public = true where id = 1 or id between 10 and 19;
-- repository links of three owners only, read by everyone
insert into public.notes (customer_id, body) select 1 + (i % 3), 'n' || i from generate_series(1, 9) i;
"""
CONFIG = IDENTITY_CONFIG
ACCEPT = ("--accept-code-references", "--accept-runtime-use")


def test_contract_verify_passes_on_tables_shared_by_design_and_a_real_write_break_still_fails(make_db, tmp_path):
    dsn, args = shim_db(make_db, tmp_path, SCHEMA, CONFIG)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    with psycopg.connect(dsn) as c:
        eq = c.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                       "order by id desc limit 1").fetchone()[0]
    assert {"public.orders", "public.notes"} <= set(eq["owners_insert"]), eq
    assert eq["write_owners_by_table"]["public.notes"] == 3, eq  # only the three owners of notes were probed there
    cli("run", "contract", *ACCEPT, *args)

    sample = ("--sample", "3")
    with psycopg.connect(dsn, autocommit=True) as c:
        # the public orders (whose keys sort first) belong to an owner outside the sample of three: every sampled
        # owner's token sees another's row first
        sampled = [r[0] for r in c.execute(
            "select c from (select profile_id::text from public.orders union select profile_id::text "
            "from public.notes) x(c) order by hashtext(c), c limit 3").fetchall()]
        outsider = c.execute("select profile_id::text from public.orders where not profile_id::text = any(%s) "
                             "and profile_id not in (select profile_id from public.notes) limit 1",
                             (sampled,)).fetchone()[0]
        c.execute("update public.orders set profile_id = %s where is_public", (outsider,))
        # every owner can in fact insert an order and a note of its own with its canonical token
        for owner in sampled:
            with c.transaction():
                c.execute("select set_config('request.jwt.claims', %s, true)", (f'{{"profile_id": "{owner}"}}',))
                c.execute("set local role authenticated")
                assert c.execute("select min(id::text) from public.orders").fetchone()[0] == "1"
                c.execute("insert into public.orders (profile_id) values (%s)", (owner,))
                c.execute("insert into public.notes (profile_id, body) values (%s, 'mine')", (owner,))
                c.execute("reset role")
                c.execute("select set_config('request.jwt.claims', '', true)")
                c.execute("delete from public.orders where profile_id = %s and id > 60", (owner,))
                c.execute("delete from public.notes where body = 'mine'")

    out = " ".join(cli("verify", "--rls", *sample, *args).split())
    assert "pass rls" in out and "may insert a row of its own" not in out, out
    rls = next(x for x in cli_json("verify", "--rls", *sample, *args)["checks"] if x["step"] == "rls")
    n = rls["coverage"]["identities"]  # the three, and an owner of notes if none of them is one (the sample's cover)
    assert f"public.orders: {n} of {n} owners see their rows" in out, out
    assert f"({n} owners inserting a copy of a row of their own)" in out, out
    owners, by_table = rls["coverage"]["write_owners_by_table"], rls["coverage"]["by_table"]
    # notes: only the sampled identities that own a row there are probed; the others are no refusal. Every note is
    # readable by everyone, so their owners are counted apart from the owners the read check proves anything by.
    notes = by_table["public.notes"]
    assert owners["public.orders"] == n and owners["public.notes"] == notes.get("owners_of_public_rows_only") < n, \
        rls["coverage"]
    assert notes["owners"] == 0, notes

    # a real break: an insert check that no new-code token can satisfy (it reads the legacy claim)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("alter policy orders_own on public.orders with check "
                  "(((select auth.jwt()) ->> 'customer_id') is not null)")
    out = " ".join(cli("verify", "--rls", *sample, *args, expect=1).split())
    assert "FAIL rls" in out and "no sampled owner may insert a row of its own into public.orders" in out, out
    assert "public.notes with its canonical token" not in out, out
