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
from _support import cli


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
