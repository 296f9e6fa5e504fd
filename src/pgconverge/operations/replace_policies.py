"""Rewrite RLS policies, all in one short transaction; the reverse re-applies the original texts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.operations import objects
from pgconverge.operations.base import Lock, Operation

LOCK_BUDGET_MS = 120  # the longest all the policy tables' locks may take to acquire, together


@dataclass(frozen=True)
class ReplacePolicies(Operation):
    """Safe alone: all policies in one transaction, checked for equivalence in the same data snapshot; when the check
    fails (or cannot run) the old policies are put back before the step reports the failure."""

    safe_alone: ClassVar[bool] = True

    statements_text: tuple[str, ...]  # ALTER POLICY …, one per policy
    reverse_text: tuple[str, ...]
    names: tuple[str, ...]  # "schema.table.policy", for the ledger and messages
    tables: tuple[str, ...]  # in lock order
    # Check, in the same data snapshot, that every sampled identity sees the same rows afterwards.
    verify: bool = True
    # Tables of policies left to the user (migration.accept_policies): not locked, and not in this step's own check
    # (such a policy may be rewritten by hand only after the switch); `verify --rls` and contract's gate read them.
    checked: tuple[str, ...] = ()
    # The longest all the tables' locks may take to acquire, together: LOCK_BUDGET_MS, or migration.lock_timeout_ms
    # where that is longer (an application whose transactions each last longer than LOCK_BUDGET_MS / n).
    lock_budget_ms: int = LOCK_BUDGET_MS

    @property
    def per_table_ms(self) -> int:
        return max(10, self.lock_budget_ms // max(1, len(self.tables)))

    def fingerprint(self) -> str:
        # The same for any budget: a ledger written with another lock_timeout_ms still recognizes the step.
        if self.lock_budget_ms != LOCK_BUDGET_MS:
            return dataclasses.replace(self, lock_budget_ms=LOCK_BUDGET_MS).fingerprint()
        return super().fingerprint()

    @property
    def executor(self) -> str:  # type: ignore[override]
        return "policies" if self.verify else "sql"

    @property
    def description(self) -> str:
        what = "rewrite" if self.verify else "restore"
        return f"{what} {len(self.names)} RLS policies in one transaction ({', '.join(self.tables)})"

    @property
    def lock_target(self) -> str:
        return ", ".join(self.tables)

    def statements(self) -> list[sql.Composable]:
        # Take every table's lock first, parents before children (the order applications write
        # in), so the rewrite never holds one table while waiting for a writer that needs it.
        # lock_timeout bounds each table's wait, not the sum: while waiting for the fifth table the
        # first four are held and writers queue behind them. So the budget is shared out: each
        # table may wait lock_budget_ms / n, and the whole acquisition stays within the budget.
        budget = sql.SQL("select set_config('lock_timeout', {}, true)").format(sql.Literal(f"{self.per_table_ms}ms"))
        locks = [sql.SQL("lock table {} in access exclusive mode").format(sql.Identifier(*_split(t)))
                 for t in self.tables]
        return [budget, *locks, *(sql.SQL(s) for s in self.statements_text)]

    def saved(self) -> list[tuple[str, str, str]]:
        return [("policy", n, r) for n, r in zip(self.names, self.reverse_text)] if self.verify else []

    def redefines(self) -> tuple[sql.Composable, ...]:
        out = []
        for name in self.names:  # "schema.table.policy": the table is one of TABLES, the policy name the rest
            table = max((t for t in self.tables if name.startswith(t + ".")), key=len)
            out.append(objects.policy(_qualified(table), name[len(table) + 1:]))
        return tuple(out)

    def reverse(self) -> Operation:
        return ReplacePolicies(self.reverse_text, self.statements_text, self.names, self.tables, verify=False,
                               lock_budget_ms=self.lock_budget_ms)


def _qualified(name: str):
    from pgconverge.config import parse_qualified

    return parse_qualified(name)


def _split(name: str) -> tuple[str, str]:
    q = _qualified(name)
    return q.schema, q.name
