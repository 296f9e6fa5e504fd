"""Create (or replace) a function; its reverse drops it."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import qn
from pgconverge.operations.base import Lock, Operation


@dataclass(frozen=True)
class CreateFunction(Operation):
    name: QualifiedName
    arg_types: str  # identity argument list as Postgres prints it, e.g. "text" or "public.customers"
    statement: sql.Composable  # the full CREATE OR REPLACE FUNCTION
    why: str = ""

    @property
    def description(self) -> str:
        return f"create function {self.name}({self.arg_types})" + (f": {self.why}" if self.why else "")

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    def statements(self) -> list[sql.Composable]:
        # Functions get EXECUTE for PUBLIC by default; ours are reached only through SECURITY DEFINER
        # entry points or by the migration role, so nobody else needs it.
        return [self.statement,
                sql.SQL("revoke all on function {}({}) from public").format(qn(self.name), sql.SQL(self.arg_types))]

    def reverse(self) -> Operation:
        return DropFunction(self.name, self.arg_types)


@dataclass(frozen=True)
class DropFunction(Operation):
    name: QualifiedName
    arg_types: str

    @property
    def description(self) -> str:
        return f"drop function {self.name}({self.arg_types})"

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("drop function if exists {}({})").format(qn(self.name), sql.SQL(self.arg_types))]
