"""A legacy key of a domain type: Postgres casts the column to the type underneath in every comparison, and
pg_get_expr prints that cast (`(customer_id)::integer = auth_customer_id()`); the switch rewrites the policy as if
the cast were not there, because it is not in what the user wrote."""

from __future__ import annotations

import json

import psycopg

from _small import roles_sql
from _support import cli, cli_json, schema_db

SCHEMA = roles_sql() + """
create domain public.customer_ref as integer check (value > 0);
create domain public.order_owner as public.customer_ref;  -- a domain over the domain
create table public.customers (id public.customer_ref primary key, wa_id text, display_name text);
create table public.profiles (user_id uuid primary key default gen_random_uuid(), whatsapp_e164 text unique,
  display_name text);
create function public.auth_customer_id() returns integer language sql stable as
  $$ select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'customer_id', '')::integer $$;
grant execute on function public.auth_customer_id() to anon, authenticated, service_role;
create table public.orders (id serial primary key, customer_id public.order_owner not null
  references public.customers (id));
alter table public.orders enable row level security;
create policy orders_own on public.orders for all to authenticated
  using (customer_id = auth_customer_id()) with check (customer_id = auth_customer_id());
create table public.notes (id serial primary key, order_id int not null references public.orders (id), body text);
alter table public.notes enable row level security;
create policy notes_own on public.notes for select to authenticated
  using (exists (select 1 from public.orders o where o.id = notes.order_id and o.customer_id = auth_customer_id()));
grant select, insert, update, delete on public.orders, public.notes to authenticated;
grant usage on all sequences in schema public to authenticated;
insert into public.customers (id, wa_id, display_name)
  select i, '0788' || lpad(i::text, 6, '0'), 'c' || i from generate_series(1, 10) i;
insert into public.profiles (whatsapp_e164, display_name) select '+250788' || lpad(i::text, 6, '0'), 'p' || i
  from generate_series(1, 4) i;
insert into public.orders (customer_id) select 1 + (i % 10) from generate_series(1, 30) i;
insert into public.notes (order_id, body) select id, 'n' from public.orders;
"""


def _sees(dsn: str, claims: dict) -> int:
    with psycopg.connect(dsn) as conn:
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        conn.execute("set local role authenticated")
        return conn.execute("select (select count(*) from public.orders) + (select count(*) from public.notes)"
                            ).fetchone()[0]


def test_a_domain_typed_legacy_key_is_switched_and_rolled_back(make_db, tmp_path):
    dsn, args = schema_db(make_db, tmp_path, SCHEMA)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        using = dict(conn.execute("select polname, pg_get_expr(polqual, polrelid) from pg_policy"))
        profile = str(conn.execute("select profile_id from pgconverge.legacy_customer_profile "
                                   "where customer_id = 3").fetchone()[0])
    assert using["orders_own"].startswith("(profile_id = ( SELECT auth_profile_id()"), using
    assert "customer_id" not in using["orders_own"] and "customer_id" not in using["notes_own"], using
    # Customer 3 has 3 orders and their 3 notes: the old token and the new one see the same 6 rows.
    assert _sees(dsn, {"customer_id": "3"}) == _sees(dsn, {"profile_id": profile}) == 6
    result = cli_json("verify", "--rls", "--json", *args, "--sample", "0")
    assert result["passed"], result
    cli("run", "contract", *args, "--yes", "--accept-code-references")
    assert _sees(dsn, {"profile_id": profile}) == 6
    cli("rollback", "align", *args, "--yes")
    with psycopg.connect(dsn, autocommit=True) as conn:
        using = dict(conn.execute("select polname, pg_get_expr(polqual, polrelid) from pg_policy"))
        assert conn.execute("select format_type(atttypid, atttypmod) from pg_attribute where attrelid = "
                            "'public.orders'::regclass and attname = 'customer_id'").fetchone()[0] == "order_owner"
    assert using["orders_own"] == "((customer_id)::integer = auth_customer_id())", using
    assert _sees(dsn, {"customer_id": "3"}) == 6
