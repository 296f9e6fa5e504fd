"""The RLS check covers every table, whatever the sample size, and says what it covered.

- A table whose rows belong to few identities (refunds, disputes) had no sampled owner most of the time, and a policy
  hiding every owner's rows there passed `verify --rls`: now the sample gets an owner of every table that has owned
  rows, in the switch's check and in verify's.
- Write probes ran only with two sampled identities or more, were counted nowhere in verify's verdict, and after
  contract were compared with nothing: now an owner probes its own inserts alone, verify counts the probes per table,
  and after contract a canonical token must still insert its own rows where owners could.
- A table with row level security disabled, and the tables anonymous callers read, are named as such.
(Schema and helpers: test_rls_table_coverage.py.)
"""

from __future__ import annotations

import psycopg

from _support import cli, cli_json, write_config
from test_rls_table_coverage import ACCEPT, GOOD, _addresses_policy, _switched

OWNER_ONLY = "for all to authenticated using (customer_id = auth_customer_id())"


def _sampled(dsn: str, n: int) -> list[int]:
    """The legacy ids of the first N identities by the sample's own order (verify/rls.py sample)."""
    with psycopg.connect(dsn) as c:
        return [r[0] for r in c.execute(
            "select customer_id from pgconverge.legacy_customer_profile order by hashtext(profile_id::text), "
            "profile_id::text limit %s", (n,))]


def _snapshot(dsn: str) -> dict:
    with psycopg.connect(dsn) as c:
        return c.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                         "order by id desc limit 1").fetchone()[0]


def test_a_table_owned_by_one_identity_outside_the_sample_is_checked_for_its_owner(make_db, tmp_path):
    dsn, args, plain = _addresses_policy(make_db, tmp_path, OWNER_ONLY)
    args = ("--dsn", dsn, "--config", write_config(tmp_path, plain + "rls_sample = 3\n"))
    cli("run", "align", *args)
    sampled = _sampled(dsn, 3)
    rare = next(i for i in range(1, 21) if i not in sampled)
    with psycopg.connect(dsn, autocommit=True) as c:  # addresses: one owner, not one of the three sampled
        c.execute("delete from public.addresses where customer_id <> %s", (rare,))
    for phase in ("expand", "switch"):
        cli("run", phase, *args)
    # The switch compared addresses for that owner, added to the sample.
    snap = _snapshot(dsn)
    assert snap["identities"] == 4, snap["identities"]
    assert snap["coverage_by_table"]["public.addresses"]["owners"] == 1, snap["coverage_by_table"]
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out and "public.addresses: 1 of 1 owners see their rows" in out, out
    # A hand edit that hides every owner's addresses (the canonical id compared with the legacy claim).
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("alter policy addresses_own on public.addresses "
                  "using (profile_id::text = ((select auth.jwt()) ->> 'customer_id'))")
    out = " ".join(cli("verify", "--rls", *args, expect=1).split())
    assert "FAIL rls" in out, out
    assert "proves nothing about public.addresses: 1 sampled identities own rows there and 0 of them" in out, out
    rls = next(c for c in cli_json("verify", "--rls", *args, expect=1)["checks"] if c["step"] == "rls")
    assert rls["coverage"]["identities"] == 4, rls["coverage"]


def test_one_identity_probes_its_own_writes_and_verify_counts_the_probes(make_db, tmp_path):
    """A hand rewrite whose insert check still reads the legacy claim: caught with a sample of one too, and the
    verdict (text and --json) counts the write probes per table."""
    dsn, args = _switched(make_db, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(GOOD + " with check (profile_id = (select public.auth_profile_id()))")
    out = " ".join(cli("verify", "--rls", "--sample", "1", *args).split())
    assert "pass rls" in out and "write probes" in out, out
    rls = next(c for c in cli_json("verify", "--rls", "--sample", "1", *args)["checks"] if c["step"] == "rls")
    probes = rls["coverage"]["write_probes_by_table"]
    assert probes.get("public.addresses", 0) > 0 and rls["coverage"]["write_probes"] == sum(probes.values()), rls
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("alter policy addresses_exists on public.addresses using (profile_id = (select "
                  "public.auth_profile_id())) with check (customer_id = ((select auth.jwt()) ->> 'customer_id')::bigint)")
    out = " ".join(cli("verify", "--rls", "--sample", "1", *args, expect=1).split())
    assert "into public.addresses: allowed with the legacy token, refused with the canonical one" in out, out


def test_after_contract_a_canonical_token_must_still_insert_its_own_rows(make_db, tmp_path):
    dsn, args = _switched(make_db, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(GOOD + " with check (profile_id = (select public.auth_profile_id()))")
    cli("run", "contract", *ACCEPT, *args)
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out, out
    # A later hand edit of the orders policy the switch rewrote, whose insert check reads a claim canonical tokens do
    # not carry: new code can no longer insert orders, which reads cannot show.
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("alter policy orders_own on public.orders with check "
                  "(profile_id::text = ((select auth.jwt()) ->> 'customer_id'))")
    for sample in ("1", "5"):
        out = " ".join(cli("verify", "--rls", "--sample", sample, *args, expect=1).split())
        assert "FAIL rls" in out and "no sampled owner may insert a row of its own into public.orders" in out, out


def test_tables_with_row_level_security_disabled_and_read_by_anonymous_callers_are_named(make_db, tmp_path):
    dsn, args, _ = _addresses_policy(make_db, tmp_path, OWNER_ONLY)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("alter table public.addresses disable row level security")
        c.execute("grant select on public.addresses to anon, authenticated")
        c.execute("grant select on public.order_lines to anon")
        c.execute("create policy lines_public on public.order_lines for select to anon using (true)")
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    snap = _snapshot(dsn)
    assert snap["rls_disabled"] == ["public.addresses"], snap.get("rls_disabled")
    notes = " ".join(snap["not_proven"])
    assert "public.addresses: row level security is disabled on it" in notes, notes
    assert "public.order_lines: anonymous callers read its rows" in notes, notes
    assert "public.addresses: rows are visible to callers who do not own them under the application's own" \
        not in notes, notes
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out, out
    assert "public.addresses: row level security is disabled on it, so its policies do not apply and every " \
           "caller, anonymous ones too, reads every row" in out, out
    assert "public.order_lines: anonymous callers read its rows" in out, out
    rls = next(c for c in cli_json("verify", "--rls", *args)["checks"] if c["step"] == "rls")
    assert rls["coverage"]["rls_disabled"] == ["public.addresses"], rls["coverage"]


def test_a_table_without_a_single_column_key_gets_write_probes_too(make_db, tmp_path):
    """Addresses keyed by (customer_id, label): its rows are named by their ctids, and an owner's copy of its own row
    meets the key after the policies let it through. A hand rewrite whose insert check still reads the legacy claim
    is caught there as on any table."""
    from test_rls_table_coverage import SCHEMA

    schema = SCHEMA.replace(
        "create table public.addresses (id bigserial primary key, customer_id bigint not null references "
        "public.customers(id));",
        "create table public.addresses (customer_id bigint not null references public.customers(id), "
        "label text not null, primary key (customer_id, label));").replace(
        "insert into public.addresses (customer_id) select 1 + (i % 20) from",
        "insert into public.addresses (customer_id, label) select 1 + (i % 20), 'a' || i from")
    assert schema.count("primary key (customer_id, label)") == 1 and "'a' || i" in schema
    dsn, args = _switched(make_db, tmp_path, schema=schema)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(GOOD + " with check (profile_id = (select public.auth_profile_id()))")
    rls = next(c for c in cli_json("verify", "--rls", "--sample", "1", *args)["checks"] if c["step"] == "rls")
    assert rls["coverage"]["write_probes_by_table"].get("public.addresses", 0) > 0, rls["coverage"]
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("alter policy addresses_exists on public.addresses using (profile_id = (select "
                  "public.auth_profile_id())) with check (customer_id = ((select auth.jwt()) ->> 'customer_id')::bigint)")
    out = " ".join(cli("verify", "--rls", "--sample", "1", *args, expect=1).split())
    assert "into public.addresses: allowed with the legacy token, refused with the canonical one" in out, out
