"""A gate: a read-only query whose rows are the problems; no rows means pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.operations.base import Lock, Operation


@dataclass(frozen=True)
class Rows:
    """The rows of TABLE a check judges: those WHERE holds (a condition on the table's own columns), described by
    WHICH ("with customer_id set") for its coverage. A table named alone in `covers` is judged on every row."""

    table: QualifiedName
    where: sql.Composable
    which: str


@dataclass(frozen=True)
class Check(Operation):
    """Safe alone: reads only."""

    safe_alone: ClassVar[bool] = True
    reads_only: ClassVar[bool] = True

    name: str
    query: sql.Composable  # returns one row per problem: (what, detail)
    failure: str  # what it means when rows come back
    fix: str
    settings: tuple[tuple[str, str], ...] = ()  # set_config(name, value, true) before the query
    # Tables whose rows it examines, so `verify` can say when there were none (not part of the SQL): a table alone
    # where it judges every row, Rows where it judges only some (an invariant about the legacy id, say, judges only
    # the rows that have one). None given: the tables its phase's batches walk, every row.
    covers: tuple[QualifiedName | Rows, ...] = ()
    # Steps a failure sends back, so the next run of the phase does them again (a backfill that can fill
    # what the check found missing); not part of the SQL.
    redo: tuple[str, ...] = ()
    # False for a gate about a moment rather than a standing state (contract's coverage, read before the legacy
    # table is archived): `verify` does not run it again once its phase is done.
    standing: bool = True
    # A query whose one value (jsonb) says what a pass compared, recorded with the done record (not part of the SQL).
    tally: sql.Composable | None = None
    # A gate before its phase's first change that reads what the phase was planned from: a failure discards the
    # catalog saved for the phase and sends its steps done so far back, so the next run plans the phase again from
    # the database as the fix left it (not part of the SQL).
    replan: bool = False

    executor: ClassVar[str] = "check"

    @property
    def description(self) -> str:
        return f"gate: {self.name}"

    @property
    def lock(self) -> Lock:
        return Lock.ACCESS_SHARE

    def statements(self) -> list[sql.Composable]:
        return [self.query]
