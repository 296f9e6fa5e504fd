"""`inventory` on the bundled fixture lists exactly what references the legacy side."""

import json
import subprocess
import sys

import psycopg
from typer.testing import CliRunner

from pgconverge import inventory as inv
from pgconverge.catalog.introspect import load_catalog
from pgconverge.cli import app
from pgconverge.config import Spec

from _small import AUTH_SQL, base_sql, roles_sql
from _support import cli, cli_json, write_config

FIXTURE_POLICIES = {
    ("public.customers", "customers_self_select"),
    ("public.carts", "carts_owner"),
    ("public.cart_items", "cart_items_owner"),
    ("public.orders", "orders_owner_select"),
    ("public.orders", "orders_owner_insert"),
    ("public.order_items", "order_items_owner"),
    ("public.order_items", "order_items_owner_insert"),
    ("public.order_events", "order_events_owner"),
    ("public.sessions", "sessions_access"),
}


def run_inventory(dsn: str) -> dict:
    result = CliRunner().invoke(app, ["inventory", "--json", "--dsn", dsn])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_fixture_inventory_is_exact(fixture_db):
    data = run_inventory(fixture_db)
    fks = {f["table"]: f for f in data["foreign_keys"]}
    assert set(fks) == {"public.carts", "public.orders", "public.sessions"}
    assert (fks["public.carts"]["column"], fks["public.carts"]["nullable"], fks["public.carts"]["on_delete"]) == \
        ("customer_id", False, "CASCADE")
    for t in ("public.orders", "public.sessions"):
        assert (fks[t]["column"], fks[t]["nullable"], fks[t]["on_delete"]) == ("customer_id", True, "SET NULL")
    assert all(f["references"] == "public.customers(id)" and f["column_type"] == "bigint" for f in fks.values())

    assert [i["name"] for i in fks["public.carts"]["indexes"]] == ["public.idx_carts_customer_status"]
    assert fks["public.carts"]["indexes"][0]["columns"] == ["customer_id", "status"]
    assert [i["name"] for i in fks["public.sessions"]["indexes"]] == ["public.idx_sessions_customer"]
    assert fks["public.sessions"]["indexes"][0]["predicate"] == "(customer_id IS NOT NULL)"
    assert fks["public.orders"]["indexes"] == []
    assert any("public.orders.customer_id has no index" in w for w in data["warnings"])
    # What depends on the legacy key besides the foreign keys (planning/shapes.py): nothing the plan refuses.
    objects = {o["object"]: o for o in data["dependent_objects"]}
    assert not [o for o in objects.values() if o["action"] == "refused"], objects
    assert "ON DELETE CASCADE kept" in objects["foreign key carts_customer_id_fkey on public.carts"]["detail"]

    assert {(p["table"], p["name"]) for p in data["policies"]} == FIXTURE_POLICIES
    by_name = {p["name"]: p for p in data["policies"]}
    reasons = {(r["kind"], r["name"], r.get("via")) for r in by_name["cart_items_owner"]["reasons"]}
    assert ("legacy foreign key column", "public.carts.customer_id", "sub-query") in reasons
    assert ("legacy helper", "public.auth_customer_id()", None) in reasons
    reasons = {(r["kind"], r["name"], r.get("via")) for r in by_name["carts_owner"]["reasons"]}
    assert ("legacy foreign key column", "public.carts.customer_id", "direct") in reasons
    assert any(r.get("via") == "sub-query" for r in by_name["order_events_owner"]["reasons"])
    assert by_name["sessions_access"]["roles"] == ["authenticated"]
    assert "device_id" in by_name["sessions_access"]["using"]  # the non-customer branch is shown as written

    assert [(f["signature"], f["role"]) for f in data["functions"]] == [("public.auth_customer_id()", "legacy helper")]
    assert data["views"] == []

    # The JWT claims each policy reads, through the helpers it calls (auth_role() → auth_claim('app_role')).
    claims = data["claims"]
    assert claims["read"] == ["app_role", "customer_id", "device_id", "profile_id"]
    read = {p["name"]: {c["claim"]: c["via"] for c in p["claims"]} for p in claims["policies"]}
    assert read["carts_owner"] == {"app_role": "public.auth_role()", "customer_id": "public.auth_customer_id()"}
    assert read["sessions_access"]["device_id"] == "public.auth_claim('device_id')"
    assert read["cart_items_owner"] == {"customer_id": "public.auth_customer_id()"}  # inside its sub-query
    fns = {f["function"]: f for f in claims["functions"]}
    assert fns["public.auth_claim(name text)"]["claim_from_argument"]
    assert fns["public.auth_role()"]["claims"] == [{"claim": "app_role", "via": "public.auth_claim('app_role')"}]
    assert claims["token_claims_line"] == 'token_claims = { app_role = "customer" }'
    assert claims["missing"] == ["device_id"] and claims["unused"] == []
    assert claims["suggested_line"] == 'token_claims = { app_role = "customer", device_id = "…" }'

    rls = {r["table"]: r for r in data["rls"]}
    assert rls["public.customers"]["role"] == "legacy" and rls["public.customers"]["enabled"]
    assert rls["public.cart_items"]["role"] == "reaches a dependent through a policy"
    assert all(r["enabled"] for r in rls.values())
    grants = {(g["object"], g["grantee"]) for g in data["grants"]}
    assert ("public.customers", "anon") in grants and ("public.carts", "authenticated") in grants
    assert ("public.auth_customer_id()", "authenticated") in grants


def test_inventory_finds_views_functions_and_triggers_that_mention_legacy_names(conn, fixture_db):
    conn.execute("""
        create view public.customer_order_counts as
          select c.id, count(o.id) as orders from public.customers c left join public.orders o on o.customer_id = c.id
          group by c.id;
        create function public.cart_owner_ok(p_cart bigint) returns boolean language plpgsql stable as $$
        begin
          -- customers are never read here: this comment must not count
          return exists (select 1 from public.carts where id = p_cart and customer_id = public.auth_customer_id());
        end $$;
        create function public.describe() returns text language sql as $$ select 'customers list'::text $$;
        create policy cart_items_via_fn on public.cart_items for update to authenticated
          using (public.cart_owner_ok(cart_id));
        create function public.orders_touch() returns trigger language plpgsql as $$
          begin new.status := new.status; return new; end $$;
        create trigger orders_owner_changed before update of customer_id on public.orders
          for each row execute function public.orders_touch();
    """)
    data = inv.build(Spec(), load_catalog(conn, Spec()))
    assert [v["name"] for v in data["views"]] == ["public.customer_order_counts"]
    assert "public.orders.customer_id" in data["views"][0]["columns"]
    fns = {f["signature"]: f for f in data["functions"]}
    assert set(fns) == {"public.auth_customer_id()", "public.cart_owner_ok(bigint)"}  # not describe(): prose
    assert {m["name"] for m in fns["public.cart_owner_ok(bigint)"]["mentions"]} == {"auth_customer_id", "customer_id"}
    pol = next(p for p in data["policies"] if p["name"] == "cart_items_via_fn")
    assert pol["reasons"][0] == {"kind": "function mentioning legacy names", "name": "public.cart_owner_ok(bigint)"}
    trg = [t for t in data["triggers"] if t["name"] == "orders_owner_changed"]
    assert trg and "its definition names a legacy column" in trg[0]["reasons"]


def test_inventory_changes_nothing(conn, fixture_db):
    def snapshot():
        return conn.execute("""select md5(string_agg(x, ',' order by x)) from (
            select format('%s.%s', n.nspname, c.relname) x from pg_class c join pg_namespace n on n.oid = c.relnamespace
            union all select polname from pg_policy union all select proname from pg_proc) s""").fetchone()[0]
    before = snapshot()
    run_inventory(fixture_db)
    assert snapshot() == before


def test_console_script_prints_tables(fixture_db):
    out = subprocess.run([sys.executable, "-m", "pgconverge", "inventory", "--dsn", fixture_db],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "idx_carts_customer_status" in out.stdout and "cart_items_owner" in out.stdout


CLAIM_STYLES = """
create function public.current_customer() returns bigint language plpgsql stable as $$
begin
  return nullif(pg_catalog.current_setting('request.jwt.claim.customer_id', true), '')::bigint;
end $$;
create function public.org() returns text language sql stable as $$
  select (nullif(current_setting('request.jwt.claims', true), '')::jsonb) ->> 'org_id' $$;
alter table public.carts enable row level security;
create policy carts_mine on public.carts for select to authenticated
  using (customer_id = public.current_customer() and public.org() = 'o1');
create policy carts_tenant on public.carts for select to authenticated
  using ((auth.jwt() -> 'app_metadata' ->> 'tenant') = note or auth.uid() is not null);
create function public.claim(n text) returns text language sql stable as $$ select auth.jwt() ->> n $$;
create function public.claim_of(n text) returns text language sql stable as $$ select public.claim(n) $$;
create policy carts_region on public.carts for select to authenticated using (public.claim_of('region') = note);
alter table public.customers enable row level security;
create policy customers_by_path on public.customers for select to authenticated
  using (id::text = auth.jwt() #>> '{app_metadata,customer_id}');
"""


def test_inventory_lists_the_claims_each_policy_reads(make_db, tmp_path):
    """Every way a claim is read: one setting per claim (plpgsql), the JSON setting, auth.jwt() paths, auth.uid()."""
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(roles_sql() + AUTH_SQL + base_sql() + CLAIM_STYLES)
    cfg = write_config(tmp_path, '[legacy]\nhelper = "public.current_customer"\n[canonical]\ncopy_columns = []\n'
                                 '[migration]\ntoken_claims = { org_id = "o1", "https://example.com/unused" = "1" }\n')
    data = cli_json("inventory", "--dsn", dsn, "--config", cfg)["claims"]
    read = {p["name"]: {c["claim"]: c["via"] for c in p["claims"]} for p in data["policies"]}
    assert read["carts_mine"] == {"customer_id": "public.current_customer()", "org_id": "public.org()"}
    assert read["carts_tenant"] == {"app_metadata.tenant": "inline", "sub": "inline"}
    assert read["customers_by_path"] == {"app_metadata.customer_id": "inline"}
    assert read["carts_region"] == {"region": "public.claim_of('region')"}  # an accessor wrapping an accessor
    fns = {f["function"]: [c["claim"] for c in f["claims"]] for f in data["functions"]}
    assert fns["public.current_customer()"] == ["customer_id"] and fns["public.org()"] == ["org_id"]
    assert all(f["claim_from_argument"] for f in data["functions"] if f["function"].startswith("public.claim"))
    # customer_id is the identity's own claim and sub the auth user's: the tokens carry them; org_id is configured.
    assert data["missing"] == ["app_metadata", "region"] and data["unused"] == ["https://example.com/unused"]
    assert data["token_claims_line"] == 'token_claims = { org_id = "o1", "https://example.com/unused" = "1" }'
    assert data["suggested_line"] == \
        'token_claims = { org_id = "o1", "https://example.com/unused" = "1", app_metadata = "…", region = "…" }'

    text = " ".join(cli("inventory", "--dsn", dsn, "--config", cfg).split())
    assert "policy carts_tenant on public.carts" in text and "app_metadata.tenant (inline)" in text
    assert 'pgconverge uses: token_claims = { org_id = "o1", "https://example.com/unused" = "1" }' in text
    assert "read but carried by no test token: app_metadata, region" in text
    assert "configured but read by no policy or function: https://example.com/unused" in text
