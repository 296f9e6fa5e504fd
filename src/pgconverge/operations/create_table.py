"""Create a table (private bookkeeping tables only); its reverse drops it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import qn
from pgconverge.operations.base import Cost, Lock, Operation


@dataclass(frozen=True)
class CreateTable(Operation):
    """Safe alone: a new table in the private schema, out of the API's reach."""

    safe_alone: ClassVar[bool] = True

    name: QualifiedName
    body: sql.Composable  # the parenthesised column and constraint list
    why: str = ""
    extra: tuple[sql.Composable, ...] = ()  # indexes etc. created in the same transaction
    # EXTRA fills the table from whole tables (a snapshot of every dependent row): it may take long,
    # and holds no lock that blocks writers, so only its lock wait is bounded, not its duration.
    reads_tables: bool = False

    @property
    def description(self) -> str:
        return f"create table {self.name}" + (f": {self.why}" if self.why else "")

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    @property
    def cost(self) -> Cost:
        return Cost.SCANS if self.reads_tables else Cost.INSTANT

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("create table if not exists {} {}").format(qn(self.name), self.body), *self.extra]

    def reverse(self) -> Operation:
        return DropTable(self.name)


@dataclass(frozen=True)
class DropTable(Operation):
    """Safe alone: drops a table of pgconverge's own, which the application never reads."""

    safe_alone: ClassVar[bool] = True

    name: QualifiedName

    @property
    def description(self) -> str:
        return f"drop table {self.name}"

    @property
    def lock_target(self) -> str:
        return str(self.name)

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("drop table if exists {}").format(qn(self.name))]
