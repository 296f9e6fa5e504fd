"""A rollback gives rows new code wrote with only the canonical id their legacy id back, making a legacy row for a
canonical row that has none (a person who signed up by e-mail after the switch, say). Where the legacy table would
refuse that row (customers.wa_id NOT NULL, the profile has no number), the rollback refuses before its first change,
from a switched database and from a contracted one, naming the rule, the canonical rows and the rows written for
them; the database is left exactly as it was. Once those canonical rows can be given a legacy row, the same rollback
goes through. Where the legacy table can take the row, it is made."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from _support import cli, write_config
from _zoo import snapshot

FIXTURES = Path(__file__).resolve().parents[2] / "src" / "pgconverge" / "fixtures" / "sql"


def _schema(wa_id: str) -> str:
    return (FIXTURES / "roles.sql").read_text() + "\n" + (FIXTURES / "supabase_shim.sql").read_text() + f"""
create table public.customers (id bigint generated always as identity primary key, wa_id text {wa_id},
  display_name text);
create table public.profiles (user_id bigint generated always as identity primary key, whatsapp_e164 text unique,
  display_name text);
create function public.auth_customer_id() returns bigint language sql stable set search_path = '' as $$
  select nullif(nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'customer_id',
  '')::bigint $$;
grant execute on function public.auth_customer_id() to anon, authenticated, service_role;
create table public.orders (id bigint generated always as identity primary key,
  customer_id bigint not null references public.customers(id));
alter table public.customers enable row level security;
alter table public.profiles enable row level security;
alter table public.orders enable row level security;
create policy orders_own on public.orders for all to authenticated using (customer_id = auth_customer_id())
  with check (customer_id = auth_customer_id());
insert into public.customers (wa_id, display_name)
  select '0788' || lpad(i::text, 6, '0'), 'c' || i from generate_series(1, 10) i;
insert into public.orders (customer_id) select 1 + (i % 10) from generate_series(1, 30) i;
"""


def _switched(make_db, tmp_path, wa_id: str, phases=("align", "expand", "switch"), extra: str = ""
              ) -> tuple[str, str, int]:
    """The schema (and EXTRA) migrated through PHASES, with a profile that has no number (no legacy row) and an order
    new code wrote for it after the switch: (dsn, config, the profile's id)."""
    dsn = make_db()
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\ntoken_claims = {}\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_schema(wa_id) + extra)
    for ph in phases[:3]:
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        newcomer = conn.execute("insert into public.profiles (display_name) values ('signed up by e-mail') "
                                "returning user_id").fetchone()[0]
        conn.execute("insert into public.orders (profile_id) values (%s)", (newcomer,))
    for ph in phases[3:]:
        cli("run", ph, "--yes", "--accept-code-references", "--accept-runtime-use", "--dsn", dsn, "--config", cfg)
    return dsn, cfg, newcomer


def _refused(dsn: str, cfg: str, phase: str, newcomer: int, tmp_path) -> None:
    """`rollback PHASE` (and its dry run, and `emit --rollback-to`) refuse the legacy row for NEWCOMER, changing
    nothing."""
    before = snapshot(dsn)
    for args, code in ((("rollback", phase, "--yes"), 2), (("rollback", phase, "--dry-run"), 2)):
        out = " ".join(cli(*args, "--dsn", dsn, "--config", cfg, expect=code).split())
        assert "the rollback would stop half way (nothing was changed)" in out, out
        assert ("public.customers.wa_id is NOT NULL, and public.profiles.whatsapp_e164, which it is made from, is "
                f"NULL: public.profiles row(s) {newcomer}") in out, out
        assert "rows written for them: public.orders 1 (for 1 of them)" in out, out
        assert "give those public.profiles rows the values public.customers needs" in out, out
        assert "run the rollback again" in out, out
    (tmp_path / "project").mkdir(exist_ok=True)
    files = " ".join(cli("emit", str(tmp_path / "project"), "--rollback-to", phase, "--dsn", dsn, "--config", cfg,
                         expect=2).split())
    assert "public.customers.wa_id is NOT NULL" in files, files
    assert not list((tmp_path / "project").rglob("*.sql"))
    assert snapshot(dsn) == before


def _given_a_number(dsn: str, cfg: str, phase: str, newcomer: int) -> None:
    """The fix the refusal names: the profile gets a number; the same rollback then makes its customer."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("update public.profiles set whatsapp_e164 = '+250788999999' where user_id = %s", (newcomer,))
    cli("rollback", phase, "--yes", "--dsn", dsn, "--config", cfg)
    _legacy_row_made(dsn, "+250788999999")


def _legacy_row_made(dsn: str, number: str | None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select count(*) from public.orders where customer_id is null").fetchone()[0] == 0
        rows = conn.execute("select c.wa_id, c.display_name from public.orders o join public.customers c "
                            "on c.id = o.customer_id where c.id > 10").fetchall()
        assert rows == [(number, "signed up by e-mail")], rows  # display_name copied back
        assert conn.execute("select count(*) from information_schema.columns where table_schema = 'public' "
                            "and table_name = 'orders' and column_name = 'profile_id'").fetchone()[0] == 0


def test_rollback_expand_refuses_a_legacy_row_the_legacy_table_refuses(make_db, tmp_path):
    dsn, cfg, newcomer = _switched(make_db, tmp_path, "not null")
    _refused(dsn, cfg, "expand", newcomer, tmp_path)
    _given_a_number(dsn, cfg, "expand", newcomer)


def test_rollback_contract_refuses_a_legacy_row_the_archived_legacy_table_refuses(make_db, tmp_path):
    dsn, cfg, newcomer = _switched(make_db, tmp_path, "not null", ("align", "expand", "switch", "contract"))
    with psycopg.connect(dsn, autocommit=True) as conn:  # contracted: the legacy table is in the archive
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is None
    _refused(dsn, cfg, "contract", newcomer, tmp_path)
    _given_a_number(dsn, cfg, "expand", newcomer)


def test_rollback_makes_the_legacy_row_where_the_legacy_table_takes_it(make_db, tmp_path):
    dsn, cfg, newcomer = _switched(make_db, tmp_path, "", ("align", "expand", "switch", "contract"))
    cli("rollback", "expand", "--yes", "--dsn", dsn, "--config", cfg)
    _legacy_row_made(dsn, None)


# customers.slug is NOT NULL with no default: the application's insert trigger fills it (when CONDITION holds).
SLUG = """
alter table public.customers add column slug text;
update public.customers set slug = 'c' || id;
alter table public.customers alter column slug set not null;
create function public.fill_slug() returns trigger language plpgsql as $$
begin
  if {condition} then new.slug := coalesce(new.slug, 'c-' || coalesce(new.display_name, '?')); end if;
  return new;
end $$;
create trigger customers_slug before insert on public.customers for each row execute function public.fill_slug();
"""


@pytest.mark.parametrize("phases", [("align", "expand", "switch"), ("align", "expand", "switch", "contract")],
                         ids=["switched", "contracted"])
def test_a_not_null_legacy_column_the_insert_trigger_fills_does_not_stop_the_rollback(make_db, tmp_path, phases):
    dsn, cfg, newcomer = _switched(make_db, tmp_path, "", phases, SLUG.format(condition="true"))
    cli("rollback", "expand", "--yes", "--dsn", dsn, "--config", cfg)
    _legacy_row_made(dsn, None)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select slug from public.customers where id > 10").fetchall() == [("c-signed up by e-mail",)]


@pytest.mark.parametrize("phases", [("align", "expand", "switch"), ("align", "expand", "switch", "contract")],
                         ids=["switched", "contracted"])
def test_a_not_null_legacy_column_the_insert_trigger_leaves_null_refuses_the_rollback(make_db, tmp_path, phases):
    # contracted: the trial writes into the archived table, under another name
    dsn, cfg, newcomer = _switched(make_db, tmp_path, "", phases, SLUG.format(condition="new.wa_id is not null"))
    before = snapshot(dsn)
    out = " ".join(cli("rollback", "expand", "--yes", "--dsn", dsn, "--config", cfg, expect=2).split())
    assert "the rollback would stop half way (nothing was changed)" in out, out
    assert "trigger(s) customers_slug left slug NULL in a row written as a trial and rolled back" in out, out
    assert f"public.profiles row(s) {newcomer}" in out, out
    assert snapshot(dsn) == before


def test_a_not_null_legacy_column_with_no_default_names_a_default_as_the_fix(make_db, tmp_path):
    """customers.region is NOT NULL with no default, and no canonical column gives it a value: the refusal leads
    with a default (nothing new code wrote is touched) before deleting or re-owning its rows; given one, the same
    rollback makes the legacy row with it."""
    extra = ("alter table public.customers add column region text; update public.customers set region = 'RW'; "
             "alter table public.customers alter column region set not null;")
    dsn, cfg, newcomer = _switched(make_db, tmp_path, "", extra=extra)
    out = " ".join(cli("rollback", "expand", "--yes", "--dsn", dsn, "--config", cfg, expect=2).split())
    assert "public.customers.region is NOT NULL and has no default, and the rollback gives it no value" in out, out
    assert "fix: give public.customers a default on region" in out and "nothing new code wrote is touched" in out, out
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("alter table public.customers alter column region set default 'RW'")
    cli("rollback", "expand", "--yes", "--dsn", dsn, "--config", cfg)
    _legacy_row_made(dsn, None)


def test_after_contract_the_default_fix_names_the_archived_legacy_table(make_db, tmp_path):
    """After contract the legacy table is in the archive under another name: the fix's ALTER TABLE names it there,
    and following it lets the rollback through."""
    extra = ("alter table public.customers add column region text; update public.customers set region = 'RW'; "
             "alter table public.customers alter column region set not null;")
    dsn, cfg, newcomer = _switched(make_db, tmp_path, "", ("align", "expand", "switch", "contract"), extra=extra)
    out = " ".join(cli("rollback", "contract", "--yes", "--dsn", dsn, "--config", cfg, expect=2).split())
    with psycopg.connect(dsn, autocommit=True) as conn:
        archived = conn.execute("select format('%I.%I', n.nspname, c.relname) from pg_class c join pg_namespace n "
                                "on n.oid = c.relnamespace where n.nspname = 'archive' and c.relname like "
                                "'customers%' and c.relkind = 'r'").fetchone()[0]
        assert f"fix: give {archived} (contract archived public.customers there" in out, out
        assert f"ALTER TABLE {archived} ALTER COLUMN" in out, out
        conn.execute(f"alter table {archived} alter column region set default 'RW'")
    cli("rollback", "contract", "--yes", "--dsn", dsn, "--config", cfg)


CARTS = """
create table public.carts (id bigint generated always as identity primary key,
  customer_id bigint not null references public.customers(id));
alter table public.carts enable row level security;
create policy carts_own on public.carts for all to authenticated using (customer_id = auth_customer_id())
  with check (customer_id = auth_customer_id());
insert into public.carts (customer_id) select i from generate_series(1, 10) i;
"""


def test_a_row_written_after_its_tables_refill_gets_the_legacy_row_a_later_refill_made(make_db, tmp_path):
    """`rollback contract` refills carts, then orders. New code writes a cart and an order for a person with no
    legacy row in between: the cart keeps NULL (the sync trigger finds no legacy row), then orders' refill makes one.
    A last pass over every table, which makes none, gives the cart that legacy row (before, it kept NULL while its
    person had a customer: old code could not find it)."""
    from pgconverge.execution import killpoint

    dsn, cfg, _ = _switched(make_db, tmp_path, "", ("align", "expand", "switch", "contract"), CARTS)
    killpoint.fail_at("rollback.contract.orders.legacy_ids:before")
    try:
        cli("rollback", "contract", "--yes", "--dsn", dsn, "--config", cfg, expect=2)
    finally:
        killpoint.fail_at(None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        late = conn.execute("insert into public.profiles (display_name) values ('late') returning user_id").fetchone()[0]
        cart = conn.execute("insert into public.carts (profile_id) values (%s) returning customer_id, id",
                            (late,)).fetchone()
        assert cart[0] is None  # no legacy row yet
        conn.execute("insert into public.orders (profile_id) values (%s)", (late,))
    cli("rollback", "contract", "--yes", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn) as conn:
        legacy = conn.execute("select customer_id from pgconverge.legacy_customer_profile where profile_id = %s",
                              (late,)).fetchone()
        got = conn.execute("select customer_id from public.carts where id = %s", (cart[1],)).fetchone()[0]
    assert legacy is not None and got == legacy[0], (legacy, got)
