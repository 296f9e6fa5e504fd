"""Create a table (private bookkeeping tables only); its reverse drops it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import qn
from pgconverge.operations import objects
from pgconverge.operations.base import Cost, Lock, Operation


@dataclass(frozen=True)
class CreateTable(Operation):
    """Safe alone: a new table in the private schema, out of the API's reach."""

    safe_alone: ClassVar[bool] = True

    name: QualifiedName
    body: sql.Composable  # the parenthesised column and constraint list
    why: str = ""
    extra: tuple[sql.Composable, ...] = ()  # indexes etc. created in the same transaction
    # EXTRA fills the table from whole tables (a snapshot of every dependent row): it may take long,
    # and holds no lock that blocks writers, so only its lock wait is bounded, not its duration.
    reads_tables: bool = False
    # Columns of a primary key built once EXTRA has filled the table (BODY declares none): one sorted build
    # instead of a key kept up to date row by row. Rows sharing a key are removed first, keeping the first
    # stored, as the key's ON CONFLICT DO NOTHING would have kept it. A table already keyed (made before, or
    # copied with its key) is left as it is, and EXTRA's ON CONFLICT then finds the key in place.
    key_after: tuple[str, ...] = ()
    # The step after which this snapshot may start beside the steps between (execution/background.py
    # SnapshotJob): set where nothing those steps do changes what EXTRA reads. Empty: it runs at its turn.
    after: str = ""

    @property
    def description(self) -> str:
        return f"create table {self.name}" + (f": {self.why}" if self.why else "")

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    @property
    def cost(self) -> Cost:
        return Cost.SCANS if self.reads_tables else Cost.INSTANT

    def statements(self) -> list[sql.Composable]:
        out = [sql.SQL("create table if not exists {} {}").format(qn(self.name), self.body), *self.extra]
        if self.key_after:
            out.append(self._key_statement())
        return out

    def _key_statement(self) -> sql.Composable:
        # A subtransaction (the exception block) holds the first attempt: it costs nothing when no row shares
        # a key, which is the rule; otherwise the duplicates go (the lowest ctid stays) and the key is built.
        t = qn(self.name)
        add = sql.SQL("alter table {} add primary key ({})").format(t, sql.SQL(", ").join(map(sql.Identifier,
                                                                                             self.key_after)))
        same = sql.SQL(" and ").join(sql.SQL("a.{c} = b.{c}").format(c=sql.Identifier(c)) for c in self.key_after)
        body = sql.SQL(
            "begin if not exists (select from pg_catalog.pg_constraint where conrelid = {n}::regclass "
            "and contype = 'p') then begin {add}; exception when unique_violation then "
            "delete from {t} a using {t} b where {same} and a.ctid > b.ctid; {add}; end; end if; end").format(
            n=sql.Literal(t.as_string(None)), add=add, t=t, same=same)
        return sql.SQL("do {}").format(sql.Literal(body.as_string(None)))

    def reverse(self) -> Operation:
        return DropTable(self.name)


@dataclass(frozen=True)
class DropTable(Operation):
    """Safe alone: drops a table of pgconverge's own, which the application never reads."""

    safe_alone: ClassVar[bool] = True

    name: QualifiedName

    @property
    def description(self) -> str:
        return f"drop table {self.name}"

    @property
    def lock_target(self) -> str:
        return str(self.name)

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("drop table if exists {}").format(qn(self.name))]

    def drops(self) -> tuple[sql.Composable, ...]:
        return (objects.relation(self.name),)
