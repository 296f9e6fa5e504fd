"""Build an index with CREATE INDEX CONCURRENTLY (outside a transaction); rebuild an invalid leftover."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import body, qn, text
from pgconverge.operations import objects
from pgconverge.operations.base import Cost, Lock, Operation


@dataclass(frozen=True)
class CreateIndexConcurrently(Operation):
    """Safe alone: an index changes no result; a failed build leaves an invalid index that only costs writes and is
    rebuilt on resume."""

    safe_alone: ClassVar[bool] = True

    name: QualifiedName  # schema = the table's schema
    table: QualifiedName
    statement: sql.Composable  # the whole CREATE INDEX CONCURRENTLY statement
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
        return [self.statement]

    def probe(self) -> sql.Composable:
        """True when a valid index of this name exists on this table (not IF NOT EXISTS: a same-named
        index elsewhere must not pass for ours)."""
        return sql.SQL("select coalesce((select i.indisvalid from pg_catalog.pg_index i "
                       "where i.indexrelid = to_regclass({}) and i.indrelid = to_regclass({})), false)").format(
            sql.Literal(str(self.name)), sql.Literal(str(self.table)))

    def invalid_probe(self) -> sql.Composable:
        """True when an interrupted build left an invalid index of this name behind."""
        return sql.SQL("select coalesce((select not i.indisvalid from pg_catalog.pg_index i "
                       "where i.indexrelid = to_regclass({})), false)").format(sql.Literal(str(self.name)))

    def reverse(self) -> Operation:
        return DropIndexConcurrently(self.name, self.table)


@dataclass(frozen=True)
class DropIndexConcurrently(Operation):  # noqa: D101
    """Safe alone: an index changes no result (a unique one is dropped only once its rule moved to another)."""

    safe_alone: ClassVar[bool] = True

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

    def drops(self) -> tuple[sql.Composable, ...]:
        return (objects.relation(self.name),)


def simple_index(name: QualifiedName, table: QualifiedName, columns: sql.Composable, why: str = "",
                 unique: bool = False, predicate: sql.Composable | None = None) -> CreateIndexConcurrently:
    """An index on COLUMNS (a parenthesised list of columns or expressions) of TABLE."""
    stmt = sql.SQL("create {}index concurrently {} on {} {}").format(
        sql.SQL("unique ") if unique else sql.SQL(""), sql.Identifier(name.name), qn(table), columns)
    if predicate is not None:
        stmt = sql.SQL("{} where {}").format(stmt, predicate)
    return CreateIndexConcurrently(name, table, stmt, why)


@dataclass(frozen=True)
class TakeIndexName(Operation):
    """Give index STANDIN the name NAME, where no index has that name; where one has (it was never dropped), drop
    STANDIN instead. A stand-in built ahead keeps a unique index over the same columns in place while the
    constraint that held NAME is swapped for another (ON CONFLICT finds its target all along).

    Safe alone: renaming or dropping a second index over the same columns changes no result."""

    safe_alone: ClassVar[bool] = True

    standin: QualifiedName
    name: QualifiedName
    table: QualifiedName

    @property
    def description(self) -> str:
        return f"rename index {self.standin} to {self.name.name}"

    @property
    def lock(self) -> Lock:
        return Lock.ACCESS_EXCLUSIVE  # only to drop a stand-in no longer needed; a rename takes far less

    @property
    def lock_target(self) -> str:
        return str(self.table)

    def statements(self) -> list[sql.Composable]:
        code = sql.SQL("""begin
  if pg_catalog.to_regclass({name}) is null then
    alter index {standin} rename to {bare};
  elsif pg_catalog.to_regclass({standin_text}) is not null then
    drop index {standin};
  end if;
end""").format(name=sql.Literal(text(qn(self.name))), standin=qn(self.standin), bare=sql.Identifier(self.name.name),
               standin_text=sql.Literal(text(qn(self.standin))))
        return [sql.SQL("do {}").format(body(code))]
