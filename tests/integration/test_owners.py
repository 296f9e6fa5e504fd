"""Objects a phase changes must be the connected role's to change, and the roles the switch acts as its to become:
`plan` and `run align` refuse otherwise, before any change, naming the object, its owner and the statement that
fixes it. A member of an owner that does not inherit its privileges (NOINHERIT, a grant WITH INHERIT FALSE, the
membership Postgres 16 gives a CREATEROLE role in the roles it creates) may not ALTER what it owns; a member granted
WITH SET FALSE may not SET ROLE. And a rollback does not undo a step that never committed."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from pgconverge import fixtures
from pgconverge.execution import killpoint

from _small import PAIR_SQL, numbered_customers, owned, roles_sql
from _support import cli, schema_db, schema_dump

TABLES = ("customers", "profiles", "carts", "cart_items", "orders", "order_items", "order_events", "sessions",
          "products")


def _flat(text: str) -> str:
    return " ".join(text.split())


def _private_schema(conn) -> bool:
    return conn.execute("select to_regnamespace('pgconverge') is not null").fetchone()[0]


def _refused_before_any_change(conn, dsn: str, *said: str, unsaid: tuple[str, ...] = ()) -> None:
    """`plan` and `run align` both exit 2 saying each of SAID (and none of UNSAID), and nothing has changed."""
    before = schema_dump(conn, ("public",))
    for cmd in (("plan",), ("run", "align")):
        out = _flat(cli(*cmd, "--dsn", dsn, expect=2))
        assert all(s in out for s in said) and not any(u in out for u in unsaid), (cmd, out)
    assert not _private_schema(conn) and schema_dump(conn, ("public",)) == before


def _drop_roles(dsn: str, *roles: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for role in roles:
            r = sql.Identifier(role)
            if c.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone():
                c.execute(sql.SQL("reassign owned by {} to current_user").format(r))
                c.execute(sql.SQL("drop owned by {}").format(r))
                c.execute(sql.SQL("drop role {}").format(r))


def _hand_over(conn, role: str) -> None:
    """Make ROLE (LOGIN, not a superuser, BYPASSRLS) own the fixture's tables and public functions, as Supabase's
    postgres role does, with what else pgconverge needs."""
    r, db = sql.Identifier(role), sql.Identifier(conn.info.dbname)
    conn.execute(sql.SQL("create role {} login nosuperuser bypassrls").format(r))
    conn.execute(sql.SQL("grant create, connect on database {} to {}").format(db, r))
    conn.execute(sql.SQL("grant usage, create on schema public to {}").format(r))
    conn.execute(sql.SQL("grant usage on schema auth to {}").format(r))
    conn.execute(sql.SQL("grant anon, authenticated to {}").format(r))  # the switch's RLS check acts as them
    for t in TABLES:
        conn.execute(sql.SQL("alter table public.{} owner to {}").format(sql.Identifier(t), r))
    conn.execute(sql.SQL("do $$ declare f regprocedure; begin for f in select p.oid from pg_proc p join pg_namespace "
                         "n on n.oid = p.pronamespace where n.nspname = 'public' loop execute "
                         "format('alter function %s owner to %I', f, {}); end loop; end $$").format(sql.Literal(role)))


@pytest.fixture
def runner(conn, fixture_db):
    """(DSN of a role that owns the fixture's tables and functions, its name, a role it is not a member of, the
    superuser connection)."""
    tag = uuid.uuid4().hex[:8]
    role, other = f"pgc_run_{tag}", f"pgc_other_{tag}"
    _hand_over(conn, role)
    conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(other)))
    yield psycopg.conninfo.make_conninfo(fixture_db, user=role), role, other, conn
    _drop_roles(fixture_db, role, other)


@pytest.mark.parametrize("what, give, obj, fix", [
    # The switch makes the legacy helper SECURITY DEFINER and replaces it; contract retires it.
    ("helper", "alter function public.auth_customer_id() owner to {o}", "function public.auth_customer_id()",
     "ALTER FUNCTION public.auth_customer_id() OWNER TO {r}"),
    # Not a dependent: its policy reaches carts.customer_id through EXISTS, and the switch rewrites it.
    ("policy table", "alter table public.cart_items owner to {o}", "table public.cart_items",
     "ALTER TABLE public.cart_items OWNER TO {r}"),
])
def test_an_object_a_phase_changes_owned_by_another_role_is_refused_at_plan(runner, what, give, obj, fix):
    dsn, role, other, conn = runner
    conn.execute(sql.SQL(give).format(o=sql.Identifier(other)))
    before = schema_dump(conn, ("public",))
    for cmd in (("plan",), ("run", "align")):
        out = _flat(cli(*cmd, "--dsn", dsn, expect=2))
        assert f"{obj}: owned by {other}; pgconverge connects as {role}, which is neither a superuser nor a member " \
               f"of {other}" in out, (cmd, out)
        assert fix.format(r=role) in out and f"GRANT {other} TO {role};" in out, (cmd, out)
        assert out.count("owned by") == 1, out
    assert not _private_schema(conn) and schema_dump(conn, ("public",)) == before
    conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(other), sql.Identifier(role)))
    cli("plan", "--dsn", dsn)


@pytest.mark.parametrize("how", ["inherit false", "noinherit", "createrole"])
def test_a_member_of_an_owner_that_does_not_inherit_it_is_refused_at_plan(runner, fixture_db, how):
    """pg_has_role(…, 'MEMBER') is true for each of these, yet ALTER TABLE orders fails with \"must be owner\"."""
    dsn, role, other, conn = runner
    r, o = sql.Identifier(role), sql.Identifier(other)
    if how == "inherit false":
        conn.execute(sql.SQL("grant {} to {} with inherit false").format(o, r))
    elif how == "noinherit":  # the grant takes its INHERIT option from the role's, on Postgres 16
        conn.execute(sql.SQL("alter role {} noinherit").format(r))
        conn.execute(sql.SQL("grant {} to {}").format(o, r))
    else:  # a role the runner made itself: Postgres 16 makes it a member WITH ADMIN, INHERIT FALSE, SET FALSE
        conn.execute(sql.SQL("drop role {}").format(o))
        conn.execute(sql.SQL("alter role {} createrole").format(r))
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(sql.SQL("create role {} nologin").format(o))
    conn.execute(sql.SQL("alter table public.orders owner to {}").format(o))
    assert conn.execute("select pg_has_role(%s, %s, 'MEMBER'), pg_has_role(%s, %s, 'USAGE')",
                        (role, other, role, other)).fetchone() == (True, False)
    _refused_before_any_change(conn, dsn, f"table public.orders: owned by {other}; pgconverge connects as {role}, "
                               f"which is a member of {other} but does not inherit its privileges",
                               f"GRANT {other} TO {role} WITH INHERIT TRUE;")
    conn.execute(sql.SQL("grant {} to {} with inherit true").format(o, r))  # the fix the message gives
    cli("plan", "--dsn", dsn)


def test_a_member_of_authenticated_that_may_not_set_role_to_it_is_refused_at_plan(runner):
    dsn, role, _other, conn = runner
    r = sql.Identifier(role)
    conn.execute(sql.SQL("revoke authenticated from {}").format(r))
    conn.execute(sql.SQL("grant authenticated to {} with set false").format(r))
    _refused_before_any_change(conn, dsn, f"role authenticated: pgconverge connects as {role}, which may not act as "
                               "authenticated", f"GRANT authenticated TO {role} WITH SET TRUE;", unsaid=("role anon:",))
    conn.execute(sql.SQL("grant authenticated to {} with set true").format(r))
    cli("plan", "--dsn", dsn)


def test_on_postgres_15_membership_lets_pgconverge_act_as_a_role_and_a_noinherit_member_is_refused(make_db15):
    """Postgres 15 has no SET option (pg_has_role refuses 'SET'): every member may SET ROLE. A NOINHERIT role
    does not have its roles' privileges there either, and the fix is ALTER ROLE … INHERIT."""
    dsn = make_db15()
    tag = uuid.uuid4().hex[:8]
    role, other = f"pgc_run_{tag}", f"pgc_other_{tag}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        fixtures.load(conn, scale=0.05)
        _hand_over(conn, role)
        conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(other)))
    try:
        runner = psycopg.conninfo.make_conninfo(dsn, user=role)
        cli("plan", "--dsn", runner)  # a plain member of anon and authenticated may act as them
        with psycopg.connect(dsn, autocommit=True) as conn:
            r, o = sql.Identifier(role), sql.Identifier(other)
            conn.execute(sql.SQL("alter role {} noinherit").format(r))
            conn.execute(sql.SQL("grant {} to {}").format(o, r))
            conn.execute(sql.SQL("alter table public.orders owner to {}").format(o))
        out = _flat(cli("plan", "--dsn", runner, expect=2))
        assert f"table public.orders: owned by {other}; pgconverge connects as {role}, which is a member of " \
               f"{other} but does not inherit its privileges" in out, out
        assert f"or ALTER ROLE {role} INHERIT;" in out and "WITH INHERIT" not in out, out
        assert "role anon:" not in out and "role authenticated:" not in out, out
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("alter role {} inherit").format(sql.Identifier(role)))
        cli("plan", "--dsn", runner)
    finally:
        _drop_roles(dsn, role, other)


def test_a_partition_of_a_dependent_owned_by_another_role_is_refused_at_plan(make_db, tmp_path):
    """ALTER TABLE … ADD COLUMN on a partitioned table needs the owner of every partition too."""
    dsn, args = schema_db(make_db, tmp_path, roles_sql() + PAIR_SQL + numbered_customers(5) + """
create table public.orders (id bigint generated by default as identity primary key,
  customer_id bigint not null references public.customers (id), total int) partition by range (id);
create table public.orders_low partition of public.orders for values from (0) to (1000000);
insert into public.orders (customer_id, total) select 1 + i % 5, i from generate_series(1, 20) i;
""" + owned("orders"))
    tag = uuid.uuid4().hex[:8]
    role, other = f"pgc_run_{tag}", f"pgc_other_{tag}"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            r, o = sql.Identifier(role), sql.Identifier(other)
            conn.execute(sql.SQL("create role {} login nosuperuser bypassrls").format(r))
            conn.execute(sql.SQL("create role {} nologin").format(o))
            conn.execute(sql.SQL("grant create, connect on database {} to {}").format(
                sql.Identifier(conn.info.dbname), r))
            conn.execute(sql.SQL("grant usage, create on schema public to {}").format(r))
            conn.execute(sql.SQL("grant anon, authenticated to {}").format(r))
            for t in ("customers", "profiles", "orders"):
                conn.execute(sql.SQL("alter table public.{} owner to {}").format(sql.Identifier(t), r))
            conn.execute(sql.SQL("alter function public.auth_customer_id() owner to {}").format(r))
            conn.execute(sql.SQL("alter table public.orders_low owner to {}").format(o))
            before = schema_dump(conn, ("public",))
        runner = ("--dsn", psycopg.conninfo.make_conninfo(dsn, user=role), *args[2:])
        out = _flat(cli("plan", *runner, expect=2))
        assert f"table public.orders_low: owned by {other}; pgconverge connects as {role}, which is neither a " \
               f"superuser nor a member of {other}, so its ALTER TABLE (a partition of public.orders) would be " \
               "refused" in out, out
        assert f"ALTER TABLE public.orders_low OWNER TO {role};" in out and out.count("owned by") == 1, out
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert not _private_schema(conn) and schema_dump(conn, ("public",)) == before
            conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(other), sql.Identifier(role)))
        cli("plan", *runner)
    finally:
        _drop_roles(dsn, role, other)


@pytest.mark.parametrize("failing, give", [
    ("switch.legacy_helper_definer", "alter function public.auth_customer_id() owner to {o}"),
    ("switch.policies", "alter table public.cart_items owner to {o}"),
])
def test_a_rollback_does_not_undo_a_step_that_never_committed(runner, failing, give):
    """The switch fails at FAILING (nothing of that step committed); then its object changes hands, as an object
    owned by another role made the step fail in the first place. Undoing the step would restore what it never
    changed, and fail the same way: the rollback skips it, undoes the rest, and leaves the switch to run again."""
    dsn, role, other, conn = runner
    cli("run", "align", "--dsn", dsn)
    cli("run", "expand", "--dsn", dsn)
    before = schema_dump(conn, ("public",))
    killpoint.fail_at(f"{failing}:before")
    try:
        out = _flat(cli("run", "switch", "--dsn", dsn, expect=2))
    finally:
        killpoint.fail_at(None)
    assert failing in out, out
    conn.execute(sql.SQL(give).format(o=sql.Identifier(other)))
    out = _flat(cli("rollback", "switch", "--dsn", dsn, "--yes"))
    assert "rolled back switch" in out, out
    assert schema_dump(conn, ("public",)) == before
    states = dict(conn.execute(
        "select distinct on (step) step, event from pgconverge.events where event in ('start', 'done', 'reverted') "
        "and split_part(step, '.', 1) = 'switch' order by step, id desc").fetchall())
    assert states and all(e != "done" for e in states.values()), states  # the switch runs again from its start
    note = conn.execute("select detail ->> 'note' from pgconverge.events where step = %s and event = 'done'",
                        (f"rollback.{failing.replace('_definer', '')}",)).fetchone()
    assert note and note[0].startswith("nothing to undo:") and failing in note[0], note
    conn.execute(sql.SQL(give).format(o=sql.Identifier(role)))
    cli("rollback", "align", "--dsn", dsn, "--yes")


def test_a_helper_schema_the_runner_may_not_create_in_is_refused_at_plan(runner):
    """The switch creates auth_profile_id() in its schema: without CREATE there, it would fail after align and
    expand had run. Refused at plan and at align, before any change, with the grant that lifts it."""
    dsn, role, _other, conn = runner
    conn.execute(sql.SQL("revoke create on schema public from {}").format(sql.Identifier(role)))
    assert conn.execute("select has_schema_privilege(%s, 'public', 'CREATE')", (role,)).fetchone()[0] is False
    _refused_before_any_change(conn, dsn, f"schema public: the switch creates canonical.helper "
                               f"public.auth_profile_id() there; pgconverge connects as {role}, which may not create "
                               "objects in that schema", f"GRANT CREATE ON SCHEMA public TO {role};")
    conn.execute(sql.SQL("grant create on schema public to {}").format(sql.Identifier(role)))  # the fix it gives
    cli("plan", "--dsn", dsn)
