"""Database functions that read the legacy column are listed by `plan` and stop contract, whatever their body's
form: a BEGIN ATOMIC body (Postgres 14 and later) keeps no source text, only its parsed statements."""

from __future__ import annotations

import psycopg

from _small import PAIR_SQL, roles_sql
from _support import cli, schema_db

SCHEMA = roles_sql() + PAIR_SQL + """
create table public.orders (id bigserial primary key, customer_id bigint not null references public.customers (id));
alter table public.orders enable row level security;
create policy own on public.orders for all to authenticated
  using (customer_id = auth_customer_id()) with check (customer_id = auth_customer_id());
grant select, insert on public.orders to authenticated;
create function public.my_order_count() returns bigint language sql stable security definer
  begin atomic select count(*) from public.orders where orders.customer_id = public.auth_customer_id(); end;
-- the legacy column's name only in its header (a parameter, an output column): nothing it runs reads it
create function public.echo_owner(customer_id bigint) returns table (customer_id bigint) language sql stable
  begin atomic select 1::bigint; end;
create function public.order_count_quoted() returns bigint language sql stable
  as $$ select count(*) from public.orders o where o.customer_id is not null $$;
insert into public.customers (wa_id) select '0788' || lpad(i::text, 6, '0') from generate_series(1, 10) i;
insert into public.orders (customer_id) select 1 + i % 10 from generate_series(1, 30) i;
"""


def test_a_begin_atomic_function_is_listed_and_stops_contract(make_db, tmp_path):
    dsn, args = schema_db(make_db, tmp_path, SCHEMA)
    planned = " ".join(cli("plan", *args).split())
    assert "listed function public.my_order_count(): uses auth_customer_id, customer_id" in planned, planned[-2000:]
    assert "listed function public.order_count_quoted(): uses customer_id" in planned, planned[-2000:]
    assert "public.echo_owner" not in planned, planned[-2000:]
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    out = " ".join(cli("run", "contract", *args, "--yes", expect=2).split())
    assert "public.my_order_count()" in out, out
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is not None
