"""Replace a function's definition; the reverse restores the original text (or drops a new function)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import qn
from pgconverge.operations import objects
from pgconverge.operations.base import Lock, Operation


@dataclass(frozen=True)
class ReplaceFunction(Operation):
    """Safe alone: each replacement keeps the function's answers for every caller that exists at that point: the
    bridged legacy helper answers old tokens as before and maps new ones, the canonical helper is called by no
    policy until the policy rewrite, and the retired-helper stub is installed only once contract's checks found no
    caller."""

    safe_alone: ClassVar[bool] = True

    name: QualifiedName
    arg_types: str
    definition: str  # a complete CREATE OR REPLACE FUNCTION statement
    original: str | None  # pg_get_functiondef before the change; None when the function is new
    # Roles that get EXECUTE (as the function it is modelled on grants it); None leaves grants alone.
    execute_for: tuple[str, ...] | None = None
    why: str = ""

    @property
    def description(self) -> str:
        verb = "replace" if self.original else "create"
        return f"{verb} function {self.name}({self.arg_types})" + (f": {self.why}" if self.why else "")

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    def statements(self) -> list[sql.Composable]:
        # The definition is catalog text or pglast output, spliced verbatim.
        out: list[sql.Composable] = [sql.SQL(self.definition)]
        if self.execute_for is not None:
            fn = sql.SQL("{}({})").format(qn(self.name), sql.SQL(self.arg_types))
            out.append(sql.SQL("revoke all on function {} from public").format(fn))
            for role in self.execute_for:
                grantee = sql.SQL("public") if role == "PUBLIC" else sql.Identifier(role)
                out.append(sql.SQL("grant execute on function {} to {}").format(fn, grantee))
        return out

    def saved(self) -> list[tuple[str, str, str]]:
        return [("function", f"{self.name}({self.arg_types})", self.original)] if self.original else []

    def redefines(self) -> tuple[sql.Composable, ...]:
        return (objects.function(self.name, self.arg_types),)

    def reverse(self) -> Operation:
        if self.original is None:
            from pgconverge.operations.create_function import DropFunction

            return DropFunction(self.name, self.arg_types)
        return ReplaceFunction(self.name, self.arg_types, self.original, None, why="restore the original definition")
