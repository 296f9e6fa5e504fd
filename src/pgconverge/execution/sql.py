"""SQL composition helpers: identifiers always go through psycopg.sql."""

from __future__ import annotations

import hashlib

from psycopg import sql

from pgconverge.config import QualifiedName


def qn(name: QualifiedName) -> sql.Identifier:
    """Quote a schema-qualified name."""
    return sql.Identifier(name.schema, name.name)


def bounded(name: str) -> str:
    """NAME as a Postgres identifier: cut to 63 bytes with a hash of the whole, so two long names cut alike stay two
    (and a name that grew past 63 bytes never cuts back to the one it grew from)."""
    if len(name.encode()) <= 63:
        return name
    return name.encode()[:54].decode(errors="ignore") + "_" + hashlib.md5(name.encode()).hexdigest()[:8]


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def archive_access(schema: str) -> sql.Composable:
    """One row about SCHEMA (migration.archive_schema) as the connected role sees it: present (it exists), owner,
    allowed (the role may create tables in it; where it does not exist, may create it: CREATE on the database), who
    (the role) and db (the database). Contract's archive gate reads it, and its emitted gate file too."""
    return sql.SQL(
        "select n.oid is not null as present, pg_catalog.pg_get_userbyid(n.nspowner) as owner, case when n.oid is null "
        "then pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE') "
        "else pg_catalog.has_schema_privilege(n.oid, 'CREATE') end as allowed, current_user as who, "
        "pg_catalog.current_database() as db "
        "from (select 1) x left join pg_catalog.pg_namespace n on n.nspname = {}").format(sql.Literal(schema))


def text(stmt: sql.Composable) -> str:
    """Render a statement without a connection (for plans, the ledger and emitted files)."""
    return stmt.as_string(None)


def policy_clauses(using: str | None, with_check: str | None) -> sql.Composable:
    """USING (…) and WITH CHECK (…) of a policy, from expression text (pg_get_expr output or a deparse),
    spliced verbatim; an absent clause is left out."""
    out = sql.SQL("")
    if using is not None:
        out += sql.SQL(" USING (") + sql.SQL(using) + sql.SQL(")")
    if with_check is not None:
        out += sql.SQL(" WITH CHECK (") + sql.SQL(with_check) + sql.SQL(")")
    return out


def join(parts, sep: str = ", ") -> sql.Composed:
    return sql.SQL(sep).join(parts)


def body(stmt: sql.Composable) -> sql.SQL:
    """A function body built with identifiers, dollar-quoted as CREATE FUNCTION takes it."""
    code = text(stmt)
    tag = "$pgc$"
    n = 0
    while tag in code:  # pick a tag the body does not contain
        n += 1
        tag = f"$pgc{n}$"
    return sql.SQL(tag + code + tag)
