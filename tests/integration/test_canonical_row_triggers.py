"""An application trigger on the canonical table that writes a dependent row for each new canonical row, by the
new id alone (new code's "every profile gets a cart"), while old code still signs customers up: the canonical row
pgconverge creates for the new customer fires it before the mapping exists. The cart must get that customer as
its legacy owner, or old code neither sees it nor can make its own (`on conflict (customer_id)` does not cover
the new column's unique index)."""

from __future__ import annotations

import json

import psycopg

from _small import PAIR_SQL, roles_sql
from _support import cli, schema_db

SCHEMA = roles_sql() + PAIR_SQL + """
create table public.carts (id bigserial primary key, customer_id bigint not null unique references public.customers (id),
  items int not null default 0);
alter table public.carts enable row level security;
create policy own on public.carts for all to authenticated
  using (customer_id = auth_customer_id()) with check (customer_id = auth_customer_id());
grant select, insert, update, delete on public.carts, public.customers to authenticated, service_role;
grant usage on all sequences in schema public to authenticated, service_role;
insert into public.customers (wa_id) select '0788' || lpad(i::text, 6, '0') from generate_series(1, 10) i;
insert into public.carts (customer_id) select id from public.customers;
insert into public.profiles (whatsapp_e164) select '+250788' || lpad(i::text, 6, '0') from generate_series(1, 5) i;
"""
NEW_CODE_TRIGGER = """
create function public.profile_cart() returns trigger language plpgsql security definer set search_path = public as
  $$ begin insert into carts (profile_id) values (new.user_id) on conflict (profile_id) do nothing; return new; end $$;
create trigger profile_cart after insert on public.profiles for each row execute function public.profile_cart();
"""


def _old_code_signs_up(dsn: str, number: str) -> tuple[int, list]:
    with psycopg.connect(dsn) as conn:
        conn.execute("set local role service_role")
        cid = conn.execute("insert into public.customers (wa_id) values (%s) returning id", (number,)).fetchone()[0]
        conn.commit()
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps({"customer_id": str(cid)}),))
        conn.execute("set local role authenticated")
        conn.execute("insert into public.carts (customer_id) values (%s) on conflict (customer_id) do nothing", (cid,))
        return cid, conn.execute("select customer_id from public.carts").fetchall()


def test_a_dependent_row_written_by_a_canonical_table_trigger_gets_the_legacy_owner(make_db, tmp_path):
    dsn, args = schema_db(make_db, tmp_path, SCHEMA)
    cli("run", "align", *args)
    cli("run", "expand", *args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(NEW_CODE_TRIGGER)
    for phase, number in (("expand", "0722000001"), ("switch", "0722000002")):
        if phase == "switch":
            cli("run", "switch", *args)
        cid, seen = _old_code_signs_up(dsn, number)  # raised UniqueViolation on carts_profile_id_key before
        assert seen == [(cid,)], (phase, seen)  # the customer's one cart, the one the trigger made
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("select count(*), count(c.customer_id) from public.carts c join "
                                "pgconverge.legacy_customer_profile m on m.profile_id = c.profile_id "
                                "where m.customer_id = %s", (cid,)).fetchone() == (1, 1)
    out = cli("verify", *args)
    assert "FAIL" not in out, out


def test_plan_names_a_sign_up_trigger_that_makes_canonical_rows(make_db, tmp_path):
    """Supabase's usual `handle_new_user`: a trigger on auth.users inserting the profile. align makes profiles for
    customers with none; that person's later sign-up meets the profile align made, so plan says so before align."""
    _, args = schema_db(make_db, tmp_path, SCHEMA + """
create schema if not exists auth;
create table auth.users (id uuid primary key default gen_random_uuid(), phone text);
create function public.handle_new_user() returns trigger language plpgsql security definer set search_path = '' as $$
begin
  insert into public.profiles (user_id, whatsapp_e164) values (new.id, new.phone);
  return new;
end $$;
create trigger on_auth_user_created after insert on auth.users for each row execute function public.handle_new_user();
""")
    planned = " ".join(cli("plan", *args).split())
    assert ("listed trigger on_auth_user_created on auth.users: calls public.handle_new_user(), which inserts into "
            "public.profiles: align makes a public.profiles row for each legacy row that matches none") in planned, \
        planned[-3000:]
    assert "INSERT … ON CONFLICT (whatsapp_e164) DO UPDATE" in planned, planned[-3000:]
    # A rule on the raw column sees two spellings of one number as two people, where pgconverge sees one.
    assert "a unique rule on the raw column, and ON CONFLICT on it, tell them apart" in planned, planned[-3000:]


SIGN_UP_BOTH = """
create schema if not exists auth;
create table auth.users (id uuid primary key default gen_random_uuid(), phone text);
create unique index on public.profiles (whatsapp_e164);
create function public.handle_new_user() returns trigger language plpgsql security definer set search_path = '' as $$
begin
  insert into public.customers (wa_id) values (new.phone);
  insert into public.profiles (user_id, whatsapp_e164) values (new.id, new.phone);
  return new;
end $$;
create trigger on_auth_user_created after insert on auth.users for each row execute function public.handle_new_user();
"""


def test_a_sign_up_trigger_making_the_legacy_row_then_the_canonical_row_is_refused(make_db, tmp_path):
    """The sign-up makes the customer, then the profile: from align on, pgconverge's trigger on customers makes the
    profile at the first insert, and the second fails on the unique number, every sign-up. Refused before align,
    changing nothing; the same function making the profile first is only listed, and align then leaves sign-ups
    working."""
    dsn, args = schema_db(make_db, tmp_path, SCHEMA + SIGN_UP_BOTH)
    for cmd in (("plan",), ("run", "align")):
        out = " ".join(cli(*cmd, *args, expect=2).split())
        assert ("trigger on_auth_user_created on auth.users: calls public.handle_new_user(), which inserts into "
                "public.customers and then into public.profiles without ON CONFLICT") in out, out[-3000:]
        assert "insert the public.profiles row first" in out, out[-3000:]
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select to_regnamespace('pgconverge')").fetchone()[0] is None
        conn.execute("""create or replace function public.handle_new_user() returns trigger language plpgsql
            security definer set search_path = '' as $$
            begin
              insert into public.profiles (user_id, whatsapp_e164) values (new.id, new.phone);
              insert into public.customers (wa_id) values (new.phone);
              return new;
            end $$""")
    cli("run", "align", *args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("insert into auth.users (phone) values ('+250788999001')")
        assert conn.execute("select count(*) from public.profiles where whatsapp_e164 = '+250788999001'"
                            ).fetchone()[0] == 1
