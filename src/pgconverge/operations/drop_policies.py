"""Drop RLS policies, keeping their definitions so the reverse creates them exactly as they were."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.catalog.model import Policy
from pgconverge.execution.sql import policy_clauses, text
from pgconverge.operations.base import Lock, Operation


def _create(p: Policy) -> sql.Composable:
    stmt = sql.SQL("create policy {} on {} as {} for {} to {}").format(
        sql.Identifier(p.name), sql.Identifier(p.table.schema, p.table.name),
        sql.SQL("permissive" if p.permissive else "restrictive"), sql.SQL(p.command.lower()),
        sql.SQL(", ").join(sql.SQL("public") if r == "public" else sql.Identifier(r) for r in p.roles))
    return stmt + policy_clauses(p.using, p.with_check)


@dataclass(frozen=True)
class DropPolicies(Operation):
    """Not safe alone: a table under row level security without its policies shows its rows to no one: the planner
    drops them together (one transaction) with the helper they call, which goes right before the table is archived."""

    safe_alone: ClassVar[bool] = False

    policies: tuple[Policy, ...]
    why: str

    @property
    def description(self) -> str:
        return f"drop {len(self.policies)} RLS policies ({', '.join(p.name for p in self.policies)}): {self.why}"

    @property
    def lock_target(self) -> str:
        return ", ".join(sorted({str(p.table) for p in self.policies}))

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("drop policy {} on {}").format(sql.Identifier(p.name),
                                                        sql.Identifier(p.table.schema, p.table.name))
                for p in self.policies]

    def saved(self) -> list[tuple[str, str, str]]:
        return [("policy", f"{p.table}.{p.name}", text(_create(p))) for p in self.policies]

    def reverse(self) -> Operation:
        return CreatePolicies(self.policies)


@dataclass(frozen=True)
class CreatePolicies(Operation):
    """Safe alone: restores the policies exactly as they were."""

    safe_alone: ClassVar[bool] = True

    policies: tuple[Policy, ...]

    @property
    def description(self) -> str:
        return f"create {len(self.policies)} RLS policies as they were ({', '.join(p.name for p in self.policies)})"

    @property
    def lock_target(self) -> str:
        return ", ".join(sorted({str(p.table) for p in self.policies}))

    @property
    def lock(self) -> Lock:
        return Lock.ACCESS_EXCLUSIVE

    def statements(self) -> list[sql.Composable]:
        return [_create(p) for p in self.policies]

    def reverse(self) -> Operation:
        return DropPolicies(self.policies, "undo")
