"""Several operations as one step: one transaction, so no other session sees the state between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.operations.base import Cost, Lock, Operation

_ORDER = list(Lock)
_COST_ORDER = list(Cost)


@dataclass(frozen=True)
class Together(Operation):
    """Safe alone: it exists to make a pair that is unsafe apart safe: its parts commit at once, so no one sees the
    state between them."""

    safe_alone: ClassVar[bool] = True

    ops: tuple[Operation, ...]
    why: str

    def __post_init__(self) -> None:
        if not all(o.transactional and o.executor == "sql" for o in self.ops):
            raise ValueError("only plain SQL operations that run in a transaction can share one")

    @property
    def description(self) -> str:
        return "; ".join(o.description for o in self.ops) + f", in one transaction ({self.why})"

    @property
    def lock(self) -> Lock:
        return max((o.lock for o in self.ops), key=_ORDER.index)

    @property
    def lock_target(self) -> str:
        return next((o.lock_target for o in self.ops if o.lock_target), "")

    @property
    def cost(self) -> Cost:
        return max((o.cost for o in self.ops), key=_COST_ORDER.index)

    def statements(self) -> list[sql.Composable]:
        return [s for o in self.ops for s in o.statements()]

    def reverse(self) -> Operation | None:
        back = tuple(r for r in (o.reverse() for o in reversed(self.ops)) if r is not None)
        return Together(back, self.why) if back else None

    def saved(self) -> list[tuple[str, str, str]]:
        return [x for o in self.ops for x in o.saved()]

    def drops(self) -> tuple[sql.Composable, ...]:
        return tuple(x for o in self.ops for x in o.drops())

    def redefines(self) -> tuple[sql.Composable, ...]:
        return tuple(x for o in self.ops for x in o.redefines())

    def moves(self) -> tuple[sql.Composable, ...]:
        return tuple(x for o in self.ops for x in o.moves())
