"""Legacy rows old code writes during the migration that the canonical table refuses as align would create them.

The trigger used to leave such a row pending (the application's insert of the customer itself succeeded), and the
sync trigger then failed old code's next write of a dependent row for it: "could not create a profiles row", a
CHECK violation, or NOT NULL on the new column. For the application's writes the canonical row is now made without
the copied values the table refuses (a CHECK on the name, a unique rule another row holds) and the mapping's note says
so; a row with no usable match value under unmatched = "refuse" gets one too (the setting holds for the rows align
found). pgconverge's own steps stay strict: align refuses such rows in the data it found, and names them.
"""

from __future__ import annotations

import psycopg

from _support import cli, cli_json, schema_dump, write_config
from _zoo import build, load, set_token
from pgconverge.verify.tokens import act_as

SHAPES = """
alter table public.profiles add constraint profiles_name_not_bad check (display_name is distinct from 'BAD');
create unique index profiles_dup_name on public.profiles (display_name) where display_name like 'dup-%';
insert into public.profiles (whatsapp_e164, display_name) values ('+250780000991', 'dup-1');
"""


def _old_code(dsn: str, name: str, phone: str) -> tuple[int, int]:
    """As old code: a customer, then a cart for it (the sync trigger derives the cart's profile_id)."""
    with psycopg.connect(dsn, application_name="shop") as app:
        cid = app.execute("insert into public.customers (wa_id, display_name) values (%s, %s) returning id",
                          (phone, name)).fetchone()[0]
        app.commit()
        act_as(app, {"customer_id": cid, "app_role": "customer"})
        cart = app.execute("insert into public.carts (customer_id) values (%s) returning id", (cid,)).fetchone()[0]
        app.commit()
    return cid, cart


def test_old_codes_customers_the_canonical_table_refuses_as_copied_still_get_their_rows(conn, fixture_db):
    conn.execute(SHAPES)
    cli("run", "align", "--dsn", fixture_db)
    checked = _old_code(fixture_db, "BAD", "0780000981")  # the CHECK refuses the copied name
    unique = _old_code(fixture_db, "dup-1", "0780000982")  # another profile holds the copied name
    cli("run", "expand", "--dsn", fixture_db)
    after = _old_code(fixture_db, "BAD", "0780000983")  # after expand: profile_id is NOT NULL on carts
    for (cid, cart), why in ((checked, "profiles_name_not_bad"), (unique, "unique rule"), (after, "profiles_name_not_bad")):
        note, method, name, owner = conn.execute(
            "select m.note, m.method, p.display_name, c.profile_id = m.profile_id from "
            "pgconverge.legacy_customer_profile m join public.profiles p on p.user_id = m.profile_id "
            "join public.carts c on c.id = %s where m.customer_id = %s", (cart, cid)).fetchone()
        assert method == "created" and name is None and owner, (cid, method, name, owner)
        assert "created without its copied columns" in note and why in note, note
    assert conn.execute("select count(*) from pgconverge.pending_legacy_rows").fetchone()[0] == 0
    cli("verify", "--dsn", fixture_db)
    review = cli_json("status", "--dsn", fixture_db)["review"]
    assert sorted(int(r["legacy"]) for r in review) == sorted(c for c, _ in (checked, unique, after)), review
    out = " ".join(cli("status", "--dsn", fixture_db).split())
    assert "3 canonical row(s) made for old code's writes to review" in out, out


def test_pgconverges_own_match_stays_strict(conn, fixture_db):
    """The rows align finds are not made without their values: align refuses, naming the row, changing no data."""
    conn.execute(SHAPES)
    conn.execute("insert into public.customers (wa_id, display_name) values ('0780000984', 'BAD')")
    out = " ".join(cli("run", "align", "--dsn", fixture_db, expect=2).split())
    assert "profiles_name_not_bad" in out, out
    assert conn.execute("select count(*) from public.profiles where whatsapp_e164 = '+250780000984'").fetchone()[0] == 0


def test_a_row_old_code_writes_with_no_usable_value_under_refuse_is_not_left_failing_its_dependents(make_db, tmp_path):
    zoo = build(unmatched="refuse")
    dsn = make_db()
    load(dsn, zoo)
    args = ("--dsn", dsn, "--config", write_config(tmp_path, zoo.config))
    cli("run", "align", *args)
    cli("run", "expand", *args)
    fk, lmatch = zoo.dependents[0].fk, zoo.legacy_match_columns[0]
    with psycopg.connect(dsn, application_name="shop") as app:
        key = app.execute(f"insert into {zoo.legacy_table} ({lmatch}) values (null) returning id::text").fetchone()[0]
        app.commit()
        set_token(app, zoo, {zoo.legacy_claim: key})
        app.execute(f"insert into {zoo.dependents[0].table} ({fk}) values (%s)", (key,))
        app.commit()
    with psycopg.connect(dsn) as c:
        note = c.execute(f"select note from {zoo.mapping_table} where {zoo.mapping_legacy_column}::text = %s",
                         (key,)).fetchone()[0]
        assert "no usable" in note and "refuse" in note, note
    cli("verify", *args)


def test_new_code_writes_for_a_person_whose_customer_the_application_deleted(conn, fixture_db):
    """The mapping keeps a deleted customer's row; the sync trigger must not name it again as the legacy id of a row
    new code writes (the legacy foreign key refused the application's insert), nor may a rollback."""
    for phase in ("align", "expand", "switch"):
        cli("run", phase, "--dsn", fixture_db)
    alone, alone_profile = conn.execute(
        "select m.customer_id, m.profile_id::text from pgconverge.legacy_customer_profile m where (select count(*) "
        "from pgconverge.legacy_customer_profile x where x.profile_id = m.profile_id) = 1 order by 1 limit 1").fetchone()
    low, high, merged = conn.execute(
        "select min(customer_id), max(customer_id), profile_id::text from pgconverge.legacy_customer_profile "
        "group by profile_id having count(*) = 2 order by 1 limit 1").fetchone()
    conn.execute("delete from public.customers where id = any(%s)", ([alone, low],))
    with psycopg.connect(fixture_db, application_name="shop") as app:
        for profile, legacy in ((alone_profile, None), (merged, high)):
            act_as(app, {"profile_id": profile, "app_role": "customer"})
            row = app.execute("insert into public.carts (profile_id) values (%s) returning customer_id",
                              (profile,)).fetchone()
            assert row == (legacy,), (profile, row)
            app.execute("set local role service_role")
            row = app.execute("insert into public.orders (profile_id) values (%s) returning customer_id",
                              (profile,)).fetchone()
            assert row == (legacy,), (profile, row)
            app.commit()
    cli("rollback", "align", "--dsn", fixture_db, "--yes")
    assert conn.execute("select count(*) from public.carts where customer_id is null").fetchone()[0] == 0


def test_a_profile_the_application_deletes_during_the_migration(conn, fixture_db):
    """The mapping pointed at it for good: expand's backfill then failed the new foreign key half way, and after
    expand every write old code made for that customer failed it. Such a legacy row is decided again (as a row
    written now would be): by expand's map_pending before the backfill, and by the sync trigger after expand."""
    cli("run", "align", "--dsn", fixture_db)
    people = conn.execute(
        "select m.customer_id, m.profile_id from pgconverge.legacy_customer_profile m where (select count(*) from "
        "pgconverge.legacy_customer_profile x where x.profile_id = m.profile_id) = 1 and exists (select 1 from "
        "public.carts c where c.customer_id = m.customer_id) order by 1 limit 2").fetchall()
    (before, gone_before), (after, gone_after) = people
    conn.execute("delete from public.profiles where user_id = %s", (gone_before,))
    cli("run", "expand", "--dsn", fixture_db)
    conn.execute("delete from public.profiles where user_id = %s", (gone_after,))
    with psycopg.connect(fixture_db, application_name="shop") as app:
        act_as(app, {"customer_id": after, "app_role": "customer"})
        app.execute("insert into public.carts (customer_id) values (%s)", (after,))
        app.commit()
    for cid, gone in people:
        now = conn.execute("select profile_id from pgconverge.legacy_customer_profile where customer_id = %s",
                           (cid,)).fetchone()[0]
        assert now is not None and now != gone
        assert conn.execute("select count(*) from public.carts where customer_id = %s and profile_id is distinct "
                            "from %s", (cid, now)).fetchone()[0] == 0
    cli("verify", "--dsn", fixture_db)
    out = " ".join(cli("plan", "--dsn", fixture_db).split())
    assert ("listed deletes of public.profiles rows: from expand on, deleting a public.profiles row reaches the rows "
            "of its person through the new foreign keys") in out, out
    assert "public.carts (CASCADE)" in out and "public.orders (SET NULL)" in out


def test_expand_refuses_before_any_change_while_a_legacy_row_has_no_canonical_row(conn, fixture_db):
    """A legacy row written where the align trigger did not fire is mapped by expand's first step; one that still
    cannot be placed stops expand before its first change, named with the reason, and expand goes on once fixed."""
    cli("run", "align", "--dsn", fixture_db)
    conn.execute("set session_replication_role = replica")  # a restore or a replica's apply: no triggers fire
    unseen = conn.execute("insert into public.customers (wa_id) values ('0780000771') returning id").fetchone()[0]
    conn.execute("reset session_replication_role")
    # refuses the number, and a row without one too: no canonical row it can have at all
    conn.execute("alter table public.profiles add constraint no_such_number check (whatsapp_e164 <> '+250780000772' "
                 "and whatsapp_e164 is not null) not valid")
    with psycopg.connect(fixture_db, application_name="shop") as app:
        stuck = app.execute("insert into public.customers (wa_id) values ('0780000772') returning id").fetchone()[0]
    before = schema_dump(conn)
    out = " ".join(cli("run", "expand", "--dsn", fixture_db, expect=2).split())
    assert f"{stuck} has no mapping: new row for relation \"profiles\" violates check constraint" in out, out
    assert str(unseen) not in out.split("has no mapping")[0][-12:]
    assert schema_dump(conn) == before  # nothing changed
    assert conn.execute("select count(*) from pgconverge.legacy_customer_profile where customer_id = %s",
                        (unseen,)).fetchone()[0] == 1
    conn.execute("alter table public.profiles drop constraint no_such_number")
    cli("run", "expand", "--dsn", fixture_db)
    cli("verify", "--dsn", fixture_db)


def test_align_names_the_unique_rule_a_created_row_runs_into(conn, fixture_db):
    """A row align must create whose copied value another canonical row holds under a unique rule: refused with
    what it would have been created with and the way out, not a bare "could not create"."""
    conn.execute(SHAPES)
    conn.execute("insert into public.customers (wa_id, display_name) values ('0780000985', 'dup-1')")
    out = " ".join(cli("run", "align", "--dsn", fixture_db, expect=2).split())
    assert ("another public.profiles row holds one of the values it would be created with (whatsapp_e164, "
            "display_name) under a unique rule") in out, out


def test_deleted_rows_on_other_key_types(make_db, tmp_path):
    """The same for a text legacy key and a bigint canonical key (the zoo): old code writes for a customer whose
    profile the application deleted after expand; new code writes for a person whose customer it deleted after the
    switch. Both writes succeed, each linked to its person."""
    zoo = build(legacy_key="text", canonical_key="bigint")
    dsn = make_db()
    load(dsn, zoo)
    args = ("--dsn", dsn, "--config", write_config(tmp_path, zoo.config))
    orders, fk, new, m = zoo.dependents[0].table, zoo.dependents[0].fk, zoo.new_column, zoo.mapping_table
    lm, cm = zoo.mapping_legacy_column, zoo.new_column
    for phase in ("align", "expand"):
        cli("run", phase, *args)
    with psycopg.connect(dsn, autocommit=True) as c:
        (l1, p1), (l2, p2) = c.execute(
            f"select {lm}::text, {cm}::text from {m} x where (select count(*) from {m} y where y.{cm} = x.{cm}) = 1 "
            f"and exists (select 1 from {orders} o where o.{fk} = x.{lm}) order by 1 limit 2").fetchall()
        c.execute(f"delete from {zoo.canonical_table} where id = %s::bigint", (p1,))
    with psycopg.connect(dsn, application_name="shop") as app:
        set_token(app, zoo, {zoo.legacy_claim: l1})
        got = app.execute(f"insert into {orders} ({fk}) values (%s) returning {new}::text", (l1,)).fetchone()[0]
        app.commit()
    with psycopg.connect(dsn, autocommit=True) as c:
        assert got not in (None, p1) and c.execute(f"select {cm}::text from {m} where {lm} = %s", (l1,)
                                                   ).fetchone()[0] == got
    cli("run", "switch", *args)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"delete from {zoo.legacy_table} where id = %s", (l2,))
    with psycopg.connect(dsn, application_name="shop") as app:
        set_token(app, zoo, {zoo.canonical_claim: p2})
        row = app.execute(f"insert into {orders} ({new}) values (%s::bigint) returning {fk}, {new}::text",
                          (p2,)).fetchone()
        app.commit()
    assert row == (None, p2), row
    cli("verify", *args)
