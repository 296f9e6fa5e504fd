"""Operations for partitioned tables, where Postgres has no online form of the plain-table one.

- An index on a partitioned table cannot be built CONCURRENTLY: its own index is made empty and invalid
  (`CREATE INDEX … ON ONLY`), each leaf partition's is built concurrently and attached
  (`ALTER INDEX … ATTACH PARTITION`), and the parent's becomes valid once every partition's is attached.
  A partition attached to the table later gets its index built by its own ATTACH PARTITION.
- Nor dropped CONCURRENTLY: `DROP INDEX` takes ACCESS EXCLUSIVE on the table and every partition, for a
  catalog change (no rows are read); the lock wait is bounded by lock_timeout and retried like any DDL.
- A foreign key cannot be added NOT VALID to a partitioned table before PostgreSQL 18: each leaf partition
  gets it NOT VALID and validated (a read that blocks no writes), then the partitioned table's own is added;
  Postgres attaches the partitions' validated keys to it instead of checking their rows again, so that
  step reads no rows (a partition attached since, which has none of its own, is checked then, under the
  step's SHARE ROW EXCLUSIVE lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import ident, qn
from pgconverge.operations import objects
from pgconverge.operations.base import Cost, Lock, Operation
from pgconverge.operations.create_index import CreateIndexConcurrently, DropIndexConcurrently


@dataclass(frozen=True)
class CreateIndexShell(Operation):
    """A partitioned table's own index, empty and invalid until its partitions' indexes are attached.

    Safe alone: an index changes no result.
    """

    safe_alone: ClassVar[bool] = True

    name: QualifiedName
    table: QualifiedName
    statement: sql.Composable  # CREATE INDEX IF NOT EXISTS … ON ONLY …
    attach_to: QualifiedName | None = None  # the parent table's index, for a sub-partitioned partition
    why: str = ""

    @property
    def description(self) -> str:
        to = f", attached to {self.attach_to}" if self.attach_to else ""
        return (f"create index {self.name} on only {self.table}{to} (the partitioned table's own index: a catalog "
                "change; each partition's is built concurrently and attached)" + (f": {self.why}" if self.why else ""))

    @property
    def lock(self) -> Lock:
        return Lock.SHARE  # on the partitioned table alone, which holds no rows: held for a catalog change

    @property
    def lock_target(self) -> str:
        return str(self.table)

    def statements(self) -> list[sql.Composable]:
        out = [self.statement]
        if self.attach_to is not None:
            out.append(attach_index(self.attach_to, self.name))
        return out

    def reverse(self) -> Operation:
        return DropIndex(self.name, self.table)


@dataclass(frozen=True)
class CreateLeafIndex(CreateIndexConcurrently):
    """One leaf partition's index, built concurrently, then attached to the partitioned table's index.

    Safe alone: an index changes no result; a failed build leaves an invalid index that is rebuilt on resume.
    """

    safe_alone: ClassVar[bool] = True

    attach_to: QualifiedName = QualifiedName("", "")

    @property
    def description(self) -> str:
        return (f"build index {self.name} on the partition {self.table} concurrently and attach it to "
                f"{self.attach_to}" + (f": {self.why}" if self.why else ""))

    def statements(self) -> list[sql.Composable]:
        # IF NOT EXISTS in the build, and an attach that is a no-op when done: a run killed between the two
        # resumes by attaching.
        return [self.statement, attach_index(self.attach_to, self.name)]

    def probe(self) -> sql.Composable:
        """True when a valid index of this name is on this partition and attached to the parent's index."""
        return sql.SQL("select coalesce((select i.indisvalid and exists (select 1 from pg_catalog.pg_inherits h "
                       "where h.inhrelid = i.indexrelid and h.inhparent = pg_catalog.to_regclass({p})) "
                       "from pg_catalog.pg_index i where i.indexrelid = pg_catalog.to_regclass({n}) "
                       "and i.indrelid = pg_catalog.to_regclass({t})), false)").format(
            p=sql.Literal(str(self.attach_to)), n=sql.Literal(str(self.name)), t=sql.Literal(str(self.table)))

    def reverse(self) -> Operation:
        return DropIndexConcurrently(self.name, self.table)


def attach_index(parent: QualifiedName, child: QualifiedName) -> sql.Composable:
    return sql.SQL("alter index {} attach partition {}").format(qn(parent), qn(child))


@dataclass(frozen=True)
class DropIndex(Operation):
    """DROP INDEX of a partitioned table's index (there is no CONCURRENTLY for one), with the partitions'.

    Safe alone: an index changes no result (a unique one is dropped only once its rule moved to another).
    """

    safe_alone: ClassVar[bool] = True

    name: QualifiedName
    table: QualifiedName

    @property
    def description(self) -> str:
        return (f"drop index {self.name} of the partitioned table {self.table} and its partitions' (a catalog "
                "change; Postgres cannot drop a partitioned index concurrently)")

    @property
    def lock_target(self) -> str:
        return str(self.table)

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("drop index if exists {}").format(qn(self.name))]

    def drops(self) -> tuple[sql.Composable, ...]:
        return (objects.relation(self.name),)


@dataclass(frozen=True)
class AddForeignKey(Operation):
    """The partitioned table's own foreign key, once every leaf partition has a validated one.

    Safe alone: every leaf already has the same, validated foreign key.
    """

    safe_alone: ClassVar[bool] = True

    table: QualifiedName
    name: str
    column: str
    ref_table: QualifiedName
    ref_column: str
    on_delete: str
    on_update: str
    partitions: tuple[QualifiedName, ...] = ()  # the leaves that already carry it, validated
    deferrable: bool = False  # as the partitions' (Postgres attaches only an identical key)
    initially_deferred: bool = False
    match_full: bool = False

    @property
    def description(self) -> str:
        return (f"add foreign key {self.name}: {self.table}({self.column}) → {self.ref_table}({self.ref_column}) "
                f"ON DELETE {self.on_delete} on the partitioned table: Postgres attaches the {len(self.partitions)} "
                "partitions' validated keys and reads no rows (a partition attached since is checked now)")

    @property
    def lock(self) -> Lock:
        return Lock.SHARE_ROW_EXCLUSIVE  # on the table, its partitions and the referenced table

    @property
    def lock_target(self) -> str:
        return str(self.table)

    @property
    def cost(self) -> Cost:
        return Cost.INSTANT

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("alter table {t} add constraint {n} foreign key ({c}) references {rt} ({rc}){m} "
                        "on delete {od} on update {ou}{df}").format(
            m=sql.SQL(" match full" if self.match_full else ""), t=qn(self.table), n=ident(self.name), c=ident(self.column), rt=qn(self.ref_table),
            rc=ident(self.ref_column), od=sql.SQL(self.on_delete), ou=sql.SQL(self.on_update),
            df=sql.SQL((" deferrable initially deferred" if self.initially_deferred else " deferrable")
                       if self.deferrable else ""))]

    def probe(self) -> sql.Composable:
        return sql.SQL("select exists (select 1 from pg_catalog.pg_constraint where conrelid = {}::regclass "
                       "and conname = {})").format(sql.Literal(str(self.table)), sql.Literal(self.name))


@dataclass(frozen=True)
class IndexLatePartitions(Operation):
    """Give every leaf partition that has none an index attached to the partitioned table's (ROOT's SHELL):
    partitions attached after the plan was made and before the shell existed (ATTACH builds it for those
    attached later). Built without CONCURRENTLY, inside one DO block: each such partition is locked SHARE
    (writes to it wait) while its index is built; the planned ones have theirs already and are not touched.

    Safe alone: an index changes no result.
    """

    safe_alone: ClassVar[bool] = True

    table: QualifiedName
    shell: QualifiedName
    statement: sql.Composable  # the DO block

    @property
    def description(self) -> str:
        return (f"build the index of {self.shell} on any leaf partition of {self.table} attached since the plan was "
                "made that has none (SHARE on that partition while it builds), and attach it")

    @property
    def lock(self) -> Lock:
        return Lock.SHARE

    @property
    def lock_target(self) -> str:
        return str(self.table)

    @property
    def cost(self) -> Cost:
        return Cost.SCANS

    def statements(self) -> list[sql.Composable]:
        return [self.statement]
