"""The linkage snapshot align takes (every dependent row's owner through the mapping) holds exactly the rows the
per-row definition gives, one per (tbl, pk), under its primary key; its key is built once the rows are in."""

from __future__ import annotations

import psycopg
from psycopg import sql

from _support import cli

SMALL = 0.1
MAP = "pgconverge.legacy_customer_profile"


def _owner(column: str) -> str:
    """The owner of a legacy id as the definition reads it: one mapping lookup per row."""
    return f"(select m.profile_id::text from {MAP} m where m.customer_id = d.{column})"


# Every row of every dependent, named and owned as the snapshot documents it, duplicates included: a badge row's
# key holds the legacy column, read as its owner, so two customers merged onto one profile name one row.
DEFINITION = " union all ".join(
    [f"select 'public.{t}', d.id::text, {_owner('customer_id')} from public.{t} d"
     for t in ("carts", "orders", "sessions")]
    + [f"select 'public.customer_badges', row({_owner('customer_id')}, d.badge)::text, {_owner('customer_id')} "
       "from public.customer_badges d"])


def test_linkage_before_is_the_definition_keyed_once_per_row(make_db, template_factory):
    dsn = make_db(template_factory(SMALL))
    with psycopg.connect(dsn, autocommit=True) as c:
        # A join table keyed by the legacy column: every customer gets the same badge, so customers merged onto
        # one profile give rows that the snapshot names alike.
        c.execute("create table public.customer_badges (customer_id bigint not null references public.customers "
                  "(id) on delete cascade, badge text not null, primary key (customer_id, badge))")
        c.execute("insert into public.customer_badges select id, 'gold' from public.customers")
    cli("run", "align", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute("select tbl, pk, owner from pgconverge.linkage_before").fetchall()
        want = c.execute(f"select * from ({DEFINITION}) x").fetchall()
        assert len(want) > len(set(want)), "no two rows share a name: the case is not exercised"
        assert len(rows) == len({(t, k) for t, k, _ in rows})
        assert sorted(rows) == sorted(set(want))
        assert {t for t, _, _ in rows} == {"public.carts", "public.orders", "public.sessions",
                                           "public.customer_badges"}
        assert c.execute("select conname, pg_get_constraintdef(oid) from pg_constraint where conrelid = "
                         "'pgconverge.linkage_before'::regclass").fetchall() == [
            ("linkage_before_pkey", "PRIMARY KEY (tbl, pk)")]
        assert c.execute("select array_agg(attname::text || ':' || attnotnull order by attnum) from pg_attribute "
                         "where attrelid = 'pgconverge.linkage_before'::regclass and attnum > 0").fetchone()[0] == [
            "tbl:true", "pk:true", "owner:false"]

        # Filling a table that already has its key (a snapshot taken again over a preflight copy's sample runs
        # the fill statements on the table as it was copied): nothing is added twice, the key stays the one key.
        from pgconverge.catalog import baseline
        from pgconverge.config import Spec
        from pgconverge.planning import contract

        spec = Spec()
        op = contract.linkage_snapshot(spec, baseline.load(c, spec).for_phase("align"), "before", legacy=True)
        with c.transaction():
            for s in op.statements():
                c.execute(s)
        assert sorted(c.execute("select tbl, pk, owner from pgconverge.linkage_before").fetchall()) == sorted(rows)
        assert c.execute("select count(*) from pg_constraint where conrelid = 'pgconverge.linkage_before'::regclass"
                         ).fetchone()[0] == 1


def test_key_built_after_the_fill_keeps_the_first_row_of_each_name(make_db):
    """Rows naming one key twice are cut to the first stored, as ON CONFLICT DO NOTHING kept the first inserted;
    a table without such rows gets its key from one build."""
    from pgconverge.config import QualifiedName
    from pgconverge.operations.create_table import CreateTable

    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create schema scratch")
        for name, values in (("dups", "('a', '1', 'x'), ('a', '1', 'y'), ('a', '2', 'z'), ('a', '1', 'w')"),
                             ("clean", "('a', '1', 'x'), ('b', '1', 'y')")):
            t = QualifiedName("scratch", name)
            op = CreateTable(t, sql.SQL("(tbl text not null, pk text not null, owner text)"),
                             extra=(sql.SQL("insert into {} values " + values + " on conflict do nothing").format(
                                 sql.Identifier("scratch", name)),), key_after=("tbl", "pk"))
            with c.transaction():
                for s in op.statements():
                    c.execute(s)
            got = c.execute(f"select tbl, pk, owner from scratch.{name} order by tbl, pk").fetchall()
            assert got == ([("a", "1", "x"), ("a", "2", "z")] if name == "dups"
                           else [("a", "1", "x"), ("b", "1", "y")])
            assert c.execute("select pg_get_constraintdef(oid) from pg_constraint where conrelid = "
                             "%s::regclass", (f"scratch.{name}",)).fetchall() == [("PRIMARY KEY (tbl, pk)",)]
