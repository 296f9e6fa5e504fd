"""The expand phase (T1): a new column for every reference, kept in sync, backfilled, constrained.

A reference is one foreign key to the legacy key; planning/references.py names its new column, and
everything derived (step ids, trigger, functions, index, foreign key, check) comes from it, so a table
with two references (`buyer_id`, `seller_id`) gets two of each. A partitioned table is planned once, on
the table itself; what Postgres cannot do online there is done partition by partition
(planning/partitions.py).
"""

from __future__ import annotations

import dataclasses
import hashlib

from psycopg import sql

from pgconverge.catalog.model import Catalog, Dependent, Index, Table
from pgconverge.config import QualifiedName, Spec, show_identifier
from pgconverge.errors import CatalogError
from pgconverge.execution.sql import body, bounded, ident, qn, text
from pgconverge.operations.base import Operation, Step
from pgconverge.operations.batched import Batched, max_key
from pgconverge.operations.check import Check
from pgconverge.operations.columns import AddColumn, DropNotNull, SetNotNull
from pgconverge.operations.constraints import (
    AddCheckNotValid, AddForeignKeyNotValid, DropConstraint, ValidateConstraint,
)
from pgconverge.operations.create_function import CreateFunction
from pgconverge.operations.create_index import CreateIndexConcurrently, simple_index
from pgconverge.operations.create_trigger import CreateTrigger
from pgconverge.operations.grant import GrantColumn
from pgconverge.operations.partitions import AddForeignKey
from pgconverge.operations.run_sql import RunSql
from pgconverge.operations.together import Together
from pgconverge.planning import align, partitions, references, shapes
from pgconverge.planning.index_mirror import contains_column, mirror, mirrored_names

PHASE = "expand"
# Triggers of one kind fire in the C order of their names: the leading '!' sorts before every letter, digit and
# underscore, so the sync trigger fills both ids before any BEFORE trigger of the application reads them (plan
# refuses a BEFORE row trigger whose name sorts first even so; see planning/shapes.py). A table with several
# references has one per reference, suffixed with its legacy column.
TRIGGER = "!pgconverge_sync"
# On a table where an application BEFORE row trigger fires after the sync trigger (it may set the owner itself: from
# the caller's token, or back to the old owner), the same function fires again under this name, last of all ('~'
# sorts after letters, digits and '_'), and brings the two ids back into agreement, following the one that moved
# since the first firing. plan refuses an application trigger whose name sorts after it.
LAST_TRIGGER = "~pgconverge_sync"
# Where the legacy foreign key is deferrable, old code may write a row before its legacy row in one transaction:
# the sync trigger then finds no mapping. This constraint trigger, deferred to the commit, fills the new column of
# such a row then (and, where the new column is to be NOT NULL, checks it then; see fill_function).
FILL_TRIGGER = "pgconverge_fill_at_commit"
# Where the legacy column was NOT NULL: refuses a row with neither id from the moment that NOT NULL is dropped until
# the new column's own is in place (see owner_guard).
OWNER_TRIGGER = "~~pgconverge_owner"
# Set by the backfill's own transactions: its UPDATE joins the mapping itself, so the sync trigger
# has nothing to add there, and skipping it (in the trigger's WHEN, before any function call) keeps
# the backfill close to a single UPDATE's speed.
BACKFILL_SETTING = align.BACKFILL_SETTING
LATE_ARGS = "text, bigint"  # the late-partition backfill function's arguments


class Names:
    """Names of what expand creates for one reference.

    CAT gives the reference's new column (planning/references.py); without it, migration.new_column.
    A table with several references suffixes its per-table names (trigger, functions) with the legacy column.
    """

    def __init__(self, spec: Spec, dep: Dependent, short: str, cat: Catalog | None = None):
        t = dep.table.name
        self.short = short
        self.legacy = dep.fk.columns[0]
        self.new = new = references.new_column(spec, cat, dep) if cat is not None else spec.migration.new_column
        own = f"_{self.legacy}" if cat is not None and references.several(cat, dep) else ""
        private = spec.migration.private_schema
        self.trigger = bounded(f"{TRIGGER}{own}")
        self.last_trigger = bounded(f"{LAST_TRIGGER}{own}")
        self.fill_trigger = bounded(f"{FILL_TRIGGER}{own}")
        self.sync_fn = QualifiedName(private, bounded(f"sync_{t.schema}_{t.name}{own}"))
        self.fill_fn = QualifiedName(private, bounded(f"fill_{t.schema}_{t.name}{own}"))
        self.late_fn = QualifiedName(private, bounded(f"backfill_{t.schema}_{t.name}{own}"))
        # Counts the rows old code writes with the legacy column alone (see old_writes_sequence)
        self.old_writes = QualifiedName(private, bounded(f"old_writes_{t.schema}_{t.name}{own}"))
        self.fk = bounded(f"{t.name}_{new}_fkey")
        self.not_null_check = bounded(f"{t.name}_{new}_not_null")
        # A row still needs one of the two ids while the legacy column's NOT NULL is down (see owner_guard)
        self.owner_trigger = bounded(f"{OWNER_TRIGGER}{own}")
        self.owner_fn = QualifiedName(private, bounded(f"owner_{t.schema}_{t.name}{own}"))
        self.plain_index = QualifiedName(t.schema, bounded(f"idx_{t.name}_{new}"))


def short_names(cat: Catalog) -> dict[tuple[QualifiedName, str], str]:
    """Step-id names of references, by references.key: the table's bare name unless two schemas share it,
    followed by the legacy column where the table has several references."""
    tables = list(dict.fromkeys(d.table.name for d in cat.dependents))
    bare = [t.name for t in tables]
    out = {}
    for d in cat.dependents:
        t = d.table.name
        s = t.name if bare.count(t.name) == 1 else f"{t.schema}_{t.name}"
        out[references.key(d)] = f"{s}_{d.fk.columns[0]}" if references.several(cat, d) else s
    return _apart(out)


def _apart(names: dict) -> dict:
    """NAMES (key → name) where two keys came out alike (`billing.orders` as billing_orders beside a table of that
    name; `a_b.c` and `a.b_c` as a_b_c) with a hash of each key appended to theirs; the others as they are."""
    taken = list(names.values())
    return {k: v if taken.count(v) == 1 else f"{v}_{hashlib.md5(repr(k).encode()).hexdigest()[:6]}"
            for k, v in names.items()}


def names_of(spec: Spec, cat: Catalog) -> list[tuple[Dependent, Names]]:
    shorts = short_names(cat)
    out = [(d, Names(spec, d, shorts[references.key(d)], cat)) for d in cat.dependents]
    # The private schema's objects are named from schema and table joined by "_": two references may come out alike
    for attr in ("sync_fn", "fill_fn", "late_fn", "old_writes", "owner_fn"):
        apart = _apart({references.key(d): getattr(n, attr).name for d, n in out})
        for d, n in out:
            setattr(n, attr, QualifiedName(getattr(n, attr).schema, bounded(apart[references.key(d)])))
    return out


def plan(spec: Spec, cat: Catalog, cats=None) -> list[Step]:
    references.check(spec, cat)
    deps = names_of(spec, cat)
    for d, n in deps:
        _check_dependent(spec, d, n, getattr(cats, "last_expand", None))
    steps: list[Step] = []

    def add(dep_names: Names | None, what: str, op) -> None:
        sid = f"{PHASE}.{dep_names.short}.{what}" if dep_names else f"{PHASE}.{what}"
        steps.append(Step(sid, PHASE, op))

    # 0. Before any change: rows whose legacy id has no legacy row (a NOT VALID foreign key lets them be); every
    #    legacy row has its canonical row (a row old code wrote since align that could not be placed would leave its
    #    dependents' rows without the new id, and the NOT NULL check would stop expand half way); and rows that a
    #    mirrored unique index would reject once merged (planning/shapes.py).
    orphans = shapes.orphans(spec, cat)
    if orphans is not None:
        add(None, "orphans", orphans)
    add(None, "map_pending_first", align.map_pending(spec, cat))
    add(None, "coverage", align.coverage_gate(spec, cat, PHASE, redo=f"{PHASE}.map_pending_first"))
    collisions = shapes.collisions(spec, cat)
    if collisions is not None:
        add(None, "unique_collisions", collisions)

    ck = cat.canonical.column(spec.canonical.key)
    # 1. Catalog-only changes and the sync trigger on every table first: from here on, old and new
    #    code both write rows that carry both ids.
    for d, n in deps:
        legacy_col = d.fk.columns[0]
        add(n, "add_column", add_column(d, n, ck.value_type))
        if d.column.not_null and not shapes.in_primary_key(d):  # a key column keeps it until contract
            # The NOT NULL the application relied on to refuse a row with no owner (an application trigger that
            # found none, say) stands, over the two columns, until the new column's own is in place: a row with
            # neither id is refused from the first moment the legacy column may be NULL.
            add(n, "owner_check", owner_guard(spec, cat, d, n))
            add(n, "drop_legacy_not_null", DropNotNull(d.table.name, legacy_col,
                                                       why="new code may write only the new column"))
        sync = CreateFunction(n.sync_fn, "", _sync_function(spec, cat, d, n, reconciles(spec, cat, d, n)),
                              why=f"keep {legacy_col} and {n.new} of {d.table.name} consistent")
        fill = (fill_function(spec, cat, d, n),) if shapes.fills_at_commit(d) else ()
        add(n, "sync_function", Together((old_writes_sequence(n, d), *([helper_calls_sequence_op(spec)] if spec.has_helper else []), sync,
                                             *fill),
                                         "the function counts with the sequence"))
        add(n, "sync_trigger", sync_triggers(spec, cat, d, n))
        if d.partitioned:
            # The partitioned table's own (empty) indexes now, so a partition attached from here on gets
            # them built by its ATTACH; each leaf's is built concurrently after the backfill.
            shorts = partitions.short_names(d.partitions)
            for i, (_idx, _root, _names, shells, _builds) in enumerate(_partition_indexes(spec, cat, d, n)):
                for suffix, op in shells:
                    add(n, f"index_{i + 1}" + (f".{suffix}" if suffix else ""), op)
            for leaf in d.leaves:
                add(n, f"foreign_key.{shorts[leaf.table.name]}", _new_fk(spec, cat, d, n, leaf.table.name))
        else:
            add(n, "foreign_key", _new_fk(spec, cat, d, n, d.table.name))
    # 2. Legacy rows the align trigger could not decide when they were written: mapped now, with the sync triggers in
    #    place, so that the backfill finds a mapping for every row that points at them.
    add(None, "map_pending", align.map_pending(spec, cat))
    # 3. Backfill the rows written before the trigger existed.
    for d, n in deps:
        if d.partitioned:
            shorts = partitions.short_names(d.partitions)
            for leaf in d.leaves:
                add(n, f"backfill.{shorts[leaf.table.name]}", _backfill(spec, d, n, leaf.table))
            fn, late = _late_backfill(spec, cat, d, n)
            add(n, "backfill_function", fn)
            add(n, "backfill_attached", late)
        else:
            add(n, "backfill", _backfill(spec, d, n, d.table))
    # 4. Indexes, built concurrently; then the constraints that need every row filled.
    for d, n in deps:
        if d.partitioned:
            for i, (_idx, _root, _names, _shells, builds) in enumerate(_partition_indexes(spec, cat, d, n)):
                for suffix, op in builds:
                    add(n, f"index_{i + 1}.{suffix}", op)
        else:
            for i, op in enumerate(_indexes(spec, cat, d, n)):
                add(n, f"index_{i + 1}", op)
    for d, n in deps:
        if d.partitioned:
            shorts = partitions.short_names(d.partitions)
            for leaf in d.leaves:
                add(n, f"validate_foreign_key.{shorts[leaf.table.name]}", ValidateConstraint(leaf.table.name, n.fk))
            add(n, "attach_foreign_key", AddForeignKey(
                d.table.name, n.fk, n.new, cat.canonical.name, spec.canonical.key, d.fk.on_delete, d.fk.on_update,
                tuple(leaf.table.name for leaf in d.leaves), *shapes.fk_deferral(d)))
        else:
            add(n, "validate_foreign_key", ValidateConstraint(d.table.name, n.fk))
        for i, m in enumerate(_check_mirrors(spec, cat, d)):
            add(n, f"check_{i + 1}", AddCheckNotValid(d.table.name, m.name, sql.SQL(m.expression),
                                                      why=f"mirror of {m.original.name}"))
            if m.original.validated:
                add(n, f"validate_check_{i + 1}", ValidateConstraint(d.table.name, m.name))
        if d.column.not_null and not shapes.not_null_at_commit(d):
            # On a partitioned table too: the check is added NOT VALID to every partition, VALIDATE reads
            # them without blocking writes, and SET NOT NULL then reads none (the checks prove it).
            check = sql.SQL("{} is not null").format(ident(n.new))
            add(n, "not_null_check", AddCheckNotValid(d.table.name, n.not_null_check, check,
                                                      why=f"{n.new} is NOT NULL where {d.fk.columns[0]} was"))
            if d.partitioned:
                # A partition attached after its backfill would fail VALIDATE with its unfilled rows; one attached
                # from here on must carry the check itself. This gate names such rows and sends the walk of
                # attached partitions back, so the next run fills them and validates.
                add(n, "filled", _filled(spec, d, n))
            add(n, "validate_not_null_check", ValidateConstraint(d.table.name, n.not_null_check))
            add(n, "set_not_null", SetNotNull(d.table.name, n.new))
            add(n, "drop_not_null_check", DropConstraint(d.table.name, n.not_null_check))
        if d.column.not_null and not shapes.in_primary_key(d):
            # The new column's NOT NULL holds now, or (checked at commit) the fill trigger's check does.
            add(n, "drop_owner_check", drop_owner_guard(d, n))
    add(None, "references", references_gate(spec, cat))
    add(None, "invariants", invariants(spec, cat))
    return steps


def late_references(planned: Catalog, live: Catalog) -> list[Dependent]:
    """References of LIVE that PLANNED (the catalog expand was planned from) lacks: a table with a foreign key to the
    legacy table the application made (or a reference it added to a table) while expand ran or after it. Not one of
    a partition PLANNED had, detached since (contract names it, with the detach)."""
    known = {references.key(d) for d in planned.dependents}
    parts = {p.table.name for d in planned.dependents for p in d.partitions}
    return [d for d in live.dependents if references.key(d) not in known and d.table.name not in parts
            and d.partition_of is None]


def take_in(spec: Spec, cats, states: dict):
    """CATS with expand's saved catalog taking in the references the application made since expand was planned
    (late_references), so that `pgconverge run expand` does their steps (`expand.<table>.…`, not in the ledger) and
    leaves the steps it did alone. Expand's done checks whose query changes with them (the gates before its first
    change, its invariants) are sent back, to run again over them (Catalogs.send_back). Returns (catalogs, problems):
    PROBLEMS, why they cannot be taken in (the switch has begun, or a step expand did would change), leave CATS as
    they are."""
    from pgconverge.catalog.baseline import Catalogs

    planned, live = cats.saved.get(PHASE), cats.live
    if planned is None or live is None:
        return cats, []
    late = late_references(planned, live)
    if not late:
        return cats, []
    what = ", ".join(f"foreign key {d.fk.name} on {d.table.name}" for d in late)
    begun = sorted(sid for sid, st in states.items() if sid.split(".", 1)[0] in ("switch", "contract")
                   and st.state in ("done", "pending"))
    if begun:
        return cats, [f"{what} was made after expand was planned, and the switch has begun ({begun[0]}), so expand "
                      "cannot take it in"]
    tables = {d.table.name for d in late}
    names = {str(t) for t in tables}
    merged = dataclasses.replace(
        planned,
        dependents=tuple(sorted((*planned.dependents, *late), key=lambda d: (d.table.name, d.fk.name))),
        policies=(*planned.policies, *(p for p in live.policies if p.table in tables)),
        tables=(*planned.tables, *(t for t in live.tables if t.name in tables
                                   and all(x.name != t.name for x in planned.tables))),
        grants=(*planned.grants, *(g for g in live.grants if g.object_kind == "table" and g.object_name in names)),
        views=(*planned.views, *(v for v in live.views if v.name not in {x.name for x in planned.views}
                                 and any(r in tables for r in v.relation_refs))))
    then = Catalogs({**cats.saved, PHASE: merged}, live, cats.last_expand)
    try:
        before = {s.id: s for s in plan(spec, planned, cats)}
        after = {s.id: s for s in plan(spec, merged, then)}
    except CatalogError as exc:
        return cats, [f"{what} was made after expand was planned, and expand cannot take it in: {exc.problem}"]
    gone = [sid for sid in before if sid not in after]
    changed = [sid for sid, s in before.items() if sid in after and states.get(sid) is not None
               and states[sid].state in ("done", "pending")
               and after[sid].op.fingerprint() != s.op.fingerprint()]
    redone = [sid for sid in changed if before[sid].op.reads_only]
    moved = gone + [sid for sid in changed if sid not in redone]
    if moved:
        return cats, [f"{what} was made after expand was planned, and taking it in would change steps expand did "
                      f"({', '.join(moved[:5])})"]
    return dataclasses.replace(then, taken_in=tuple(sorted(names)), send_back=tuple(redone)), []


def add_column(d: Dependent, n: Names, type_: str) -> Operation:
    """The new column, with the column privileges the legacy column has in the same transaction: where the
    application's role may use only some columns of the table, new code's first statement naming it would
    otherwise be refused."""
    add = AddColumn(d.table.name, n.new, type_)
    if not d.column.privileges:
        return add
    return Together((add, GrantColumn(d.table.name, n.new, d.column.privileges, why=f"as on {d.fk.columns[0]}")),
                    f"new code may use {n.new} as soon as it exists")


def _new_fk(spec: Spec, cat: Catalog, d: Dependent, n: Names, table: QualifiedName) -> AddForeignKeyNotValid:
    return AddForeignKeyNotValid(table, n.fk, n.new, cat.canonical.name, spec.canonical.key, d.fk.on_delete,
                                 d.fk.on_update, *shapes.fk_deferral(d))


def _check_mirrors(spec: Spec, cat: Catalog, d: Dependent):
    """CHECK constraints mirrored for D: those of its table, with the table's first reference."""
    return shapes.check_mirrors(spec, cat, d.table) if shapes.first_reference(cat, d) else []


def _check_dependent(spec: Spec, d: Dependent, n: Names | None = None, earlier: Catalog | None = None) -> None:
    """Refuse a table that already has the new column. EARLIER: the catalog a previous expand was planned from; where
    the table was a partition there of a table that expand gave the column, the column is that expand's, left on it
    by a DETACH since."""
    new = n.new if n is not None else spec.migration.new_column
    if d.table.column(new) is None:
        return
    was = next((x for x in (earlier.dependents if earlier is not None else ()) if x.partitioned
                and x.fk.columns == d.fk.columns and references.new_column(spec, earlier, x) == new
                and any(p.table.name == d.table.name for p in x.partitions)), None)
    if was is not None and d.partition_of is None:
        parent, legacy, t = was.table.name, d.fk.columns[0], d.table.name
        restore = was.column.not_null and not d.column.not_null
        raise CatalogError(
            f"{d.table.name} has a column {new!r} that pgconverge's expand gave it as a partition of {parent}: it was "
            f"detached from {parent} since and kept the column"
            + (f" (and {legacy} without the NOT NULL expand dropped)" if restore else "")
            + ", which the rollback of that expand did not reach",
            fix=f"remove what expand left there, then run again: ALTER TABLE {t} DROP COLUMN {show_identifier(new)}"
                + (f"; and, once every row of it has {legacy}, ALTER TABLE {t} ALTER COLUMN {show_identifier(legacy)} "
                   "SET NOT NULL" if restore else ""))
    raise CatalogError(
        f"{d.table.name} already has a column {new!r} that pgconverge did not create",
        fix="set migration.new_column to another name (or give this reference one in migration.new_columns), "
            "or drop that column if it is a leftover of a migration done by hand")


def _key(t: Table, not_by: str | None = None) -> tuple[str, str] | None:
    """The single-column key a keyset scan of T can walk, if it has one other than NOT_BY.

    NOT_BY: the column the walk fills. A rollback's refill of the legacy column cannot walk by it (a table keyed by
    that column alone, `wallets(customer_id primary key)`): every value there is NULL until the refill is done."""
    if len(t.primary_key) == 1 and t.primary_key[0] != not_by:
        col = t.column(t.primary_key[0])
        return col.name, col.value_type
    for uk in t.unique_keys:
        col = t.column(uk[0]) if len(uk) == 1 else None
        if col is not None and col.not_null and col.name != not_by:
            return col.name, col.value_type
    return None


def _fill(spec: Spec, n: Names) -> tuple[sql.Composable, sql.Composable, sql.Composable]:
    """(SET, FROM, WHERE) of the backfill: rows whose new column is still empty, through the mapping."""
    m = align.names(spec)["mapping"]
    p = dict(l=ident(n.legacy), n=ident(n.new), m=qn(m), ml=ident(spec.mapping_legacy_column),
             mn=ident(spec.migration.new_column))
    return (sql.SQL("{n} = m.{mn}").format(**p), sql.SQL("{m} m").format(**p),
            sql.SQL("d.{n} is null and d.{l} is not null and m.{ml} = d.{l}").format(**p))


def _backfill(spec: Spec, d: Dependent, n: Names, table: Table) -> Batched:
    """UPDATE, batch by batch, the rows of TABLE (D's, or one of its leaf partitions) whose new column is
    still empty; rows the trigger filled are skipped."""
    set_, from_, where = _fill(spec, n)
    return batched_update(spec, table, set_, from_, where,
                          f"backfill {table.name}.{n.new} from {n.legacy} through the mapping",
                          ((BACKFILL_SETTING, "on"),), parallel=True, by_pages=True)


def _late_backfill(spec: Spec, cat: Catalog, d: Dependent, n: Names) -> tuple[CreateFunction, Batched]:
    set_, from_, where = _fill(spec, n)
    return partitions.late_backfill(spec, d, n.late_fn, [p.table.name for p in d.leaves], set_, from_, where,
                                    f"backfill {d.table.name}.{n.new} from {n.legacy} through the mapping",
                                    ((BACKFILL_SETTING, "on"),), path=align.search_path(spec, cat))


# Key types whose values come in no particular order: a keyset walk over them visits the heap at random, one page
# per row (a batch of 500 sessions rows touched about 500 pages), where a walk by pages reads each page once.
_SCATTERED_KEY_TYPES = ("uuid", "text", "character varying", "varchar", "bytea", "citext", "character", "name")


def scattered_key(key_type: str) -> bool:
    """True when a key of KEY_TYPE is unlikely to follow the heap's physical order (random or textual values)."""
    return key_type.split("(")[0].strip().lower() in _SCATTERED_KEY_TYPES


# A batch of a walk by pages takes its page range from pg_class in the statement itself, so the planner cannot
# know how many rows it holds and assumes thousands: with the mapping's statistics in place it then joins by
# hashing the whole mapping, once per batch (at a million mapping rows, 20-26 ms a batch idle against 6-8 ms for
# a nested loop through the mapping's key, and the gap grows with the mapping). The batch transactions rule
# those joins out; a batch holds a few hundred rows, for which a nested loop is the plan.
PAGE_WALK_SETTINGS = (("enable_hashjoin", "off"), ("enable_mergejoin", "off"))


def batched_update(spec: Spec, d: Dependent | Table, set_: sql.Composable, from_: sql.Composable | None,
                   where: sql.Composable, what: str, settings: tuple = (), parallel: bool = False,
                   by_pages: bool = False, not_by: str | None = None) -> Batched:
    """UPDATE d SET SET_ [FROM FROM_] WHERE WHERE over the table in key order, or in page order.

    D is a dependent (its table) or a table: a leaf partition is walked on its own.
    Each batch is one short transaction that locks at most about batch-size rows.
    Page order is taken for a table without a usable key, and, with BY_PAGES, for a table whose key's values are
    scattered over the heap (scattered_key): a key order there reads a different page for every row.
    NOT_BY: the column SET_ fills, which the walk must not go by (see _key).
    """
    table = d.table if isinstance(d, Dependent) else d
    key = _key(table, not_by)
    p = dict(t=qn(table.name), set=set_, where=where,
             frm=sql.SQL(", {}").format(from_) if from_ is not None else sql.SQL(""))
    if key is not None and not (by_pages and scattered_key(key[1])):
        k, ty = key
        stmt = (sql.SQL(
            "b as (select d.{k} from {t} d where (%(after)s::{ty} is null or d.{k} > %(after)s::{ty}) "
            "and (%(upper)s::{ty} is null or d.{k} <= %(upper)s::{ty}) order by d.{k} limit %(n)s), "
            "u as (update {t} d set {set} from b{frm} where d.{k} = b.{k} and {where} returning 1)").format(
            **p, k=ident(k), ty=sql.SQL(ty)), sql.SQL(
            "(select count(*) from b), (select b.{k} from b order by b.{k} desc limit 1), "
            "(select count(*) from u)").format(k=ident(k)))
        return Batched(table.name, k, ty, batch_size=spec.migration.batch_size, what=what,
                       upper_bound=max_key(table.name, k), settings=settings, parallel=parallel, parts=stmt)
    return Batched(table.name, "ctid", "bigint", batch_size=spec.migration.batch_size,
                   what=f"{what} (in page order, {spec.migration.batch_size} rows' worth of pages per transaction"
                   + ((f": no key but {not_by}, which it fills)" if not_by is not None and _key(table) is not None
                       else ": no key)") if key is None else f": {key[0]} is a {key[1]}, scattered over the table)"),
                   upper_bound=last_page(table.name), settings=settings + PAGE_WALK_SETTINGS, parallel=parallel,
                   sweep=sweep_batch(table.name, set_, from_, where), sweep_find=sweep_find(table.name, from_, where),
                   sweep_fill=sweep_fill(table.name, set_, from_, where),
                   parts=page_batch(table.name, set_, from_, where))


def last_page(table: QualifiedName) -> sql.Composable:
    """The table's last page when the walk starts (NULL for a table without pages): rows moved past it later are
    either filled by the sync trigger or found by the sweep."""
    return sql.SQL("select nullif(pg_catalog.pg_relation_size({}::regclass) / "
                   "pg_catalog.current_setting('block_size')::bigint, 0) - 1").format(sql.Literal(str(table)))


def page_batch(table: QualifiedName, set_: sql.Composable, from_: sql.Composable | None,
               where: sql.Composable) -> tuple[sql.Composable, sql.Composable]:
    """One batch of a walk by pages: the pages after %(after)s (a page number, NULL at the start) up to about
    %(n)s rows' worth (from the table's pages/rows statistics), never past %(upper)s. The statement (its halves,
    Batched.parts) returns (rows on those pages, at least 1 while pages remain; 0 once past %(upper)s), the last
    page done, the rows changed."""
    frm = sql.SQL(" from {}").format(from_) if from_ is not None else sql.SQL("")
    lo = sql.SQL("(coalesce(%(after)s::bigint, -1) + 1)")
    pages = sql.SQL(
        "(select case when c.reltuples > 0 and c.relpages > 0 "
        "then greatest(1, ceil(%(n)s::float8 * c.relpages / c.reltuples))::bigint "
        "else greatest(1, %(n)s::bigint / 50) end from pg_catalog.pg_class c where c.oid = {}::regclass)").format(
        sql.Literal(str(table)))
    hi = sql.SQL("least(%(upper)s::bigint, {lo} + {pages} - 1)").format(lo=lo, pages=pages)
    in_range = sql.SQL("d.ctid >= ('(' || {lo} || ',0)')::tid and d.ctid < ('(' || ({hi} + 1) || ',0)')::tid").format(
        lo=lo, hi=hi)
    return (sql.SQL(
        "u as (update {t} d set {set}{frm} where {in_range} and {where} returning 1), "
        "c as (select count(*) as n from {t} d where {in_range})").format(
        t=qn(table), set=set_, frm=frm, where=where, in_range=in_range), sql.SQL(
        "case when {lo} <= %(upper)s::bigint then greatest(1, (select c.n from c)) else 0 end, "
        "case when {lo} <= %(upper)s::bigint then {hi} else %(after)s::bigint end, "
        "(select count(*) from u)").format(lo=lo, hi=hi))


def sweep_find(table: QualifiedName, from_: sql.Composable | None, where: sql.Composable) -> sql.Composable:
    """After a walk by pages: the ctid, as text, of every row the walk missed (moved by an update that did not fire
    the sync trigger, from a page not yet walked to one walked already or past the last), in one snapshot and one
    read of the table. The runner fills them with sweep_fill, a batch at a time."""
    frm = sql.SQL(", {}").format(from_) if from_ is not None else sql.SQL("")
    return sql.SQL("select d.ctid::text from {t} d{frm} where {where}").format(t=qn(table), frm=frm, where=where)


def sweep_fill(table: QualifiedName, set_: sql.Composable, from_: sql.Composable | None,
               where: sql.Composable) -> sql.Composable:
    """Fill the rows at the ctids (text) %(keys)s that are still unfilled; returns the rows changed. A row an update
    moved again since it was found is not there any more: the sweep's next pass finds it at its new place."""
    frm = sql.SQL(" from {}").format(from_) if from_ is not None else sql.SQL("")
    return sql.SQL("with u as (update {t} d set {set}{frm} where d.ctid = any(%(keys)s::text[]::tid[]) and {where} "
                   "returning 1) select count(*) from u").format(t=qn(table), set=set_, frm=frm, where=where)


def sweep_batch(table: QualifiedName, set_: sql.Composable, from_: sql.Composable | None,
                where: sql.Composable) -> sql.Composable:
    """The sweep as one statement for the emitted files' batch procedure: up to %(n)s rows the walk missed, found
    in one snapshot and updated by ctid. Returns (rows found, no position, rows changed), the batch contract
    without a position; none found proves none is left. Each batch reads the table once (the runner reads it once
    for all of them: sweep_find).

    The rows are collected (sorted) before the first is locked, so a batch holds its row locks only for its update.
    """
    frm = sql.SQL(", {}").format(from_) if from_ is not None else sql.SQL("")
    return sql.SQL(
        "with b as (select d.ctid as k from {t} d{frm} where {where} order by d.ctid limit %(n)s), "
        "u as (update {t} d set {set} from b{frm} where d.ctid = b.k and {where} returning 1) "
        "select (select count(*) from b), null::text, (select count(*) from u)").format(
        t=qn(table), frm=frm, where=where, set=set_)


# -- indexes --------------------------------------------------------------------------------------------


def owned_indexes(cat: Catalog, d: Dependent) -> list[tuple[Index, dict[str, str] | None]]:
    """Indexes of D's table containing D's legacy column (its primary key's too), except those an earlier
    reference of the table already owns (an index on buyer_id and seller_id is mirrored once, both renamed)."""
    earlier = []
    for x in references.siblings(cat, d):
        if x is d or references.key(x) == references.key(d):
            break
        earlier.append(x.fk.columns[0])
    col = d.fk.columns[0]
    return [(i, None) for i in d.table.indexes
            if contains_column(i, col) and not any(contains_column(i, c) for c in earlier)]


def _renames(spec: Spec, cat: Catalog, d: Dependent, idx: Index) -> dict[str, str]:
    """Legacy column → new column for every reference of D's table whose column IDX contains (D's first)."""
    out = {d.fk.columns[0]: references.new_column(spec, cat, d)}
    for x in references.siblings(cat, d):
        if x.fk.columns[0] not in out and contains_column(idx, x.fk.columns[0]):
            out[x.fk.columns[0]] = references.new_column(spec, cat, x)
    return out


def index_mirrors(spec: Spec, cat: Catalog, d: Dependent, n: Names | None = None
                  ) -> list[tuple[Index, Operation]]:
    """(legacy index, the operation building its mirror) for every index reference D owns (owned_indexes).

    The operation's `name` is the mirror's: CREATE INDEX CONCURRENTLY on a plain table, the partitioned
    table's own index on a partitioned one.
    """
    if d.partitioned:
        return [(idx, shells[0][1]) for idx, _root, _names, shells, _b in _partition_indexes(spec, cat, d, n)
                if idx is not None]
    legacy_col = d.fk.columns[0]
    taken = {i.name.name for i in d.table.indexes}
    out = []
    for idx, _ in owned_indexes(cat, d):
        ren = _renames(spec, cat, d, idx)
        others = {k: v for k, v in ren.items() if k != legacy_col}
        m = mirror(idx, legacy_col, ren[legacy_col], taken, others)
        taken.add(m.name)
        out.append((idx, CreateIndexConcurrently(QualifiedName(d.table.name.schema, m.name), d.table.name,
                                                 sql.SQL(m.statement), why=f"mirror of {idx.name.name}")))
    return out


def _indexes(spec: Spec, cat: Catalog, d: Dependent, n: Names) -> list[CreateIndexConcurrently]:
    out = [op for _, op in index_mirrors(spec, cat, d, n)]
    if not out:
        # An unindexed FK column makes every delete on the canonical table scan this table.
        out.append(simple_index(n.plain_index, d.table.name, sql.SQL("({})").format(ident(n.new)),
                                why=f"{n.legacy} had no index; the new foreign key column gets one"))
    return out


def _partition_indexes(spec: Spec, cat: Catalog, d: Dependent, n: Names | None):
    """For a partitioned D: per index, (legacy index or None, root name, partition → name, shells, builds)."""
    n = n if n is not None and n.new == references.new_column(spec, cat, d) else Names(spec, d, "", cat)
    taken = partitions.taken_names(d)
    out = []
    owned = owned_indexes(cat, d)
    items: list[tuple[Index | None, str, dict[str, str], str]] = []
    for idx, _ in owned:
        ren = _renames(spec, cat, d, idx)
        root = mirrored_names(idx.name.name, ren, taken)
        taken.add(root)
        items.append((idx, idx.definition, ren, root))
    if not items:  # an unindexed legacy column: the new one gets an index all the same
        root = partitions.fresh_name(n.plain_index.name, taken)
        stmt = sql.SQL("create index {} on only {} ({})").format(ident(root), qn(d.table.name), ident(n.new))
        items.append((None, stmt.as_string(None), {}, root))
    for idx, definition, ren, root in items:
        def name(p, legacy: str | None, ren=ren) -> str:
            if legacy is not None and ren:
                out_ = mirrored_names(legacy, ren, taken)
                taken.add(out_)
                return out_
            return partitions.fresh_name(f"{p.table.name.name}_{n.new}_idx", taken)
        names = partitions.index_names(d, idx.name.name if idx is not None else None, name)
        why = f"mirror of {idx.name.name}" if idx is not None else f"{n.legacy} had no index; {n.new} gets one"
        shells, builds = partitions.index_tree(d, definition, root, names, why, ren or None)
        out.append((idx, root, names, shells, builds))
    return out


# -- the sync trigger -------------------------------------------------------------------------------------


def reconciles(spec: Spec, cat: Catalog, d: Dependent, n: Names) -> bool:
    """Whether D's table needs the last sync trigger: an application BEFORE row trigger on insert or update fires
    after the first one, and may write either id."""
    return bool(shapes.before_row_triggers_after(spec, cat, d, n.trigger))


def sync_triggers(spec: Spec, cat: Catalog, d: Dependent, n: Names) -> Operation:
    """The sync trigger, and where the application's triggers may move an id after it, the last one (both run
    the same function, which tells them apart by TG_NAME)."""
    skip_backfill = sql.SQL("pg_catalog.current_setting({}, true) is distinct from 'on'").format(
        sql.Literal(BACKFILL_SETTING))
    first = CreateTrigger(n.trigger, d.table.name, sql.SQL("before insert or update of {}, {}").format(
        ident(d.fk.columns[0]), ident(n.new)), n.sync_fn, why="old code writes one id, new code the other"
        + (" (on the partitioned table: Postgres gives every partition, present and future, a copy)"
           if d.partitioned else ""), when=skip_backfill)
    triggers = ", ".join(shapes.before_row_triggers_after(spec, cat, d, n.trigger))
    fill = (fill_trigger(d, n),) if shapes.fills_at_commit(d) else ()
    if not triggers:
        return Together((first, *fill), "a row the sync trigger leaves without its new id is filled at commit") \
            if fill else first
    # Every update, not only of the two columns: an application trigger may set the owner on any update.
    last = CreateTrigger(n.last_trigger, d.table.name, sql.SQL("before insert or update"), n.sync_fn,
                         why=f"after the application's {triggers}: the ids agree whichever of them it wrote",
                         when=skip_backfill)
    return Together((first, last, *fill), "both triggers run one function; the last one only repairs what the first "
                                          "left" + ("; a row they leave without its new id is filled at commit"
                                                    if fill else ""))


def owner_guard(spec: Spec, cat: Catalog, d: Dependent, n: Names) -> Operation:
    """The legacy column's NOT NULL, over the two columns, while it is down: a row with neither id is refused as the
    NOT NULL refused it (same SQLSTATE and message), whatever the application's triggers did to it first. An
    application may rely on that refusal (a BEFORE trigger that finds no owner leaves the column NULL).

    A trigger, not a CHECK constraint: ATTACH PARTITION requires a partition to carry every CHECK of its parent,
    which would fail the application's own attaching of partitions for the whole expand; a partitioned table's
    row trigger is given to every partition, present and future (and names the partition, as the NOT NULL did).
    BEFORE, but after every other BEFORE trigger (its name sorts after the last sync trigger's), so that they have
    had their say, and before the new column's NOT VALID check and NOT NULL, which would refuse the row with
    another SQLSTATE or column. Its WHEN calls nothing for a row that has an id."""
    from pgconverge.operations.create_trigger import CreateTrigger

    legacy_col, t = d.fk.columns[0], d.table.name
    code = sql.SQL("""
begin
  raise exception using errcode = 'not_null_violation',
    message = pg_catalog.format('null value in column "%s" of relation "%s" violates not-null constraint', {l},
                                tg_table_name),
    detail = pg_catalog.format('pgconverge: %s was NOT NULL; until %s is, a row needs one of the two', {l}, {n}),
    column = {l}, table = tg_table_name, schema = tg_table_schema;
end""").format(l=sql.Literal(legacy_col), n=sql.Literal(n.new))
    fn = CreateFunction(n.owner_fn, "", sql.SQL(
        "create or replace function {f}() returns trigger language plpgsql set search_path = pg_catalog as {body}"
    ).format(f=qn(n.owner_fn), body=body(code)), why=f"refuses a {t} row with neither {legacy_col} nor {n.new}")
    trg = CreateTrigger(n.owner_trigger, t, sql.SQL("before insert or update"), n.owner_fn,
                        why=f"{legacy_col}'s NOT NULL, while it is down: a row needs {legacy_col} or {n.new}",
                        when=sql.SQL("new.{} is null and new.{} is null").format(ident(legacy_col), ident(n.new)))
    return Together((fn, trg), "the trigger calls the function")


def drop_owner_guard(d: Dependent, n: Names) -> Operation:
    from pgconverge.operations.create_function import DropFunction
    from pgconverge.operations.create_trigger import DropTrigger

    return Together((DropTrigger(n.owner_trigger, d.table.name), DropFunction(n.owner_fn, "")),
                    "the function goes with its trigger")


def fill_trigger(d: Dependent, n: Names) -> CreateTrigger:
    """The constraint trigger deferred to the commit, for a reference whose legacy foreign key is deferrable.

    Its WHEN is judged as the row is written: only a row left without its new id while it has a legacy id (or,
    where the new column is to be NOT NULL, any row without its new id) is queued, so every other write costs no
    call. It fires on every update, not only of the two columns: a later update of the row moves it, and the
    queued call of an earlier version of it finds that version gone."""
    l, new = ident(d.fk.columns[0]), ident(n.new)
    when = sql.SQL("new.{} is null").format(new) if shapes.not_null_at_commit(d) else \
        sql.SQL("new.{} is null and new.{} is not null").format(new, l)
    return CreateTrigger(n.fill_trigger, d.table.name, sql.SQL("after insert or update"), n.fill_fn,
                         why=f"{d.fk.name} is deferrable: a row written before its legacy row in one transaction "
                             f"gets {n.new} at commit" + (f", where {n.new} is checked NOT NULL"
                                                          if shapes.not_null_at_commit(d) else ""),
                         when=when, deferred=True)


def _key_fill(spec: Spec, d: Dependent, p: dict, always: bool = False) -> sql.Composable:
    """Where the legacy column is part of the primary key (NOT NULL until contract), a row new code writes for an
    identity old code never knew gets the legacy row a rollback would make for it (planning/shapes.py). ALWAYS: the
    same for any table (a rollback restoring the legacy column's NOT NULL, see rollback)."""
    if not (always or shapes.in_primary_key(d)):
        return sql.SQL("")
    return sql.SQL("""
  if new.{l} is null and new.{n} is not null then  -- part of the primary key: it cannot stay empty
    new.{l} := {legacy_for}(new.{n});
  end if;""").format(**p, legacy_for=qn(align.names(spec)["legacy_for"]))


# Writers whose rows the counter leaves out: pgconverge's own sessions (the backfill skips the trigger
# altogether; a rollback's refill and the switch's write probes go through it).
OWN_APPLICATION_NAMES = align.OWN_APPLICATION_NAMES


def old_writes_sequence(n: Names, d: Dependent) -> Operation:
    """The counter of rows old code writes to D's table with only the legacy column set.

    A sequence: the sync trigger calls nextval, which is not transactional and locks no row, so counting
    adds no lock and no write to the application's transaction (and a rolled-back attempt still counts:
    it is old code at work all the same). Its last value is the count; the runtime baseline records it.
    Postgres logs a sequence 32 values ahead: after a crash it resumes there, which reads as rows written,
    so the baseline is to be taken again after one.
    """
    return RunSql(sql.SQL("create sequence if not exists {} as bigint").format(
        qn(n.old_writes)), f"create sequence {n.old_writes}: counts rows of {d.table.name} written with "
                           f"{n.legacy} only (old code), for the runtime audit and the contract gate")


def helper_calls_sequence(spec: Spec) -> QualifiedName:
    """The counter of the legacy helper's calls the sync triggers make (the caller's own legacy row of a merged
    person): the runtime audit takes them off the helper's calls, which would otherwise read as old code."""
    return QualifiedName(spec.migration.private_schema, "legacy_helper_calls_by_sync")


def helper_calls_sequence_op(spec: Spec) -> Operation:
    return RunSql(sql.SQL("create sequence if not exists {} as bigint").format(qn(helper_calls_sequence(spec))),
                  f"create sequence {helper_calls_sequence(spec)}: counts the legacy helper's calls the sync "
                  "triggers make, which are not old code's")


def drop_helper_calls_sequence(spec: Spec) -> Operation:
    return RunSql(sql.SQL("drop sequence if exists {}").format(qn(helper_calls_sequence(spec))),
                  f"drop sequence {helper_calls_sequence(spec)}")


def drop_old_writes_sequence(n: Names) -> Operation:
    return RunSql(sql.SQL("drop sequence if exists {}").format(qn(n.old_writes)), f"drop sequence {n.old_writes}")


def _count_old_write(n: Names) -> sql.Composable:
    """PL/pgSQL counting one row written by old code, unless pgconverge itself wrote it. Never fails the write:
    a counter that is gone (dropped by hand, or a rollback between two of its steps) counts nothing."""
    return sql.SQL(
        "if pg_catalog.current_setting('application_name') not like all (array[{own}]) then\n"
        "      perform pg_catalog.nextval(c.s) from (select pg_catalog.to_regclass({seq}) as s) c  -- no lock taken\n"
        "        where c.s is not null;\n"
        "    end if;").format(own=sql.SQL(", ").join(sql.Literal(a) for a in OWN_APPLICATION_NAMES),
                              seq=sql.Literal(text(qn(n.old_writes))))


def _reconcile(p: dict) -> sql.Composable:
    """The last firing (see LAST_TRIGGER): where an application trigger moved one id after the first firing, the
    other follows it. The first firing left the pair it wrote in two settings, which this reads and clears; without
    them (an update of other columns, which the first trigger does not fire for), the row's old pair stands in."""
    return sql.SQL("""
  if tg_name = {last} then
    left_l := pg_catalog.current_setting({gl} || tg_relid::text, true);
    left_n := pg_catalog.current_setting({gn} || tg_relid::text, true);
    perform pg_catalog.set_config({gl} || tg_relid::text, '', true), pg_catalog.set_config({gn} || tg_relid::text, '', true);
    if coalesce(left_l, '') = '' then
      if tg_op = 'INSERT' then
        return new;
      end if;
      left_l := coalesce('v' || old.{l}::text, 'n');
      left_n := coalesce('v' || old.{n}::text, 'n');
    end if;
    moved_l := coalesce('v' || new.{l}::text, 'n') is distinct from left_l;
    moved_n := coalesce('v' || new.{n}::text, 'n') is distinct from left_n;
    if not moved_l and not moved_n then
      return new;
    end if;
    if new.{l} is not null then
      select m.{mn} into mapped from {m} m where m.{ml} = new.{l};
      if mapped is null then
        select {align_row}(c) into mapped from {lt} c where c.{lk} = new.{l};
      end if;
    end if;
    if new.{n} is not distinct from mapped then
      return new;  -- they agree
    end if;
    if moved_l and not moved_n then  -- the application's trigger set the legacy id (from the token, say)
      new.{n} := mapped;
    elsif moved_n and not moved_l then
      if new.{n} is null then
        new.{l} := null;
      else
        {legacy_of_new}
      end if;
    else
      {reject}
    end if;
    return new;
  end if;""").format(**p)


def _sync_function(spec: Spec, cat: Catalog, d: Dependent, n: Names, last: bool = False,
                   fill_legacy: bool = False) -> sql.Composable:
    an = align.names(spec)
    legacy_col, new = d.fk.columns[0], n.new
    ck_type = sql.SQL(cat.canonical.column(spec.canonical.key).value_type)
    p = dict(l=ident(legacy_col), n=ident(new), m=qn(an["mapping"]), ml=ident(spec.mapping_legacy_column),
             mn=ident(spec.migration.new_column), ck_type=ck_type, lt=qn(cat.legacy.name), lk=ident(spec.legacy.key),
             align_row=qn(an["align_row"]), table=sql.Literal(str(d.table.name)),
             lname=sql.Literal(legacy_col), nname=sql.Literal(new),
             ct=qn(cat.canonical.name), ck=ident(spec.canonical.key),
             placing=sql.Literal(align.PLACING), calls=sql.Literal(text(qn(helper_calls_sequence(spec)))))
    # Without a legacy helper (legacy.helper = "") no policy checks the caller's own legacy row: a merged person's
    # live legacy id stands (align.MINE_ORDER).
    helper = cat.legacy_helper
    p.update(helper=qn(helper.name) if helper else sql.SQL(""),
             helper_type=sql.SQL(helper.returns if helper else d.column.value_type))
    tag = hashlib.md5(f"{d.table.name}|{legacy_col}".encode()).hexdigest()[:8]
    p.update(last=sql.Literal(n.last_trigger), gl=sql.Literal(f"pgconverge.sync_{tag}_l_"),
             gn=sql.Literal(f"pgconverge.sync_{tag}_n_"))
    # The legacy rows mapped to new.{n}, a live one first (align.mapped_legacy_rows).
    p["mine"] = align.mapped_legacy_rows(spec, cat, sql.SQL("new.{}").format(p["n"]))
    p["order"] = align.MINE_ORDER
    p["merged"] = sql.SQL("""if several > 1 then  -- a merged person: the caller's own legacy row, which the legacy policies check
          caller := {helper}();  -- once, and counted: these calls are not old code's (the runtime audit)
          perform pg_catalog.nextval(c.s) from (select pg_catalog.to_regclass({calls}) as s) c where c.s is not null;
          {mine}
          select mine.id into new.{l} from mine order by mine.id is not distinct from caller desc, {order} limit 1;
        elsif""").format(**p) if helper else sql.SQL("if")
    p["legacy_of_new"] = sql.SQL("""{mine}
        select mine.id, count(*) over () into new.{l}, several from mine order by {order} limit 1;
        {merged} new.{l} is null and pg_catalog.current_setting({aligning}, true) <> '' and exists (
            select 1 from {ct} p where p.{ck} = new.{n} and {ckey} = pg_catalog.current_setting({aligning_key}, true)) then
          -- written from inside the creation of this person's canonical row (an application trigger on the
          -- canonical table), before its mapping: the legacy row it is being created for
          new.{l} := pg_catalog.current_setting({aligning}, true)::{ltype};
        end if;""").format(**p, aligning=sql.Literal(align.ALIGNING), aligning_key=sql.Literal(align.ALIGNING_KEY),
                            ckey=align.canonical_key(spec, cat, "p"), ltype=sql.SQL(d.column.value_type))
    reject = sql.SQL(
        "raise exception using errcode = 'check_violation', "
        "message = format('pgconverge: %s row has %s = %s, which belongs to %s, but %s = %s was written', "
        "{table}, {lname}, new.{l}, mapped, {nname}, new.{n}), "
        "hint = 'write one of the two columns; pgconverge fills in the other';").format(**p)
    p["reject"] = reject
    # Where the last trigger fires too: the pair this firing leaves, for it to compare with.
    remember = sql.SQL("""
  perform pg_catalog.set_config({gl} || tg_relid::text, coalesce('v' || new.{l}::text, 'n'), true),
    pg_catalog.set_config({gn} || tg_relid::text, coalesce('v' || new.{n}::text, 'n'), true);""").format(
        **p) if last else sql.SQL("")
    code = sql.SQL("""
declare
  mapped {ck_type};
  e_state text;
  e_text text;
  several bigint;
  caller {helper_type};{last_vars}
begin{reconcile}
  if new.{l} is not null and (tg_op = 'INSERT' or new.{l} is distinct from old.{l} or new.{n} is distinct from old.{n}) then
    select m.{mn} into mapped from {m} m where m.{ml} = new.{l};
    if mapped is not null and not exists (select 1 from {ct} p where p.{ck} = mapped) then
      mapped := null;  -- the application deleted that canonical row since: decided again below
    end if;
    if mapped is null then  -- a legacy row the mapping has not seen yet: decide it now, as align would
      {place}
    end if;
  end if;
  if tg_op = 'INSERT' then
    if new.{l} is null then
      if new.{n} is not null then  -- new code: give old code its legacy id back where one exists
        -- a live legacy id first, then the first by the key's own order (align.MINE_ORDER)
        {legacy_of_new}
      end if;
    elsif new.{n} is null then     -- old code: derive the new id
      new.{n} := mapped;
    {count}
    elsif new.{n} is distinct from mapped then
      {reject}
    end if;{key_fill}{remember}
    return new;
  end if;
  if new.{l} is distinct from old.{l} and new.{n} is not distinct from old.{n} then
    new.{n} := mapped;             -- the legacy id moved (old code, or its ON DELETE SET NULL): follow it
    if new.{l} is not null then    -- old code set it (the foreign key's action only empties it)
    {count}
    end if;
  elsif new.{n} is distinct from old.{n} and new.{l} is not distinct from old.{l} then
    -- the new id moved (new code, the backfill, the new foreign key's action): keep the legacy id if it agrees
    if new.{n} is null then
      new.{l} := null;
    elsif mapped is distinct from new.{n} then
      {mine}
      select mine.id into new.{l} from mine order by {order} limit 1;
    end if;
  elsif (new.{l} is distinct from old.{l} or new.{n} is distinct from old.{n}) and new.{l} is not null
      and new.{n} is distinct from mapped then  -- both moved, apart (an UPDATE naming both unchanged is left alone)
    {reject}
  end if;{key_fill}{remember}
  return new;
end""").format(**p, key_fill=_key_fill(spec, d, p, fill_legacy), count=_count_old_write(n), remember=remember,
               place=_place(spec, p),
               reconcile=_reconcile(p) if last else sql.SQL(""),
               last_vars=sql.SQL("\n  left_l text;\n  left_n text;\n  moved_l boolean;\n  moved_n boolean;")
               if last else sql.SQL(""))
    return sql.SQL(
        "create or replace function {f}() returns trigger language plpgsql security definer "
        "set search_path = {path} set row_security = off as {body}").format(
            f=qn(n.sync_fn), body=body(code), path=align.search_path(spec, cat))


def _place(spec: Spec, p: dict) -> sql.Composable:
    """PL/pgSQL deciding the legacy row NEW names (P's l) into MAPPED, as align would, for a row old code writes.

    A legacy row that cannot be placed now (no usable match value under unmatched = "refuse" where the canonical
    table refuses a row without one, or a canonical row it refuses to create) never fails the application's write:
    MAPPED stays NULL, so the row is written with its legacy id and no new id (where the new column is NOT NULL, that
    NOT NULL refuses it, as it will after contract), and the legacy row waits in the pending table with the reason,
    as align's trigger on the legacy table keeps it. The coverage gate names the legacy row and expand's invariants
    the row without its new id, until the person is decided (`pgconverge align --decisions FILE`) or given a usable
    value. A serialization failure or a deadlock is raised: the application's retry decides the row then."""
    return sql.SQL("""begin
        perform pg_catalog.set_config({placing}, 'on', true);
        select {align_row}(c) into mapped from {lt} c where c.{lk} = new.{l};
        perform pg_catalog.set_config({placing}, '', true);
      exception when serialization_failure or deadlock_detected then
        raise;
      when others then
        get stacked diagnostics e_state = returned_sqlstate, e_text = message_text;
        mapped := null;
        -- named as the legacy row spells its key (numeric(12,2)'s 1001.00 is the key's 1001), as align names it
        insert into {pending} as q (legacy_id, reason, sqlstate) values (coalesce(
          (select c.{lk}::text from {lt} c where c.{lk} = new.{l}), new.{l}::text), e_text, e_state)
          on conflict (legacy_id) do update set reason = excluded.reason, sqlstate = excluded.sqlstate,
          at = clock_timestamp();
      end;""").format(**p, pending=qn(align.names(spec)["pending"]))


def fill_function(spec: Spec, cat: Catalog, d: Dependent, n: Names) -> CreateFunction:
    """The function of the deferred fill trigger (fill_trigger): at commit, the row as it was written, if it is
    still there (its ctid names that very version: a later update leaves a version of its own, queued in turn) and
    still without its new id, gets the mapping of its legacy id, which exists by then: the legacy row was written
    since, and align's trigger on the legacy table mapped it. A legacy row the mapping lacks is decided as the sync
    trigger decides it.

    Where the new column is to be NOT NULL (not_null_at_commit), a row left without it then is refused as the NOT
    NULL would have refused it, at commit; except when its legacy row does not exist: the legacy foreign key then
    fails the transaction with its own message. Elsewhere an unfilled row is left as the sync trigger leaves one
    (verify and the switch name it). It raises nothing else.

    The UPDATE sets the backfill's setting, as the backfill does: it writes a pair that agrees, so the sync triggers
    have nothing to do, and an application trigger that skips the backfill's updates skips this one too."""
    an = align.names(spec)
    legacy_col = d.fk.columns[0]
    p = dict(l=ident(legacy_col), n=ident(n.new), t=qn(d.table.name), m=qn(an["mapping"]),
             ml=ident(spec.mapping_legacy_column), mn=ident(spec.migration.new_column),
             ck_type=sql.SQL(cat.canonical.column(spec.canonical.key).value_type), lt=qn(cat.legacy.name),
             lk=ident(spec.legacy.key), align_row=qn(an["align_row"]), ct=qn(cat.canonical.name),
             ck=ident(spec.canonical.key), placing=sql.Literal(align.PLACING),
             flag=sql.Literal(BACKFILL_SETTING), nname=sql.Literal(n.new), tname=sql.Literal(str(d.table.name)),
             fk=sql.Literal(d.fk.name), lname=sql.Literal(legacy_col))
    p["this_row"] = sql.SQL("d.ctid = new.ctid and d.tableoid = new.tableoid")
    check = sql.SQL("""
  if exists (select 1 from {t} d where {this_row} and d.{n} is null) then
    if new.{l} is not null and not exists (select 1 from {lt} c where c.{lk} = new.{l}) then
      return null;  -- no legacy row: the legacy foreign key refuses the transaction
    end if;
    raise exception using errcode = 'not_null_violation',
      message = format('null value in column %s of relation %s violates not-null constraint', {nname}, {tname}),
      detail = format('checked at commit by pgconverge: %s is deferrable, so %s is filled from %s when the '
                      'transaction commits', {fk}, {nname}, {lname});
  end if;""").format(**p) if shapes.not_null_at_commit(d) else sql.SQL("")
    code = sql.SQL("""
declare
  mapped {ck_type};
  e_state text;
  e_text text;
  flag text;
begin
  if new.{l} is not null then
    select m.{mn} into mapped from {m} m where m.{ml} = new.{l};
    if mapped is not null and not exists (select 1 from {ct} p where p.{ck} = mapped) then
      mapped := null;  -- the application deleted that canonical row since: decided again below
    end if;
    if mapped is null then
      {place}
    end if;
    if mapped is not null then
      flag := pg_catalog.current_setting({flag}, true);
      perform pg_catalog.set_config({flag}, 'on', true);
      update {t} d set {n} = mapped where {this_row} and d.{n} is null and d.{l} = new.{l};
      perform pg_catalog.set_config({flag}, coalesce(flag, ''), true);
    end if;
  end if;{check}
  return null;
end""").format(**p, check=check, place=_place(spec, p))
    stmt = sql.SQL(
        "create or replace function {f}() returns trigger language plpgsql security definer "
        "set search_path = {path} set row_security = off as {body}").format(
            f=qn(n.fill_fn), body=body(code), path=align.search_path(spec, cat))
    return CreateFunction(n.fill_fn, "", stmt, why=f"fill {d.table.name}.{n.new} at commit where {legacy_col}'s "
                                                   "legacy row was written after the row")


# -- the gate ---------------------------------------------------------------------------------------------


def invariants(spec: Spec, cat: Catalog) -> Check:
    """Every row that has a legacy id has the new id the mapping gives; keys there and validated; indexes valid.

    A failure sends the backfill steps back (Check.redo): the next `pgconverge run expand` walks the tables
    again, filling the rows named (those of a partition attached after its backfill ran, say).
    """
    parts = []
    redo = []
    covers: list = []
    for d, n in names_of(spec, cat):
        parts.append(_unfilled(spec, d, n))
        if shapes.not_null_at_commit(d):
            parts.append(_without_owner(d, n))
        # Every row where no row may lack the new id; elsewhere only the rows that have a legacy id.
        covers.append(d.table.name if shapes.not_null_at_commit(d) else shapes.with_legacy_id(d))
        parts.append(mismatched(spec, d, n))
        parts.append(fk_validated(d, n))
        redo.append(f"{PHASE}.{n.short}.{'backfill_attached' if d.partitioned else 'backfill'}")
    parts.append(invalid_indexes(cat))
    fills = "; ".join(text(refill(spec, d, n)) for d, n in names_of(spec, cat))
    retired = align.names(spec)["retired"]
    return Check("invariants", sql.SQL(" union all ").join(parts),
                 failure="rows or constraints do not match the mapping",
                 fix=f"rows that have a legacy id but no new id were written with the sync trigger bypassed "
                     f"(session_replication_role = replica, a disabled trigger, a restore or a bulk load): fill them "
                     f"from the mapping with the UPDATE for each table named ({fills}); the sync trigger keeps both "
                     f"ids. Rows it leaves belong to a legacy row the mapping lacks (align's coverage check names it, "
                     f"with the reason): one old code created that pgconverge could not place (no usable match value, "
                     f"or a canonical row the table refuses), whose rows old code writes without the new id, or one "
                     f"written with the triggers bypassed too; decide it with `pgconverge align --decisions FILE` or "
                     f"give it a usable match value (its trigger maps it), then run the UPDATE again. While expand has not finished, `pgconverge run expand` "
                     f"again does the same. If rows disagree with the mapping, look first for a reused legacy key: the "
                     f"application deleted a legacy row and gave its key to another person, and a row for the "
                     f"newcomer was written in the same statement as the insert (a writable CTE, an application "
                     f"trigger on the legacy table) while the deleting transaction was still open; the mapping the "
                     f"deleted row left is in {retired}, retired when the key was decided again. Otherwise they were "
                     f"written by hand. Give them the new id the mapping gives (the UPDATE above, with the new id "
                     f"differing from the mapping's in place of `is null`), or roll back with "
                     f"`pgconverge rollback expand`", redo=tuple(redo), covers=tuple(covers))


REFERENCES = f"{PHASE}.references"


def references_gate(spec: Spec, cat: Catalog) -> Check:
    """Every foreign key to the legacy table is one expand was planned from CAT with: a table the application made
    (or gave a reference) while expand ran or after it has no new column, sync trigger or backfill, so the switch
    would stop at its policies and new code would not see its rows. Read at expand's end, before the switch's first
    change (verify/installed.py) and by `verify`; `pgconverge run expand` takes such a reference in before the
    switch (take_in). A partition detached since is contract's to name (planning/shapes.py)."""
    query = sql.SQL(
        "select format('foreign key %I on %I.%I references %s and was made after expand was planned: it has no "
        "new column, sync trigger or backfill', k.conname, n.nspname, c.relname, {l}), null {unplanned} "
        "and w.parent is null").format(l=sql.Literal(str(cat.legacy.name)),
                                        unplanned=shapes.unplanned_references(cat.legacy.name, cat))
    return Check("every reference to the legacy key is expand's", query, standing=False,
                 failure="tables reference the legacy table that expand did not plan (nothing was changed)",
                 fix="run `pgconverge run expand` again: it takes these references in (their new column, sync "
                     "trigger, backfill, indexes, foreign key and checks) and leaves what it did before alone; then "
                     "the switch. Once the switch has begun, roll back to before expand (`pgconverge rollback "
                     "expand`), then `pgconverge run expand`", covers=())


def sent_back(redo: list[str] | tuple[str, ...], then: str) -> str:
    """What to do when a later phase's gate (the switch's, contract's) found expand's invariants broken and sent REDO,
    expand's backfills, back: THEN is the phase to run again after expand."""
    return (f"run `pgconverge run expand`, then {then} again: this gate sent {', '.join(redo)} back, so expand walks "
            "those tables again and fills the rows that have a legacy id but no new id (in a partition attached "
            "after expand, or written with the sync trigger bypassed: session_replication_role = replica, a disabled "
            "trigger, a restore)")


def refill(spec: Spec, d: Dependent, n: Names) -> sql.Composable:
    """The UPDATE that gives D's rows with a legacy id and no new id the new id the mapping gives (as the backfill
    does): for rows written with the sync trigger bypassed after the backfill had passed them."""
    return sql.SQL("update {t} d set {n} = m.{mn} from {m} m where m.{ml} = d.{l} and d.{n} is null").format(
        t=qn(d.table.name), l=ident(n.legacy), n=ident(n.new), m=qn(align.names(spec)["mapping"]),
        ml=ident(spec.mapping_legacy_column), mn=ident(spec.migration.new_column))


def fk_validated(d: Dependent, n: Names) -> sql.Composable:
    """D's new foreign key missing or not validated, as (what, null) for a check (expand's and contract's)."""
    return sql.SQL(
        "select format('%s: foreign key %s is missing or not validated', {tn}, {fk}), null "
        "where not exists (select 1 from pg_catalog.pg_constraint where conrelid = to_regclass({tn}) "
        "and conname = {fk} and convalidated)").format(tn=sql.Literal(str(d.table.name)), fk=sql.Literal(n.fk))


def invalid_indexes(cat: Catalog) -> sql.Composable:
    """Invalid indexes of the dependent tables and their partitions, as (what, null) for a check."""
    tables = list(dict.fromkeys(str(d.table.name) for d in cat.dependents))
    if not tables:
        return sql.SQL("select null::text, null::text where false")
    return sql.SQL(
        "select format('index %s is invalid', i.indexrelid::regclass), null from pg_catalog.pg_index i "
        "where i.indrelid in (select t.relid from unnest(array[{}]::regclass[]) r, "
        "pg_catalog.pg_partition_tree(r) t) and not i.indisvalid").format(
        sql.SQL(", ").join(sql.Literal(t) for t in tables))


def mismatched(spec: Spec, d: Dependent, n: Names) -> sql.Composable:
    """Rows of D's table whose new id is not the mapping of their legacy id, as (what, which rows) for a check
    (also the emitted pgTAP tests')."""
    p = dict(t=qn(d.table.name), l=ident(n.legacy), n=ident(n.new), m=qn(align.names(spec)["mapping"]),
             ml=ident(spec.mapping_legacy_column), mn=ident(spec.migration.new_column),
             tn=sql.Literal(str(d.table.name)))
    return sql.SQL(
        "select format('%s: %s rows whose %s is not the mapping''s', {tn}, count(*), {nn}), null "
        "from {t} d join {m} m on m.{ml} = d.{l} where d.{n} is distinct from m.{mn} having count(*) > 0").format(
        **p, nn=sql.Literal(n.new))


def _unfilled(spec: Spec, d: Dependent, n: Names) -> sql.Composable:
    """Rows of D's table with a legacy id and no new id, as (what, which rows) for a gate."""
    p = dict(t=qn(d.table.name), l=ident(n.legacy), n=ident(n.new), tn=sql.Literal(str(d.table.name)))
    return sql.SQL(
        "select format('%s: %s rows have %s but no %s', {tn}, count(*), {ln}, {nn}), "
        "(select string_agg(x, ', ') from (select {rid} x from {t} d "
        " where d.{l} is not null and d.{n} is null limit 5) s) "
        "from {t} d where d.{l} is not null and d.{n} is null having count(*) > 0").format(
        **p, ln=sql.Literal(n.legacy), nn=sql.Literal(n.new), rid=_shown_row(d))


def _without_owner(d: Dependent, n: Names) -> sql.Composable:
    """Rows of D's table with no new id at all, where it is NOT NULL but checked at commit (not_null_at_commit):
    what VALIDATE of the NOT NULL check proves elsewhere, as (what, which rows) for a gate."""
    p = dict(t=qn(d.table.name), n=ident(n.new), tn=sql.Literal(str(d.table.name)), nn=sql.Literal(n.new))
    return sql.SQL(
        "select format('%s: %s rows have no %s, which is NOT NULL (checked at commit until contract)', {tn}, "
        "count(*), {nn}), (select string_agg(x, ', ') from (select {rid} x from {t} d where d.{n} is null limit 5) s) "
        "from {t} d where d.{n} is null having count(*) > 0").format(**p, rid=_shown_row(d))


def _filled(spec: Spec, d: Dependent, n: Names) -> Check:
    return Check(f"{d.table.name}.{n.new} filled", _unfilled(spec, d, n),
                 failure=f"rows of {d.table.name} have no {n.new} (in a partition attached after its backfill)",
                 fix="run `pgconverge run expand` again: it walks the partitions attached since the plan was made "
                     "and fills them", redo=(f"{PHASE}.{n.short}.backfill_attached",),
                 covers=(shapes.with_legacy_id(d),))


def _shown_row(d: Dependent) -> sql.Composable:
    """How the invariants name a row: its ctid, and the partition it is in."""
    if d.partitioned:
        return sql.SQL("d.tableoid::regclass::text || ' ' || d.ctid::text")
    return sql.SQL("d.ctid::text")


# -- rollback ---------------------------------------------------------------------------------------------


# Steps that change nothing: undone with the first step of the rollback, so that a later expand runs them again.
FIRST_STEPS = ("expand.invariants", "expand.references", "expand.orphans", "expand.unique_collisions", "expand.map_pending",
               "expand.map_pending_first", "expand.coverage")


def rollback(spec: Spec, cat: Catalog, live: Catalog | None = None, cats=None) -> list[Step]:
    """Undo expand reference by reference: give every row its legacy id back, restore NOT NULL, drop the new
    column.

    New code must have stopped writing only the new column before this runs: once the column
    is gone there is nothing for it to write.
    """
    from pgconverge.operations.columns import DropColumn
    from pgconverge.operations.create_function import DropFunction
    from pgconverge.operations.create_index import DropIndexConcurrently
    from pgconverge.operations.create_trigger import DropTrigger

    steps: list[Step] = []
    deps = names_of(spec, cat)
    for d, n in reversed(deps):
        legacy_col = d.fk.columns[0]
        fwd = f"{PHASE}.{n.short}"
        rid = f"rollback.{fwd}"
        first = not steps  # the last reference's, which undoes the gate
        if d.column.not_null:
            # New code may still write rows with the new id alone, for people old code never knew: from the refill
            # on, the sync trigger makes their legacy rows as the refill does, so that no such write fails the
            # legacy column's NOT NULL check (added NOT VALID, then validated) and the validation finds none left.
            steps.append(Step(f"{rid}.sync_fills_legacy", "rollback", CreateFunction(
                n.sync_fn, "", _sync_function(spec, cat, d, n, reconciles(spec, cat, d, n), fill_legacy=True),
                why=f"new code's rows of {d.table.name} get their {legacy_col} from now on, a legacy row made where "
                    f"the person has none, as {legacy_col} becomes NOT NULL again"),
                (), (f"{fwd}.drop_legacy_not_null",)))
        # Partitions detached since expand was planned keep the new column and what came with it (its foreign key
        # and indexes, as the table's own now); they are undone here too, as tables of their own.
        loose, elsewhere = partitions.detached(d, live, n.new) if d.partitioned else ([], [])
        if elsewhere:
            raise CatalogError(
                "; ".join(f"{p} was a partition of {d.table.name} when expand gave it {n.new}, and is now a partition "
                          f"of {parent}: the rollback cannot drop {n.new} there (a partition has exactly its parent's "
                          "columns)" for p, parent in elsewhere) + "; nothing was changed",
                fix="; ".join(f"detach it (ALTER TABLE {parent} DETACH PARTITION {p}) and run the rollback again, "
                              f"which then undoes expand on {p} as on a table of its own" for p, parent in elsewhere))
        gone = partitions.short_names(d.partitions) if loose else {}
        if d.partitioned:
            leaves = partitions.leaves(d, _now(live, cats))
            ps = partitions.short_names(leaves)
            for i, leaf in enumerate(leaves):
                steps.append(Step(f"{rid}.legacy_ids.{ps[leaf.table.name]}", "rollback",
                                  _reverse_fill(spec, cat, n, leaf.table),
                                  FIRST_STEPS if first and i == 0 else (),
                                  (f"{fwd}.add_column",)))
            for own in loose:
                did = f"{rid}.detached.{gone[own.table.name]}"
                if own.partitioned:
                    os_ = partitions.short_names(own.leaves)
                    for leaf in own.leaves:
                        steps.append(Step(f"{did}.legacy_ids.{os_[leaf.table.name]}", "rollback",
                                          _reverse_fill(spec, cat, n, leaf.table), (), (f"{fwd}.add_column",)))
                else:
                    steps.append(Step(f"{did}.legacy_ids", "rollback", _reverse_fill(spec, cat, n, own.table), (),
                                      (f"{fwd}.add_column",)))
        else:
            steps.append(Step(f"{rid}.legacy_ids", "rollback", _reverse_fill(spec, cat, n, d.table),
                              FIRST_STEPS if first else (),
                              (f"{fwd}.add_column",)))
        if d.column.not_null:
            # A partition detached since has a NOT NULL of its own now: dropped through the partitioned table by
            # expand, restored here the same way, before the partitioned table's last step marks that drop undone.
            for own in loose:
                if not own.column.not_null:
                    steps += _legacy_not_null_back(f"{rid}.detached.{gone[own.table.name]}", own.table.name,
                                                   legacy_col, fwd, marks_undone=False)
            steps += _legacy_not_null_back(rid, d.table.name, legacy_col, fwd, marks_undone=True)
            if not shapes.in_primary_key(d):
                steps.append(Step(f"{rid}.drop_owner_check", "rollback", drop_owner_guard(d, n),
                                  (f"{fwd}.owner_check", f"{fwd}.drop_owner_check")))
        for i, m in enumerate(_check_mirrors(spec, cat, d)):
            steps.append(Step(f"{rid}.drop_check_{i + 1}", "rollback", DropConstraint(d.table.name, m.name),
                              (f"{fwd}.check_{i + 1}", f"{fwd}.validate_check_{i + 1}")))
        if d.partitioned:
            shorts = partitions.short_names(d.partitions)
            keys = [f"{fwd}.{w}.{shorts[leaf.table.name]}" for leaf in d.leaves
                    for w in ("foreign_key", "validate_foreign_key")]
            # The partitioned table's key takes the partitions' attached to it; a partition's that was never
            # attached (an interrupted run) goes on its own.
            steps.append(Step(f"{rid}.drop_foreign_key", "rollback", Together(
                (DropConstraint(d.table.name, n.fk), *(DropConstraint(leaf.table.name, n.fk) for leaf in d.leaves)),
                "the partitions' keys go with the partitioned table's"), (f"{fwd}.attach_foreign_key", *keys)))
            for i, (_idx, root, names, shells, builds) in enumerate(_partition_indexes(spec, cat, d, n)):
                built = {suffix: f"{fwd}.index_{i + 1}.{suffix}" for suffix, _ in builds}
                shell_ids = tuple(f"{fwd}.index_{i + 1}" + (f".{s}" if s else "") for s, _ in shells)
                drops = partitions.index_drops(d, root, names)
                # The partitioned table's index takes with it every build without a drop of its own (the index of
                # partitions attached later): the ledger must show those undone too, or a later run skips them.
                alone = {suffix for suffix, _ in drops if suffix}
                taken = tuple(b for suffix, b in built.items() if suffix not in alone)
                for suffix, op in drops:
                    if not suffix:
                        steps.append(Step(f"{rid}.drop_index_{i + 1}", "rollback", op, (*shell_ids, *taken),
                                          (*shell_ids, *built.values())))
                    elif suffix in built:
                        steps.append(Step(f"{rid}.drop_index_{i + 1}.{suffix}", "rollback", op, (built[suffix],)))
        else:
            steps.append(Step(f"{rid}.drop_foreign_key", "rollback", DropConstraint(d.table.name, n.fk),
                              (f"{fwd}.foreign_key", f"{fwd}.validate_foreign_key")))
            for i, idx in enumerate(_indexes(spec, cat, d, n)):
                steps.append(Step(f"{rid}.drop_index_{i + 1}", "rollback",
                                  DropIndexConcurrently(idx.name, idx.table), (f"{fwd}.index_{i + 1}",)))
        done_with_column = [f"{fwd}.add_column", *_backfill_ids(d, n)]
        if d.column.not_null and not shapes.not_null_at_commit(d):
            done_with_column += [f"{fwd}.not_null_check", f"{fwd}.validate_not_null_check", f"{fwd}.set_not_null",
                                 f"{fwd}.drop_not_null_check", *([f"{fwd}.filled"] if d.partitioned else [])]
        # The trigger goes with the column, in one transaction: old code inserting in between would leave
        # the new column NULL, and fail where it is NOT NULL.
        at_commit = shapes.fills_at_commit(d)
        # The deferred fill trigger's WHEN names both columns: it goes first, with them.
        def column_drop(t: QualifiedName) -> tuple[Operation, ...]:
            fill = (DropTrigger(n.fill_trigger, t),) if at_commit else ()
            return (*fill, DropTrigger(n.trigger, t), DropTrigger(n.last_trigger, t), DropColumn(t, n.new))

        # A detached partition's column goes in the same transaction, and with it its foreign key, indexes and
        # checks on the column (Postgres drops those with the column); its copies of the triggers went with the
        # DETACH, and are dropped where a server kept them.
        steps.append(Step(f"{rid}.drop_column", "rollback", Together(
            (*column_drop(d.table.name), *(op for own in loose for op in column_drop(own.table.name))),
            f"old code's rows need the trigger while {n.new} exists"), (f"{fwd}.sync_trigger", *done_with_column)))
        steps.append(Step(f"{rid}.drop_sync_function", "rollback", Together(
            (DropFunction(n.sync_fn, ""), *((DropFunction(n.fill_fn, ""),) if at_commit else ()),
             drop_old_writes_sequence(n), drop_helper_calls_sequence(spec)),
            "the sequences only count for the function"),
            (f"{fwd}.sync_function",)))
        if d.partitioned:
            steps.append(Step(f"{rid}.drop_backfill_function", "rollback", DropFunction(n.late_fn, LATE_ARGS),
                              (f"{fwd}.backfill_function",)))
    return steps


def _legacy_not_null_back(prefix: str, table: QualifiedName, legacy_col: str, fwd: str,
                          marks_undone: bool) -> list[Step]:
    """Rollback steps giving TABLE's legacy column its NOT NULL back without a long lock: a check added NOT VALID,
    validated, SET NOT NULL (which the check proves), the check dropped. Each runs where expand's drop of it ran;
    MARKS_UNDONE: the last one records that drop undone (the partitioned table's own, after its detached ones)."""
    chk = bounded(f"{table.name}_{legacy_col}_not_null")
    when = (f"{fwd}.drop_legacy_not_null",)
    return [
        Step(f"{prefix}.legacy_not_null_check", "rollback", AddCheckNotValid(
            table, chk, sql.SQL("{} is not null").format(ident(legacy_col)),
            why=f"{legacy_col} was NOT NULL before expand"), (), when),
        Step(f"{prefix}.validate_legacy_not_null", "rollback", ValidateConstraint(table, chk), (), when),
        Step(f"{prefix}.legacy_set_not_null", "rollback", SetNotNull(table, legacy_col), (), when),
        Step(f"{prefix}.drop_legacy_not_null_check", "rollback", DropConstraint(table, chk),
             *((when,) if marks_undone else ((), when))),
    ]


def _now(live: Catalog | None, cats) -> Catalog | None:
    """The catalog closest to the database as it is: the live one, else the latest saved (a rollback from
    contract cannot read the live one: the legacy table is archived)."""
    if live is not None or cats is None:
        return live
    try:
        return cats.current
    except (ValueError, CatalogError):
        return None


def _backfill_ids(d: Dependent, n: Names) -> list[str]:
    fwd = f"{PHASE}.{n.short}"
    if not d.partitioned:
        return [f"{fwd}.backfill"]
    shorts = partitions.short_names(d.partitions)
    return [*(f"{fwd}.backfill.{shorts[leaf.table.name]}" for leaf in d.leaves), f"{fwd}.backfill_attached"]


def _reverse_fill(spec: Spec, cat: Catalog, n: Names, table: Table) -> Batched:
    """Rows new code wrote with only the new id get their legacy id (a legacy row is made if none exists)."""
    p = dict(l=ident(n.legacy), n=ident(n.new), legacy_for=qn(align.names(spec)["legacy_for"]))
    op = batched_update(spec, table, sql.SQL("{l} = {legacy_for}(d.{n})").format(**p), None,
                        sql.SQL("d.{l} is null and d.{n} is not null").format(**p),
                        f"give {table.name} rows written with only {n.new} their {n.legacy} back", not_by=n.legacy)
    return dataclasses.replace(op, legacy_rows=(align.reverse_aligned(spec, cat, table.name, n.legacy, n.new),))
