"""Preflight: does the role pgconverge connects as see every row of the tables it reads and writes?

Row level security filters silently. A role that is subject to a table's policies (not a superuser,
no BYPASSRLS, and either not the table's owner or the owner of a table with FORCE ROW LEVEL
SECURITY) would backfill, snapshot and check only the rows the policies show it, and every gate
would pass on that part of the data. Every connection pgconverge opens for its own work sets
``row_security = off`` (see connection.py), so Postgres refuses such a query instead of filtering
it; this preflight says so before anything changes, naming each table and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import psycopg

from pgconverge.catalog.model import Catalog
from pgconverge.config import QualifiedName
from pgconverge.errors import PgConvergeError
from pgconverge.execution.sql import ident, qn, text


class RowSecurityBlocks(PgConvergeError):
    """The connected role would see only the rows row level security shows it."""


@dataclass(frozen=True)
class Blind:
    """A table whose policies apply to the connected role."""

    table: QualifiedName
    owner: str
    owned: bool  # the role is its owner (or has the owner's privileges): NO FORCE would do
    forced: bool
    quoted: str = ""  # the name as SQL (quote_ident: quoted only where needed)

    @property
    def why(self) -> str:
        if self.owned:
            return f"{self.table} (owned by {self.owner}, FORCE ROW LEVEL SECURITY)"
        return f"{self.table} (owned by {self.owner}, row level security enabled)"


@dataclass(frozen=True)
class Verdict:
    role: str
    superuser: bool
    bypassrls: bool
    blind: tuple[Blind, ...]
    quoted_role: str = ""  # the role as SQL

    @property
    def ok(self) -> bool:
        return not self.blind

    def fix(self) -> str:
        role = self.quoted_role or text(ident(self.role))
        parts = [f"as a superuser, `ALTER ROLE {role} BYPASSRLS;` (keep it until the migration is finished or "
                 "rolled back: pgconverge's triggers run as this role)"]
        owned = [b for b in self.blind if b.owned]
        if owned:
            stmts = " ".join(f"ALTER TABLE {b.quoted or text(qn(b.table))} NO FORCE ROW LEVEL SECURITY;"
                             for b in owned)
            parts.append(f"or, for the tables {role} owns, `{stmts}`")
        others = sorted({b.owner for b in self.blind if not b.owned})
        if others:
            parts.append(f"{'and tables' if owned else 'or, tables'} owned by {', '.join(others)}: connect as "
                         "their owner (with NO FORCE ROW LEVEL SECURITY on them)")
        return "; ".join(parts)

    def problem(self, outcome: str = "nothing was changed") -> str:
        return (f"role {self.role} is subject to row level security on {len(self.blind)} table"
                f"{'s' if len(self.blind) != 1 else ''} pgconverge must read and write in full: "
                + ", ".join(b.why for b in self.blind)
                + ". pgconverge would see only the rows the policies show this role (a backfill would leave the "
                  f"others unlinked, and checks would pass on part of the data), so {outcome}")

    def as_dict(self) -> dict:
        return {"role": self.role, "superuser": self.superuser, "bypassrls": self.bypassrls, "ok": self.ok,
                "tables": [{"table": str(b.table), "owner": b.owner, "owned": b.owned, "forced": b.forced}
                           for b in self.blind],
                **({"problem": self.problem(), "fix": self.fix()} if self.blind else {})}


def tables_of(*cats: Catalog | None) -> list[QualifiedName]:
    """The tables pgconverge reads and writes as itself: legacy, canonical, every dependent, and the tables
    whose policies reach a dependent (the RLS check reads their rows to pick what to compare)."""
    out: list[QualifiedName] = []
    for cat in cats:
        if cat is None:
            continue
        for t in (cat.legacy, cat.canonical, *(d.table for d in cat.dependents), *cat.tables):
            if t.name not in out:
                out.append(t.name)
    return out


def inspect(conn: psycopg.Connection, tables: Iterable[QualifiedName]) -> Verdict:
    """Which of TABLES (those that exist) filter the rows the connected role sees. Reads the catalog only."""
    role, superuser, bypass, quoted_role = conn.execute(
        "select r.rolname, r.rolsuper, r.rolbypassrls, pg_catalog.quote_ident(r.rolname) from pg_catalog.pg_roles r "
        "where r.rolname = current_user").fetchone()
    names = list(tables)
    if not names:
        return Verdict(role, superuser, bypass, (), quoted_role)
    rows = conn.execute(
        "select t.schema, t.name, c.relrowsecurity, c.relforcerowsecurity, pg_catalog.pg_get_userbyid(c.relowner), "
        "pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE'), "
        "pg_catalog.quote_ident(t.schema) || '.' || pg_catalog.quote_ident(t.name) "
        "from unnest(%s::text[], %s::text[]) with ordinality as t(schema, name, i) "
        "join pg_catalog.pg_namespace n on n.nspname = t.schema "
        "join pg_catalog.pg_class c on c.relnamespace = n.oid and c.relname = t.name "
        "order by t.i", ([q.schema for q in names], [q.name for q in names])).fetchall()
    blind = []
    if not (superuser or bypass):  # BYPASSRLS is the role's own attribute: membership does not pass it on
        for schema, name, enabled, forced, owner, owned, quoted in rows:
            if not enabled or (owned and not forced):
                continue
            blind.append(Blind(QualifiedName(schema, name), owner, owned, forced, quoted))
    return Verdict(role, superuser, bypass, tuple(blind), quoted_role)


def check(conn: psycopg.Connection, tables: Iterable[QualifiedName], outcome: str = "nothing was changed"
          ) -> Verdict:
    """Raise RowSecurityBlocks unless the connected role sees every row of every one of TABLES.

    OUTCOME ends the message: what the caller did not do because of it."""
    v = inspect(conn, tables)
    if not v.ok:
        raise RowSecurityBlocks(v.problem(outcome), fix=v.fix())
    return v


def check_catalogs(conn: psycopg.Connection, *cats: Catalog | None, outcome: str = "nothing was changed") -> Verdict:
    """check() over the tables of CATS (see tables_of)."""
    return check(conn, tables_of(*cats), outcome)


def refusal(exc: BaseException) -> bool:
    """True for Postgres' refusal of a query under `row_security = off` that policies would filter."""
    return (isinstance(exc, psycopg.errors.InsufficientPrivilege)
            and "row-level security" in str(exc) and "would be affected" in str(exc))


def _refused_table(exc: BaseException) -> str | None:
    m = re.search(r'row-level security policy for table "((?:[^"]|"")+)"', str(exc))
    return m.group(1).replace('""', '"') if m else None


def explain(conn: psycopg.Connection, tables: Iterable[QualifiedName], exc: BaseException,
            what: str = "a query") -> RowSecurityBlocks:
    """The error to show for Postgres' refusal EXC (see refusal()): every table of TABLES that filters rows
    for the connected role, with the fix; at least the table Postgres named."""
    said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    v = inspect(conn, tables)
    if v.blind:
        return RowSecurityBlocks(f"Postgres refused {what} that row level security would have filtered ({said}): "
                                 + v.problem("it stopped there (the refused statement was rolled back)"),
                                 fix=v.fix())
    role = v.quoted_role or text(ident(v.role))
    table = _refused_table(exc) or "<table>"
    return RowSecurityBlocks(
        f"Postgres refused {what} that row level security would have filtered ({said}): role {v.role} sees only "
        "the rows its policies show it there, so pgconverge stopped rather than work on part of the table",
        fix=f"as a superuser, `ALTER ROLE {role} BYPASSRLS;`, or, if {role} owns {table}, "
            f"`ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY;` (schema-qualified)")
