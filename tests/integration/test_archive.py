"""Contract's archive steps: a failure there, an archive schema that exists already, the archived table's sequence."""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest
from psycopg import errors, sql

from _support import cli, cli_json, schema_dump, write_config

from pgconverge.execution import killpoint, preflight_copy

SMALL = 0.1
NO_WINDOW = "[migration]\nobservation_window = 0\n"
ACCEPT = ("--accept-code-references", "--accept-runtime-use")
API = ("anon", "authenticated", "service_role")


def _flat(text: str) -> str:
    return " ".join(text.split())


def _legacy_columns(conn) -> list:
    return conn.execute("select table_name from information_schema.columns where table_schema = 'public' "
                        "and column_name = 'customer_id' order by 1").fetchall()


def _acls(conn) -> list:
    """Every ACL of the schemas, tables and sequences outside the system and pgconverge's own schema."""
    return conn.execute("""
        select 'schema ' || nspname || ' ' || coalesce(nspacl::text, '-') from pg_namespace
        where nspname !~ '^pg_' and nspname not in ('information_schema', 'pgconverge')
        union all
        select c.relkind::text || ' ' || c.oid::regclass::text || ' ' || coalesce(c.relacl::text, '-')
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'p', 'S') and n.nspname !~ '^pg_'
          and n.nspname not in ('information_schema', 'pgconverge')
        order by 1""").fetchall()


@pytest.mark.parametrize("step", ["contract.archive_legacy_table", "contract.archive_mapping"])
@pytest.mark.parametrize("then", ["rollback", "resume"])
def test_a_contract_stopped_at_an_archive_step_rolls_back_and_resumes(make_db, template_factory, tmp_path,
                                                                       monkeypatch, admin_dsn, step, then):
    """The archive step fails (a permission error or a lock that never came would do the same) after contract has
    dropped the legacy columns. Its rollback moved back a table that never moved ("relation archive.customers_…
    does not exist") on every retry; and `run contract` failed in its preflight, which read the dropped columns."""
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, NO_WINDOW)
    args = ("--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for ph in ("align", "expand", "switch"):
            cli("run", ph, *args)
        switched, acls = schema_dump(conn, ("public", "archive")), _acls(conn)
        killpoint.fail_at(f"{step}:before")
        try:
            out = cli("run", "contract", *args, *ACCEPT, expect=2)
        finally:
            killpoint.fail_at(None)
        assert f"step {step} failed" in out, out
        assert _legacy_columns(conn) == []  # the columns went before the step that failed
        if then == "rollback":
            cli("rollback", "contract", *args, "--yes")
            assert schema_dump(conn, ("public", "archive")) == switched
            # (Where the legacy table went before the failure, the archive schema made for it stays, empty.)
            assert [a for a in _acls(conn) if not a[0].startswith("schema archive ")] == acls
        # The same command goes on (or forward again), its preflight included.
        monkeypatch.setenv(preflight_copy.ENABLE_ENV, "on")
        monkeypatch.setenv(preflight_copy.SERVER_ENV, admin_dsn)
        cli("run", "contract", *args, *ACCEPT)
        monkeypatch.setenv(preflight_copy.ENABLE_ENV, "off")
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is None
        assert cli_json("verify", *args)["passed"]
        cli("rollback", "contract", *args, "--yes")
        assert schema_dump(conn, ("public", "archive")) == switched


@pytest.fixture
def runner_role(make_db, template_factory):
    """(superuser connection, DSN of a LOGIN role that owns the fixture's tables and functions, its name, the other
    role that owns an archive schema made beforehand): the role may act as the API roles and create schemas, not
    create tables in that archive schema, as on a hosted database where another admin made one."""
    dsn = make_db(template_factory(SMALL))
    role, other = f"pgc_runner_{uuid.uuid4().hex[:8]}", f"pgc_dba_{uuid.uuid4().hex[:8]}"
    r, o = sql.Identifier(role), sql.Identifier(other)
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(sql.SQL("create role {} login nosuperuser bypassrls").format(r))
    conn.execute(sql.SQL("create role {} nologin").format(o))
    conn.execute(sql.SQL("grant create, connect on database {} to {}").format(sql.Identifier(conn.info.dbname), r))
    conn.execute(sql.SQL("alter schema public owner to {}").format(r))
    conn.execute(sql.SQL("grant {} to {}").format(sql.SQL(", ").join(map(sql.Identifier, API)), r))
    conn.execute(sql.SQL("""do $$ declare x record; begin
        for x in select c.oid::regclass as t from pg_class c where c.relnamespace = 'public'::regnamespace
                 and c.relkind in ('r', 'p', 'v', 'm') loop
          execute format('alter table %s owner to {}', x.t);
        end loop;
        for x in select p.oid::regprocedure as f from pg_proc p where p.pronamespace = 'public'::regnamespace loop
          execute format('alter function %s owner to {}', x.f);
        end loop; end $$""").format(r, r))
    conn.execute(sql.SQL("grant usage on schema auth to {}; grant select on all tables in schema auth to {}").format(
        r, r))
    conn.execute(sql.SQL("create schema archive authorization {}; grant usage on schema archive to {}").format(o, r))
    yield conn, psycopg.conninfo.make_conninfo(dsn, user=role), role, other
    conn.close()
    with psycopg.connect(dsn, autocommit=True) as c:
        for name in (r, o):
            c.execute(sql.SQL("reassign owned by {} to current_user").format(name))
            c.execute(sql.SQL("drop owned by {}").format(name))
            c.execute(sql.SQL("drop role {}").format(name))


def test_an_archive_schema_the_runner_may_not_create_tables_in_is_refused_before_the_first_drop(runner_role,
                                                                                                  tmp_path):
    """`archive` exists, owned by another role, and the role running pgconverge may not CREATE there: contract
    dropped the legacy foreign keys, indexes and columns and only then failed (permission denied for schema
    archive). Its gates refuse now, changing nothing, and name the grant."""
    conn, dsn, role, other = runner_role
    args = ("--dsn", dsn, "--config", write_config(tmp_path, NO_WINDOW))
    for ph in ("align", "expand", "switch"):
        cli("run", ph, *args)
    switched, columns = schema_dump(conn, ("public", "archive")), _legacy_columns(conn)
    out = _flat(cli("run", "contract", *args, *ACCEPT, expect=2))
    assert "contract is blocked, nothing was dropped" in out, out
    assert (f"archive schema: the archive schema archive exists, owned by {other}, and {role} may not create "
            "tables in it") in out, out
    assert f"GRANT CREATE ON SCHEMA archive TO {role};" in out and "migration.archive_schema" in out, out
    assert schema_dump(conn, ("public", "archive")) == switched and _legacy_columns(conn) == columns
    conn.execute(sql.SQL("grant create on schema archive to {}").format(sql.Identifier(role)))  # the fix
    cli("run", "contract", *args, *ACCEPT)
    assert cli_json("verify", *args)["passed"]
    cli("rollback", "contract", *args, "--yes")
    assert schema_dump(conn, ("public", "archive")) == switched


def _reads(conn, role: str, query: str):
    try:
        with conn.transaction():
            conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
            return conn.execute(query).fetchall()
    except errors.InsufficientPrivilege as exc:
        return f"refused: {str(exc).strip()}"


def test_an_archive_schema_the_application_reads_keeps_its_privileges(make_db, template_factory, tmp_path):
    """The application reads `archive.orders_2023` through the API roles. Contract revoked every privilege on the
    whole schema from them (the application's reads failed with "permission denied for schema archive"), and no
    rollback gave them back. Now only what contract archives loses those roles' privileges."""
    dsn = make_db(template_factory(SMALL))
    args = ("--dsn", dsn, "--config", write_config(tmp_path, NO_WINDOW))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create schema archive; create table archive.orders_2023 (id bigint primary key, note text); "
                     "insert into archive.orders_2023 values (1, 'old order'); "
                     "grant usage on schema archive to anon, authenticated, service_role; "
                     "grant select on archive.orders_2023 to anon, authenticated, service_role")
        before = _acls(conn)
        cli("run", "--all", *args, *ACCEPT)
        for role in API:
            assert _reads(conn, role, "select note from archive.orders_2023") == [("old order",)], role
        legacy = conn.execute("select c.oid::regclass::text from pg_class c where c.relnamespace = "
                              "'archive'::regnamespace and c.relname like 'customers\\_%'").fetchone()[0]
        for role in API:  # the archived table is out of their reach all the same
            assert not conn.execute("select has_table_privilege(%s, %s, 'SELECT, INSERT, UPDATE, DELETE')",
                                    (role, legacy)).fetchone()[0], role
        assert [a for a in _acls(conn) if a[0].startswith("schema archive")] == \
            [a for a in before if a[0].startswith("schema archive")]
        cli("rollback", "align", *args, "--yes")
        assert _acls(conn) == before
        for role in API:
            assert _reads(conn, role, "select note from archive.orders_2023") == [("old order",)], role


def test_the_archived_tables_sequence_loses_the_api_roles_privileges_until_rollback(make_db, template_factory,
                                                                                   tmp_path):
    """The legacy table's own sequence moves into the archive with it. It kept the API roles' privileges (granted by
    default on Supabase), so `authenticated` could setval() it by its oid and old code, back after a rollback, then
    inserted duplicate keys. They are revoked with the table's, and come back on rollback."""
    dsn = make_db(template_factory(SMALL))
    args = ("--dsn", dsn, "--config", write_config(tmp_path, NO_WINDOW))
    with psycopg.connect(dsn, autocommit=True) as conn:
        seq = conn.execute("select pg_get_serial_sequence('public.customers', 'id')").fetchone()[0]
        assert seq is not None
        conn.execute(f"grant usage, select, update on sequence {seq} to anon, authenticated, service_role")
        oid, acl = conn.execute("select %s::regclass::oid, relacl::text from pg_class where oid = %s::regclass",
                                (seq, seq)).fetchone()
        for ph in ("align", "expand", "switch", "contract"):
            cli("run", ph, *args, *(ACCEPT if ph == "contract" else ()))
        where, granted = conn.execute(
            "select c.relnamespace::regnamespace::text, array(select distinct case when a.grantee = 0 then 'PUBLIC' "
            "else pg_get_userbyid(a.grantee) end from aclexplode(c.relacl) a where a.grantee = 0 or "
            "pg_get_userbyid(a.grantee) = any(%s)) from pg_class c where c.oid = %s", (list(API), oid)).fetchone()
        assert where == "archive" and granted == [], granted
        assert re.match(r"refused: permission denied for sequence",
                        str(_reads(conn, "authenticated", f"select setval({oid}::regclass, 1)")))
        cli("rollback", "contract", *args, "--yes")
        assert conn.execute("select relnamespace::regnamespace::text, relacl::text from pg_class where oid = %s",
                            (oid,)).fetchone() == ("public", acl)
