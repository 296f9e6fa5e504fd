"""The installed functions' lookups of a person's legacy ids stay lookups in a session that plans them generically.

A PL/pgSQL function's statements are prepared once per session, and after a few calls Postgres may keep one generic
plan for them. `where m.profile_id = $1 order by m.customer_id limit 1` has a generic plan that walks the mapping's
primary key in order and filters on the new id: cheap where the statistics say many rows share an id, a read of the
whole mapping per call where each id has one row. Application sessions open through the migration held that plan,
and every new-code write read the mapping in full (the bench's clients went from 19 ms to 165 ms at p99 from expand
on, while fresh sessions stayed fast). The lookups now find the rows through the mapping's index on the new id
before they order them, and so does the decision for a legacy row old code writes, which looks for the canonical
rows sharing its match key.

Here the mapping's new id has no statistics, under which the generic plan of the old form is the ordered walk, the
session is told to use generic plans, and the test counts the mapping rows each write reads
in its own transaction (pg_stat_xact_user_tables).
"""

from __future__ import annotations

import psycopg
import pytest

from _support import cli

MAPPING = "pgconverge.legacy_customer_profile"


@pytest.fixture
def expanded(fixture_db):
    cli("run", "align", "--dsn", fixture_db)
    cli("run", "expand", "--dsn", fixture_db)
    with psycopg.connect(fixture_db, autocommit=True) as c:
        # no statistics on the new id: the planner's default guess is that 0.5% of the mapping shares any one id
        c.execute(f"alter table {MAPPING} alter column profile_id set statistics 0")
        c.execute(f"delete from pg_catalog.pg_statistic where starelid = '{MAPPING}'::regclass")
        c.execute(f"analyze {MAPPING}")
        size = c.execute(f"select count(*) from {MAPPING}").fetchone()[0]
    assert size >= 500, size
    return fixture_db, size


def _mapping_rows_read(app: psycopg.Connection) -> int:
    """Mapping rows this transaction has read so far, by index or by scan."""
    return app.execute("select coalesce(idx_tup_fetch, 0) + seq_tup_read from pg_catalog.pg_stat_xact_user_tables "
                       "where relid = %s::regclass", (MAPPING,)).fetchone()[0]


def _reads(app: psycopg.Connection, statement: str, params: tuple) -> int:
    with app.transaction():
        before = _mapping_rows_read(app)
        app.execute(statement, params)
        return _mapping_rows_read(app) - before


def test_new_codes_writes_read_a_persons_mappings_not_the_whole_mapping(expanded):
    dsn, size = expanded
    with psycopg.connect(dsn, autocommit=True) as app:
        app.execute("set plan_cache_mode = force_generic_plan")
        people = app.execute(f"select profile_id from {MAPPING} order by customer_id desc limit 8").fetchall()
        # a person of its own, whom no legacy row maps to yet: a rollback's refill makes them one
        newcomer = app.execute("insert into public.profiles (whatsapp_e164, display_name) "
                               "values ('+14155550199', 'New') returning user_id").fetchone()[0]
        reads = {}
        for i, (pid,) in enumerate(people):  # the plan is generic from the first call; a few calls to be sure
            reads[f"session insert {i}"] = _reads(app, "insert into public.sessions (profile_id) values (%s)", (pid,))
        sid = app.execute("select id from public.sessions where profile_id = %s limit 1", (people[0][0],)).fetchone()[0]
        for i, (pid,) in enumerate(people[1:4]):  # new code moves a row to another person
            reads[f"session moved {i}"] = _reads(app, "update public.sessions set profile_id = %s where id = %s",
                                                 (pid, sid))
        made = []
        for i in range(3):  # made once, then found
            with app.transaction():
                before = _mapping_rows_read(app)
                made.append(app.execute("select pgconverge.legacy_for_canonical(%s)", (newcomer,)).fetchone()[0])
                reads[f"newcomer's legacy row {i}"] = _mapping_rows_read(app) - before
    assert made[0] is not None and made == [made[0]] * 3, made
    heavy = {k: v for k, v in reads.items() if v > 10}
    assert not heavy, f"mapping rows read per write (the mapping holds {size}): {heavy}"


def test_align_leaves_the_mapping_with_statistics(fixture_db):
    """Planned without statistics, the lookups above are the planner's guesses (as is contract's refill): align
    analyzes the mapping it filled, not waiting for autovacuum."""
    cli("run", "align", "--dsn", fixture_db)
    with psycopg.connect(fixture_db, autocommit=True) as c:
        analyzed = c.execute("select last_analyze is not null or last_autoanalyze is not null "
                             "from pg_catalog.pg_stat_user_tables where relid = %s::regclass", (MAPPING,)).fetchone()[0]
        columns = {r[0] for r in c.execute("select attname from pg_catalog.pg_stats where schemaname = 'pgconverge' "
                                           "and tablename = 'legacy_customer_profile'")}
    assert analyzed and {"customer_id", "profile_id"} <= columns, (analyzed, columns)


SHAPE = """
create table customers (id serial primary key, first_name text, birth text);
create table people (id serial primary key, first_name text, birth text);
create table notes (id serial primary key, customer_id int references customers(id), body text);
insert into people (first_name, birth) select 'name' || g, '19' || (10 + g % 80) from generate_series(1, 2000) g;
insert into customers (first_name, birth) select 'name' || g, '19' || (10 + g % 80) from generate_series(1, 1990, 3) g;
insert into notes (customer_id, body) select id, 'note' from customers;
"""

SHAPE_CONFIG = """
[legacy]
table = "public.customers"
key = "id"
match_column = ["first_name", "birth"]
match = "exact"
helper = ""

[canonical]
table = "public.people"
key = "id"
match_column = ["first_name", "birth"]
copy_columns = []

[migration]
new_column = "person_id"
"""


def test_a_new_legacy_rows_decision_reads_its_key_not_the_canonical_table(make_db, tmp_path):
    """Matched on two columns with no created_at, the candidates are ordered by the canonical key alone, which its
    primary key index provides: a plan could walk it, computing the match key of every row, to find the one row
    the match index holds. Here with the table's statistics but none on the match key (an expression index gets
    them only from an ANALYZE after it is built), under generic plans."""
    from _support import schema_db

    dsn, args = schema_db(make_db, tmp_path, SHAPE, SHAPE_CONFIG)
    cli("run", "align", *args)
    with psycopg.connect(dsn, autocommit=True) as app:
        app.execute("analyze people")  # the table's statistics, as autovacuum leaves them, but none of the key's
        app.execute("delete from pg_catalog.pg_statistic where starelid = (select indexrelid from pg_catalog.pg_index "
                    "where indrelid = 'public.people'::regclass and indexprs is not null)")
        app.execute("set plan_cache_mode = force_generic_plan")
        reads = []
        for i, name in enumerate(("name5", "name8", "somebody new", "name11")):  # matched, then created
            with app.transaction():
                before = app.execute("select coalesce(idx_tup_fetch, 0) + seq_tup_read from "
                                     "pg_catalog.pg_stat_xact_user_tables where relid = 'public.people'::regclass"
                                     ).fetchone()[0]
                app.execute("insert into customers (first_name, birth) values (%s, %s)", (name, f"19{10 + i}"))
                app.execute("set constraints all immediate")  # align's trigger decides at commit
                reads.append(app.execute("select coalesce(idx_tup_fetch, 0) + seq_tup_read - %s from "
                                         "pg_catalog.pg_stat_xact_user_tables where relid = 'public.people'::regclass",
                                         (before,)).fetchone()[0])
        mapped = app.execute("select count(*) from pgconverge.legacy_customer_people").fetchone()[0]
        customers = app.execute("select count(*) from customers").fetchone()[0]
    assert mapped == customers, (mapped, customers)
    assert max(reads) <= 10, f"people rows read per legacy insert (the table holds 2000+): {reads}"
