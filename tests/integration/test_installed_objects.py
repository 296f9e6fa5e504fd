"""What align and expand installed, tampered with by hand (a NOT NULL dropped, an index dropped, pgconverge's sync
trigger disabled): `verify` fails naming it and the statement that puts it back, and the switch and contract refuse
before their first change. The expectations come from the plan, not from the catalog as it is now."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from pgconverge import embedded
from _support import cli, cli_json, schema_dump, write_config

SCALE = 0.05
NO_WINDOW = "[migration]\nobservation_window = 0\n"


def _copy(admin_dsn: str, template: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        c.execute(sql.SQL("create database {} template {}").format(sql.Identifier(name), sql.Identifier(template)))
    return embedded.with_database(admin_dsn, name)


@pytest.fixture(scope="module")
def phased(admin_dsn, template_factory, tmp_path_factory):
    """phase -> template database after align … that phase (made once for the module)."""
    import os

    made: dict[str, str] = {}
    cfg = write_config(tmp_path_factory.mktemp("cfg"), NO_WINDOW)
    base = f"inst_{os.getpid()}"
    dsn = _copy(admin_dsn, template_factory(SCALE), base)
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
        made[ph] = f"{base}_{ph}"
        _copy(admin_dsn, base, made[ph])
    yield made
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        for name in (base, *made.values()):
            c.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _sync_trigger(conn) -> str:
    return conn.execute("select tgname from pg_trigger where tgrelid = 'public.carts'::regclass "
                        "and tgname like '%pgconverge_sync%' and not tgisinternal").fetchone()[0]


def _tamper(conn, what: str) -> str:
    """Make the change WHAT; return what `verify` must name."""
    if what == "not_null":
        conn.execute("alter table public.carts alter column profile_id drop not null")
        return "public.carts.profile_id is no longer NOT NULL"
    if what == "index":
        name = conn.execute("select indexrelid::regclass::text from pg_index where indrelid = 'public.orders'::regclass "
                            "and pg_get_indexdef(indexrelid) like '%(profile_id)%'").fetchone()[0]
        conn.execute(f"drop index {name}")
        return f"index public.{name.split('.')[-1]} on public.orders is missing"
    name = _sync_trigger(conn)
    conn.execute(f'alter table public.carts disable trigger "{name}"')
    return f"trigger {name} on public.carts is disabled"


def _problems(out: dict) -> list[str]:
    return [" — ".join(p) for c in out["checks"] if not c["passed"] for p in c["problems"]]


@pytest.mark.parametrize("what", ["not_null", "index", "trigger"])
def test_verify_names_it_and_contract_refuses_before_any_change(admin_dsn, make_db, phased, tmp_path, what):
    dsn = make_db(phased["switch"])
    cfg = write_config(tmp_path, NO_WINDOW)
    with psycopg.connect(dsn, autocommit=True) as conn:
        named = _tamper(conn, what)
        out = cli_json("verify", "--dsn", dsn, "--config", cfg, expect=1)
        problems = _problems(out)
        assert any(named in p for p in problems), problems
        fix = {"not_null": "alter column \"profile_id\" set not null", "index": "create index",
               "trigger": "enable trigger"}[what]
        assert any(fix in p.lower() for p in problems), problems
        before = schema_dump(conn, ("public", "archive"))
        out = cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references",
                  "--accept-runtime-use", expect=2)
        flat = " ".join(out.split())
        assert "contract is blocked, nothing was dropped" in flat and named in flat, flat
        assert schema_dump(conn, ("public", "archive")) == before
        assert conn.execute("select to_regclass('public.customers') is not null").fetchone()[0]


def test_the_switch_refuses_while_a_sync_trigger_is_disabled(make_db, phased, tmp_path):
    dsn = make_db(phased["expand"])
    cfg = write_config(tmp_path, NO_WINDOW)
    with psycopg.connect(dsn, autocommit=True) as conn:
        named = _tamper(conn, "trigger")
        before = schema_dump(conn, ("public", "auth"))
        out = cli("run", "switch", "--dsn", dsn, "--config", cfg, expect=2)
        flat = " ".join(out.split())
        assert "switch is blocked, nothing was changed" in flat and named in flat and "enable trigger" in flat, flat
        assert schema_dump(conn, ("public", "auth")) == before
        conn.execute(f'alter table public.carts enable trigger "{_sync_trigger(conn)}"')
    cli("run", "switch", "--dsn", dsn, "--config", cfg)


def test_a_trigger_enabled_for_replica_only_fails_verify(make_db, phased, tmp_path):
    dsn = make_db(phased["align"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("alter table public.customers enable replica trigger pgconverge_align")
    problems = _problems(cli_json("verify", "--dsn", dsn, expect=1))
    assert any("trigger pgconverge_align on public.customers is enabled for replica sessions only" in p
               for p in problems), problems


def test_after_contract_a_dropped_not_null_fails_verify(make_db, phased, tmp_path):
    dsn = make_db(phased["switch"])
    cfg = write_config(tmp_path, NO_WINDOW)
    cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references", "--accept-runtime-use")
    assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("alter table public.carts alter column profile_id drop not null")
        name = conn.execute("select indexrelid::regclass::text from pg_index where indrelid = 'public.orders'::regclass "
                            "and pg_get_indexdef(indexrelid) like '%(profile_id)%'").fetchone()[0]
        conn.execute(f"drop index {name}")
    problems = _problems(cli_json("verify", "--dsn", dsn, "--config", cfg, expect=1))
    assert any("public.carts.profile_id is no longer NOT NULL" in p for p in problems), problems
    assert any(f"index public.{name.split('.')[-1]} on public.orders is missing" in p for p in problems), problems


def test_rls_write_probes_write_as_old_and_new_code(make_db, phased, tmp_path):
    """Old code writes the legacy column alone, new code the new one alone: with the sync trigger disabled, the
    legacy token's insert of its own cart is refused by the switched policy, and `verify --rls` says so."""
    dsn = make_db(phased["switch"])
    cfg = write_config(tmp_path, NO_WINDOW)
    assert cli_json("verify", "--rls", "--dsn", dsn, "--config", cfg)["passed"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'alter table public.carts disable trigger "{_sync_trigger(conn)}"')
    out = cli_json("verify", "--rls", "--dsn", dsn, "--config", cfg, expect=1)
    rls = next(c for c in out["checks"] if c["step"] == "rls")
    assert not rls["passed"] and any("public.carts" in " ".join(p) for p in rls["problems"]), rls
