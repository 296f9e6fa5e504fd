"""An application trigger on the legacy table that writes a dependent row for every new legacy row (a first, open
cart for each new customer) meets the legacy rows pgconverge makes itself, for people new code wrote for who have
none: new code's insert after the switch, and a rollback's refill of legacy ids. The dependent row it writes inside
that creation belongs to the canonical row the legacy row is made for; before, it got no new id and failed its
NOT NULL, failing new code's insert and stopping `rollback expand` part way, with no way forward or back."""

from __future__ import annotations

import json

import psycopg

from _support import cli, write_config

APP = """
create table public.favorites (customer_id bigint not null references public.customers (id) on delete cascade,
  product_id bigint not null, primary key (customer_id, product_id));
insert into public.favorites select c.id, c.id * 10 + p from public.customers c, generate_series(1, 2) p;
alter table public.favorites enable row level security;
create policy fav_own on public.favorites for all to authenticated using (customer_id = auth_customer_id());
grant select, insert, update, delete on public.favorites to authenticated;
create function public.welcome_cart() returns trigger language plpgsql security definer set search_path = '' as $$
begin
  insert into public.carts (customer_id, status) values (new.id, 'open');
  return null;
end $$;
create trigger customers_welcome_cart after insert on public.customers
  for each row execute function public.welcome_cart();
"""


def test_a_dependent_row_written_by_the_legacy_tables_trigger_follows_the_row_pgconverge_made(
        make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(APP)
        for ph in ("align", "expand", "switch"):
            cli("run", ph, "--dsn", dsn, "--config", cfg, "--skip-preflight")
        newcomers = []
        for i in range(2):  # people who signed up through the canonical table only
            pid = conn.execute("insert into public.profiles (whatsapp_e164, display_name) values (%s, 'newcomer') "
                               "returning user_id", (f"+25078955500{i}",)).fetchone()[0]
            newcomers.append(pid)
            conn.execute("insert into public.orders (profile_id, total) values (%s, 5)", (pid,))
            # New code, with the canonical token, on a table whose primary key holds the legacy column: its row
            # needs a legacy owner, which pgconverge makes, and the application's trigger gives it a cart.
            with conn.transaction():
                conn.execute("set local role authenticated")
                conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(
                    {"role": "authenticated", "app_role": "customer", "profile_id": str(pid)}),))
                conn.execute("insert into public.favorites (profile_id, product_id) values (%s, 7)", (pid,))
        made = dict(conn.execute("select m.profile_id, m.customer_id from pgconverge.legacy_customer_profile m "
                                 "where m.profile_id = any(%s)", (newcomers,)).fetchall())
        assert set(made) == set(newcomers)
        for pid, cid in made.items():  # the welcome cart belongs to the newcomer, under both ids
            assert conn.execute("select profile_id from public.carts where customer_id = %s and status = 'open'",
                                (cid,)).fetchall() == [(pid,)]
        # One more with orders only (their key is their own): no legacy row until a rollback past expand gives new
        # code's rows their legacy owner, in its batches; the trigger fires there too.
        late = conn.execute("insert into public.profiles (whatsapp_e164, display_name) values ('+250789555009', "
                            "'late') returning user_id").fetchone()[0]
        conn.execute("insert into public.orders (profile_id, total) values (%s, 5)", (late,))
        cli("rollback", "switch", "--dsn", dsn, "--config", cfg, "--yes")
        cli("rollback", "expand", "--dsn", dsn, "--config", cfg, "--yes")
        assert conn.execute("select count(*) from information_schema.columns where table_schema = 'public' "
                            "and column_name = 'profile_id'").fetchone()[0] == 0
        late_id = conn.execute("select customer_id from public.orders where id = (select max(id) from public.orders)"
                               ).fetchone()[0]
        assert late_id is not None and late_id not in made.values()
        assert conn.execute("select count(*) from public.carts where customer_id = %s and status = 'open'",
                            (late_id,)).fetchone()[0] == 1
