"""Planning for partitioned dependent tables (pure: no connection).

The reference is the foreign key declared on the partitioned table; everything that can be done on it once
is (the new column, NOT NULL through a validated check, the sync trigger, which Postgres clones onto every
partition, present and future). What Postgres cannot do online on a partitioned table is done per
partition (see operations/partitions.py): indexes (an empty index on the partitioned table, then each leaf's
built concurrently and attached), foreign keys (NOT VALID and validated per leaf, then the partitioned
table's own, which adopts them), and the backfill, which walks each leaf partition by its own key, or by
pages where it has no single-column one.

A partition attached while the migration runs gets the column (ATTACH requires it), the trigger, the
indexes (built by its ATTACH) and the foreign key (checked when the partitioned table's own is added)
from Postgres. Its rows are filled by a last backfill step that walks every leaf the plan did not list,
found when it runs; where one is attached after that, the invariants gate names its rows and sends that
step back to be run again by the next `pgconverge run expand`.
"""

from __future__ import annotations

from collections.abc import Callable

from psycopg import sql

from pgconverge.catalog.model import Catalog, Dependent, Partition
from pgconverge.config import QualifiedName, Spec
from pgconverge.execution.sql import body, qn, text
from pgconverge.operations.base import Operation
from pgconverge.operations.batched import Batched
from pgconverge.operations.create_function import CreateFunction
from pgconverge.operations.create_index import DropIndexConcurrently
from pgconverge.operations.partitions import CreateIndexShell, CreateLeafIndex, DropIndex, IndexLatePartitions
from pgconverge.planning import references
from pgconverge.planning.index_mirror import MAX_NAME, index_statement


def short_names(parts: tuple[Partition, ...] | list[Partition]) -> dict[QualifiedName, str]:
    """Step-id names of partitions: the bare name unless two schemas share it."""
    bare = [p.table.name.name for p in parts]
    return {p.table.name: (p.table.name.name if bare.count(p.table.name.name) == 1
                           else f"{p.table.name.schema}_{p.table.name.name}") for p in parts}


def leaves(d: Dependent, live: Catalog | None = None) -> list[Partition]:
    """D's leaf partitions as planned, and (when LIVE is given) those attached since; none that is gone."""
    out = list(d.leaves)
    now = next((x for x in (live.dependents if live else ()) if references.key(x) == references.key(d)), None)
    if now is not None and now.partitioned:
        have = {p.table.name for p in now.leaves}
        out = [p for p in out if p.table.name in have]
        out += [p for p in now.leaves if p.table.name not in {q.table.name for q in out}]
    return out


def detached(d: Dependent, live: Catalog | None, new: str
             ) -> tuple[list[Dependent], list[tuple[QualifiedName, QualifiedName]]]:
    """D's partitions as planned that LIVE shows detached since (an old year archived), the topmost of each branch,
    still carrying the column NEW the partitioned table gave them (and with it what pgconverge made on it): (those
    standing alone, each as the reference it keeps, the copy of D's foreign key Postgres leaves on a partition it
    detaches; those attached to another table since, as (partition, its parent now)). A detached partition whose
    legacy key is gone too, or that was dropped, is not among them: LIVE does not show it."""
    if live is None:
        return [], []
    now = next((x for x in live.dependents if references.key(x) == references.key(d)), None)
    if now is None or not now.partitioned:
        return [], []
    have = {p.table.name for p in now.partitions}
    gone = {p.table.name for p in d.partitions if p.table.name not in have}
    alone: list[Dependent] = []
    elsewhere: list[tuple[QualifiedName, QualifiedName]] = []
    for p in d.partitions:
        if p.table.name not in gone or p.parent in gone:
            continue
        own = next((x for x in live.dependents if x.table.name == p.table.name and x.fk.columns == d.fk.columns),
                   None)
        if own is not None and own.partition_of is None:
            if own.table.column(new) is not None:
                alone.append(own)
            continue
        # where it keeps no reference of its own: the partition of another table it is now
        q = None if own is not None else next(
            (q for x in live.dependents for q in x.partitions if q.table.name == p.table.name), None)
        parent, table = (own.partition_of, own.table) if own is not None else (q.parent, q.table) if q else (None, None)
        if parent is not None and table is not None and table.column(new) is not None:
            elsewhere.append((p.table.name, parent))
    return alone, elsewhere


# -- indexes -----------------------------------------------------------------------------------------


def index_names(d: Dependent, root_legacy: str | None, name: Callable[[Partition, str | None], str]
                ) -> dict[QualifiedName, str]:
    """For every partition, the name NAME gives it from its own index attached to ROOT_LEGACY (through
    the sub-partitions' indexes), or from None where it has none."""
    legacy: dict[QualifiedName, str | None] = {d.table.name: root_legacy}
    out: dict[QualifiedName, str] = {}
    for p in d.partitions:  # top-down: a partition's parent comes first
        above = legacy.get(p.parent)
        legacy[p.table.name] = p.index_of(above) if above else None
        out[p.table.name] = name(p, legacy[p.table.name])
    return out


def index_tree(d: Dependent, definition: str, root: str, names: dict[QualifiedName, str], why: str,
               renames: dict[str, str] | None = None
               ) -> tuple[list[tuple[str, Operation]], list[tuple[str, Operation]]]:
    """(shells, builds) of DEFINITION's index on D named ROOT, each partition's named by NAMES.

    Shells, top-down: the partitioned table's own index and every sub-partitioned partition's (attached to
    its parent's), empty and instant. Builds: each leaf's, concurrently, attached to its parent's.
    Each as (step-id suffix, operation).
    """
    shorts = short_names(d.partitions)
    index_of = {d.table.name: QualifiedName(d.table.name.schema, root)}
    for p in d.partitions:
        index_of[p.table.name] = QualifiedName(p.table.name.schema, names[p.table.name])
    shells: list[tuple[str, Operation]] = [("", CreateIndexShell(
        index_of[d.table.name], d.table.name, sql.SQL(index_statement(
            definition, name=root, table=d.table.name, only=True, concurrent=False, renames=renames)), why=why))]
    builds: list[tuple[str, Operation]] = []
    for p in d.partitions:
        t = p.table.name
        stmt = sql.SQL(index_statement(definition, name=names[t], table=t, only=not p.leaf, concurrent=p.leaf,
                                       renames=renames))
        if p.leaf:
            builds.append((shorts[t], CreateLeafIndex(index_of[t], t, stmt, why, attach_to=index_of[p.parent])))
        else:
            shells.append((shorts[t], CreateIndexShell(index_of[t], t, stmt, index_of[p.parent], why)))
    builds.append(("attached", late_index(d, index_of[d.table.name], definition, renames)))
    return shells, builds


def late_index(d: Dependent, shell: QualifiedName, definition: str, renames: dict[str, str] | None
               ) -> IndexLatePartitions:
    """The index of SHELL on every leaf partition found without one when the step runs (see the operation)."""
    marker = QualifiedName("pgc_late_schema", "pgc_late_table")
    stmt = index_statement(definition, name="pgc_late_index", table=marker, only=False, concurrent=False,
                           if_not_exists=False, renames=renames)
    template = stmt.replace("%", "%%").replace("pgc_late_schema.pgc_late_table", "%2$s").replace(
        "pgc_late_index", "%1$I")
    suffix = "_" + shell.name[-40:]
    code = sql.SQL("""
declare
  leaf regclass;
  parent regclass;
  parent_index regclass;
  name text;
  n integer;
begin
  for leaf, parent in select t.relid, t.parentrelid from pg_catalog.pg_partition_tree({root}::regclass) t
                      where t.isleaf loop
    select i.indexrelid::regclass into parent_index from pg_catalog.pg_index i
      where i.indrelid = parent and (i.indexrelid = {shell}::regclass
        or {shell}::regclass in (select a.relid from pg_catalog.pg_partition_ancestors(i.indexrelid) a));
    continue when parent_index is null or exists (
      select 1 from pg_catalog.pg_inherits h join pg_catalog.pg_index x on x.indexrelid = h.inhrelid
      where h.inhparent = parent_index and x.indrelid = leaf);
    name := left((select c.relname from pg_catalog.pg_class c where c.oid = leaf), 63 - length({suffix})) || {suffix};
    n := 1;
    while exists (select 1 from pg_catalog.pg_class c where c.relname = name
                  and c.relnamespace = (select relnamespace from pg_catalog.pg_class where oid = leaf)) loop
      n := n + 1;
      name := left(name, 60) || n::text;
    end loop;
    execute pg_catalog.format({template}, name, leaf);
    execute pg_catalog.format('alter index %s attach partition %I.%I', parent_index,
      (select nspname from pg_catalog.pg_namespace where oid = (select relnamespace from pg_catalog.pg_class
       where oid = leaf)), name);
  end loop;
end""").format(root=sql.Literal(str(d.table.name)), shell=sql.Literal(str(shell)), suffix=sql.Literal(suffix),
               template=sql.Literal(template))
    return IndexLatePartitions(d.table.name, shell, sql.SQL("do {}").format(body(code)))


def index_drops(d: Dependent, root: str, names: dict[QualifiedName, str]) -> list[tuple[str, Operation]]:
    """Undo index_tree: the partitioned table's index (and with it every attached one), then whatever
    partition index was left unattached by an interrupted run."""
    shorts = short_names(d.partitions)
    out: list[tuple[str, Operation]] = [("", DropIndex(QualifiedName(d.table.name.schema, root), d.table.name))]
    for p in d.partitions:
        t = p.table.name
        idx = QualifiedName(t.schema, names[t])
        out.append((shorts[t], DropIndexConcurrently(idx, t) if p.leaf else DropIndex(idx, t)))
    return out


def fresh_name(base: str, taken: set[str]) -> str:
    name, n = base[:MAX_NAME], 1
    while name in taken:
        n += 1
        suffix = f"_{n}"
        name = base[:MAX_NAME - len(suffix)] + suffix
    taken.add(name)
    return name


def taken_names(d: Dependent) -> set[str]:
    return {i.name.name for t in (d.table, *(p.table for p in d.partitions)) for i in t.indexes}


# -- the backfill of partitions the plan does not list ---------------------------------------------


def late_backfill(spec: Spec, d: Dependent, fn: QualifiedName, planned: list[QualifiedName],
                  set_: sql.Composable, from_: sql.Composable | None, where: sql.Composable, what: str,
                  settings: tuple = (), path: sql.Composable = sql.SQL("pg_catalog, pg_temp")
                  ) -> tuple[CreateFunction, Batched]:
    """(the function, the batched step) that walk, by pages, every leaf partition of D not in PLANNED.

    The leaves are listed when each batch runs, in oid order; the position is "<leaf oid>:<next page>".
    """
    pages = max(1, spec.migration.batch_size // 50)
    frm = sql.SQL(" from {}").format(from_) if from_ is not None else sql.SQL("")
    # One placeholder (%s, the leaf) for format(); every other % of the statement doubled for it.
    rest = text(sql.SQL(" d set {set}{frm} where d.ctid >= ('(' || $1 || ',0)')::tid "
                        "and d.ctid < ('(' || $2 || ',0)')::tid and {where} returning 1").format(
        set=set_, frm=frm, where=where))
    template = "with u as (update %s" + rest.replace("%", "%%") + ") select count(*) from u"
    code = sql.SQL("""
declare
  leaf oid;
  from_leaf oid := coalesce(nullif(pg_catalog.split_part(after, ':', 1), '')::oid, 0::oid);
  page bigint := coalesce(nullif(pg_catalog.split_part(after, ':', 2), '')::bigint, 0);
  size bigint;
  done bigint;
begin
  for leaf in select t.relid from pg_catalog.pg_partition_tree({parent}::regclass) t
              where t.isleaf and t.relid::oid >= from_leaf
                and not t.relid = any(array(select pg_catalog.to_regclass(x) from pg_catalog.unnest({planned}::text[]) x))
              order by t.relid::oid loop
    if leaf <> from_leaf then
      page := 0;
    end if;
    size := pg_catalog.pg_relation_size(leaf) / pg_catalog.current_setting('block_size')::bigint;
    if page < size then
      execute pg_catalog.format({template}, leaf::regclass) using page, page + pages into done;
      scanned := pages;
      last_done := leaf::text || ':' || (page + pages)::text;
      changed := done;
      return next;
      return;
    end if;
  end loop;
  scanned := 0;
  last_done := after;
  changed := 0;
  return next;
end""").format(parent=sql.Literal(str(d.table.name)), planned=sql.Literal([text(qn(p)) for p in planned]),
               template=sql.Literal(template))
    create = CreateFunction(fn, "text, bigint", sql.SQL(
        "create or replace function {f}(after text, pages bigint) returns table (scanned bigint, last_done text, "
        "changed bigint) language plpgsql volatile set search_path = {path} set row_security = off "
        "as {b}").format(f=qn(fn), b=body(code), path=path),
        why=f"backfill the leaf partitions of {d.table.name} attached after expand was planned")
    stmt = (sql.SQL("b as (select * from {}(%(after)s::text, %(n)s::bigint))").format(qn(fn)),
                       sql.SQL("b.scanned, b.last_done, b.changed from b"))
    return create, Batched(d.table.name, "ctid", "text", batch_size=pages,
                           what=f"{what}, in leaf partitions attached since the plan was made ({pages} pages per "
                           "transaction)", settings=settings, parts=stmt)
