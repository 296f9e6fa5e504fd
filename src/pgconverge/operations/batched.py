"""Work done in keyset batches, each its own short transaction, checkpointed in the ledger."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import qn
from pgconverge.operations.base import Cost, Lock, Operation


# Key types whose positions the ledger keeps as JSON numbers (any other key's position is its text).
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint", "int2", "int4", "int8"})


@dataclass(frozen=True)
class Batched(Operation):
    """Apply a per-row expression to a table in key order, BATCH rows per transaction.

    `batch` is a statement taking %(after)s (the last key done, NULL at the start) and %(n)s,
    returning one row: (rows scanned, last key, rows changed). An empty batch ends the work. It is kept as its
    two halves, `with CTES select RESULT` (`parts`: the common table expressions, then the final select's list,
    with its FROM if any): the runner adds its checkpoint to the statement itself (execution/batch.py), so a batch
    is one statement in one round trip.

    Safe alone: each batch commits on its own and the triggers keep rows written meanwhile right, so any prefix of the
    batches is a state the application already lives with.
    """

    safe_alone: ClassVar[bool] = True

    table: QualifiedName
    key: str
    key_type: str
    parts: tuple[sql.Composable, sql.Composable]
    batch_size: int
    what: str
    row_lock: Lock = Lock.ROW_EXCLUSIVE
    # Query for the last key to visit, read once when the step starts. Rows added later are a
    # trigger's job; without a bound, a busy table would keep the scan chasing its tail.
    upper_bound: sql.Composable | None = None
    # Settings for each batch transaction (set_config(name, value, true)).
    settings: tuple[tuple[str, str], ...] = ()
    # Rows may be updated in any order by several workers at once (migration.backfill_workers):
    # true for an idempotent per-row UPDATE, never for work whose rows depend on each other.
    parallel: bool = False
    # For a walk by pages (key "ctid"): a statement taking %(n)s that fills up to n rows the walk missed, returning
    # (rows found, no position, rows changed) as a batch does; the emitted files run it after the walk until it
    # finds none (planning/expand.py sweep_batch).
    sweep: sql.Composable | None = None
    # The same for the runner, in two parts: every missed row's ctid (text) in one read of the table, then an UPDATE
    # of the rows at the ctids %(keys)s returning the rows changed; passes until one finds none.
    sweep_find: sql.Composable | None = None
    sweep_fill: sql.Composable | None = None
    # A rollback's refill of legacy ids: the rows it hands to legacy_for_canonical (planning/align.py ReverseAligned)
    legacy_rows: tuple = ()

    executor: ClassVar[str] = "batched"

    @property
    def batch(self) -> sql.Composable:
        return sql.SQL("with {} select {}").format(*self.parts)

    @property
    def description(self) -> str:
        return f"{self.what} ({self.batch_size} rows per transaction, resumable)"

    @property
    def lock(self) -> Lock:
        return self.row_lock

    @property
    def lock_target(self) -> str:
        return str(self.table)

    @property
    def cost(self) -> Cost:
        return Cost.ROWS

    @property
    def transactional(self) -> bool:
        return False  # many short transactions, not one

    def statements(self) -> list[sql.Composable]:
        return [self.batch]

    def makes_legacy_rows(self) -> tuple:
        return self.legacy_rows

    def total_estimate(self) -> sql.Composable:
        return sql.SQL("select greatest(reltuples, 0)::bigint from pg_catalog.pg_class where oid = {}::regclass"
                       ).format(sql.Literal(str(self.table)))


def max_key(table: QualifiedName, key: str) -> sql.Composed:
    # ORDER BY … LIMIT 1 rather than max(): there is no max() for uuid, and it uses the key's index.
    return sql.SQL("select {k} from {t} order by {k} desc limit 1").format(k=sql.Identifier(key), t=qn(table))
