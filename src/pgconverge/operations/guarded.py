"""An operation that runs only where its effect is missing: for rollback steps that restore what one of
several forward steps may or may not have removed (a constraint that went with its column, say)."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from pgconverge.execution.sql import body
from pgconverge.operations.base import Cost, Lock, Operation


@dataclass(frozen=True)
class Unless(Operation):
    """OP's statements in one DO block, skipped when CONDITION (a boolean SQL expression) holds.

    Safe alone: whatever OP is: the guard only skips OP when its effect is already there.
    """

    @property
    def safe_alone(self) -> bool:  # type: ignore[override]
        return self.op.safe_alone

    op: Operation
    condition: sql.Composable
    why: str = ""

    def __post_init__(self) -> None:
        if not (self.op.transactional and self.op.executor == "sql"):
            raise ValueError("only plain SQL operations that run in a transaction can be guarded")

    @property
    def description(self) -> str:
        return self.op.description + (f", unless {self.why}" if self.why else "")

    @property
    def lock(self) -> Lock:
        return self.op.lock

    @property
    def lock_target(self) -> str:
        return self.op.lock_target

    @property
    def cost(self) -> Cost:
        return self.op.cost

    def drops(self) -> tuple[sql.Composable, ...]:
        return self.op.drops()

    def redefines(self) -> tuple[sql.Composable, ...]:
        return self.op.redefines()

    def statements(self) -> list[sql.Composable]:
        code = sql.SQL("begin\n  if not ({}) then\n{}\n  end if;\nend").format(
            self.condition, sql.SQL("\n").join(sql.SQL("    {};").format(s) for s in self.op.statements()))
        return [sql.SQL("do {}").format(body(code))]
