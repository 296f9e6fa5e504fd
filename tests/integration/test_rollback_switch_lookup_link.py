"""A lookup helper (auth_customer_id() finds the customers row whose user_id is auth.uid()) whose link column the
legacy rows pgconverge makes leave empty (user_id is neither matched nor in canonical.copy_columns). `rollback switch`
makes a customers row for a person who signed up after the switch, but the restored helper cannot find it: the
rollback says so before its first change (in --dry-run too, and under "warnings" with --json), naming the UPDATE that
gives those rows their auth user; run, it gives the person its rows back. Before, the rollback said nothing, and the
person saw none of its rows."""

from __future__ import annotations

import uuid

import psycopg

from _support import cli, cli_json, schema_db
from test_lookup_newcomers import SCHEMA, _as
from test_rollback_switch_newcomers import _old_code_insert

# The canonical table has a key of its own and links to the auth user by a unique column; the legacy rows
# legacy_for_canonical makes get wa_id and display_name, not user_id, which auth_customer_id() looks up.
OWN_KEY = SCHEMA.replace(
    "create table public.profiles (id uuid primary key references auth.users (id), whatsapp_e164 text unique,",
    "create table public.profiles (id uuid primary key default gen_random_uuid(), "
    "auth_id uuid unique references auth.users (id), whatsapp_e164 text unique,").replace(
    "insert into public.profiles (id, whatsapp_e164, display_name)", "insert into public.profiles (auth_id, "
    "whatsapp_e164, display_name)")
CONFIG = """
[canonical]
key = "id"
copy_columns = { display_name = "display_name" }
[migration]
observation_window = 0
rls_sample = 0
"""


def _sign_up(conn, number: str) -> uuid.UUID:
    """New code's sign-up: an auth user and a profile, no customers row; then an order by the new id."""
    sub = uuid.uuid4()
    conn.execute("insert into auth.users (id) values (%s)", (sub,))
    pid = conn.execute("insert into public.profiles (auth_id, whatsapp_e164) values (%s, %s) returning id",
                       (sub, number)).fetchone()[0]
    assert _as(conn, sub, "insert into public.orders (profile_id, total) values (%s, 5) returning total", pid) == 5
    return sub


def test_rollback_switch_warns_when_the_made_legacy_rows_lack_the_helpers_link(make_db, tmp_path):
    assert OWN_KEY.count("auth_id") == 2
    dsn, args = schema_db(make_db, tmp_path, OWN_KEY, CONFIG)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        newcomer = _sign_up(conn, "+250788000931")
    dry = cli_json("rollback", "switch", "--dry-run", *args)
    assert len(dry.get("warnings") or []) == 1, dry.get("warnings")
    warning = dry["warnings"][0]
    assert "customers.user_id" in warning and "canonical.copy_columns" in warning, warning
    res = cli_json("rollback", "switch", "--yes", *args)
    assert res["warnings"] == [warning] and res["legacy_rows_made"]["people"] == 1, res
    fix = warning.split("give those rows their auth user: ", 1)[1].split(" (the rows", 1)[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _as(conn, newcomer, "select count(*) from public.orders") == 0  # what the warning foretold
        conn.execute(fix)
        assert _as(conn, newcomer, "select count(*) from public.orders") == 1
        assert _old_code_insert(conn, newcomer) == "ok"
        old = uuid.UUID("00000000-0000-4000-8000-000000000007")
        assert _as(conn, old, "select count(*) from public.orders") == 4


def test_no_warning_where_the_link_is_copied(make_db, tmp_path):
    from test_lookup_newcomers import CONFIG as COPIED

    dsn, args = schema_db(make_db, tmp_path, SCHEMA, COPIED)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    assert "warnings" not in cli_json("rollback", "switch", "--dry-run", *args)
