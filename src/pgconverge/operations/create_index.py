"""Build an index with CREATE INDEX CONCURRENTLY (outside a transaction); rebuild an invalid leftover."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import qn
from pgconverge.operations.base import Cost, Lock, Operation


@dataclass(frozen=True)
class CreateIndexConcurrently(Operation):
    name: QualifiedName  # schema = the table's schema
    table: QualifiedName
    columns: sql.Composable  # "(a, b)" or "(expr)" with method, as it follows ON table
    unique: bool = False
    predicate: sql.Composable | None = None
    why: str = ""

    executor: ClassVar[str] = "index"

    @property
    def description(self) -> str:
        return f"build index {self.name} on {self.table} concurrently" + (f": {self.why}" if self.why else "")

    @property
    def lock(self) -> Lock:
        return Lock.SHARE_UPDATE_EXCLUSIVE  # writes go on while the index builds

    @property
    def lock_target(self) -> str:
        return str(self.table)

    @property
    def cost(self) -> Cost:
        return Cost.SCANS

    @property
    def transactional(self) -> bool:
        return False

    def statements(self) -> list[sql.Composable]:
        stmt = sql.SQL("create {}index concurrently if not exists {} on {} {}").format(
            sql.SQL("unique ") if self.unique else sql.SQL(""), sql.Identifier(self.name.name), qn(self.table),
            self.columns)
        if self.predicate is not None:
            stmt = sql.SQL("{} where {}").format(stmt, self.predicate)
        return [stmt]

    def probe(self) -> sql.Composable:
        return sql.SQL("select coalesce((select i.indisvalid from pg_catalog.pg_index i "
                       "where i.indexrelid = to_regclass({})), false)").format(sql.Literal(str(self.name)))

    def invalid_probe(self) -> sql.Composable:
        """True when an interrupted build left an invalid index of this name behind."""
        return sql.SQL("select coalesce((select not i.indisvalid from pg_catalog.pg_index i "
                       "where i.indexrelid = to_regclass({})), false)").format(sql.Literal(str(self.name)))

    def reverse(self) -> Operation:
        return DropIndexConcurrently(self.name, self.table)


@dataclass(frozen=True)
class DropIndexConcurrently(Operation):
    name: QualifiedName
    table: QualifiedName

    @property
    def description(self) -> str:
        return f"drop index {self.name} concurrently"

    @property
    def lock(self) -> Lock:
        return Lock.SHARE_UPDATE_EXCLUSIVE

    @property
    def lock_target(self) -> str:
        return str(self.table)

    @property
    def transactional(self) -> bool:
        return False

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("drop index concurrently if exists {}").format(qn(self.name))]
