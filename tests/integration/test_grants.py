"""Privileges through every phase and rollback: what the application's roles may do stays as it was.

Where the application's role may use only some columns of a dependent table (`grant insert (total, customer_id)
on orders to authenticated`), expand gives the new column the legacy column's column privileges as it adds it,
and a rollback of contract gives the legacy column its own back. The legacy table's grants (table and column, with
their grant options) come back with it from the archive, whatever its name needs in quoting.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from pgconverge.verify.tokens import act_as

from _small import AUTH_SQL, base_sql, config, policy_sql, roles_sql
from _support import cli, one_person, schema_dump, write_config

PHASES = ("align", "expand", "switch", "contract")
HELPER = ("create function public.auth_customer_id() returns bigint language sql stable as $$ "
          "select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'customer_id', '')::bigint $$;")
ACCEPT = ("--accept-code-references", "--accept-runtime-use")

# The application's role may use some columns of orders only; service_role may pass on its REFERENCES of the
# legacy column; the legacy table's own grants have a column grant and a grant option.
GRANTS = """
revoke all on public.orders from authenticated;
grant select (id, total, customer_id), insert (total, customer_id), update (total) on public.orders to authenticated;
grant references (customer_id) on public.orders to service_role with grant option;
revoke all on public.customers from anon;
grant select (id, wa_id) on public.customers to anon;
grant select on public.customers to service_role with grant option;
"""


def privileges(conn, *tables: str) -> list[tuple]:
    """Every privilege on TABLES and their columns: (table, column or '', grantee, privilege, grantable). A table
    never granted anything reads as the default it stands for."""
    return sorted(conn.execute("""
        select c.relname, '', x.grantee::regrole::text, x.privilege_type, x.is_grantable
        from pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) x
        where c.oid = any(%(t)s::regclass[])
        union all
        select c.relname, a.attname, x.grantee::regrole::text, x.privilege_type, x.is_grantable
        from pg_class c join pg_attribute a on a.attrelid = c.oid and not a.attisdropped, aclexplode(a.attacl) x
        where c.oid = any(%(t)s::regclass[])""", {"t": list(tables)}).fetchall())


def _column(rows: list[tuple], column: str) -> list[tuple]:
    return [r[2:] for r in rows if r[0] == "orders" and r[1] == column]


def _small(make_db, tmp_path) -> tuple[str, str]:
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(roles_sql() + AUTH_SQL + base_sql(orders=True) + HELPER
                     + policy_sql("public.auth_customer_id", ("carts", "orders")) + GRANTS)
    return dsn, write_config(tmp_path, config("public.auth_customer_id", extra="observation_window = 0"))


def _order(dsn: str, claims: dict, column: str, value) -> None:
    """Old or new code placing an order as `authenticated`, naming only the columns it may write."""
    with psycopg.connect(dsn) as app, app.transaction(force_rollback=True):
        act_as(app, claims)
        app.execute(sql.SQL("insert into public.orders ({}, total) values (%s, 1) returning id").format(
            sql.Identifier(column)), (value,))


@pytest.mark.parametrize("last", PHASES)
def test_column_privileges_at_every_phase_and_after_rollback(make_db, tmp_path, last):
    dsn, cfg = _small(make_db, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before, granted = schema_dump(conn), privileges(conn, "public.orders", "public.customers")
        legacy = _column(granted, "customer_id")
        assert ("authenticated", "INSERT", False) in legacy and ("service_role", "REFERENCES", True) in legacy
        if last == "align":
            out = " ".join(cli("plan", "expand", "--dsn", dsn, "--config", cfg).split())
            assert 'grant insert ("profile_id"), select ("profile_id") on table "public"."orders" to ' \
                   '"authenticated"' in out, out
            assert 'grant references ("profile_id") on table "public"."orders" to "service_role" with grant ' \
                   'option' in out, out
        for ph in PHASES[:PHASES.index(last) + 1]:
            cli("run", ph, "--dsn", dsn, "--config", cfg, *(ACCEPT if ph == "contract" else ()))
            if ph == "align":
                customer, profile = one_person(conn)
        if last != "align":
            assert _column(privileges(conn, "public.orders"), "profile_id") == legacy
            _order(dsn, {"customer_id": customer, "profile_id": profile}, "profile_id", profile)  # new code
        if last == "contract":
            cli("rollback", "contract", "--yes", "--dsn", dsn, "--config", cfg)
            assert privileges(conn, "public.orders", "public.customers") == sorted(
                granted + [("orders", "profile_id", *p) for p in legacy])
        customer = conn.execute("select min(id) from public.customers").fetchone()[0]
        _order(dsn, {"customer_id": customer}, "customer_id", customer)  # old code
        cli("rollback", "align", "--yes", "--dsn", dsn, "--config", cfg)
        assert schema_dump(conn) == before
        assert privileges(conn, "public.orders", "public.customers") == granted


QUOTED = """
create schema "App";
grant usage on schema "App" to anon, authenticated, service_role;
create table "App"."Customers" ("customerId" bigint generated by default as identity primary key, "waId" text);
create table "App"."Profiles" ("profileId" uuid primary key default gen_random_uuid(), "whatsappE164" text unique);
create table "App"."Orders" ("orderId" bigint generated by default as identity primary key,
  "customerId" bigint not null references "App"."Customers" ("customerId"), note text);
create function "App"."authCustomerId"() returns bigint language sql stable set search_path = '' as
  $$ select nullif(nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'customerId', '')::bigint $$;
grant execute on function "App"."authCustomerId"() to anon, authenticated, service_role;
alter table "App"."Orders" enable row level security;
create policy "Orders own" on "App"."Orders" for all to authenticated
  using ("customerId" = "App"."authCustomerId"()) with check ("customerId" = "App"."authCustomerId"());
grant select, insert on "App"."Orders" to authenticated;
grant select on "App"."Customers", "App"."Profiles" to authenticated;
grant select on "App"."Customers" to service_role with grant option;
insert into "App"."Profiles" ("whatsappE164") values ('+250788100001');
insert into "App"."Customers" ("waId") values ('0788100001'), ('0788100002');
insert into "App"."Orders" ("customerId") values (1), (2), (2);
"""

QUOTED_CONFIG = """
[legacy]
table = '"App"."Customers"'
key = "customerId"
match_column = "waId"
helper = '"App"."authCustomerId"'
claim = "customerId"
[canonical]
table = '"App"."Profiles"'
key = "profileId"
match_column = "whatsappE164"
helper = '"App"."authProfileId"'
claim = "profileId"
copy_columns = []
[migration]
new_column = "profileId"
observation_window = 0
rls_sample = 0
"""


def test_a_legacy_table_whose_name_needs_quoting_gets_its_grants_back(make_db, tmp_path):
    """Contract archives the legacy table and revokes the API roles' grants; its rollback grants them again (with
    their grant options), which it failed to for a name that needs quoting (the catalog named its grants unquoted)."""
    dsn = make_db()
    cfg = write_config(tmp_path, QUOTED_CONFIG)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(roles_sql() + AUTH_SQL + QUOTED)
        granted = privileges(conn, '"App"."Customers"')
        assert [r for r in granted if r[2] != "postgres"] == [("Customers", "", "authenticated", "SELECT", False),
                                                              ("Customers", "", "service_role", "SELECT", True)]
        cli("run", "--all", "--dsn", dsn, "--config", cfg, *ACCEPT)
        cli("rollback", "align", "--yes", "--dsn", dsn, "--config", cfg)
        assert privileges(conn, '"App"."Customers"') == granted
