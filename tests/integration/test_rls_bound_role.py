"""A role that row level security binds (a table owner without BYPASSRLS, tables under FORCE ROW LEVEL
SECURITY, as on managed Postgres whose admin role is not a superuser) is refused before any change, and a
policy that hides rows from pgconverge can never lead to a passing gate: every check sees every row or
says it cannot."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from _support import DEPENDENTS, cli, cli_json, linkage_problems, schema_dump

TABLES = ("customers", "profiles", "carts", "cart_items", "orders", "order_items", "order_events", "sessions",
          "products")
# What pgconverge must read in full: the legacy and canonical tables, their dependents, and the tables whose
# policies reach a dependent.
MUST_SEE = ("public.customers", "public.profiles", "public.carts", "public.orders", "public.sessions",
            "public.cart_items")


@pytest.fixture
def bound(conn, fixture_db):
    """(DSN of a LOGIN role that owns every fixture table, which are all under FORCE ROW LEVEL SECURITY, and
    is neither superuser nor BYPASSRLS; its name; the superuser connection)."""
    role = f"pgc_owner_{uuid.uuid4().hex[:8]}"
    r, db = sql.Identifier(role), sql.Identifier(conn.info.dbname)
    conn.execute(sql.SQL("create role {} login nosuperuser nobypassrls").format(r))
    conn.execute(sql.SQL("grant create, connect on database {} to {}").format(db, r))
    conn.execute(sql.SQL("grant usage, create on schema public to {}").format(r))
    conn.execute(sql.SQL("grant anon, authenticated to {}").format(r))  # verify --rls acts as them (as on Supabase)
    for t in TABLES:
        conn.execute(sql.SQL("alter table public.{} owner to {}").format(sql.Identifier(t), r))
        conn.execute(sql.SQL("alter table public.{} force row level security").format(sql.Identifier(t)))
    # The switch replaces the legacy helper: `plan` refuses a role that may not (test_owners.py).
    conn.execute(sql.SQL("alter function public.auth_customer_id() owner to {}").format(r))
    dsn = psycopg.conninfo.make_conninfo(fixture_db, user=role)
    yield dsn, role, conn
    # The database is dropped after this; the role is cluster-wide, so it goes now with what it owns.
    with psycopg.connect(fixture_db, autocommit=True) as c:
        c.execute(sql.SQL("reassign owned by {} to current_user").format(r))
        c.execute(sql.SQL("drop owned by {}").format(r))
        c.execute(sql.SQL("drop role {}").format(r))


def _flat(text: str) -> str:
    return " ".join(text.split())


def _private_schema(conn) -> bool:
    return conn.execute("select to_regnamespace('pgconverge') is not null").fetchone()[0]


def _unlinked(conn) -> dict[str, int]:
    return {t: conn.execute(f"select count(*) from public.{t} where customer_id is not null and profile_id is null"
                            ).fetchone()[0] for t in DEPENDENTS}


def test_a_role_that_policies_filter_is_refused_before_any_change_and_migrates_once_fixed(bound):
    dsn, role, conn = bound
    # As this role the fixture's policies show it no row at all (no claims): a silent pgconverge would map none.
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select count(*) from public.customers").fetchone()[0] == 0
    before = schema_dump(conn, ("public",))
    inv = cli_json("inventory", "--dsn", dsn)
    assert not inv["row_security"]["ok"] and inv["row_security"]["role"] == role
    assert {t["table"] for t in inv["row_security"]["tables"]} >= set(MUST_SEE)
    assert any("BYPASSRLS" in w for w in inv["warnings"]), inv["warnings"]

    out = _flat(cli("run", "align", "--dsn", dsn, expect=2))
    assert "Traceback" not in out
    for t in MUST_SEE:
        assert t in out, (t, out)
    assert f"ALTER ROLE {role} BYPASSRLS;" in out, out
    assert "ALTER TABLE public.customers NO FORCE ROW LEVEL SECURITY;" in out, out
    assert "fix:" in out
    assert not _private_schema(conn)  # not even the ledger
    assert schema_dump(conn, ("public",)) == before

    conn.execute(sql.SQL("alter role {} bypassrls").format(sql.Identifier(role)))  # the fix
    assert cli_json("inventory", "--dsn", dsn)["row_security"]["ok"]
    cli("run", "align", "--dsn", dsn)
    cli("run", "expand", "--dsn", dsn)
    verdict = cli_json("verify", "--dsn", dsn)
    assert verdict["passed"] and verdict["phases"] == ["align", "expand"], verdict
    assert _unlinked(conn) == {t: 0 for t in DEPENDENTS}
    assert linkage_problems(conn) == []
    assert conn.execute("select count(*) from public.customers c where not exists (select 1 from "
                        "pgconverge.legacy_customer_profile m where m.customer_id = c.id)").fetchone()[0] == 0


def test_a_policy_that_hides_rows_from_pgconverge_never_lets_a_gate_pass(bound, monkeypatch):
    dsn, role, conn = bound
    r = sql.Identifier(role)
    conn.execute(sql.SQL("alter role {} bypassrls").format(r))
    cli("run", "align", "--dsn", dsn)
    conn.execute(sql.SQL("alter role {} nobypassrls").format(r))  # lost between phases

    before = schema_dump(conn, ("public",))
    out = _flat(cli("run", "expand", "--dsn", dsn, expect=2))
    assert f"ALTER ROLE {role} BYPASSRLS;" in out and "public.carts" in out, out
    assert schema_dump(conn, ("public",)) == before
    for args in (("verify",), ("verify", "--rls")):
        out = _flat(cli(*args, "--dsn", dsn, expect=2))
        assert "row level security" in out and f"ALTER ROLE {role} BYPASSRLS;" in out, (args, out)

    # Without the preflights (the attribute revoked while a run is under way): every pgconverge session has
    # row_security off, so Postgres refuses the statement the policies would have filtered.
    from pgconverge.cli import verify as verify_cli
    from pgconverge.execution.runner import Runner

    monkeypatch.setattr(Runner, "preflight", lambda self: None)
    monkeypatch.setattr(verify_cli.privileges, "check_catalogs", lambda *a, **k: None)
    out = _flat(cli("run", "expand", "--dsn", dsn, expect=2))
    assert "query would be affected by row-level security policy" in out, out
    assert f"ALTER ROLE {role} BYPASSRLS;" in out, out
    status = cli_json("status", "--dsn", dsn)
    assert status["phases"]["expand"] != "done", status
    for t in DEPENDENTS:  # no batch committed on part of the rows
        cols = {c for (c,) in conn.execute("select column_name from information_schema.columns "
                                           "where table_schema = 'public' and table_name = %s", (t,))}
        if "profile_id" in cols:
            assert conn.execute(f"select count(*) from public.{t} where profile_id is not null").fetchone()[0] == 0
    for args in (("verify",), ("verify", "--rls")):
        out = _flat(cli(*args, "--dsn", dsn, expect=2))
        assert "query would be affected by row-level security policy" in out, (args, out)

    # Fixed: the same command resumes and every row is linked.
    monkeypatch.undo()
    conn.execute(sql.SQL("alter role {} bypassrls").format(r))
    cli("run", "expand", "--dsn", dsn)
    assert cli_json("verify", "--rls", "--sample", "5", "--dsn", dsn)["passed"]
    assert _unlinked(conn) == {t: 0 for t in DEPENDENTS}
    assert linkage_problems(conn) == []


def test_verify_says_there_is_nothing_to_verify_before_any_run_and_after_a_full_rollback(fixture_db, conn):
    for args in (("verify",), ("verify", "--rls")):
        out = _flat(cli(*args, "--dsn", fixture_db))
        assert "nothing to verify: nothing has run on this database" in out, out
    data = cli_json("verify", "--rls", "--dsn", fixture_db)
    assert data["passed"] and data["checks"] == [] and "nothing has run" in data["nothing_to_verify"], data

    cli("run", "align", "--dsn", fixture_db)
    cli("run", "expand", "--dsn", fixture_db)
    cli("rollback", "align", "--dsn", fixture_db)
    assert conn.execute("select to_regclass('pgconverge.legacy_customer_profile')").fetchone()[0] is None
    for args in (("verify",), ("verify", "--rls")):
        out = _flat(cli(*args, "--dsn", fixture_db))
        assert "nothing to verify: every phase was rolled back" in out, out
    data = cli_json("verify", "--rls", "--dsn", fixture_db)
    assert data["passed"] and "rolled back" in data["nothing_to_verify"], data


def test_the_preflight_knows_owners_members_and_roles_with_only_grants(conn, fixture_db):
    """Owner (or a member of the owning role) of tables that do not force RLS: sees every row. A role with
    only grants: filtered on every table with RLS, and the fix says BYPASSRLS or connect as the owner."""
    tag = uuid.uuid4().hex[:8]
    names = {k: f"pgc_{k}_{tag}" for k in ("own", "mem", "grant")}
    owner, member, granted = (sql.Identifier(n) for n in names.values())

    def verdict(kind: str) -> dict:
        return cli_json("inventory", "--dsn", psycopg.conninfo.make_conninfo(fixture_db, user=names[kind])
                        )["row_security"]

    for r in (owner, member, granted):
        conn.execute(sql.SQL("create role {} login").format(r))
        conn.execute(sql.SQL("grant usage on schema public to {}").format(r))
    conn.execute(sql.SQL("grant {} to {}").format(owner, member))
    conn.execute(sql.SQL("grant select on all tables in schema public to {}").format(granted))
    for t in TABLES:
        conn.execute(sql.SQL("alter table public.{} owner to {}").format(sql.Identifier(t), owner))
    try:
        for kind in ("own", "mem"):
            v = verdict(kind)
            assert v["ok"] and not v["tables"], v
        v = verdict("grant")
        assert not v["ok"] and {t["table"] for t in v["tables"]} >= set(MUST_SEE)
        assert not any(t["owned"] for t in v["tables"])
        assert "BYPASSRLS" in v["fix"] and "connect as their owner" in v["fix"] and "ALTER TABLE" not in v["fix"]
        conn.execute("alter table public.carts force row level security")  # now even the owner is filtered there
        v = verdict("mem")
        assert [t["table"] for t in v["tables"]] == ["public.carts"] and v["tables"][0]["owned"], v
        assert "ALTER TABLE public.carts NO FORCE ROW LEVEL SECURITY;" in v["fix"], v
    finally:
        for r in (owner, member, granted):
            conn.execute(sql.SQL("reassign owned by {} to current_user").format(r))
            conn.execute(sql.SQL("drop owned by {}").format(r))
            conn.execute(sql.SQL("drop role {}").format(r))


def test_a_role_that_may_not_act_as_the_api_roles_is_refused_at_plan(bound):
    """The switch's RLS check reads the tables as anon and authenticated: a role that may not SET ROLE to them is
    refused by `plan` and `run align`, before any change, not by the switch after align and expand have run."""
    dsn, role, conn = bound
    conn.execute(sql.SQL("alter role {} bypassrls").format(sql.Identifier(role)))
    conn.execute(sql.SQL("revoke anon from {}").format(sql.Identifier(role)))
    before = schema_dump(conn, ("public",))
    for cmd in (("plan",), ("run", "align")):
        out = _flat(cli(*cmd, "--dsn", dsn, expect=2))
        assert f"role anon: pgconverge connects as {role}, which may not act as anon" in out, out
        assert f"GRANT anon TO {role};" in out and "authenticated" not in out.split("role anon:")[0][-30:]
    assert not _private_schema(conn) and schema_dump(conn, ("public",)) == before
    conn.execute(sql.SQL("grant anon to {}").format(sql.Identifier(role)))
    cli("plan", "--dsn", dsn)


def test_rolling_back_the_switch_leaves_the_ledgers_owner_its_own_schema(bound, fixture_db):
    """Align run as the role that owns the tables and the legacy helper (its ledger schema is that role's), the switch
    as a superuser: the switch lets the helper's owner read the mapping, and its rollback took that back from the role
    that owns the schema, whose ledger then failed its own foreign keys (\"permission denied for schema
    pgconverge\"), so the rollback could not finish."""
    dsn, role, conn = bound
    r = sql.Identifier(role)
    conn.execute(sql.SQL("alter role {} bypassrls").format(r))
    conn.execute(sql.SQL("alter function public.auth_customer_id() owner to {}").format(r))
    cli("run", "align", "--dsn", dsn)
    cli("run", "expand", "--dsn", dsn)
    cli("run", "switch", "--dsn", fixture_db)
    cli("rollback", "switch", "--dsn", fixture_db, "--yes")
    assert conn.execute("select has_schema_privilege(%s, 'pgconverge', 'usage')", (role,)).fetchone()[0]
    cli("run", "switch", "--dsn", dsn)
    cli("rollback", "align", "--dsn", dsn, "--yes")
