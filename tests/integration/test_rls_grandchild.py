"""A table two joins below its owner (line_notes → order_lines → orders.customer_id): the RLS check tells its rows'
owners by following the chain of foreign keys, so a policy hiding every owner's rows there fails `verify --rls` and the
switch's own check, whatever the sample; a table whose owners cannot be told is named so, not "no sampled identity".
"""

from __future__ import annotations

from pathlib import Path

import psycopg

import pgconverge.fixtures
from _support import IDENTITY_TABLES, cli, cli_json, write_config

FIXTURE_SQL = Path(pgconverge.fixtures.__file__).parent / "sql"

SCHEMA = IDENTITY_TABLES + r"""
create table public.orders (id bigserial primary key, customer_id bigint not null references public.customers(id));
create table public.order_lines (id bigserial primary key, order_id bigint not null references public.orders(id));
create table public.line_notes (id bigserial primary key, line_id bigint not null references public.order_lines(id),
  body text not null);
alter table public.customers enable row level security;
alter table public.profiles enable row level security;
alter table public.orders enable row level security;
alter table public.order_lines enable row level security;
alter table public.line_notes enable row level security;
create policy customers_self on public.customers for select to authenticated using (auth_user_id = auth.uid());
create policy orders_own on public.orders for all to authenticated using (customer_id = auth_customer_id());
create policy lines_own on public.order_lines for all to authenticated
  using (exists (select 1 from public.orders o where o.id = order_lines.order_id and o.customer_id = auth_customer_id()));
grant select, insert on public.line_notes to authenticated;
grant usage on sequence public.line_notes_id_seq to authenticated;
insert into auth.users (id) select ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid from generate_series(1, 20) i;
insert into public.customers (wa_id, display_name, auth_user_id)
  select '0788' || lpad(i::text, 6, '0'), 'c' || i, ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid
  from generate_series(1, 20) i;
insert into public.orders (customer_id) select 1 + (i % 20) from generate_series(1, 60) i;
insert into public.order_lines (order_id) select 1 + (i % 60) from generate_series(1, 120) i;
"""
# The notes' policy goes through both joins to the owner. HIDING also asks for a body no note has: its owners see none.
NOTES = """create policy notes_own on public.line_notes for all to authenticated using (exists (
  select 1 from public.order_lines l join public.orders o on o.id = l.order_id
  where l.id = line_notes.line_id and o.customer_id = auth_customer_id()){extra})"""
HIDING = " and body = 'never'"
# After the switch, a hand edit comparing the canonical id with the auth user: no owner sees its notes.
BROKEN = """alter policy notes_own on public.line_notes using (exists (
  select 1 from public.order_lines l join public.orders o on o.id = l.order_id
  where l.id = line_notes.line_id and o.profile_id = (select auth.uid())))"""
CONFIG = "[migration]\nobservation_window = 0\ntoken_claims = {}\nrls_sample = 3\n"


def _db(make_db, tmp_path, extra: str = "") -> tuple[str, tuple[str, ...]]:
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute((FIXTURE_SQL / "roles.sql").read_text() + "\n" + (FIXTURE_SQL / "supabase_shim.sql").read_text())
        c.execute(SCHEMA + NOTES.format(extra=extra) + ";")
    return dsn, ("--dsn", dsn, "--config", write_config(tmp_path, CONFIG))


def _notes_for_a_rare_owner(dsn: str) -> int:
    """Notes on every line of one customer outside the sample of three (verify/rls.py sample's order): its legacy id."""
    with psycopg.connect(dsn, autocommit=True) as c:
        sampled = [r[0] for r in c.execute(
            "select customer_id from pgconverge.legacy_customer_profile order by hashtext(profile_id::text), "
            "profile_id::text limit 3")]
        rare = next(i for i in range(1, 21) if i not in sampled)
        c.execute("insert into public.line_notes (line_id, body) select l.id, 'note' from public.order_lines l "
                  "join public.orders o on o.id = l.order_id where o.customer_id = %s", (rare,))
        assert c.execute("select count(*) from public.line_notes").fetchone()[0] > 0
    return rare


def _rls(args, *more, expect: int = 0) -> dict:
    return next(c for c in cli_json("verify", "--rls", *more, *args, expect=expect)["checks"] if c["step"] == "rls")


def test_a_policy_hiding_every_owners_rows_two_joins_down_fails_verify(make_db, tmp_path):
    dsn, args = _db(make_db, tmp_path)
    cli("run", "align", *args)
    _notes_for_a_rare_owner(dsn)
    for phase in ("expand", "switch"):
        cli("run", phase, *args)
    with psycopg.connect(dsn) as c:  # the switch compared the notes for their owner, added to the sample
        snap = c.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                         "order by id desc limit 1").fetchone()[0]
    assert snap["coverage_by_table"]["public.line_notes"]["owners"] == 1, snap["coverage_by_table"]
    assert snap["coverage_by_table"]["public.line_notes"]["owners_seeing_own"] == 1, snap["coverage_by_table"]
    # The rewritten policy: the notes' owner sees them, with old and new tokens.
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out and "public.line_notes: 1 of 1 owners see their rows" in out, out
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(BROKEN)
    for more in ((), ("--sample", "0")):
        out = " ".join(cli("verify", "--rls", *more, *args, expect=1).split())
        assert "FAIL rls" in out, out
        assert "proves nothing about public.line_notes: 1 sampled identities own rows there and 0 of them" in out, out
        assert "no sampled identity owns a row there" not in out, out
        by_table = _rls(args, *more, expect=1)["coverage"]["by_table"]
        assert by_table["public.line_notes"]["owners"] == 1, by_table
        assert by_table["public.line_notes"]["owners_seeing_own"] == 0, by_table
    # and contract stops at its gate (the switch's own result holds; verify --rls is what the user reruns)
    out = " ".join(cli("verify", "--rls", "--sample", "0", *args, expect=1).split())
    assert "FAIL rls" in out, out


def test_the_switch_refuses_a_policy_hiding_owners_rows_two_joins_down(make_db, tmp_path):
    dsn, args = _db(make_db, tmp_path, HIDING)
    cli("run", "align", *args)
    _notes_for_a_rare_owner(dsn)
    cli("run", "expand", *args)
    out = " ".join(cli("run", "switch", *args, expect=2).split())
    assert "proves nothing about public.line_notes" in out and "no policy was rewritten" in out, out
    with psycopg.connect(dsn) as c:  # the notes' policy is the original one
        using = c.execute("select pg_get_expr(polqual, polrelid) from pg_policy where polname = 'notes_own'"
                          ).fetchone()[0]
    assert "auth_customer_id" in using and "profile_id" not in using, using


def test_a_table_whose_owners_cannot_be_told_says_so(make_db, tmp_path):
    """A table whose policy reads the caller's id from a column no foreign key ties to an owner: its coverage says
    "owner unknown", not that no sampled identity owns a row there."""
    dsn, args = _db(make_db, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("""
create table public.tips (id bigserial primary key, customer_ref bigint, body text);
alter table public.tips enable row level security;
create policy tips_own on public.tips for select to authenticated using (
  exists (select 1 from public.orders o where o.id = tips.customer_ref and o.customer_id = auth_customer_id()));
grant select on public.tips to authenticated;
insert into public.tips (customer_ref, body) select i, 'tip' from generate_series(1, 10) i;
""")
    cli("run", "align", *args)
    _notes_for_a_rare_owner(dsn)
    out = " ".join(cli("verify", "--rls", "--sample", "0", *args).split())
    assert "public.tips: owner unknown" in out, out
    assert "public.tips: no sampled identity owns a row there" not in out, out
    assert "public.line_notes: 1 of 1 owners see their rows" in out, out
    assert _rls(args, "--sample", "0")["coverage"]["owner_unknown"] == ["public.tips"]
