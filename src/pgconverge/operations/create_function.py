"""Create (or replace) a function; its reverse drops it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import qn
from pgconverge.operations import objects
from pgconverge.operations.base import Lock, Operation


@dataclass(frozen=True)
class CreateFunction(Operation):
    """Safe alone: a new function (or a private one of pgconverge's): nothing of the application calls it until a
    later step wires it in."""

    safe_alone: ClassVar[bool] = True

    name: QualifiedName
    arg_types: str  # identity argument list as Postgres prints it, e.g. "text" or "public.customers"
    statement: sql.Composable  # the full CREATE OR REPLACE FUNCTION
    why: str = ""
    # EXECUTE for PUBLIC, for a pure function evaluated inside an index on an application table:
    # index expressions run with the privileges of whoever writes the row.
    public_execute: bool = False

    @property
    def description(self) -> str:
        return f"create function {self.name}({self.arg_types})" + (f": {self.why}" if self.why else "")

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    def statements(self) -> list[sql.Composable]:
        # Functions get EXECUTE for PUBLIC by default; ours are reached only through SECURITY DEFINER
        # entry points or by the migration role, so nobody else needs it.
        verb = "grant execute on function {}({}) to public" if self.public_execute else \
            "revoke all on function {}({}) from public"
        return [self.statement, sql.SQL(verb).format(qn(self.name), sql.SQL(self.arg_types))]

    def reverse(self) -> Operation:
        return DropFunction(self.name, self.arg_types)


@dataclass(frozen=True)
class DropFunction(Operation):
    """Safe alone: postgres refuses to drop a function that a trigger or policy still uses; nothing else of the
    application calls pgconverge's own functions."""

    safe_alone: ClassVar[bool] = True

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

    def drops(self) -> tuple[sql.Composable, ...]:
        return (objects.function(self.name, self.arg_types),)
