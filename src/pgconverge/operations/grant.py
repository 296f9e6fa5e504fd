"""Let roles read one private table: USAGE on its schema and SELECT on it; the reverse revokes both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import ident, qn
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
            return [sql.SQL("revoke select on table {} from {}").format(table, roles),
                    sql.SQL("revoke usage on schema {} from {}").format(schema, roles)]
        return [sql.SQL("grant usage on schema {} to {}").format(schema, roles),
                sql.SQL("grant select on table {} to {}").format(table, roles)]

    def reverse(self) -> Operation:
        return GrantRead(self.table, self.roles, "undo", revoke=not self.revoke)
