"""Coverage per table: a compared table where the sampled identities own rows, but none of them sees one of its own
with any token, proves nothing about that table, however many rows the other tables showed.

The shape found on an unseen schema: `addresses`' policy cannot be rewritten by pgconverge and is accepted
(migration.accept_policies), so the team rewrites it by hand after the switch. The hand rewrite joins `profiles`,
which row level security hides from `authenticated`: every identity then sees none of its addresses, old and new
tokens "agree" on nothing, and verify --rls and contract's gate passed on the strength of `orders` alone.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

import pgconverge.fixtures
from _support import IDENTITY_CONFIG, IDENTITY_TABLES, cli, cli_json, shim_db, write_config

FIXTURE_SQL = Path(pgconverge.fixtures.__file__).parent / "sql"

SCHEMA = IDENTITY_TABLES + r"""
create table public.orders (id bigserial primary key, customer_id bigint not null references public.customers(id));
create table public.order_lines (id bigserial primary key, order_id bigint not null references public.orders(id));
create table public.addresses (id bigserial primary key, customer_id bigint not null references public.customers(id));
alter table public.customers enable row level security;
alter table public.profiles enable row level security;   -- and no policy: authenticated sees no profile
alter table public.orders enable row level security;
alter table public.order_lines enable row level security;
alter table public.addresses enable row level security;
create policy customers_self on public.customers for select to authenticated using (auth_user_id = auth.uid());
create policy orders_own on public.orders for all to authenticated using (customer_id = auth_customer_id());
create policy lines_own on public.order_lines for all to authenticated
  using (exists (select 1 from public.orders o where o.id = order_lines.order_id and o.customer_id = auth_customer_id()));
create policy addresses_exists on public.addresses for all to authenticated
  using (exists (select 1 from public.customers c where c.id = addresses.customer_id and c.auth_user_id = auth.uid()));
insert into auth.users (id) select ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid from generate_series(1, 20) i;
insert into public.customers (wa_id, display_name, auth_user_id)
  select '0788' || lpad(i::text, 6, '0'), 'c' || i, ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid
  from generate_series(1, 20) i;
insert into public.orders (customer_id) select 1 + (i % 20) from generate_series(1, 60) i;
insert into public.order_lines (order_id) select 1 + (i % 60) from generate_series(1, 120) i;
insert into public.addresses (customer_id) select 1 + (i % 20) from generate_series(1, 60) i;
"""
CONFIG = IDENTITY_CONFIG + """accept_policies = ["public.addresses.addresses_exists"]
"""
# The team's hand rewrite of the accepted policy. BAD reads profiles, which RLS hides from authenticated, so no one
# sees an address; GOOD reads the caller's id through the canonical helper the switch made.
BAD = """alter policy addresses_exists on public.addresses
  using (exists (select 1 from public.profiles p where p.user_id = addresses.profile_id and p.auth_user_id = auth.uid()))"""
GOOD = """alter policy addresses_exists on public.addresses using (profile_id = (select public.auth_profile_id()))"""
ACCEPT = ("--accept-code-references", "--accept-runtime-use")


def _switched(make_db, tmp_path, config: str = CONFIG, schema: str = SCHEMA) -> tuple[str, tuple[str, ...]]:
    dsn, args = shim_db(make_db, tmp_path, schema, config)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    return dsn, args


def _addresses_seen(dsn: str) -> int:
    """Addresses every identity sees with its legacy token, summed."""
    total = 0
    with psycopg.connect(dsn) as c:
        for cid in range(1, 21):
            with c.transaction(force_rollback=True):
                c.execute("select set_config('request.jwt.claims', %s, true)",
                          (f'{{"customer_id": "{cid}", "sub": "00000000-0000-0000-0000-{cid:012d}"}}',))
                c.execute("set local role authenticated")
                total += c.execute("select count(*) from public.addresses").fetchone()[0]
    return total


def test_a_hand_rewrite_hiding_every_owners_rows_fails_verify_and_stops_contract(make_db, tmp_path):
    dsn, args = _switched(make_db, tmp_path)
    assert _addresses_seen(dsn) == 60
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(BAD)
    assert _addresses_seen(dsn) == 0
    out = " ".join(cli("verify", "--rls", *args, expect=1).split())
    assert "FAIL rls" in out, out
    assert ("proves nothing about public.addresses: 20 sampled identities own rows there and 0 of them saw any of "
            "them") in out, out
    assert "migration.token_claims" in out and "migration.rls_hidden_from_owners" in out, out
    assert "public.orders" not in out.split("proves nothing", 1)[1], out  # the tables that look are not blamed
    rls = next(c for c in cli_json("verify", "--rls", *args, expect=1)["checks"] if c["step"] == "rls")
    by_table = rls["coverage"]["by_table"]
    assert by_table["public.addresses"] == {"owners": 20, "owners_seeing_own": 0, "rows_seen": 0,
                                            "owners_writing_own": 0}, by_table
    assert by_table["public.orders"]["owners_seeing_own"] == by_table["public.orders"]["owners"] == 20, by_table
    # order_lines is reached through orders: its owners are those of its orders
    assert by_table["public.order_lines"]["owners_seeing_own"] == by_table["public.order_lines"]["owners"] > 0

    out = " ".join(cli("run", "contract", *ACCEPT, *args, expect=2).split())
    assert "switch verified" in out and "proves nothing about public.addresses" in out, out
    assert "rewritten by hand" in out, out
    with psycopg.connect(dsn) as c:  # nothing was dropped or archived
        assert c.execute("select to_regclass('public.customers')").fetchone()[0] is not None
        assert c.execute("select count(*) from information_schema.columns where table_name = 'addresses' "
                         "and column_name = 'customer_id'").fetchone()[0] == 1


def test_a_correct_hand_rewrite_passes_with_its_coverage(make_db, tmp_path):
    dsn, args = _switched(make_db, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(GOOD)
    assert _addresses_seen(dsn) == 60
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out and "proves nothing" not in out, out
    assert "public.addresses: 20 of 20 owners see their rows, 60 rows compared" in out, out
    cli("run", "contract", *ACCEPT, *args)
    with psycopg.connect(dsn) as c:
        assert c.execute("select to_regclass('public.customers')").fetchone()[0] is None
    # After contract the same rule reads the canonical tokens: still every owner sees its addresses.
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out and "public.addresses: 20 of 20 owners see their rows" in out, out


def _addresses_policy(make_db, tmp_path, policy: str) -> tuple[str, tuple[str, ...], str]:
    """The schema with addresses under POLICY (instead of the accepted one): its DSN, CLI arguments and config."""
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute((FIXTURE_SQL / "roles.sql").read_text() + "\n" + (FIXTURE_SQL / "supabase_shim.sql").read_text())
        c.execute(SCHEMA)
        c.execute(f"drop policy addresses_exists on public.addresses; create policy addresses_own on public.addresses "
                  f"{policy}")
    plain = CONFIG.replace('accept_policies = ["public.addresses.addresses_exists"]\n', "")
    return dsn, ("--dsn", dsn, "--config", write_config(tmp_path, plain)), plain


def test_a_table_meant_to_hide_owners_rows_refuses_the_switch_unless_declared(make_db, tmp_path):
    """A table readable only with an admin claim hides its owners' rows by design. Before any policy is rewritten
    the switch refuses it as proving nothing, changing nothing; listed in migration.rls_hidden_from_owners it
    switches, and verify --rls passes naming it as not proven."""
    dsn, args, plain = _addresses_policy(make_db, tmp_path, "for all to authenticated using "
                                         "(customer_id = auth_customer_id() and (auth.jwt() ->> 'app_role') = 'admin')")
    cli("run", "align", *args)
    cli("run", "expand", *args)
    out = " ".join(cli("run", "switch", *args, expect=2).split())
    assert "proves nothing about public.addresses: 20 sampled identities own rows there and 0 of them" in out, out
    assert "no policy was rewritten" in out, out
    with psycopg.connect(dsn) as c:
        assert "customer_id" in c.execute("select qual from pg_policies where policyname = 'orders_own'").fetchone()[0]
    args = ("--dsn", dsn, "--config", write_config(
        tmp_path, plain + 'rls_hidden_from_owners = ["public.addresses"]\n'))
    cli("run", "switch", *args)
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out and "public.addresses: none of its 20 sampled owners sees its own rows" in out, out
    assert "not proven" in out, out


def test_a_hand_rewrite_that_still_needs_the_legacy_claim_to_insert_fails_verify(make_db, tmp_path):
    """Reads are rewritten right, but the insert check still reads the legacy claim itself: old code may insert, new
    code is refused. Both tokens see the same rows; verify --rls compares what they may write as well."""
    dsn, args = _switched(make_db, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("alter policy addresses_exists on public.addresses using (profile_id = (select public.auth_profile_id())) "
                  "with check (customer_id = ((select auth.jwt()) ->> 'customer_id')::bigint)")
    assert _addresses_seen(dsn) == 60
    out = " ".join(cli("verify", "--rls", *args, expect=1).split())
    assert "FAIL rls" in out and "into public.addresses: allowed with the legacy token, refused with the canonical one" \
        in out, out
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(GOOD + " with check (profile_id = (select public.auth_profile_id()))")
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out, out


def test_a_table_its_owners_may_only_insert_into_is_compared_on_what_they_may_write(make_db, tmp_path):
    """An insert-only table (a log the application writes, no one reads through the API): owners see none of their
    rows before or after, but what they may insert is compared, so it needs no declaration."""
    dsn, args, _ = _addresses_policy(make_db, tmp_path, "for insert to authenticated "
                                     "with check (customer_id = auth_customer_id())")
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out and "public.addresses: none of its" in out, out
    assert "may insert their own where another identity may not: checked on who may write them" in out, out


def test_a_table_anyone_may_insert_into_for_anyone_proves_nothing_on_writes(make_db, tmp_path):
    """An insert check that lets every identity insert every owner's rows tells no owner apart: the write probes
    prove nothing there, and the table is refused as any other table whose owners see none of their rows."""
    dsn, args, _ = _addresses_policy(make_db, tmp_path, "for insert to authenticated "
                                     "with check (customer_id = auth_customer_id() or customer_id is not null)")
    cli("run", "align", *args)
    cli("run", "expand", *args)
    out = " ".join(cli("run", "switch", *args, expect=2).split())
    assert "proves nothing about public.addresses" in out and "no policy was rewritten" in out, out


def test_a_declared_hidden_table_does_not_count_against_the_switchs_overall_coverage(make_db, tmp_path):
    """Fifteen of the twenty sampled identities own rows only in the declared admin-only table: they cannot see
    them by design, so they count neither as owners nor as blind in the overall share (before, 5 of 20 saw their own
    rows, 25%, and the switch refused as proving nothing)."""
    dsn, args, plain = _addresses_policy(make_db, tmp_path, "for all to authenticated using "
                                         "(customer_id = auth_customer_id() and (auth.jwt() ->> 'app_role') = 'admin')")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("delete from public.order_lines; delete from public.orders")
        c.execute("insert into public.orders (customer_id) select 1 + (i % 5) from generate_series(1, 20) i")
    args = ("--dsn", dsn, "--config", write_config(
        tmp_path, plain + 'rls_hidden_from_owners = ["public.addresses"]\n'))
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    with psycopg.connect(dsn) as c:
        covered = c.execute("select data -> 'coverage' from pgconverge.snapshots where name = 'rls_equivalence' "
                            "order by id desc limit 1").fetchone()[0]
    assert covered["owning"] == covered["seeing_own"] == 5, covered


def test_a_policy_hiding_reads_is_not_excused_by_owner_only_writes(make_db, tmp_path):
    """A table that owners may read (a SELECT or ALL policy) whose hand-rewritten read policy hides every owner's
    rows, while its insert check stays owner-only: proves nothing about that table. Owner-only writes excuse only
    a table no policy lets anyone read (before, they excused this one too, and verify passed)."""
    dsn, args, _ = _addresses_policy(make_db, tmp_path, "for all to authenticated using (customer_id = "
                                     "auth_customer_id()) with check (customer_id = auth_customer_id())")
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create policy addresses_hidden on public.addresses as restrictive for select to authenticated "
                  "using (false)")
    out = " ".join(cli("verify", "--rls", *args, expect=1).split())
    assert "proves nothing about public.addresses" in out, out


def test_verify_rls_catches_a_leak_with_one_identity_and_to_identities_out_of_the_sample(make_db, tmp_path):
    """A token that sees a row another identity owns fails verify --rls, whether that other is sampled or not: with a
    sample of one (no second identity to see the same row), and with a policy that shows one sampled identity the
    rows of an identity outside the sample (before, both passed: only a row two sampled identities saw counted)."""
    dsn, args, _ = _addresses_policy(make_db, tmp_path, "for all to authenticated using (customer_id = "
                                     "auth_customer_id())")
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create policy orders_all on public.orders for select to authenticated using (true)")
    out = " ".join(cli("verify", "--rls", "--sample", "1", *args, expect=1).split())
    assert "which does not own it" in out, out
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("drop policy orders_all on public.orders")
        c.execute("create policy orders_peek on public.orders for select to authenticated "
                  "using (customer_id = 20 and auth_customer_id() is not null)")
    out = " ".join(cli("verify", "--rls", "--sample", "3", *args, expect=1).split())
    assert "which does not own it" in out, out


def test_the_switch_samples_an_owner_when_no_sampled_identity_owns_a_row(make_db, tmp_path):
    """Rows have owners, but none of the sampled identities owns one: the equivalence check would compare nothing
    of anyone's. The sample gets that owner (see verify/rls.py cover_tables), and the switch compares its rows
    (before, the switch refused, and a larger sample was the only way through)."""
    dsn, args, plain = _addresses_policy(make_db, tmp_path, "for all to authenticated using (customer_id = "
                                         "auth_customer_id())")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("delete from public.order_lines; delete from public.orders; delete from public.addresses")
    args = ("--dsn", dsn, "--config", write_config(tmp_path, plain + "rls_sample = 1\n"))
    cli("run", "align", *args)
    # The sample of one is the first profile by a hash of its (random) id: the only owner is a customer of another
    # profile, chosen once the mapping says which one is sampled, so that the sample alone always misses it.
    with psycopg.connect(dsn, autocommit=True) as c:
        sampled = c.execute("select profile_id from pgconverge.legacy_customer_profile "
                            "order by hashtext(profile_id::text), profile_id::text limit 1").fetchone()[0]
        owner = c.execute("select customer_id from pgconverge.legacy_customer_profile where profile_id <> %s "
                          "order by customer_id limit 1", (sampled,)).fetchone()[0]
        c.execute("insert into public.orders (customer_id) values (%s), (%s)", (owner, owner))
    cli("run", "expand", *args)
    cli("run", "switch", *args)
    with psycopg.connect(dsn) as c:
        snap = c.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                         "order by id desc limit 1").fetchone()[0]
    assert snap["identities"] == 2 and snap["rows_seen"] == 2, snap
    assert snap["coverage_by_table"]["public.orders"]["owners_seeing_own"] == 1, snap["coverage_by_table"]
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out and "public.orders: 1 of 1 owners see their rows, 2 rows compared" in out, out
