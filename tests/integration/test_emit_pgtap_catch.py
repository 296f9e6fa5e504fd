"""The emitted pgTAP tests check the state, not themselves: each passes on the migrated fixture, with the application
writing while it runs, and fails once one thing the migration promises is broken by hand."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from _support import cli, cli_json
from test_emit import SCALE, _apply_split, _config, _copy, _dsn, _prove, _psql


@pytest.fixture(scope="module")
def migrated(pg15, tmp_path_factory):
    """(emitted files' JSON, output dir): databases catch_switch (files through switch) and catch_contract (all),
    on each of which the tests of its state pass."""
    _psql(pg15, "postgres", "-c", "drop database if exists catch_source", "-c", "create database catch_source")
    cli("fixture", "load", "--dsn", _dsn(pg15, "catch_source"), "--scale", SCALE)
    out = tmp_path_factory.mktemp("catch") / "project"
    data = cli_json("emit", str(out), "--dsn", _dsn(pg15, "catch_source"), "--config",
                    _config(tmp_path_factory.mktemp("cfg")))
    _apply_split(pg15, "catch_source", data["migrations"], "catch_switch", "catch_contract")
    for db in ("catch_switch", "catch_contract"):
        r = _run(pg15, db, out, db)
        assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr
    return data, out


def _tests(out: Path, state: str) -> list[str]:
    where = out / ("pgconverge-tests/before_contract" if state == "catch_switch" else "supabase/tests/database")
    return sorted(str(p) for p in where.glob("*.test.sql"))


def _run(pg15, db: str, out: Path, state: str, *files: str):
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        conn.execute("create extension if not exists pgtap")
    return _prove(pg15, db, *(files or _tests(out, state)))


STRANGER_CART = "(select min(id) from public.carts where customer_id not in ({samples}))"
A_PROFILE = "(select profile_id from pgconverge.legacy_customer_profile where customer_id = {a})"
ARCHIVED_A_PROFILE = "(select profile_id from {mapping} where customer_id = {a})"

# (what is broken, SQL breaking it, the test file, the assertion that must fail)
BEFORE_CONTRACT = {
    "cart_linked_to_another_profile": (
        "set session_replication_role = replica; update public.carts c set profile_id = (select user_id from "
        f"public.profiles p where p.user_id <> c.profile_id order by user_id limit 1) where id = {STRANGER_CART}",
        "pgconverge_expand", "every public.carts row's profile_id is the mapping of its customer_id"),
    "stranger_cart_linked_to_sample_a": (
        f"set session_replication_role = replica; update public.carts set profile_id = {A_PROFILE} "
        f"where id = {STRANGER_CART}",
        "pgconverge_switch_rls", "A (old token) sees exactly its own rows of public.carts"),
    "mapping_row_pointed_at_another_profile": (
        "set session_replication_role = replica; update pgconverge.legacy_customer_profile m set profile_id = "
        "(select user_id from public.profiles p where p.user_id <> m.profile_id order by user_id limit 1) "
        "where customer_id = (select min(customer_id) from public.carts where customer_id not in ({samples}))",
        "pgconverge_expand", "every public.carts row's profile_id is the mapping of its customer_id"),
    "sync_trigger_dropped": (
        'drop trigger "!pgconverge_sync" on public.carts',
        "pgconverge_expand", "the sync trigger !pgconverge_sync on public.carts is there and enabled"),
    "sync_trigger_disabled": (
        'alter table public.carts disable trigger "!pgconverge_sync"',
        "pgconverge_expand", "the sync trigger !pgconverge_sync on public.carts is there and enabled"),
    "sync_trigger_enabled_for_replica_sessions_only": (  # as a replication or restore tool can leave it
        'alter table public.carts enable replica trigger "!pgconverge_sync"',
        "pgconverge_expand", "the sync trigger !pgconverge_sync on public.carts is there and enabled"),
    "align_trigger_enabled_for_replica_sessions_only": (
        "alter table public.customers enable replica trigger pgconverge_align",
        "pgconverge_align", "the align trigger pgconverge_align on public.customers is there and enabled"),
    "align_trigger_dropped": (
        "drop trigger pgconverge_align on public.customers",
        "pgconverge_align", "the align trigger pgconverge_align on public.customers is there and enabled"),
}
AFTER_CONTRACT = {
    "cart_linked_to_another_profile": (
        "set session_replication_role = replica; update public.carts c set profile_id = (select user_id from "
        "public.profiles p where p.user_id <> c.profile_id order by user_id limit 1) "
        "where id = (select min(id) from public.carts)",
        "pgconverge_contract", "every public.carts row keeps the owner its legacy id had through the mapping"),
    "stranger_cart_linked_to_sample_a": (
        f"set session_replication_role = replica; update public.carts set profile_id = {ARCHIVED_A_PROFILE} "
        f"where id = (select min(id) from public.carts where profile_id <> {ARCHIVED_A_PROFILE})",
        "pgconverge_contract_rls", "A (canonical token) sees exactly its own rows of public.carts"),
    "foreign_key_dropped": (
        "alter table public.carts drop constraint carts_profile_id_fkey",
        "pgconverge_contract", "foreign key carts_profile_id_fkey is there and validated"),
    "not_null_dropped": (
        "alter table public.carts alter column profile_id drop not null",
        "pgconverge_contract", "public.carts.profile_id is NOT NULL, as customer_id was"),
    "index_dropped": (
        "drop index public.idx_carts_profile_status",
        "pgconverge_contract", "index idx_carts_profile_status is valid"),
}


def _break(pg15, migrated, state: str, case: str, broken: str, name: str, failing: str) -> None:
    data, out = migrated
    samples = {s["label"]: s["legacy_id"] for s in data["sample_identities"]}
    db = _copy(pg15, state, f"{state}_{case}"[:63])
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        mapping = conn.execute("select format('%I.%I', schemaname, tablename) from pg_tables where schemaname = "
                               "'archive' and tablename like 'legacy_customer_profile%'").fetchone()
        stmt = broken.format(samples=", ".join(samples.values()), a=samples["A"], mapping=mapping and mapping[0])
        conn.execute(stmt)
    file = next(f for f in _tests(out, state) if Path(f).name == f"{name}.test.sql")
    r = _run(pg15, db, out, state, file)
    assert r.returncode != 0, f"{case}: the tests pass on a broken database\n{r.stdout}"
    assert re.search(rf"Failed test \d+: \"{re.escape(failing)}\"", r.stdout), r.stdout


@pytest.mark.parametrize("case", sorted(BEFORE_CONTRACT))
def test_before_contract_tests_fail_on_a_broken_switch(pg15, migrated, case):
    _break(pg15, migrated, "catch_switch", case, *BEFORE_CONTRACT[case])


@pytest.mark.parametrize("case", sorted(AFTER_CONTRACT))
def test_after_contract_tests_fail_on_a_broken_contract(pg15, migrated, case):
    _break(pg15, migrated, "catch_contract", case, *AFTER_CONTRACT[case])


@pytest.mark.parametrize("state", ["catch_switch", "catch_contract"])
def test_rls_tests_pass_while_the_application_writes_for_a_sample(pg15, migrated, state, tmp_path):
    """A row the application commits for sample A between the reading of A's rows and their comparison with what A
    sees is in neither: the file reads one snapshot. (dblink commits it from another session, mid-file.)"""
    data, out = migrated
    a = next(s["legacy_id"] for s in data["sample_identities"] if s["label"] == "A")
    db = _copy(pg15, state, f"{state}_writers")
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        conn.execute("create extension if not exists dblink")
        if state == "catch_switch":  # old code, writing the legacy id (the sync trigger fills the new one)
            insert = f"insert into public.carts (customer_id) values ({a})"
        else:
            mapping = conn.execute("select format('%I.%I', schemaname, tablename) from pg_tables where schemaname = "
                                   "'archive' and tablename like 'legacy_customer_profile%'").fetchone()[0]
            profile = conn.execute(f"select profile_id from {mapping} where customer_id = {a}").fetchone()[0]
            insert = f"insert into public.carts (profile_id) values ('{profile}')"
        carts = conn.execute("select count(*) from public.carts").fetchone()[0]
    name = "pgconverge_switch_rls" if state == "catch_switch" else "pgconverge_contract_rls"
    code = Path(next(f for f in _tests(out, state) if Path(f).name == f"{name}.test.sql")).read_text()
    host, port = pg15
    write = (f"select dblink_exec('host={host} port={port} user=postgres dbname={db}', "
             f"'{insert.replace(chr(39), chr(39) * 2)}');")
    code, n = re.subn(r"^(grant select on pgc_expected .*)$", lambda m: m.group(1) + "\n" + write, code, flags=re.M)
    assert n == 1
    racy = tmp_path / f"{name}.test.sql"
    racy.write_text(code)
    r = _run(pg15, db, out, state, str(racy))
    assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:  # the row was written, mid-file
        assert conn.execute("select count(*) from public.carts").fetchone()[0] == carts + 1
