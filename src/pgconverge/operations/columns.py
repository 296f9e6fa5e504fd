"""Column changes that only touch the catalog: add a nullable column, drop one, drop or set NOT NULL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import ident, qn
from pgconverge.operations import objects
from pgconverge.operations.base import Lock, Operation


@dataclass(frozen=True)
class _TableOp(Operation):
    table: QualifiedName
    column: str

    @property
    def lock_target(self) -> str:
        return str(self.table)


@dataclass(frozen=True)
class AddColumn(_TableOp):
    """Safe alone: a nullable column without a default: statements naming their columns do not see it."""

    safe_alone: ClassVar[bool] = True

    type: str

    @property
    def description(self) -> str:
        return f"add nullable column {self.table}.{self.column} {self.type} (no default: a catalog change only)"

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("alter table {} add column if not exists {} {}").format(
            qn(self.table), ident(self.column), sql.SQL(self.type))]

    def reverse(self) -> Operation:
        return DropColumn(self.table, self.column)


@dataclass(frozen=True)
class DropColumn(_TableOp):
    """Not safe alone: a trigger or policy still naming the column would fail every write or read of the table: the
    planner drops it together (one transaction) with whatever names it, and there is no reverse that brings its
    values back."""

    safe_alone: ClassVar[bool] = False

    @property
    def description(self) -> str:
        return f"drop column {self.table}.{self.column} (a catalog change; space is reclaimed by later writes)"

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("alter table {} drop column if exists {}").format(qn(self.table), ident(self.column))]

    def drops(self) -> tuple[sql.Composable, ...]:
        return (objects.column(self.table, self.column),)


@dataclass(frozen=True)
class DropNotNull(_TableOp):
    """Safe alone: only allows more: every write that passed before still passes."""

    safe_alone: ClassVar[bool] = True

    why: str = ""

    @property
    def description(self) -> str:
        return f"drop NOT NULL on {self.table}.{self.column}" + (f": {self.why}" if self.why else "")

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("alter table {} alter column {} drop not null").format(qn(self.table), ident(self.column))]


@dataclass(frozen=True)
class SetNotNull(_TableOp):
    """SET NOT NULL after a validated CHECK (col IS NOT NULL) exists: Postgres then skips the table scan.

    Safe alone: runs after a validated CHECK (col IS NOT NULL) and the triggers that fill the column: no write it
    would refuse is still made.
    """

    safe_alone: ClassVar[bool] = True

    @property
    def description(self) -> str:
        return (f"set NOT NULL on {self.table}.{self.column} (instant: the validated check constraint already "
                "proves it)")

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("alter table {} alter column {} set not null").format(qn(self.table), ident(self.column))]

    def reverse(self) -> Operation:
        return DropNotNull(self.table, self.column)


@dataclass(frozen=True)
class SetDefault(_TableOp):
    """Safe alone: a default applies only to an insert that leaves the column out, which without it writes NULL there;
    writes that name the column are unchanged. EXPRESSION None drops the default."""

    safe_alone: ClassVar[bool] = True

    expression: str | None

    @property
    def description(self) -> str:
        if self.expression is None:
            return f"drop the default of {self.table}.{self.column}"
        return f"default {self.expression} for {self.table}.{self.column} (a catalog change only)"

    @property
    def lock(self) -> Lock:
        return Lock.ACCESS_EXCLUSIVE

    def drops(self) -> tuple[sql.Composable, ...]:
        # The default it replaces or drops (on every partition too): what depends on it is no obstacle.
        return (objects.defaults(self.table, self.column),)

    def statements(self) -> list[sql.Composable]:
        if self.expression is None:
            return [sql.SQL("alter table {} alter column {} drop default").format(qn(self.table), ident(self.column))]
        return [sql.SQL("alter table {} alter column {} set default {}").format(
            qn(self.table), ident(self.column), sql.SQL(self.expression))]
