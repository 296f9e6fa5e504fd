"""The bundled Supabase-like fixture: data volumes, identity truth, determinism and RLS."""

from __future__ import annotations

import os

import phonenumbers
import psycopg
import pytest

from pgconverge import fixtures

TEST_SCALE = float(os.environ.get("PGCONVERGE_TEST_SCALE", "0.5"))
SMALL = 0.1  # below the floor: 200 customers

CASES = {
    "exact", "whatsapp_digits", "other_spelling", "no_profile", "shared_number",
    "canonical_twice", "null_number", "unparseable", "foreign",
}  # fmt: skip
VARIANTS = {
    "other_spelling": {"00", "spaced", "dashed", "punct", "local", "blanks"},
    "no_profile": {"e164", "digits", "local"},
    "shared_number": {"with_profile", "without_profile"},
    "canonical_twice": {"plus_older", "plus_newer", "neither_normalized"},
    "unparseable": {"unknown", "12", "n/a", "empty"},
    "foreign": {"uk", "us", "br_legacy", "mx_legacy", "ar_wa", "ar_no9", "uk_new", "us_new"},
}

# Content hash of a table, in key order.
FINGERPRINTED = {
    "public.customers": "id",
    "public.profiles": "user_id",
    "fixture_truth.expected_mapping": "customer_id",
    "public.carts": "id",
    "public.orders": "id",
    "public.sessions": "id",
    "public.order_items": "id",
}


def scalar(conn, query, params=None):
    return conn.execute(query, params).fetchone()[0]


def column(conn, query, params=None):
    return [r[0] for r in conn.execute(query, params)]


def fingerprints(conn) -> dict[str, str]:
    return {
        table: scalar(conn, f"select md5(string_agg(t::text, '|' order by t.{key})) from {table} t")
        for table, key in FINGERPRINTED.items()
    }


def count(conn, table: str) -> int:
    return scalar(conn, f"select count(*) from {table}")


# --- volumes and cases -------------------------------------------------------------------


def test_counts_are_in_the_expected_ranges(conn):
    n = fixtures.customers_for(TEST_SCALE)
    assert count(conn, "public.customers") == n
    assert count(conn, "fixture_truth.expected_mapping") == n
    assert count(conn, "public.products") == 50
    assert 0.8 * n <= count(conn, "public.profiles") <= 0.95 * n
    assert count(conn, "auth.users") == count(conn, "public.profiles")
    for table in ("carts", "orders", "sessions"):
        assert 2.8 * n <= count(conn, f"public.{table}") <= 3.2 * n, table
    carts, orders = count(conn, "public.carts"), count(conn, "public.orders")
    assert 1.8 * carts <= count(conn, "public.cart_items") <= 2.2 * carts
    assert 1.8 * orders <= count(conn, "public.order_items") <= 2.2 * orders
    assert 1.3 * orders <= count(conn, "public.order_events") <= 1.7 * orders


def test_every_case_and_variant_is_present(conn):
    rows = conn.execute("select case_name, variant, count(*) from fixture_truth.expected_mapping group by 1, 2")
    seen: dict[str, set[str]] = {}
    for case_name, variant, _ in rows:
        seen.setdefault(case_name, set()).add(variant)
    assert set(seen) == CASES
    for case_name, variants in VARIANTS.items():
        assert seen[case_name] == variants, case_name


def test_every_case_is_present_at_the_smallest_scale(make_db):
    with psycopg.connect(make_db(), autocommit=True) as c:
        counts = fixtures.load(c, 0.0001)
        assert counts["customers"] == fixtures.MIN_CUSTOMERS
        assert set(column(c, "select distinct case_name from fixture_truth.expected_mapping")) == CASES


def test_load_is_deterministic_and_reports_true_counts(conn, make_db):
    with psycopg.connect(make_db(), autocommit=True) as again:
        counts = fixtures.load(again, TEST_SCALE)
        assert list(counts) == list(fixtures.TABLES)
        for table, rows in counts.items():
            name = table if "." in table else f"public.{table}"
            assert count(again, name) == rows, table
        assert fingerprints(again) == fingerprints(conn)


def test_the_seed_changes_the_data(make_db):
    prints = []
    for seed in (1, 2):
        with psycopg.connect(make_db(), autocommit=True) as c:
            fixtures.load(c, SMALL, seed=seed)
            prints.append(fingerprints(c))
    assert prints[0]["public.customers"] != prints[1]["public.customers"]
    assert prints[0]["public.profiles"] != prints[1]["public.profiles"]


# --- ground truth ------------------------------------------------------------------------


def test_expected_profiles_exist_and_carry_the_number(conn):
    rows = conn.execute(
        """select e.variant, e.expected_key, p.user_id, p.phone_digits
           from fixture_truth.expected_mapping e
           left join public.profiles p on p.user_id = e.expected_profile_id
           where e.expected_profile_id is not null"""
    ).fetchall()
    assert rows
    for variant, key, user_id, digits in rows:
        assert user_id is not None, f"expected profile of {key} is missing"
        if variant == "neither_normalized":
            assert digits in (key, "0" + key[3:])
        else:
            assert digits == key


def test_groups_and_keys_agree(conn):
    assert not conn.execute(
        """select expected_group from fixture_truth.expected_mapping group by 1
           having count(distinct expected_key) > 1
               or count(distinct expected_profile_id) > 1
               or count(*) filter (where expected_profile_id is null) not in (0, count(*))"""
    ).fetchall()
    assert not conn.execute(
        """select expected_key from fixture_truth.expected_mapping where expected_key is not null
           group by 1 having count(distinct expected_group) > 1"""
    ).fetchall()
    # NULL and unparseable numbers: a group (a new profile) per customer.
    assert not conn.execute(
        """select 1 from fixture_truth.expected_mapping
           where (expected_key is null) <> (case_name in ('null_number', 'unparseable'))
              or (expected_key is null and expected_group <> 'customer:' || customer_id)"""
    ).fetchall()
    assert scalar(conn, "select count(*) from fixture_truth.expected_mapping where case_name = 'shared_number'") == (
        2 * scalar(conn, "select count(distinct expected_group) from fixture_truth.expected_mapping"
                         " where case_name = 'shared_number'")
    )


def test_numbers_needing_a_new_profile_have_none(conn):
    # No existing profile carries the number in any spelling (digits or national form).
    clashes = conn.execute(
        """select e.customer_id from fixture_truth.expected_mapping e
           join public.profiles p on p.phone_digits in (e.expected_key, '0' || substr(e.expected_key, 4))
           where e.expected_profile_id is null"""
    ).fetchall()
    assert clashes == []


def test_canonical_twice_has_two_profiles_per_number(conn):
    per_group = column(
        conn,
        """select count(distinct p.user_id) from fixture_truth.expected_mapping e
           join public.profiles p on p.phone_digits in (e.expected_key, '0' || substr(e.expected_key, 4))
           where e.case_name = 'canonical_twice' group by e.expected_group""",
    )
    assert per_group and set(per_group) == {2}
    # The tie-break by age is exercised both ways for the '+' spelling.
    ages = column(
        conn,
        """select distinct (w.created_at < l.created_at) from fixture_truth.expected_mapping e
           join public.profiles w on w.user_id = e.expected_profile_id
           join public.profiles l on l.phone_digits = e.expected_key and l.user_id <> w.user_id
           where e.variant in ('plus_older', 'plus_newer')""",
    )
    assert sorted(ages) == [False, True]


def test_every_expected_key_is_a_valid_number(conn):
    keys = column(conn, "select expected_key from fixture_truth.expected_mapping where expected_key is not null")
    invalid = [k for k in keys if not phonenumbers.is_valid_number(phonenumbers.parse("+" + k))]
    assert invalid == []
    rwanda = column(
        conn,
        "select expected_key from fixture_truth.expected_mapping where case_name not in"
        " ('foreign', 'null_number', 'unparseable') and expected_key !~ '^2507[2389][0-9]{7}$'",
    )
    assert rwanda == []


# --- dependents, grants ------------------------------------------------------------------


def test_dependent_rows_are_consistent(conn):
    orphans = {
        "carts": "select count(*) from public.carts c left join public.customers x on x.id = c.customer_id where x.id is null",
        "cart_items": "select count(*) from public.cart_items i left join public.carts c on c.id = i.cart_id where c.id is null",
        "orders": "select count(*) from public.orders o where (o.customer_id is not null and not exists"
        " (select from public.customers x where x.id = o.customer_id)) or (o.cart_id is not null and not exists"
        " (select from public.carts c where c.id = o.cart_id and c.customer_id = o.customer_id))",
        "order_items": "select count(*) from public.order_items i where not exists (select from public.orders o where o.id = i.order_id)",
        "order_events": "select count(*) from public.order_events e where not exists (select from public.orders o where o.id = e.order_id)",
        "sessions": "select count(*) from public.sessions s where s.customer_id is not null and not exists"
        " (select from public.customers x where x.id = s.customer_id)",
        "totals": "select count(*) from public.orders o where o.total <> (select sum(quantity * unit_price)"
        " from public.order_items i where i.order_id = o.id)",
    }
    assert {name: scalar(conn, q) for name, q in orphans.items()} == dict.fromkeys(orphans, 0)
    assert scalar(conn, "select count(*) from public.carts where customer_id is null") == 0
    orders = count(conn, "public.orders")
    assert 0.02 * orders < scalar(conn, "select count(*) from public.orders where customer_id is null") < 0.08 * orders
    sessions = count(conn, "public.sessions")
    assert 0.06 * sessions < scalar(conn, "select count(*) from public.sessions where customer_id is null") < 0.14 * sessions
    assert scalar(conn, "select count(*) from public.sessions where (customer_id is null) <> (device_id is not null)") == 0


def test_identity_sequences_are_past_the_generated_ids(conn):
    for table in ("customers", "carts", "orders", "order_items"):
        top = scalar(conn, f"select max(id) from public.{table}")
        assert scalar(conn, f"select nextval(pg_get_serial_sequence('public.{table}', 'id'))") > top


def test_supabase_grants_and_private_truth(conn):
    for role in ("anon", "authenticated", "service_role"):
        for table in ("carts", "orders", "sessions", "customers", "profiles"):
            assert scalar(conn, "select has_table_privilege(%s, %s, 'select,insert')", (role, f"public.{table}"))
        assert not scalar(conn, "select has_schema_privilege(%s, 'fixture_truth', 'usage')", (role,))
        assert scalar(conn, "select has_function_privilege(%s, 'public.auth_customer_id()', 'execute')", (role,))
    assert scalar(conn, "select rolbypassrls from pg_roles where rolname = 'service_role'")
    assert not scalar(conn, "select bool_or(rolcanlogin or rolbypassrls) from pg_roles where rolname in ('anon', 'authenticated')")
    no_rls = column(conn, "select relname from pg_class where relnamespace = 'public'::regnamespace and relkind = 'r' and not relrowsecurity")
    assert no_rls == []


def test_schema_shape_later_phases_rely_on(make_db):
    with psycopg.connect(make_db(), autocommit=True) as c:
        fixtures.schema_only(c)
        assert scalar(c, "select count(*) from public.customers") == 0
        assert scalar(c, "select to_regnamespace('fixture_truth')") is None
        fks = dict(
            c.execute(
                """select conrelid::regclass::text, confdeltype from pg_constraint
                   where contype = 'f' and confrelid = 'public.customers'::regclass"""
            ).fetchall()
        )
        assert fks == {"carts": "c", "orders": "n", "sessions": "n"}
        assert scalar(c, "select attnotnull from pg_attribute where attrelid = 'public.carts'::regclass and attname = 'customer_id'")
        indexes = dict(c.execute("select indexname, indexdef from pg_indexes where schemaname = 'public'").fetchall())
        assert "WHERE (customer_id IS NOT NULL)" in indexes["idx_sessions_customer"]
        assert "(customer_id, status)" in indexes["idx_carts_customer_status"]
        assert not [d for d in indexes.values() if " ON public.orders " in d and "customer_id" in d]
        policies = set(column(c, "select policyname from pg_policies where schemaname = 'public'"))
        assert policies == {
            "products_public_read", "customers_self_select", "profiles_self", "carts_owner", "cart_items_owner",
            "orders_owner_select", "orders_owner_insert", "order_items_owner", "order_items_owner_insert",
            "order_events_owner", "sessions_access",
        }  # fmt: skip


# --- refusals ----------------------------------------------------------------------------


def test_load_refuses_a_database_that_has_customers(conn):
    before = count(conn, "public.customers")
    with pytest.raises(fixtures.FixtureError, match="already has public.customers"):
        fixtures.load(conn, SMALL)
    with pytest.raises(fixtures.FixtureError, match="already has public.customers"):
        fixtures.schema_only(conn)
    assert count(conn, "public.customers") == before


def test_bad_arguments_are_refused_before_any_change(make_db):
    with psycopg.connect(make_db(), autocommit=True) as c:
        with pytest.raises(fixtures.FixtureError, match="helper_style"):
            fixtures.load(c, SMALL, helper_style="nope")
        with pytest.raises(fixtures.FixtureError, match="scale"):
            fixtures.load(c, 0)
        with pytest.raises(fixtures.FixtureError, match="at most 4000"):
            fixtures.load(c, 4001)
        with pytest.raises(fixtures.FixtureError, match="open transaction"):
            fixtures.set_claims(c, {"customer_id": 1})
        assert scalar(c, "select to_regclass('public.customers')") is None


# --- RLS through set_claims, for every helper style ---------------------------------------


@pytest.fixture(params=fixtures.HELPER_STYLES)
def helper_style(request) -> str:
    return request.param


@pytest.fixture
def styled(helper_style, make_db):
    """Autocommit superuser connection to a small fixture built with one helper style."""
    with psycopg.connect(make_db(), autocommit=True) as c:
        fixtures.load(c, SMALL, helper_style=helper_style)
        yield c


def identity_claims(c, style: str, customer: int) -> dict:
    """What names CUSTOMER in its token: the customer_id claim, or (uid_lookup) its auth user as `sub`."""
    if style == "uid_lookup":
        return {"sub": str(scalar(c, "select auth_user_id from public.customers where id = %s", (customer,)))}
    return {"customer_id": customer}


def customer_token(c, style: str, customer: int) -> dict:
    return {"app_role": "customer", **identity_claims(c, style, customer)}


def as_caller(c, claims, query, params=None, role="authenticated"):
    """Rows of a one-column QUERY as seen by a caller with CLAIMS (sorted); changes nothing."""
    with c.transaction(force_rollback=True):
        fixtures.set_claims(c, claims, role)
        return sorted(column(c, query, params))


def a_busy_customer(c) -> int:
    return scalar(
        c,
        """select c.id from public.customers c
           where exists (select from public.orders o where o.customer_id = c.id
                         and exists (select from public.order_events e where e.order_id = o.id))
             and exists (select from public.sessions s where s.customer_id = c.id)
           order by c.id offset 3 limit 1""",
    )


OWN_ROWS = {
    "select id from public.carts": "select id from public.carts where customer_id = %(x)s",
    "select id from public.cart_items": "select i.id from public.cart_items i join public.carts c on c.id = i.cart_id"
    " where c.customer_id = %(x)s",
    "select id from public.orders": "select id from public.orders where customer_id = %(x)s",
    "select id from public.order_items": "select i.id from public.order_items i join public.orders o on o.id = i.order_id"
    " where o.customer_id = %(x)s",
    "select id from public.order_events": "select e.id from public.order_events e join public.orders o"
    " on o.id = e.order_id where o.customer_id = %(x)s",
    "select id::text from public.sessions": "select id::text from public.sessions where customer_id = %(x)s",
    "select id from public.customers": "select id from public.customers where id = %(x)s",
    "select user_id from public.profiles": "select user_id from public.profiles where false",
}


def test_a_customer_sees_exactly_its_own_rows(styled, helper_style):
    x = a_busy_customer(styled)
    if helper_style == "uid_lookup":  # another customer's id in the claim changes nothing: only `sub` counts
        other = scalar(styled, "select min(id) from public.customers where id <> %s", (x,))
        claims = {**customer_token(styled, helper_style, x), "customer_id": other}
    else:  # a `sub` that is no customer's auth user changes nothing: only the claim counts
        claims = {"sub": "00000000-0000-0000-0000-000000000001", **customer_token(styled, helper_style, x)}
    for query, truth in OWN_ROWS.items():
        expected = sorted(column(styled, truth, {"x": x}))
        if "profiles" not in query:
            assert expected, f"customer {x} has no rows for {query}: pick another"
        assert as_caller(styled, claims, query) == expected, query


def test_anon_and_claimless_callers_see_only_products(styled):
    assert as_caller(styled, None, "select current_user") == ["anon"]
    for claims, role in ((None, "anon"), ({}, "authenticated"), ({"app_role": "customer"}, "authenticated")):
        for table in ("carts", "cart_items", "orders", "order_items", "order_events", "sessions", "customers", "profiles"):
            assert as_caller(styled, claims, f"select 1 from public.{table}", role=role) == [], (claims, table)
        assert len(as_caller(styled, claims, "select id from public.products", role=role)) == 50
    # Once the transaction is over the settings read as '': the helpers must give NULL.
    assert styled.execute("select auth_claim('customer_id'), auth_role(), auth_customer_id()").fetchone() == (
        None, None, None,
    )  # fmt: skip


def test_a_device_sees_its_sessions_only(styled):
    device = scalar(styled, "select device_id from public.sessions where device_id is not null order by id limit 1")
    expected = column(styled, "select id::text from public.sessions where device_id = %s order by 1", (device,))
    claims = {"app_role": "device", "device_id": device}
    assert len(expected) >= 1
    assert as_caller(styled, claims, "select id::text from public.sessions") == expected
    assert as_caller(styled, claims, "select id from public.carts") == []


def test_claims_do_not_leak_between_identities_in_one_transaction(styled, helper_style):
    x = a_busy_customer(styled)
    with styled.transaction(force_rollback=True):
        fixtures.set_claims(styled, customer_token(styled, helper_style, x))
        assert column(styled, "select id from public.carts")
        fixtures.set_claims(styled, {"app_role": "device", "device_id": "kiosk-0000"})
        assert column(styled, "select auth_customer_id()") == [None]
        assert column(styled, "select id from public.carts") == []


def test_a_customer_sees_its_profile_by_claim(styled):
    user_id = scalar(styled, "select user_id from public.profiles order by user_id limit 1")
    # A uuid.UUID claim value, as a caller holding psycopg's value would pass it.
    assert as_caller(styled, {"profile_id": user_id}, "select user_id from public.profiles") == [user_id]


def test_with_check_stops_writes_for_another_customer(styled, helper_style):
    x = a_busy_customer(styled)
    other = scalar(styled, "select min(id) from public.customers where id <> %s", (x,))
    claims = customer_token(styled, helper_style, x)
    with styled.transaction(force_rollback=True):
        fixtures.set_claims(styled, claims)
        cart = scalar(styled, "insert into public.carts (customer_id) values (%s) returning id", (x,))
        assert scalar(styled, "insert into public.orders (customer_id) values (%s) returning id", (x,))
        # Not read back: RETURNING would need the row to pass the SELECT policy as well.
        styled.execute("insert into public.cart_items (cart_id, product_id, quantity, unit_price) values (%s, 1, 1, 1)", (cart,))
    forbidden = [
        ("insert into public.carts (customer_id) values (%s)", (other,)),
        ("insert into public.orders (customer_id) values (%s)", (other,)),
        ("insert into public.sessions (customer_id) values (%s)", (other,)),
        ("update public.carts set customer_id = %s", (other,)),
    ]
    for statement, params in forbidden:
        with styled.transaction(force_rollback=True):
            fixtures.set_claims(styled, claims)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                with styled.transaction():
                    styled.execute(statement, params)


# --- uid_lookup: the caller's customer is found by its auth user ----------------------------

AUTH_LINK = """select a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                      (select array_agg(pg_get_constraintdef(k.oid) order by k.contype) from pg_constraint k
                       where k.conrelid = a.attrelid and k.conkey = array[a.attnum])
               from pg_attribute a
               where a.attrelid = 'public.customers'::regclass and a.attname = 'auth_user_id' and not a.attisdropped"""


def test_uid_lookup_adds_the_auth_link_and_changes_nothing_else(make_db):
    loaded = {}
    for name, style in (("claims", "claims_json"), ("uid", "uid_lookup"), ("uid_again", "uid_lookup")):
        c = psycopg.connect(make_db(), autocommit=True)
        loaded[name] = (c, fixtures.load(c, SMALL, helper_style=style))
    try:
        (plain, plain_counts), (uid, uid_counts), (again, _) = loaded["claims"], loaded["uid"], loaded["uid_again"]
        n = fixtures.customers_for(SMALL)
        assert uid_counts == {**plain_counts, "auth.users": plain_counts["auth.users"] + n}
        assert count(uid, "auth.users") == uid_counts["auth.users"]

        # The schema: a nullable, unique link to auth.users in this style only.
        assert uid.execute(AUTH_LINK).fetchall() == [
            ("auth_user_id", "uuid", False,
             ["FOREIGN KEY (auth_user_id) REFERENCES auth.users(id) ON DELETE SET NULL", "UNIQUE (auth_user_id)"]),
        ]
        assert plain.execute(AUTH_LINK).fetchall() == []

        # Every customer has an auth user of its own: no profile's, no phone (numbers stay with the profiles').
        assert uid.execute(
            """select count(*), count(c.auth_user_id), count(distinct c.auth_user_id), count(u.id),
                      count(p.user_id), count(u.phone),
                      count(*) filter (where u.email = 'customer-' || c.id || '@example.com')
               from public.customers c left join auth.users u on u.id = c.auth_user_id
               left join public.profiles p on p.user_id = c.auth_user_id""").fetchone() == (n, n, n, n, 0, 0, n)

        # Deterministic, and apart from the link the same data (and ground truth) as the other styles.
        assert fingerprints(again) == fingerprints(uid)
        link = "select md5(string_agg(id::text || ':' || auth_user_id::text, ',' order by id)) from public.customers"
        assert scalar(again, link) == scalar(uid, link)
        customers = ("select md5(string_agg((id, wa_id, display_name, created_at)::text, ',' order by id))"
                     " from public.customers")
        assert scalar(uid, customers) == scalar(plain, customers)
        prints = fingerprints(uid)
        assert {t: f for t, f in prints.items() if t != "public.customers"} == {
            t: f for t, f in fingerprints(plain).items() if t != "public.customers"}
        users = ("select md5(string_agg(u::text, '|' order by u.id)) from auth.users u"
                 " where u.id in (select user_id from public.profiles)")  # in the other styles: every one
        assert scalar(uid, users) == scalar(plain, users)
    finally:
        for c, _ in loaded.values():
            c.close()


def test_uid_lookup_schema_only_has_the_link(make_db):
    with psycopg.connect(make_db(), autocommit=True) as c:
        fixtures.schema_only(c, helper_style="uid_lookup")
        assert [r[0] for r in c.execute(AUTH_LINK)] == ["auth_user_id"]
        assert scalar(c, "select count(*) from auth.users") == 0


def test_uid_lookup_identifies_the_caller_by_sub_only(make_db):
    with psycopg.connect(make_db(), autocommit=True) as c:
        fixtures.load(c, SMALL, helper_style="uid_lookup")
        x = a_busy_customer(c)
        sub = str(scalar(c, "select auth_user_id from public.customers where id = %s", (x,)))
        profile_user = str(scalar(c, "select min(user_id::text) from public.profiles"))
        helper = "select auth_customer_id()"
        assert as_caller(c, {"sub": sub}, helper) == [x]
        # Through its own table's policy, which calls the helper: no recursion, one row.
        assert as_caller(c, {"sub": sub}, "select id from public.customers") == [x]
        # The customer_id claim is not read; an auth user that is no customer's is nobody.
        for claims in ({"customer_id": x}, {"sub": profile_user}, {"sub": "00000000-0000-0000-0000-000000000001"}):
            assert as_caller(c, claims, helper) == [None], claims
            assert as_caller(c, {"app_role": "customer", **claims}, "select id from public.carts") == [], claims
        # A customer of every identity case is found by its own auth user.
        for customer, user in c.execute("""select c.id, c.auth_user_id::text from public.customers c
                                           where c.id in (select min(customer_id) from fixture_truth.expected_mapping
                                                          group by case_name)""").fetchall():
            assert as_caller(c, {"sub": user}, helper) == [customer]
