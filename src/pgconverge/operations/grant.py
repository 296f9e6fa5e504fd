"""Let roles read one private table: USAGE on its schema and SELECT on it; the reverse revokes both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import ident, qn, text
from pgconverge.operations.base import Lock, Operation


@dataclass(frozen=True)
class GrantRead(Operation):
    """Safe alone: only allows more."""

    safe_alone: ClassVar[bool] = True

    table: QualifiedName
    roles: tuple[str, ...]
    why: str = ""
    revoke: bool = False

    @property
    def description(self) -> str:
        verb = "revoke from" if self.revoke else "grant to"
        return f"{verb} {', '.join(self.roles)} reading {self.table}" + (f": {self.why}" if self.why else "")

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    def statements(self) -> list[sql.Composable]:
        roles = sql.SQL(", ").join(map(ident, self.roles))
        schema, table = ident(self.table.schema), qn(self.table)
        if self.revoke:
            # Not from a role that owns the schema or the table (or is a member of their owner): its privileges there
            # are its own, and revoking them would lock the owner out of its ledger (the foreign keys of the ledger's
            # tables are checked as their owner).
            return [sql.SQL(
                "do $pgc$ begin if not pg_catalog.pg_has_role({r}, (select c.relowner from pg_catalog.pg_class c "
                "where c.oid = {t}::regclass), 'USAGE') then execute {rt}; end if; "
                "if not pg_catalog.pg_has_role({r}, (select n.nspowner from pg_catalog.pg_namespace n where "
                "n.nspname = {s}), 'USAGE') then execute {rs}; end if; end $pgc$").format(
                r=sql.Literal(role), t=sql.Literal(str(self.table)), s=sql.Literal(self.table.schema),
                rt=sql.Literal(text(sql.SQL("revoke select on table {} from {}").format(table, ident(role)))),
                rs=sql.Literal(text(sql.SQL("revoke usage on schema {} from {}").format(schema, ident(role)))))
                for role in self.roles]
        return [sql.SQL("grant usage on schema {} to {}").format(schema, roles),
                sql.SQL("grant select on table {} to {}").format(table, roles)]

    def reverse(self) -> Operation:
        return GrantRead(self.table, self.roles, "undo", revoke=not self.revoke)


_COLUMN_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "REFERENCES")


@dataclass(frozen=True)
class GrantColumn(Operation):
    """Column privileges, as another column has them (GRANT SELECT (col) … TO role [WITH GRANT OPTION]).

    Safe alone: only allows more."""

    safe_alone: ClassVar[bool] = True

    table: QualifiedName
    column: str
    privileges: tuple[tuple[str, str, bool], ...]  # (grantee or PUBLIC, privilege, with grant option)
    why: str = ""

    def __post_init__(self) -> None:
        if bad := [p for _, p, _ in self.privileges if p not in _COLUMN_PRIVILEGES]:
            raise ValueError(f"not a column privilege: {', '.join(bad)}")

    @property
    def description(self) -> str:
        shown = ", ".join(f"{p} to {g}" + (" with grant option" if o else "") for g, p, o in self.privileges)
        return f"grant {shown} on {self.table}.{self.column}" + (f": {self.why}" if self.why else "")

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    @property
    def lock_target(self) -> str:
        return str(self.table)

    def statements(self) -> list[sql.Composable]:
        groups: dict[tuple[str, bool], list[str]] = {}
        for grantee, priv, option in self.privileges:
            groups.setdefault((grantee, option), []).append(priv)
        col = sql.SQL("({})").format(ident(self.column))
        return [sql.SQL("grant {} on table {} to {}{}").format(
            sql.SQL(", ").join(sql.SQL("{} {}").format(sql.SQL(p.lower()), col) for p in privs), qn(self.table),
            sql.SQL("public") if grantee == "PUBLIC" else ident(grantee),
            sql.SQL(" with grant option") if option else sql.SQL(""))
            for (grantee, option), privs in groups.items()]
