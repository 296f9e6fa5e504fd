"""The switch's RLS rewrite on a real database: apply, check the catalog and the helpers, roll back exactly."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from pgconverge import fixtures
from pgconverge.catalog.introspect import load_catalog
from pgconverge.catalog.model import Function
from pgconverge.config import QualifiedName, Spec
from pgconverge.planning.rls_rewrite import derive_canonical_helper, rewrite_policies

SMALL = 0.1  # 200 customers: every identity case, loads in about a second
SPEC = Spec()
MAPPING = SPEC.mapping_table
REWRITTEN = {"cart_items_owner", "carts_owner", "order_events_owner", "order_items_owner", "order_items_owner_insert",
             "orders_owner_insert", "orders_owner_select", "sessions_access"}
OWNED = ("carts", "cart_items", "orders", "order_items", "order_events", "sessions")

POLICY_TEXTS = """
select c.relname, p.polname, pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid),
       p.polcmd, p.polpermissive, p.polroles::regrole[]::text[]
from pg_policy p join pg_class c on c.oid = p.polrelid
"""


def policy_texts(conn) -> dict:
    # As the catalog reader sees them: names outside pg_catalog qualified.
    with conn.transaction():
        conn.execute("set local search_path = pg_catalog")
        return {(r[0], r[1]): r[2:] for r in conn.execute(POLICY_TEXTS)}


def function_state(conn, signature: str) -> tuple:
    return conn.execute("select pg_get_functiondef(%s::regprocedure), prosecdef, proconfig, provolatile "
                        "from pg_proc where oid = %s::regprocedure", (signature, signature)).fetchone()


def read_function(conn, signature: str) -> Function:
    row = conn.execute(
        """select n.nspname, p.proname, p.oid::regprocedure::text, pg_get_function_identity_arguments(p.oid),
                  pg_get_function_result(p.oid), l.lanname, p.provolatile, p.prosecdef,
                  coalesce(p.proconfig, '{}'), p.prosrc, pg_get_functiondef(p.oid), p.oid
           from pg_proc p join pg_namespace n on n.oid = p.pronamespace join pg_language l on l.oid = p.prolang
           where p.oid = %s::regprocedure""", (signature,)).fetchone()
    return Function(QualifiedName(row[0], row[1]), *row[2:8], tuple(row[8]), *row[9:])


def expand(conn) -> None:
    """Stand-in for align + expand: the private mapping (from the fixture's truth) and filled profile_id columns."""
    with conn.transaction():
        conn.execute("create schema pgconverge")
        conn.execute("revoke all on schema pgconverge from public")
        conn.execute("create table pgconverge.legacy_customer_profile (customer_id bigint primary key, "
                     "profile_id uuid not null)")
        conn.execute("insert into pgconverge.legacy_customer_profile select customer_id, expected_profile_id "
                     "from fixture_truth.expected_mapping where expected_profile_id is not null")
        for table in ("carts", "orders", "sessions"):
            t = sql.Identifier("public", table)
            conn.execute(sql.SQL("alter table {} add column profile_id uuid").format(t))
            conn.execute(sql.SQL("update {} x set profile_id = m.profile_id from pgconverge.legacy_customer_profile m "
                                 "where m.customer_id = x.customer_id").format(t))


def as_caller(conn, claims: dict | None, query: str, params=None) -> list[tuple]:
    with conn.transaction():
        fixtures.set_claims(conn, claims)
        return conn.execute(query, params).fetchall()


def helpers(conn, claims: dict | None) -> tuple:
    return as_caller(conn, claims, "select public.auth_profile_id(), public.auth_customer_id()")[0]


def visible(conn, claims: dict) -> dict[str, set]:
    return {t: {r[0] for r in as_caller(conn, claims, sql.SQL("select id from {}").format(sql.Identifier("public", t)))}
            for t in OWNED}


# The claim-reading styles; uid_lookup identifies callers by `sub` and is covered end to end by
# tests/integration/test_switch.py, whose tokens follow the helper.
CLAIM_STYLES = [s for s in fixtures.HELPER_STYLES if s != "uid_lookup"]


@pytest.fixture(params=CLAIM_STYLES)
def db(request, make_db):
    with psycopg.connect(make_db(), autocommit=True) as conn:
        fixtures.load(conn, SMALL, helper_style=request.param)
        expand(conn)
        yield request.param, conn


def test_switch_rewrites_policies_and_helpers_then_rolls_back_exactly(db):
    style, conn = db
    cat = load_catalog(conn, SPEC)
    before = policy_texts(conn)
    legacy_before = function_state(conn, "public.auth_customer_id()")

    rewrites = {r.name: r for r in rewrite_policies(cat, SPEC)}
    assert {n for n, r in rewrites.items() if r.automatic} == REWRITTEN, {n: r.uncertain for n, r in rewrites.items()}
    assert not rewrites["customers_self_select"].changed and rewrites["customers_self_select"].uncertain
    assert not rewrites["products_public_read"].changed and not rewrites["profiles_self"].changed

    derived = derive_canonical_helper(
        cat.legacy_helper, canonical_helper=SPEC.canonical.helper, legacy_claim=SPEC.legacy.claim,
        canonical_claim=SPEC.canonical.claim, canonical_key_type=cat.canonical.column(SPEC.canonical.key).type,
        mapping=MAPPING, mapping_legacy_column=SPEC.mapping_legacy_column,
        mapping_canonical_column=SPEC.migration.new_column,
        callees=[read_function(conn, "public.auth_claim(text)")], server_version=cat.server_version)
    assert derived.mechanism == style and derived.uncertain == ()
    assert derived.legacy_original_sql == legacy_before[0]

    # Who sees what with pre-switch tokens, for customers with a profile of their own and a shared one.
    mapping = dict(conn.execute("select customer_id, profile_id from pgconverge.legacy_customer_profile"))
    by_profile: dict = {}
    for cid, pid in mapping.items():
        by_profile.setdefault(pid, []).append(cid)
    shared = next(pid for pid, cids in by_profile.items() if len(cids) > 1)
    single = [cid for cid, pid in sorted(mapping.items()) if len(by_profile[pid]) == 1][:3]
    sample = single + by_profile[shared]
    old = {cid: visible(conn, {"app_role": "customer", "customer_id": cid}) for cid in sample}

    with conn.transaction():
        conn.execute(derived.canonical_sql)
        conn.execute(derived.legacy_bridge_sql)
        for r in rewrites.values():
            if r.automatic:
                conn.execute(r.statement)

    after = policy_texts(conn)
    for (table, name), texts in before.items():
        if name in REWRITTEN:
            # Exactly the legacy names swapped; casts, literals, the device branch, roles, command unchanged.
            want = tuple(t.replace("customer_id", "profile_id") if isinstance(t, str) else t for t in texts[:2])
            assert after[(table, name)] == (*want, *texts[2:]), name
            assert "customer_id" not in str(after[(table, name)][:2])
        else:
            assert after[(table, name)] == texts, name
    assert "'device'::text" in after[("sessions", "sessions_access")][0]

    # The helpers, for every kind of token.
    cid = single[0]
    pid = mapping[cid]
    other_pid = mapping[single[1]]
    unmapped = conn.execute("select min(id) from public.customers c where not exists "
                            "(select 1 from pgconverge.legacy_customer_profile m where m.customer_id = c.id)").fetchone()[0]
    orphan = conn.execute("select min(user_id::text)::uuid from public.profiles p where not exists "
                          "(select 1 from pgconverge.legacy_customer_profile m where m.profile_id = p.user_id)").fetchone()[0]
    assert unmapped is not None and orphan is not None
    assert helpers(conn, {"customer_id": cid}) == (pid, cid)  # old token: bridged forward
    assert helpers(conn, {"customer_id": str(cid)}) == (pid, cid)
    assert helpers(conn, {"profile_id": str(pid)}) == (pid, cid)  # new token: reverse-mapped
    assert helpers(conn, {"profile_id": str(shared)}) == (shared, min(by_profile[shared]))
    assert helpers(conn, {"customer_id": cid, "profile_id": str(other_pid)}) == (other_pid, cid)  # both: own claim
    assert helpers(conn, {}) == (None, None)
    assert helpers(conn, None) == (None, None)
    assert helpers(conn, {"customer_id": "", "profile_id": ""}) == (None, None)
    assert helpers(conn, {"customer_id": "abc", "profile_id": "not-a-uuid"}) == (None, None)  # garbage: NULL
    assert helpers(conn, {"customer_id": "99999999999999999999999"}) == (None, None)
    assert helpers(conn, {"customer_id": unmapped}) == (None, unmapped)
    assert helpers(conn, {"profile_id": str(orphan)}) == (orphan, None)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the mapping stays private
        as_caller(conn, {"customer_id": cid}, "select count(*) from pgconverge.legacy_customer_profile")

    # RLS: old and new tokens of one person see what all the legacy rows merged into their profile saw
    # before (for an unmerged customer: exactly what it saw); nobody sees more.
    for c in sample:
        p = mapping[c]
        want = {t: set().union(*(old[m][t] for m in by_profile[p])) for t in OWNED}
        assert visible(conn, {"app_role": "customer", "customer_id": c}) == want, c
        assert visible(conn, {"app_role": "customer", "profile_id": str(p)}) == want, p
        assert any(want.values())
        if len(by_profile[p]) == 1:
            assert want == old[c]
    assert not any(visible(conn, {"app_role": "customer", "profile_id": str(orphan)}).values())

    # WITH CHECK follows the new column too: a new token writes its own profile's rows, and only those.
    mine = {"app_role": "customer", "profile_id": str(pid)}
    insert = "insert into public.orders (profile_id) values (%s) returning profile_id"
    assert as_caller(conn, mine, insert, (pid,)) == [(pid,)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        as_caller(conn, mine, insert, (other_pid,))

    # Roll back: the original catalog text, verbatim, and the original legacy helper.
    with conn.transaction():
        for r in rewrites.values():
            if r.automatic:
                conn.execute(r.reverse_statement)
        conn.execute(derived.legacy_original_sql)
        conn.execute(sql.SQL("drop function {}()").format(sql.Identifier(SPEC.canonical.helper.schema, SPEC.canonical.helper.name)))
    assert policy_texts(conn) == before
    assert function_state(conn, "public.auth_customer_id()") == legacy_before
    for c in sample:
        assert visible(conn, {"app_role": "customer", "customer_id": c}) == old[c], c


def test_canonical_helper_before_postgres_16_semantics(db):
    """The pattern-guarded cast (used before Postgres 16) gives the same answers, on any server."""
    style, conn = db
    cat = load_catalog(conn, SPEC)
    derived = derive_canonical_helper(
        cat.legacy_helper, canonical_helper=SPEC.canonical.helper, legacy_claim="customer_id",
        canonical_claim="profile_id", canonical_key_type="uuid", mapping=MAPPING, mapping_legacy_column="customer_id",
        mapping_canonical_column="profile_id", server_version=150000)
    assert "pg_input_is_valid" not in derived.canonical_sql
    cid, pid = conn.execute("select customer_id, profile_id from pgconverge.legacy_customer_profile "
                            "order by customer_id limit 1").fetchone()
    with conn.transaction():
        conn.execute(derived.canonical_sql)
        conn.execute(derived.legacy_bridge_sql)
    assert helpers(conn, {"customer_id": cid}) == (pid, cid)
    assert helpers(conn, {"profile_id": str(pid).upper()}) == (pid, cid)
    assert helpers(conn, {"customer_id": " 12x", "profile_id": "{}"}) == (None, None)
    assert helpers(conn, {"customer_id": "99999999999999999999999"}) == (None, None)
