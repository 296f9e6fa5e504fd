"""Record what the database looks like (counts, conflict groups) in the ledger; changes nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.operations.base import Lock, Operation


@dataclass(frozen=True)
class Snapshot(Operation):
    """Safe alone: reads only, into the ledger."""

    safe_alone: ClassVar[bool] = True
    reads_only: ClassVar[bool] = True

    name: str
    # (label, query returning one jsonb value); stored together as one ledger snapshot
    queries: tuple[tuple[str, sql.Composable], ...]
    what: str

    executor: ClassVar[str] = "snapshot"

    @property
    def description(self) -> str:
        return f"record {self.what} in the ledger (snapshot {self.name!r})"

    @property
    def lock(self) -> Lock:
        return Lock.ACCESS_SHARE

    def statements(self) -> list[sql.Composable]:
        return [q for _, q in self.queries]
