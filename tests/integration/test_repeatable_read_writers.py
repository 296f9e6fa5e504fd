"""Old code writing in REPEATABLE READ (or SERIALIZABLE) transactions while pgconverge keeps the mapping.

Such a transaction reads from the snapshot it took at its first statement: pgconverge's trigger, deciding a legacy
row it inserts, cannot see a canonical row another transaction created for the same person after that. Without a
unique constraint on the canonical match column, it used to create a second canonical row (the person split in
two). Now the decision notices the other creation, the legacy row waits in the pending table (the application's
insert still succeeds), and the next step of pgconverge maps it onto the one canonical row.
"""

from __future__ import annotations

import psycopg
import pytest

from pgconverge.catalog.introspect import load_catalog
from pgconverge.config import Spec
from pgconverge.connection import Target
from pgconverge.execution.runner import Runner
from pgconverge.planning import plan as planner

KEY = "pgconverge.normalize_phone"
MAPPING = "pgconverge.legacy_customer_profile"


def _run(dsn: str, conn, *phases: str) -> dict:
    spec = Spec()
    out = {}
    with Runner(Target(dsn, "--dsn"), spec, planner.build(spec, load_catalog(conn, spec))) as r:
        for phase in phases:
            out.update({x.step: x for x in r.run_phase(phase)})
    return out


def _same_person_twice(fixture_db: str, level: str, number: str, other_spelling: str) -> tuple[int, int]:
    """An old-code transaction at LEVEL takes its snapshot; another creates customer A (number NUMBER, a person
    nobody had), which the trigger maps onto a new canonical row, and commits; then the first inserts customer B,
    the same number spelled OTHER_SPELLING, and commits. Returns (A, B)."""
    with psycopg.connect(fixture_db) as old, psycopg.connect(fixture_db, autocommit=True) as other:
        old.execute(f"set transaction isolation level {level}")
        old.execute("select count(*) from public.products")  # the snapshot is taken here
        a = other.execute("insert into public.customers (wa_id) values (%s) returning id", (number,)).fetchone()[0]
        b = old.execute("insert into public.customers (wa_id) values (%s) returning id",
                        (other_spelling,)).fetchone()[0]
        old.commit()
    return a, b


@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
@pytest.mark.parametrize("unique", [False, True], ids=["no-unique-constraint", "unique-constraint"])
def test_a_person_created_after_the_writers_snapshot_stays_one_person(conn, fixture_db, level, unique):
    if not unique:  # nothing but pgconverge's decision keeps two canonical rows for one person apart
        conn.execute("alter table public.profiles drop constraint profiles_whatsapp_e164_key")
    _run(fixture_db, conn, "align")
    a, b = _same_person_twice(fixture_db, level, "+250 788 900 111", "0788900111")
    key = conn.execute(f"select {KEY}('0788900111')").fetchone()[0]
    assert conn.execute(f"select count(*) from public.profiles where {KEY}(whatsapp_e164) = %s",
                        (key,)).fetchone()[0] == 1
    # B could not be decided in its own transaction: it waits, named, in the pending table.
    assert conn.execute(f"select count(*) from {MAPPING} where customer_id = %s", (b,)).fetchone()[0] == 0
    assert conn.execute("select sqlstate from pgconverge.pending_legacy_rows where legacy_id = %s",
                        (str(b),)).fetchone()[0] == "40001"
    # The next phase maps it first thing, onto A's canonical row, and then fills its dependents as any other.
    with psycopg.connect(fixture_db, autocommit=True) as old:
        cart = old.execute("insert into public.carts (customer_id) values (%s) returning id", (b,)).fetchone()[0]
    results = _run(fixture_db, conn, "expand")
    assert all(r.status == "done" for r in results.values())
    ma, mb = (conn.execute(f"select profile_id from {MAPPING} where customer_id = %s", (x,)).fetchone()[0]
              for x in (a, b))
    assert ma == mb
    assert conn.execute("select profile_id from public.carts where id = %s", (cart,)).fetchone()[0] == ma
    assert conn.execute("select count(*) from pgconverge.pending_legacy_rows").fetchone()[0] == 0


def test_during_align_what_waited_is_mapped_before_the_coverage_gate(conn, fixture_db):
    """A legacy row left pending during align (its key decided after the writer's snapshot, below the match's
    cursor) is mapped before the coverage gate looks, so align completes instead of stopping at the gate. One left
    pending after that, in the moment before the gate, stops the gate, named, and the next run maps it."""
    from pgconverge.errors import PgConvergeError
    from pgconverge.execution import killpoint

    conn.execute("alter table public.profiles drop constraint profiles_whatsapp_e164_key")
    pairs = []
    for at, number in (("align.map_pending", "222"), ("align.coverage_gate", "444")):
        killpoint.fail_at(f"{at}:before")
        try:
            with pytest.raises(PgConvergeError):
                _run(fixture_db, conn, "align")
        finally:
            killpoint.fail_at(None)
        a, b = _same_person_twice(fixture_db, "repeatable read", f"+250 788 900 {number}", f"0788900{number}")
        assert conn.execute(f"select count(*) from {MAPPING} where customer_id = %s", (b,)).fetchone()[0] == 0
        pairs.append((a, b))
    with pytest.raises(PgConvergeError, match=f"{pairs[1][1]} has no mapping: written by a transaction whose "
                                              "snapshot is older"):
        _run(fixture_db, conn, "align")
    results = _run(fixture_db, conn, "align")
    assert results["align.coverage_gate"].status == "done"
    for a, b in pairs:
        ma, mb = (conn.execute(f"select profile_id from {MAPPING} where customer_id = %s", (x,)).fetchone()[0]
                  for x in (a, b))
        assert ma == mb


def test_a_dependent_written_in_the_same_transaction_is_refused_the_way_repeatable_read_refuses(conn, fixture_db):
    """After expand, the same transaction writing a cart for B needs B's canonical id at once, and cannot see the
    one that exists: it gets the serialization failure its isolation level promises (retrying succeeds, and
    finds the one canonical row), never a second canonical row."""
    conn.execute("alter table public.profiles drop constraint profiles_whatsapp_e164_key")
    _run(fixture_db, conn, "align", "expand")
    with psycopg.connect(fixture_db) as old, psycopg.connect(fixture_db, autocommit=True) as other:
        old.execute("set transaction isolation level repeatable read")
        old.execute("select count(*) from public.products")
        a = other.execute("insert into public.customers (wa_id) values ('+250 788 900 333') returning id").fetchone()[0]
        b = old.execute("insert into public.customers (wa_id) values ('0788900333') returning id").fetchone()[0]
        with pytest.raises(psycopg.errors.SerializationFailure):
            old.execute("insert into public.carts (customer_id) values (%s)", (b,))
        old.rollback()
        old.execute("set transaction isolation level repeatable read")  # the application's retry
        b = old.execute("insert into public.customers (wa_id) values ('0788900333') returning id").fetchone()[0]
        cart = old.execute("insert into public.carts (customer_id) values (%s) returning id", (b,)).fetchone()[0]
        old.commit()
    ma = conn.execute(f"select profile_id from {MAPPING} where customer_id = %s", (a,)).fetchone()[0]
    assert conn.execute(f"select profile_id from {MAPPING} where customer_id = %s", (b,)).fetchone()[0] == ma
    assert conn.execute("select profile_id from public.carts where id = %s", (cart,)).fetchone()[0] == ma
    key = conn.execute(f"select {KEY}('0788900333')").fetchone()[0]
    assert conn.execute(f"select count(*) from public.profiles where {KEY}(whatsapp_e164) = %s",
                        (key,)).fetchone()[0] == 1


@pytest.mark.parametrize("legacy_key, canonical_key", [("uuid", "text"), ("text", "bigint")])
def test_the_same_on_zoo_schemas_matched_by_email(make_db, tmp_path, legacy_key, canonical_key):
    """Other key types and e-mail matching (no unique constraint on the canonical e-mail): the same person, written
    by a repeatable-read transaction after another created it, stays one canonical row, mapped at expand."""
    from _support import cli, write_config
    from _zoo import build, load

    zoo = build(legacy_key=legacy_key, canonical_key=canonical_key, match="email")
    dsn = make_db()
    load(dsn, zoo)
    args = ("--dsn", dsn, "--config", write_config(tmp_path, zoo.config))
    cli("run", "align", *args)
    legacy, column = zoo.legacy_table, zoo.legacy_match_columns[0]
    with psycopg.connect(dsn) as old, psycopg.connect(dsn, autocommit=True) as other:
        old.execute("set transaction isolation level repeatable read")
        old.execute(f"select count(*) from {legacy}")
        a = other.execute(f"insert into {legacy} ({column}) values ('rr.person@zoo.org') returning id::text"
                          ).fetchone()[0]
        b = old.execute(f"insert into {legacy} ({column}) values (' RR.Person@Zoo.org') returning id::text"
                        ).fetchone()[0]
        old.commit()
    cli("run", "expand", *args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        mapped = dict(conn.execute(
            f"select {zoo.mapping_legacy_column}::text, {zoo.new_column}::text from {zoo.mapping_table} "
            f"where {zoo.mapping_legacy_column}::text = any(%s)", ([a, b],)).fetchall())
        assert mapped.keys() == {a, b} and mapped[a] == mapped[b], mapped
        assert conn.execute(f"select count(*) from {zoo.canonical_table} where lower(trim({column})) = "
                            "'rr.person@zoo.org'").fetchone()[0] == 1
