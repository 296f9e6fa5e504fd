"""A statement with no table lock and nothing to undo (settings, bookkeeping)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.operations.base import Lock, Operation


@dataclass(frozen=True)
class RunSql(Operation):
    """Safe alone: used for settings and bookkeeping that change no result the application sees."""

    safe_alone: ClassVar[bool] = True

    statement: sql.Composable
    what: str

    @property
    def description(self) -> str:
        return self.what

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    def statements(self) -> list[sql.Composable]:
        return [self.statement]
