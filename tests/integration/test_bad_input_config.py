"""Configuration mistakes that only show late, refused before the first change: each names the key, the value and
the fix, exits 2 as every refusal does, and changes nothing (schema, rows, ledger).

A canonical helper the switch must not replace (a function of the platform such as Supabase's auth.uid(), the legacy
helper, a function other policies or functions call), a private or archive schema of Postgres or of the application,
an API role or an accepted policy that does not exist, a legacy claim the legacy helper does not read, and manual
decisions naming rows that do not exist (refused before the mapping table is made for them).
"""

from __future__ import annotations

import psycopg
import pytest

from _support import cli, cli_json, write_config
from test_bad_input_schema import _refused, _snapshot

SMALL = 0.1

CASES = [
    ("canonical helper of the platform", '[canonical]\nhelper = "auth.uid"\n',
     ["canonical.helper = 'auth.uid' is in schema auth", "SECURITY DEFINER", "e.g. public.auth_profile_id"]),
    ("canonical helper that is the legacy one", '[canonical]\nhelper = "public.auth_customer_id"\n',
     ["canonical.helper and legacy.helper are both public.auth_customer_id", "name a new function"]),
    ("canonical helper of the platform, jwt", '[canonical]\nhelper = "auth.jwt"\n',
     ["canonical.helper = 'auth.jwt' is in schema auth"]),
    ("private schema of Postgres", '[migration]\nprivate_schema = "pg_catalog"\n',
     ["migration.private_schema = 'pg_catalog' is a schema of Postgres"]),
    ("archive schema of the application", '[migration]\narchive_schema = "public"\n',
     ["migration.archive_schema = 'public' is an application schema"]),
    ("accepted policy that does not exist", '[migration]\naccept_policies = ["public.carts.nosuch"]\n',
     ["migration.accept_policies names 'public.carts.nosuch', which is no policy", "policies on public.carts:"]),
    ("API role that does not exist",
     '[migration]\napi_roles = ["anon", "authenticated", "service_role", "authenticatd"]\n',
     ["migration.api_roles names 'authenticatd', which is no role", "authenticated"]),
    ("legacy claim misspelt", '[legacy]\nclaim = "customerid"\n',
     ["legacy.claim = 'customerid'", "reads no claim of that name", "did you mean 'customer_id'"]),
]


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_a_config_mistake_is_refused_before_align_changes_anything(make_db, template_factory, tmp_path, name):
    text, needles = next((t, n) for c, t, n in CASES if c == name)
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, text)
    _refused(dsn, ["run", "align", "--config", cfg], *needles)
    for args in (("plan",), ("plan", "align")):
        r = cli_json(*args, "--dsn", dsn, "--config", cfg, expect=2)
        assert r["error"] == "ConfigError" and r["problem"] and r["fix"], r


APP = """
create function public.current_profile() returns uuid language sql stable as $$ select auth.uid() $$;
create table public.notes (id serial primary key, user_id uuid not null, body text);
alter table public.notes enable row level security;
create policy notes_own on public.notes for all to authenticated using (user_id = public.current_profile());
create function public.my_notes() returns bigint language plpgsql stable as $f$
begin return (select count(*) from public.notes where user_id = public.current_profile()); end $f$;
"""


def test_a_canonical_helper_other_policies_and_functions_call_is_refused(make_db, template_factory, tmp_path):
    """The switch makes the canonical helper SECURITY DEFINER and replaces its body: one the application calls
    elsewhere (a policy of a table outside the migration, a function) would change meaning there."""
    dsn = make_db(template_factory(SMALL))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(APP)
    cfg = write_config(tmp_path, '[canonical]\nhelper = "public.current_profile"\n')
    out = _refused(dsn, ["run", "align", "--config", cfg],
                   "canonical.helper = 'public.current_profile' is a function that exists",
                   "policy notes_own on table public.notes", "function public.my_notes()",
                   "e.g. public.auth_profile_id")
    assert "SECURITY DEFINER" in out
    _refused(dsn, ["plan", "switch", "--config", cfg], "policy notes_own on table public.notes")


def test_a_canonical_helper_nothing_calls_yet_is_taken(make_db, template_factory, tmp_path):
    """One written for the migration, that nothing calls yet, is the switch's to replace."""
    dsn = make_db(template_factory(SMALL))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create function public.auth_profile_id() returns uuid language sql stable "
                     "as $$ select null::uuid $$")
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")
    out = cli("plan", "switch", "--dsn", dsn, "--config", cfg)
    assert "public.auth_profile_id" in out


def test_an_archive_schema_holding_a_dependent_is_refused(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(SMALL))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create schema shop; create table shop.wishes (id serial primary key, "
                     "customer_id bigint not null references public.customers (id))")
    cfg = write_config(tmp_path, '[migration]\narchive_schema = "shop"\n')
    _refused(dsn, ["run", "align", "--config", cfg], "migration.archive_schema = 'shop' holds the application's "
                                                     "tables (shop.wishes")


def test_decisions_naming_rows_that_do_not_exist_change_nothing_before_align(make_db, template_factory, tmp_path):
    """`align --decisions` before `run align`: the file is checked against the database before the private schema
    and the mapping table are made for it."""
    dsn = make_db(template_factory(SMALL))
    f = tmp_path / "decisions.csv"
    f.write_text("customer_id,profile_id\n999999,00000000-0000-0000-0000-000000000000\n")
    _refused(dsn, ["align", "--decisions", str(f), "--config", write_config(tmp_path, "")],
             "decisions name rows that do not exist", "line 2: legacy id 999999")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select to_regnamespace('pgconverge')").fetchone()[0] is None
        assert "done" in _snapshot(conn)


def test_a_default_the_file_does_not_set_is_named_as_one(make_db, tmp_path):
    """A schema other than the bundled fixture's meets the defaults made for it (canonical.copy_columns copies
    display_name, canonical.key is user_id): the error says the value is a default the file did not set, and for
    copy_columns that [] copies none."""
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table public.users (id bigserial primary key, email text not null); "
                     "create table public.people (id bigserial primary key, email text unique); "
                     "create table public.comments (id bigserial primary key, user_id bigint not null "
                     "references public.users (id))")
    base = ('[legacy]\ntable = "public.users"\nkey = "id"\nmatch_column = "email"\nmatch = "email"\nhelper = ""\n'
            '[canonical]\ntable = "public.people"\nmatch_column = "email"\n')
    out = " ".join(cli("plan", "--dsn", dsn, "--config", write_config(tmp_path, base + 'key = "id"\n'),
                       expect=2).split())
    assert "canonical.copy_columns = 'display_name': table public.users has no such column" in out, out
    assert "canonical.copy_columns is not set in" in out and "or to [] to copy none" in out, out
    out = " ".join(cli("plan", "--dsn", dsn, "--config", write_config(tmp_path, base + "copy_columns = []\n"),
                       expect=2).split())
    assert "canonical.key = 'user_id'" in out and "canonical.key is not set in" in out, out
    cli("plan", "--dsn", dsn, "--config", write_config(tmp_path, base + 'key = "id"\ncopy_columns = []\n'))
