"""Constraints added without a long lock: NOT VALID first (instant), VALIDATE later (no write-blocking lock)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import ident, qn
from pgconverge.operations import objects
from pgconverge.operations.base import Cost, Lock, Operation


@dataclass(frozen=True)
class _ConstraintOp(Operation):
    table: QualifiedName
    name: str

    @property
    def lock_target(self) -> str:
        return str(self.table)

    def exists_probe(self) -> sql.Composable:
        return sql.SQL("select exists (select 1 from pg_catalog.pg_constraint where conrelid = {}::regclass "
                       "and conname = {})").format(sql.Literal(str(self.table)), sql.Literal(self.name))


@dataclass(frozen=True)
class AddForeignKeyNotValid(_ConstraintOp):
    """Safe alone: new writes must reference an existing row, which the triggers that fill the column guarantee;
    existing rows are not checked."""

    safe_alone: ClassVar[bool] = True

    column: str
    ref_table: QualifiedName
    ref_column: str
    on_delete: str
    on_update: str
    # As the foreign key it mirrors: a deferrable one is checked at commit (or when SET CONSTRAINTS says).
    deferrable: bool = False
    initially_deferred: bool = False
    match_full: bool = False  # as declared (MATCH FULL), so a rollback gives back the same definition

    @property
    def description(self) -> str:
        return (f"add foreign key {self.name}: {self.table}({self.column}) → {self.ref_table}({self.ref_column}) "
                f"ON DELETE {self.on_delete}" + (f" ON UPDATE {self.on_update}" if self.on_update != "NO ACTION"
                                                  else "") + _deferral(self.deferrable, self.initially_deferred)
                + ", NOT VALID (new rows checked now, old rows validated later)")

    @property
    def lock(self) -> Lock:
        return Lock.SHARE_ROW_EXCLUSIVE  # on both tables; writes wait only for the catalog change

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("alter table {t} add constraint {n} foreign key ({c}) references {rt} ({rc}){m} "
                        "on delete {od} on update {ou}{df} not valid").format(
            m=sql.SQL(" match full" if self.match_full else ""),
            t=qn(self.table), n=ident(self.name), c=ident(self.column), rt=qn(self.ref_table),
            rc=ident(self.ref_column), od=sql.SQL(self.on_delete), ou=sql.SQL(self.on_update),
            df=sql.SQL(_deferral(self.deferrable, self.initially_deferred).lower()))]

    def probe(self) -> sql.Composable:
        return self.exists_probe()

    def reverse(self) -> Operation:
        return DropConstraint(self.table, self.name)


@dataclass(frozen=True)
class AddCheckNotValid(_ConstraintOp):
    """Safe alone: new writes must satisfy it, which the triggers that fill the column guarantee; existing rows are
    not checked."""

    safe_alone: ClassVar[bool] = True

    check: sql.Composable
    why: str = ""

    @property
    def description(self) -> str:
        return f"add check constraint {self.name} on {self.table}, NOT VALID" + (f": {self.why}" if self.why else "")

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("alter table {} add constraint {} check ({}) not valid").format(
            qn(self.table), ident(self.name), self.check)]

    def probe(self) -> sql.Composable:
        return self.exists_probe()

    def reverse(self) -> Operation:
        return DropConstraint(self.table, self.name)


@dataclass(frozen=True)
class ValidateConstraint(_ConstraintOp):
    """Safe alone: checks existing rows only; writes are unaffected whether it ran or not."""

    safe_alone: ClassVar[bool] = True

    @property
    def description(self) -> str:
        return f"validate {self.name} on {self.table} (reads every row; reads and writes go on meanwhile)"

    @property
    def lock(self) -> Lock:
        return Lock.SHARE_UPDATE_EXCLUSIVE

    @property
    def cost(self) -> Cost:
        return Cost.SCANS

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("alter table {} validate constraint {}").format(qn(self.table), ident(self.name))]


@dataclass(frozen=True)
class DropConstraint(_ConstraintOp):
    """Safe alone: only allows more."""

    safe_alone: ClassVar[bool] = True

    @property
    def description(self) -> str:
        return f"drop constraint {self.name} on {self.table}"

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("alter table {} drop constraint if exists {}").format(qn(self.table), ident(self.name))]

    def drops(self) -> tuple[sql.Composable, ...]:
        return (objects.constraint(self.table, self.name),)


def _deferral(deferrable: bool, initially_deferred: bool) -> str:
    return (" DEFERRABLE INITIALLY DEFERRED" if initially_deferred else " DEFERRABLE") if deferrable else ""


@dataclass(frozen=True)
class AddKeyUsingIndex(_ConstraintOp):
    """Turn a valid unique index into the table's primary key or a unique constraint (a catalog change: its
    columns are NOT NULL already where a primary key needs it, so nothing is scanned).

    Safe alone: the unique index it turns into a key already enforces the same rule.
    """

    safe_alone: ClassVar[bool] = True

    kind: str  # "primary key" or "unique"
    index: str  # an index of the same table; Postgres renames it to the constraint's name
    deferrable: bool = False
    initially_deferred: bool = False
    why: str = ""

    @property
    def description(self) -> str:
        return (f"make index {self.index} the {self.kind} constraint {self.name} of {self.table}"
                + (f": {self.why}" if self.why else ""))

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("alter table {} add constraint {} {} using index {}{}").format(
            qn(self.table), ident(self.name), sql.SQL(self.kind), ident(self.index),
            sql.SQL(_deferral(self.deferrable, self.initially_deferred).lower()))]

    def probe(self) -> sql.Composable:
        return self.exists_probe()
