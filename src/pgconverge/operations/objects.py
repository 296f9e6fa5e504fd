"""Catalog objects as queries of (classid, objid, objsubid) rows, the keys of pg_depend: what an operation drops or
redefines (Operation.drops, Operation.redefines). OBJSUBID is a column's number, NULL for the whole object. A missing
object yields no row.

The queries run inside the check of execution/prechecks.py, whose CTE `moved (name, oid)` holds the tables earlier
steps put back under a name (Operation.moves): a table is found by the name it will have when its step runs."""

from __future__ import annotations

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import qn, text


def _of(catalog: str, objid: sql.Composable, subid: sql.Composable = sql.SQL("null::int"),
        source: sql.Composable = sql.SQL("")) -> sql.Composable:
    return sql.SQL("select {}::regclass::oid, {}::oid, {}{}").format(
        sql.Literal(f"pg_catalog.{catalog}"), objid, subid, source)


def _rel(name: QualifiedName) -> sql.Composable:
    n = sql.Literal(text(qn(name)))
    return sql.SQL("coalesce(pg_catalog.to_regclass({})::oid, (select m.oid from moved m where m.name = {}))").format(
        n, n)


def moved(name: QualifiedName, now: QualifiedName) -> sql.Composable:
    """A row of `moved`: the table now called NOW, under NAME."""
    return sql.SQL("select {}::text, pg_catalog.to_regclass({})::oid").format(sql.Literal(text(qn(name))),
                                                                              sql.Literal(text(qn(now))))


def relation(name: QualifiedName) -> sql.Composable:
    """A table, index, sequence or view, with its columns."""
    r = _rel(name)
    return _of("pg_class", r, source=sql.SQL(" where {} is not null").format(r))


def column(table: QualifiedName, name: str) -> sql.Composable:
    return _of("pg_class", sql.SQL("a.attrelid"), sql.SQL("a.attnum::int"), sql.SQL(
        " from pg_catalog.pg_attribute a where a.attrelid = {} and a.attname = {} and not a.attisdropped").format(
        _rel(table), sql.Literal(name)))


def function(name: QualifiedName, arg_types: str) -> sql.Composable:
    """A function, found only when each of its argument types exists: before Postgres 16, to_regprocedure raises on
    a type that does not (a legacy table's row type, after contract archived the table under another name)."""
    f = sql.SQL("pg_catalog.to_regprocedure({})").format(sql.Literal(f"{text(qn(name))}({arg_types})"))
    known = [sql.SQL("pg_catalog.to_regtype({}) is not null").format(sql.Literal(t)) for t in _split(arg_types)]
    if known:
        f = sql.SQL("(case when {} then {} end)").format(sql.SQL(" and ").join(known), f)
    return _of("pg_proc", f, source=sql.SQL(" where {} is not null").format(f))


def _split(arg_types: str) -> list[str]:
    """The argument types of a list ("text, numeric(10,2)"), split at the commas outside parentheses."""
    out, depth, cur = [], 0, ""
    for ch in arg_types:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [t for t in (*out, cur.strip()) if t]


def _table_member(catalog: str, rel: str, name_col: str, table: QualifiedName, name: str) -> sql.Composable:
    return _of(catalog, sql.SQL("o.oid"), source=sql.SQL(" from pg_catalog.{} o where o.{} = {} and o.{} = {}").format(
        sql.Identifier(catalog), sql.Identifier(rel), _rel(table), sql.Identifier(name_col), sql.Literal(name)))


def trigger(table: QualifiedName, name: str) -> sql.Composable:
    return _table_member("pg_trigger", "tgrelid", "tgname", table, name)


def constraint(table: QualifiedName, name: str) -> sql.Composable:
    return _table_member("pg_constraint", "conrelid", "conname", table, name)


def policy(table: QualifiedName, name: str) -> sql.Composable:
    return _table_member("pg_policy", "polrelid", "polname", table, name)


def defaults(table: QualifiedName, name: str) -> sql.Composable:
    """The default of TABLE's column NAME, and its copies on TABLE's partitions (ALTER … DROP DEFAULT on the
    partitioned table drops them all)."""
    r = _rel(table)
    return sql.SQL("select 'pg_catalog.pg_attrdef'::regclass::oid, d.oid, null::int from pg_catalog.pg_attrdef d "
                   "join pg_catalog.pg_attribute a on a.attrelid = d.adrelid and a.attnum = d.adnum "
                   "where a.attname = {n} and d.adrelid in (select t.relid from pg_catalog.pg_partition_tree({r}) t "
                   "where {r} is not null)").format(n=sql.Literal(name), r=r)

