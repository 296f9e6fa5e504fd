"""A table the application shares by design: every caller reads every row (a chat's messages, public reviews), while
writes stay the owner's. Under the original policies the sampled identities already see rows they do not own, so the
switch holds that table to "old tokens and new tokens see the same rows", not to isolation, and says so; a table
that only starts to show others' rows after the switch is still a leak.

Before, the switch (and with it the preflight of every phase) refused such a schema: "row N is visible to X, which
does not own it", although old and new policies showed exactly the same rows and `accept_policies` could not help.
"""

from __future__ import annotations

import psycopg

import test_rls_table_coverage as coverage
from _support import cli, write_config


def test_a_table_every_user_reads_switches_and_a_later_leak_elsewhere_still_fails(make_db, tmp_path):
    dsn, args, _ = coverage._addresses_policy(make_db, tmp_path, "for select to authenticated using (true)")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create policy addresses_write on public.addresses for insert to authenticated "
                  "with check (customer_id = auth_customer_id())")
        # orders' rows an anonymous caller may read (a public catalogue's shape): the application's design too
        c.execute("create policy orders_public on public.orders for select to anon using (true)")
    out = " ".join(cli("verify", "--rls", *args).split())  # before any phase: by the policies' definitions
    assert "nothing to verify" in out or "pass rls" in out, out
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    with psycopg.connect(dsn) as c:
        quals = dict(c.execute("select policyname, coalesce(qual, with_check) from pg_policies "
                               "where tablename = 'addresses'").fetchall())
    assert quals["addresses_own"] == "true" and "auth_profile_id" in quals["addresses_write"], quals
    with psycopg.connect(dsn) as c:  # the switch's record: what it read before its rewrite
        shared = c.execute("select data -> 'shared_by_design' from pgconverge.snapshots "
                           "where name = 'rls_equivalence' order by id desc limit 1").fetchone()[0]
    assert list(shared) == ["public.addresses"], shared
    with psycopg.connect(dsn) as c:
        public = c.execute("select data -> 'public_by_design' from pgconverge.snapshots "
                           "where name = 'rls_equivalence' order by id desc limit 1").fetchone()[0]
    assert list(public) == ["public.orders"], public
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out, out
    assert ("public.addresses: rows are visible to callers who do not own them under the application's own original "
            "policies") in out and "isolation not checked there" in out, out
    # addresses was shared among signed-in identities, not with anonymous callers: opening it to them is a leak
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create policy addresses_anon on public.addresses for select to anon using (true)")
    out = " ".join(cli("verify", "--rls", *args, expect=1).split())
    assert "anonymous caller sees" in out and "rows of public.addresses" in out, out
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("drop policy addresses_anon on public.addresses")
    # orders was isolated when the switch read it: a policy that opens it afterwards is a leak, before contract
    # (the gate reads the live policies) and after it.
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create policy orders_all on public.orders for select to authenticated using (true)")
    out = " ".join(cli("verify", "--rls", *args, expect=1).split())
    assert "public.orders row" in out and "which does not own it" in out, out
    assert "public.addresses row" not in out, out
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("drop policy orders_all on public.orders")
    cli("run", "contract", *coverage.ACCEPT, *args)
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out and "isolation not checked there" in out, out
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create policy orders_all on public.orders for select to authenticated using (true)")
    out = " ".join(cli("verify", "--rls", *args, expect=1).split())
    assert "public.orders row" in out and "which does not own it" in out, out


def test_a_public_table_whose_policies_are_accepted_keeps_its_design_and_a_hand_rewrite_opening_one_still_fails(
        make_db, tmp_path):
    """A public bucket's shape: addresses' owner policy is accepted (rewritten by hand after the switch), and a policy
    of the application's own, untouched, lets anyone read some addresses. The switch's own check leaves accepted tables
    out, so it recorded no design for them: before, `verify --rls` and contract's gate called what anonymous callers
    and other identities read there a leak ("anonymous caller sees 15 rows of public.addresses"), advised rolling the
    switch back, and contract could never run. Their design now comes from the original policies' definitions; a hand
    rewrite that opens another accepted table, which was not shared, is still a leak."""
    schema = coverage.SCHEMA + """
create policy addresses_public on public.addresses for select to public using (id % 4 = 0);
create table public.notes (id bigserial primary key, customer_id bigint not null references public.customers(id));
alter table public.notes enable row level security;
create policy notes_exists on public.notes for all to authenticated
  using (exists (select 1 from public.customers c where c.id = notes.customer_id and c.auth_user_id = auth.uid()));
grant select, insert, update, delete on public.notes to anon, authenticated;
grant usage on sequence public.notes_id_seq to authenticated;
grant select on public.addresses to anon;
insert into public.notes (customer_id) select 1 + (i % 20) from generate_series(1, 40) i;
"""
    config = coverage.CONFIG.replace(
        'accept_policies = ["public.addresses.addresses_exists"]',
        'accept_policies = ["public.addresses.addresses_exists", "public.notes.notes_exists"]')
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute((coverage.FIXTURE_SQL / "roles.sql").read_text() + "\n"
                  + (coverage.FIXTURE_SQL / "supabase_shim.sql").read_text())
        c.execute(schema)
    args = ("--dsn", dsn, "--config", write_config(tmp_path, config))
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    with psycopg.connect(dsn, autocommit=True) as c:  # the team's hand rewrites
        c.execute(coverage.GOOD)
        c.execute("alter policy notes_exists on public.notes using (profile_id = (select public.auth_profile_id()))")
        c.execute("set role anon")
        assert c.execute("select count(*) from public.addresses").fetchone()[0] == 15
        c.execute("reset role")
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out and "anonymous caller sees" not in out, out
    assert ("public.addresses: rows are visible to callers who do not own them under the application's own original "
            "policies (by their definitions)") in out, out
    assert "public.notes: rows are visible" not in out, out
    # notes was its owners' alone under the original policies: opening it after the switch is a leak
    for policy, role, found in (("for select to authenticated using (true)", "authenticated", "public.notes row"),
                                ("for select to anon using (true)", "anon", "anonymous caller sees 40 rows of "
                                                                            "public.notes")):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"create policy notes_open on public.notes {policy}")
        out = " ".join(cli("verify", "--rls", *args, expect=1).split())
        assert found in out, (role, out)
        out = " ".join(cli("run", "contract", *coverage.ACCEPT, *args, expect=2).split())
        assert "switch verified" in out and found in out, (role, out)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("drop policy notes_open on public.notes")
    cli("run", "contract", *coverage.ACCEPT, *args)
    with psycopg.connect(dsn) as c:
        assert c.execute("select to_regclass('public.customers')").fetchone()[0] is None
