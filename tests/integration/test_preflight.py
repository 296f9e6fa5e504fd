"""The preflight: the remaining plan and its whole rollback run first on a sampled copy of the target.

Each failure class below passes every plan-time check (`plan` shows the plan without refusing it) and
fails only when a step writes rows or runs its rollback. The preflight must stop `run` before its
first change: exit 2 with the step, what Postgres said and the object, and the target's schema and
rows byte for byte as before, without a `pgconverge` schema.
"""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from psycopg import sql

import test_emit
import test_grants
from _small import AUTH_SQL, base_sql, config, policy_sql, roles_sql
from _support import cli, cli_json, write_config

from pgconverge.execution import preflight_copy

HELPER = ("create function public.auth_customer_id() returns bigint language sql stable as $$ "
          "select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'customer_id', '')::bigint $$;")
ACCEPT = ("--accept-code-references", "--accept-runtime-use")


pytestmark = pytest.mark.usefixtures("preflight_on")


def fingerprint(dsn: str) -> str:
    """A hash of the catalog of every user schema and of the rows of every table in them."""
    h = hashlib.sha256()
    with psycopg.connect(dsn, autocommit=True) as conn:
        state = conn.execute("""
            select format('%s %s %s', n.nspname, n.nspacl, n.nspowner) from pg_namespace n
            where n.nspname !~ '^pg_' and n.nspname <> 'information_schema'""").fetchall()
        h.update(repr(sorted(state)).encode())
        h.update(repr(preflight_copy.schema_state(conn, _Spec())).encode())
        for schema, name in conn.execute(
                "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where c.relkind in ('r', 'p') and n.nspname !~ '^pg_' and n.nspname <> 'information_schema' "
                "order by 1, 2").fetchall():
            rows = conn.execute(sql.SQL("select coalesce(string_agg(t::text, '|' order by t::text), '') from {} t")
                                .format(sql.Identifier(schema, name))).fetchone()[0]
            h.update(f"{schema}.{name}:{rows}".encode())
        seqs = conn.execute("select schemaname, sequencename, last_value from pg_sequences order by 1, 2").fetchall()
        h.update(repr(seqs).encode())
    return h.hexdigest()


class _Migration:
    private_schema = "-"  # compare every schema


class _Spec:
    migration = _Migration()


# Each: extra SQL on the small schema, the step that fails on the copy, and a word the error or object names.
CASES = {
    # (a) the dependent's own trigger refuses updates: the backfill of carts.profile_id fails
    "trigger_on_dependent": ("""
        create function public.carts_frozen() returns trigger language plpgsql as $$
        begin raise exception 'carts are append-only'; end $$;
        create trigger carts_frozen before update on public.carts for each row execute function public.carts_frozen();
        """, "expand.", "carts are append-only"),
    # (b) a CHECK on the canonical table that the canonical rows align creates break (another operator's prefix),
    # through a column they fill from its default, which `plan` does not evaluate (a CHECK on their own values
    # stops `plan` itself: test_created_rules.py)
    "check_on_created_canonical": ("""
        alter table public.profiles add column tier text not null default 'basic',
          add constraint profiles_mtn_only check (tier <> 'basic' or whatsapp_e164 like '+25078%');
        insert into public.customers (wa_id) values ('+250722000001');
        """, "align.", "profiles_mtn_only"),
    # (c) a unique index of the dependent whose mirror on the new column two merged customers collide in
    "unique_mirror_collision": ("""
        create unique index carts_customer_note on public.carts (customer_id, note);
        """, "expand.", "carts"),
    # (d) a rollback step fails: the canonical table refuses deletes, so undoing align's created rows fails
    "rollback_delete_refused": ("""
        create function public.profiles_keep() returns trigger language plpgsql as $$
        begin raise exception 'profiles are never deleted'; end $$;
        create trigger profiles_keep before delete on public.profiles for each row
          execute function public.profiles_keep();
        """, "rollback.", "profiles are never deleted"),
}


def _small(make_db, tmp_path, extra: str) -> tuple[str, str]:
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(roles_sql() + AUTH_SQL + base_sql() + HELPER + policy_sql("public.auth_customer_id") + extra)
        conn.execute("analyze")
    return dsn, write_config(tmp_path, config("public.auth_customer_id"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_step_that_fails_on_the_copy_stops_run_before_any_change(case, make_db, tmp_path):
    extra, step, word = CASES[case]
    dsn, cfg = _small(make_db, tmp_path, extra)
    before = fingerprint(dsn)
    cli("plan", "--no-sql", "--dsn", dsn, "--config", cfg)  # the plan-time checks do not refuse it
    out = cli_json("run", "--all", *ACCEPT, "--dsn", dsn, "--config", cfg, expect=2)
    assert out["error"] == "PreflightFailed", out
    failure = out["preflight"]["failure"]
    assert failure["step"] and failure["step"].startswith(step), failure
    assert word in failure["error"] + " " + str(failure["object"]), failure
    assert "The target was not changed" in out["problem"] and out["fix"], out
    assert fingerprint(dsn) == before
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select to_regnamespace('pgconverge')").fetchone()[0] is None
    # the copy was dropped
    with psycopg.connect(preflight_copy.os.environ[preflight_copy.SERVER_ENV]) as conn:
        assert conn.execute("select count(*) from pg_database where datname like 'pgconverge_preflight_%'"
                            ).fetchone()[0] == 0


def test_happy_path_on_the_fixture(fixture_db, tmp_path):
    before = fingerprint(fixture_db)
    check = cli_json("plan", "--check", "--dsn", fixture_db)
    assert check["verdict"] == "passed", check
    assert [s["stage"] for s in check["stages"]] == ["copy", "phases", "rollback"]
    assert check["schema_restored"] is True and check["plan_matches"] is True, check
    per = check["sample"]["per_table"]
    for table in ("public.customers", "public.profiles", "public.carts", "public.orders", "public.sessions"):
        assert 0 < per[table] <= 2 * preflight_copy.PER_TABLE + 200, (table, per)
    assert fingerprint(fixture_db) == before  # plan --check changes nothing
    out = cli("run", "align", "--dsn", fixture_db)
    assert "preflight copy: ok" in out and "preflight rollback: ok" in out and "align finished" in out, out
    # resumed: the copy takes the ledger along, and the preflight covers what remains
    res = cli_json("run", "expand", "--dsn", fixture_db)
    assert res["preflight"]["verdict"] == "passed" and res["preflight"]["phases"], res
    assert res["preflight"]["schema_restored"] is None  # started mid-migration: not compared
    assert any(k.startswith("pgconverge.") for k in res["preflight"]["sample"]["per_table"]), res["preflight"]


def test_privileges_are_compared_and_restored(make_db, tmp_path):
    """The copy's schema after the rollback is compared with its privileges on tables, columns and functions: a
    schema whose API role may use some columns only (test_grants) comes back as it was."""
    dsn, cfg = test_grants._small(make_db, tmp_path)
    check = cli_json("plan", "--check", "--dsn", dsn, "--config", cfg)
    assert check["verdict"] == "passed" and check["schema_restored"] is True, check
    with psycopg.connect(dsn, autocommit=True) as conn:
        state = preflight_copy.schema_state(conn, _Spec())
        conn.execute("revoke insert (customer_id) on public.orders from authenticated")
        assert preflight_copy.schema_state(conn, _Spec()) != state


# A legacy table never granted anything: its ACL is NULL, the owner's default privileges.
NEVER_GRANTED = """
create table public.customers (id bigint generated by default as identity primary key, wa_id text, display_name text);
create table public.profiles (user_id uuid primary key default gen_random_uuid(), whatsapp_e164 text unique,
  display_name text);
create table public.orders (id bigint generated by default as identity primary key,
  customer_id bigint not null references public.customers (id), note text);
alter table public.orders enable row level security;
create policy orders_own on public.orders for all to authenticated
  using (customer_id = auth_customer_id()) with check (customer_id = auth_customer_id());
grant usage on schema public to authenticated;
grant select, insert on public.orders to authenticated;
insert into public.profiles (whatsapp_e164, display_name) values ('+250788100001', 'a');
insert into public.customers (wa_id, display_name) values ('0788100001', 'a'), ('0788100002', 'b');
insert into public.orders (customer_id) values (1), (2), (2);
"""


def test_a_legacy_table_never_granted_anything(make_db, tmp_path):
    """Contract's archive revokes the API roles' privileges and its rollback grants them again, which writes a NULL
    ACL out as the owner's privileges: the same privileges, read alike by the comparison (every run exited 2)."""
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(roles_sql() + AUTH_SQL + HELPER + NEVER_GRANTED)
        assert conn.execute("select relacl from pg_class where oid = 'public.customers'::regclass").fetchone()[0] is None
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\nrls_sample = 0\n")
    out = cli("run", "align", "--dsn", dsn, "--config", cfg)
    assert "preflight rollback: ok" in out and "align finished" in out, out


def test_a_not_valid_legacy_foreign_key_passes(make_db, tmp_path):
    """A legacy foreign key its owner left NOT VALID comes back so from the rehearsed rollback: the schemas match."""
    dsn, cfg = _small(make_db, tmp_path, "alter table public.carts drop constraint carts_customer_id_fkey; "
                      "alter table public.carts add constraint carts_customer_id_fkey foreign key (customer_id) "
                      "references public.customers (id) not valid;")
    check = cli_json("plan", "--check", "--dsn", dsn, "--config", cfg)
    assert check["verdict"] == "passed" and check["schema_restored"] is True, check


def test_skip_preflight(make_db, tmp_path):
    extra, _, _ = CASES["trigger_on_dependent"]
    dsn, cfg = _small(make_db, tmp_path, extra)
    out = cli("run", "align", "--skip-preflight", "--dsn", dsn, "--config", cfg)
    # (the test's own directory is named after it: look for the preflight's lines, not the word)
    assert "preflight:" not in out and "preflight copy" not in out and "align finished" in out, out


def _small_on_pg15(pg15, name: str, tmp_path, extra: str) -> tuple[str, str]:
    _dsn = test_emit._dsn
    with psycopg.connect(_dsn(pg15, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    dsn = _dsn(pg15, name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(roles_sql() + AUTH_SQL + base_sql() + HELPER + policy_sql("public.auth_customer_id") + extra)
        conn.execute("analyze")
    (tmp_path / name).mkdir()
    return dsn, write_config(tmp_path / name, config("public.auth_customer_id"))


def test_extensions_the_copy_server_lacks(pg15, tmp_path):
    """A target with an extension the embedded server does not bundle (Supabase has several): left out of the copy
    when no table of the plan needs it; refused, naming the tables, when one does — both before any change."""
    elsewhere, cfg = _small_on_pg15(pg15, "ext_elsewhere", tmp_path, """
        create extension citext;
        create table public.notes (id int primary key, body citext);
        """)
    out = cli_json("plan", "--check", "--dsn", elsewhere, "--config", cfg)
    assert out["verdict"] == "passed" and out["skipped_extensions"] == ["citext"], out

    needed, cfg = _small_on_pg15(pg15, "ext_needed", tmp_path, """
        create extension citext;
        alter table public.carts add column label citext;
        """)
    before = fingerprint(needed)
    out = " ".join(cli("run", "align", "--dsn", needed, "--config", cfg, expect=2).split())
    assert "cannot copy public.carts faithfully" in out and "citext" in out and "--preflight-server" in out, out
    assert fingerprint(needed) == before


def test_contract_waiting_for_the_team_is_not_a_preflight_failure(make_db, tmp_path):
    """A view on the legacy table accepted until contract (migration.accept_views): contract's dependency check
    refuses until the team drops it, which the preflight reports as deferred, not as a failure of the plan."""
    dsn, _ = _small(make_db, tmp_path, "create view public.customer_names as select id, wa_id from public.customers;")
    cfg = write_config(tmp_path, config("public.auth_customer_id") + "accept_views = [\"public.customer_names\"]\n")
    out = cli_json("plan", "--check", "--dsn", dsn, "--config", cfg)
    assert out["verdict"] == "passed", out
    assert out["deferred"] and out["deferred"].startswith("contract stopped at contract."), out
    assert out["schema_restored"] is True, out


def test_a_rollback_waiting_for_the_teams_view_is_not_a_preflight_failure(make_db, tmp_path):
    """New code's own view on the new column after expand: the rehearsed rollback (to before align) refuses on the
    copy, as a real one would until the view goes, which is the team's to do: the switch goes through, and the
    preflight says why its rollback was not tried to the end (before, it refused the switch)."""
    dsn, cfg = _small(make_db, tmp_path, "")
    cli("run", "align", "--skip-preflight", "--dsn", dsn, "--config", cfg)
    cli("run", "expand", "--skip-preflight", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create view public.my_carts as select id, profile_id from public.carts")
    out = cli_json("plan", "--check", "--dsn", dsn, "--config", cfg)
    assert out["verdict"] == "passed" and "public.my_carts" in (out["rollback_deferred"] or ""), out
    cli("run", "switch", "--dsn", dsn, "--config", cfg)


def test_copies_left_by_a_killed_run_are_dropped_by_the_next(admin_dsn):
    """A copy whose process is gone (SIGKILL before it could drop it) is swept; a running or kept one stays."""
    import os
    import socket
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    marks = {"pgconverge_preflight_gone0001": f"running; host={socket.gethostname()}; pid={gone.pid}",
             "pgconverge_preflight_live0001": f"running; host={socket.gethostname()}; pid={os.getpid()}",
             "pgconverge_preflight_kept0001": f"kept; host={socket.gethostname()}; pid={gone.pid}",
             "pgconverge_preflight_else0001": f"running; host=another-{socket.gethostname()}; pid={gone.pid}"}
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        for name, note in marks.items():
            c.execute(f'drop database if exists "{name}"')
            c.execute(f'create database "{name}"')
            c.execute(f"comment on database \"{name}\" is 'pgconverge preflight copy; {note}'")
    try:
        assert preflight_copy.sweep_orphans(admin_dsn) == ["pgconverge_preflight_gone0001"]
        with psycopg.connect(admin_dsn, autocommit=True) as c:
            left = {r[0] for r in c.execute("select datname from pg_database where datname like 'pgconverge_preflight_%'")}
        assert left >= set(marks) - {"pgconverge_preflight_gone0001"} and "pgconverge_preflight_gone0001" not in left
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as c:
            for name in marks:
                c.execute(f'drop database if exists "{name}"')
