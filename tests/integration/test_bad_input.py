"""Bad input gets a clear, specific error, a non-zero exit, and changes nothing."""

import json

import psycopg
import pytest
from typer.testing import CliRunner

from pgconverge.cli import app

runner = CliRunner()

MINIMAL = """
create table public.customers (id bigint primary key, wa_id text, display_name text);
create table public.profiles (user_id uuid primary key default gen_random_uuid(), whatsapp_e164 text,
                              display_name text);
create function public.auth_customer_id() returns bigint language sql stable as
  $$ select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'customer_id', '')::bigint $$;
"""


def invoke(*args):
    return runner.invoke(app, list(args))


def test_dsn_that_does_not_connect():
    r = invoke("inventory", "--dsn", "postgresql://nobody@127.0.0.1:1/nowhere")
    assert r.exit_code == 2
    assert "could not connect to" in r.output and "127.0.0.1" in r.output and "fix:" in r.output


def test_dsn_that_is_not_a_connection_string():
    r = invoke("inventory", "--dsn", "this is not = a dsn = at all")
    assert r.exit_code == 2 and "not a valid connection string" in r.output


def test_password_is_not_echoed():
    r = invoke("inventory", "--dsn", "postgresql://u:s3cr3t@127.0.0.1:1/x")
    assert r.exit_code == 2 and "s3cr3t" not in r.output and "***" in r.output


def test_config_with_unknown_key(fixture_db, tmp_path):
    cfg = tmp_path / "pgconverge.toml"
    cfg.write_text('[legacy]\ntable = "public.customers"\nmatch_colum = "wa_id"\n')
    r = invoke("inventory", "--dsn", fixture_db, "--config", str(cfg))
    assert r.exit_code == 2
    assert "unknown key legacy.match_colum" in r.output and "did you mean 'match_column'" in r.output


def test_config_json_error_is_machine_readable(fixture_db, tmp_path):
    cfg = tmp_path / "pgconverge.toml"
    cfg.write_text('[legacy]\ntable = "public.custmers"\n')
    r = invoke("inventory", "--json", "--dsn", fixture_db, "--config", str(cfg))
    assert r.exit_code == 2
    err = json.loads(r.stdout)
    assert err["error"] == "CatalogError"
    assert "legacy.table = 'public.custmers': no such table" in err["problem"]
    assert "did you mean public.customers" in err["problem"]


def test_canonical_column_that_does_not_exist(fixture_db, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[canonical]\nmatch_column = "phone"\n')
    r = invoke("inventory", "--dsn", fixture_db, "--config", str(cfg))
    assert r.exit_code == 2
    assert "canonical.match_column = 'phone': table public.profiles has no such column" in r.output


def test_legacy_table_with_no_foreign_key(empty_db):
    with psycopg.connect(empty_db, autocommit=True) as c:
        c.execute(MINIMAL)
    r = invoke("inventory", "--dsn", empty_db)
    assert r.exit_code == 2
    assert "no foreign key references public.customers(id)" in r.output


@pytest.mark.parametrize("ddl, message", [
    ("create table public.carts (id int primary key, customer_id bigint, tenant int, "
     "foreign key (customer_id, tenant) references public.customers (id, tenant));"
     , "is composite"),
    ("create table public.carts (id int primary key, wa text references public.customers (wa_id));",
     "references wa_id, not the legacy key 'id'"),
])
def test_unsupported_foreign_keys(empty_db, ddl, message):
    with psycopg.connect(empty_db, autocommit=True) as c:
        c.execute(MINIMAL)
        c.execute("alter table public.customers add column tenant int, add unique (id, tenant), add unique (wa_id)")
        c.execute(ddl)
    r = invoke("inventory", "--dsn", empty_db)
    assert r.exit_code == 2 and message in r.output, r.output


def test_legacy_key_that_is_not_unique(empty_db):
    with psycopg.connect(empty_db, autocommit=True) as c:
        c.execute(MINIMAL.replace("id bigint primary key", "id bigint"))
    r = invoke("inventory", "--dsn", empty_db)
    assert r.exit_code == 2
    assert "public.customers.id is neither the primary key nor unique" in r.output
    assert "has no primary key at all" in r.output


def test_missing_helper(empty_db):
    with psycopg.connect(empty_db, autocommit=True) as c:
        c.execute(MINIMAL.split("create function")[0])
        c.execute("create table public.carts (id int primary key, customer_id bigint references public.customers)")
    r = invoke("inventory", "--dsn", empty_db)
    assert r.exit_code == 2 and "legacy.helper = 'public.auth_customer_id': no such function" in r.output
