"""The expand phase (T1): the new column on every dependent table, kept in sync, backfilled, constrained."""

from __future__ import annotations

from psycopg import sql

from pgconverge.catalog.model import Catalog, Dependent
from pgconverge.config import QualifiedName, Spec
from pgconverge.errors import CatalogError
from pgconverge.execution.sql import body, ident, qn
from pgconverge.operations.base import Step
from pgconverge.operations.batched import Batched, max_key
from pgconverge.operations.check import Check
from pgconverge.operations.columns import AddColumn, DropNotNull, SetNotNull
from pgconverge.operations.constraints import (
    AddCheckNotValid, AddForeignKeyNotValid, DropConstraint, ValidateConstraint,
)
from pgconverge.operations.create_function import CreateFunction
from pgconverge.operations.create_index import CreateIndexConcurrently, simple_index
from pgconverge.operations.create_trigger import CreateTrigger
from pgconverge.planning import align
from pgconverge.planning.index_mirror import contains_column, mirror

PHASE = "expand"
TRIGGER = "pgconverge_sync"
# Set by the backfill's own transactions: its UPDATE joins the mapping itself, so the sync trigger
# has nothing to add there, and skipping it (in the trigger's WHEN, before any function call) keeps
# the backfill close to a single UPDATE's speed.
BACKFILL_SETTING = "pgconverge.backfill"


class Names:
    """Names of what expand creates for one dependent table."""

    def __init__(self, spec: Spec, dep: Dependent, short: str):
        t, new = dep.table.name, spec.migration.new_column
        self.short = short
        self.sync_fn = QualifiedName(spec.migration.private_schema, f"sync_{t.schema}_{t.name}"[:63])
        self.fk = f"{t.name}_{new}_fkey"[:63]
        self.not_null_check = f"{t.name}_{new}_not_null"[:63]
        self.plain_index = QualifiedName(t.schema, f"idx_{t.name}_{new}"[:63])


def short_names(cat: Catalog) -> dict[QualifiedName, str]:
    """Step-id names for dependent tables: the bare name unless two schemas share it."""
    bare = [d.table.name.name for d in cat.dependents]
    return {d.table.name: (d.table.name.name if bare.count(d.table.name.name) == 1
                           else f"{d.table.name.schema}_{d.table.name.name}") for d in cat.dependents}


def plan(spec: Spec, cat: Catalog, cats=None) -> list[Step]:
    shorts = short_names(cat)
    deps = [(d, Names(spec, d, shorts[d.table.name])) for d in cat.dependents]
    for d, _ in deps:
        _check_dependent(spec, d)
    steps: list[Step] = []

    def add(dep_names: Names | None, what: str, op) -> None:
        sid = f"{PHASE}.{dep_names.short}.{what}" if dep_names else f"{PHASE}.{what}"
        steps.append(Step(sid, PHASE, op))

    ck = cat.canonical.column(spec.canonical.key)
    new = spec.migration.new_column
    # 1. Catalog-only changes and the sync trigger on every table first: from here on, old and new
    #    code both write rows that carry both ids.
    for d, n in deps:
        legacy_col = d.fk.columns[0]
        add(n, "add_column", AddColumn(d.table.name, new, ck.type))
        if d.column.not_null:
            add(n, "drop_legacy_not_null", DropNotNull(d.table.name, legacy_col,
                                                       why="new code may write only the new column"))
        add(n, "sync_function", CreateFunction(n.sync_fn, "", _sync_function(spec, cat, d, n),
                                               why=f"keep {legacy_col} and {new} of {d.table.name} consistent"))
        add(n, "sync_trigger", CreateTrigger(TRIGGER, d.table.name, sql.SQL("before insert or update of {}, {}").format(
            ident(legacy_col), ident(new)), n.sync_fn, why="old code writes one id, new code the other",
            when=sql.SQL("pg_catalog.current_setting({}, true) is distinct from 'on'").format(
                sql.Literal(BACKFILL_SETTING))))
        add(n, "foreign_key", AddForeignKeyNotValid(d.table.name, n.fk, new, cat.canonical.name,
                                                    spec.canonical.key, d.fk.on_delete, d.fk.on_update))
    # 2. Backfill the rows written before the trigger existed.
    for d, n in deps:
        add(n, "backfill", _backfill(spec, cat, d))
    # 3. Indexes, built concurrently; then the constraints that need every row filled.
    for d, n in deps:
        for i, op in enumerate(_indexes(spec, d, n)):
            add(n, f"index_{i + 1}", op)
    for d, n in deps:
        add(n, "validate_foreign_key", ValidateConstraint(d.table.name, n.fk))
        if d.column.not_null:
            check = sql.SQL("{} is not null").format(ident(new))
            add(n, "not_null_check", AddCheckNotValid(d.table.name, n.not_null_check, check,
                                                      why=f"{new} is NOT NULL where {d.fk.columns[0]} was"))
            add(n, "validate_not_null_check", ValidateConstraint(d.table.name, n.not_null_check))
            add(n, "set_not_null", SetNotNull(d.table.name, new))
            add(n, "drop_not_null_check", DropConstraint(d.table.name, n.not_null_check))
    add(None, "invariants", invariants(spec, cat))
    return steps


def _check_dependent(spec: Spec, d: Dependent) -> None:
    if d.table.column(spec.migration.new_column) is not None:
        raise CatalogError(
            f"{d.table.name} already has a column {spec.migration.new_column!r} that pgconverge did not create",
            fix="set migration.new_column to another name, or drop that column if it is a leftover of a "
                "migration done by hand")


def _key(d: Dependent) -> tuple[str, str] | None:
    """The single-column key a keyset scan can walk, if the table has one."""
    if len(d.table.primary_key) == 1:
        col = d.table.column(d.table.primary_key[0])
        return col.name, col.type
    for uk in d.table.unique_keys:
        col = d.table.column(uk[0]) if len(uk) == 1 else None
        if col is not None and col.not_null:
            return col.name, col.type
    return None


def _backfill(spec: Spec, cat: Catalog, d: Dependent) -> Batched:
    """UPDATE, batch by batch, the rows whose new column is still empty; rows the trigger filled are skipped."""
    m = align.names(spec)["mapping"]
    legacy_col, new = d.fk.columns[0], spec.migration.new_column
    p = dict(l=ident(legacy_col), n=ident(new), m=qn(m), ml=ident(spec.mapping_legacy_column))
    return batched_update(
        spec, d, sql.SQL("{n} = m.{n}").format(**p), sql.SQL("{m} m").format(**p),
        sql.SQL("d.{n} is null and d.{l} is not null and m.{ml} = d.{l}").format(**p),
        f"backfill {d.table.name}.{new} from {legacy_col} through the mapping", ((BACKFILL_SETTING, "on"),),
        parallel=True)


def batched_update(spec: Spec, d: Dependent, set_: sql.Composable, from_: sql.Composable | None,
                   where: sql.Composable, what: str, settings: tuple = (), parallel: bool = False) -> Batched:
    """UPDATE d SET SET_ [FROM FROM_] WHERE WHERE over the table in key order (or page order without a key).

    Each batch is one short transaction that locks at most batch-size rows.
    """
    key = _key(d)
    p = dict(t=qn(d.table.name), set=set_, where=where,
             frm=sql.SQL(", {}").format(from_) if from_ is not None else sql.SQL(""))
    if key is not None:
        k, ty = key
        stmt = sql.SQL(
            "with b as (select d.{k} from {t} d where (%(after)s::{ty} is null or d.{k} > %(after)s::{ty}) "
            "and (%(upper)s::{ty} is null or d.{k} <= %(upper)s::{ty}) order by d.{k} limit %(n)s), "
            "u as (update {t} d set {set} from b{frm} where d.{k} = b.{k} and {where} returning 1) "
            "select (select count(*) from b), (select b.{k} from b order by b.{k} desc limit 1), "
            "(select count(*) from u)").format(**p, k=ident(k), ty=sql.SQL(ty))
        return Batched(d.table.name, k, ty, stmt, spec.migration.batch_size, what,
                       upper_bound=max_key(d.table.name, k), settings=settings, parallel=parallel)
    # No usable key: walk the heap by page ranges (a TID range scan); the position is a page number.
    pages = max(1, spec.migration.batch_size // 50)
    frm = sql.SQL(" from {}").format(from_) if from_ is not None else sql.SQL("")
    stmt = sql.SQL(
        "with u as (update {t} d set {set}{frm} where "
        "d.ctid >= format('(%%s,0)', coalesce(%(after)s::bigint, -1) + 1)::tid "
        "and d.ctid < format('(%%s,0)', coalesce(%(after)s::bigint, -1) + 1 + {pages})::tid "
        "and {where} returning 1) "
        "select case when coalesce(%(after)s::bigint, -1) + 1 <= %(upper)s::bigint then {pages} else 0 end, "
        "coalesce(%(after)s::bigint, -1) + {pages}, (select count(*) from u)").format(
        t=qn(d.table.name), set=set_, frm=frm, where=where, pages=sql.Literal(pages))
    upper = sql.SQL("select pg_catalog.pg_relation_size({}::regclass) / current_setting('block_size')::bigint"
                    ).format(sql.Literal(str(d.table.name)))
    return Batched(d.table.name, "ctid", "bigint", stmt, pages, f"{what} ({pages} pages per transaction: no key)",
                   upper_bound=upper, settings=settings)


def _indexes(spec: Spec, d: Dependent, n: Names) -> list[CreateIndexConcurrently]:
    legacy_col, new = d.fk.columns[0], spec.migration.new_column
    taken = {i.name.name for i in d.table.indexes}
    out = []
    for idx in d.table.indexes:
        if idx.primary or not contains_column(idx, legacy_col):
            continue
        m = mirror(idx, legacy_col, new, taken)
        taken.add(m.name)
        out.append(CreateIndexConcurrently(QualifiedName(d.table.name.schema, m.name), d.table.name,
                                           sql.SQL(m.statement), why=f"mirror of {idx.name.name}"))
    if not out:
        # An unindexed FK column makes every delete on the canonical table scan this table.
        out.append(simple_index(n.plain_index, d.table.name, sql.SQL("({})").format(ident(new)),
                                why=f"{legacy_col} had no index; the new foreign key column gets one"))
    return out


def _sync_function(spec: Spec, cat: Catalog, d: Dependent, n: Names) -> sql.Composable:
    an = align.names(spec)
    legacy_col, new = d.fk.columns[0], spec.migration.new_column
    ck_type = sql.SQL(cat.canonical.column(spec.canonical.key).type)
    p = dict(l=ident(legacy_col), n=ident(new), m=qn(an["mapping"]), ml=ident(spec.mapping_legacy_column),
             mn=ident(new), ck_type=ck_type, lt=qn(cat.legacy.name), lk=ident(spec.legacy.key),
             align_row=qn(an["align_row"]), table=sql.Literal(str(d.table.name)),
             lname=sql.Literal(legacy_col), nname=sql.Literal(new),
             helper=qn(cat.legacy_helper.name))
    code = sql.SQL("""
declare
  mapped {ck_type};
  several bigint;
begin
  if new.{l} is not null and (tg_op = 'INSERT' or new.{l} is distinct from old.{l} or new.{n} is distinct from old.{n}) then
    select m.{mn} into mapped from {m} m where m.{ml} = new.{l};
    if mapped is null then  -- a legacy row the mapping has not seen yet: decide it now, as align would
      select {align_row}(c) into mapped from {lt} c where c.{lk} = new.{l};
    end if;
  end if;
  if tg_op = 'INSERT' then
    if new.{l} is null then
      if new.{n} is not null then  -- new code: give old code its legacy id back where one exists
        -- the first legacy id by the key's own order (no min(): it does not exist for uuid)
        select m.{ml}, count(*) over () into new.{l}, several from {m} m where m.{mn} = new.{n}
          order by m.{ml} limit 1;
        if several > 1 then  -- a merged person: the caller's own legacy row, which the legacy policies check
          select m.{ml} into new.{l} from {m} m where m.{mn} = new.{n}
            order by m.{ml} is not distinct from {helper}() desc, m.{ml} limit 1;
        end if;
      end if;
    elsif new.{n} is null then     -- old code: derive the new id
      new.{n} := mapped;
    elsif new.{n} is distinct from mapped then
      {reject}
    end if;
    return new;
  end if;
  if new.{l} is distinct from old.{l} and new.{n} is not distinct from old.{n} then
    new.{n} := mapped;             -- the legacy id moved (old code, or its ON DELETE SET NULL): follow it
  elsif new.{n} is distinct from old.{n} and new.{l} is not distinct from old.{l} then
    -- the new id moved (new code, the backfill, the new foreign key's action): keep the legacy id if it agrees
    if new.{n} is null then
      new.{l} := null;
    elsif mapped is distinct from new.{n} then
      select m.{ml} into new.{l} from {m} m where m.{mn} = new.{n} order by m.{ml} limit 1;
    end if;
  elsif new.{l} is not null and new.{n} is distinct from mapped then
    {reject}
  end if;
  return new;
end""").format(**p, reject=sql.SQL(
        "raise exception using errcode = 'check_violation', "
        "message = format('pgconverge: %s row has %s = %s, which belongs to %s, but %s = %s was written', "
        "{table}, {lname}, new.{l}, mapped, {nname}, new.{n}), "
        "hint = 'write one of the two columns; pgconverge fills in the other';").format(**p))
    return sql.SQL(
        "create or replace function {f}() returns trigger language plpgsql security definer "
        "set search_path = pg_catalog, pg_temp set row_security = off as {body}").format(f=qn(n.sync_fn), body=body(code))


def invariants(spec: Spec, cat: Catalog) -> Check:
    """Every row that has a legacy id has the new id the mapping gives; constraints validated; indexes valid."""
    an = align.names(spec)
    new = spec.migration.new_column
    parts = []
    for d in cat.dependents:
        legacy_col = d.fk.columns[0]
        p = dict(t=qn(d.table.name), l=ident(legacy_col), n=ident(new), m=qn(an["mapping"]),
                 ml=ident(spec.mapping_legacy_column), mn=ident(new), tn=sql.Literal(str(d.table.name)),
                 fk=sql.Literal(Names(spec, d, "").fk))
        parts.append(sql.SQL(
            "select format('%s: %s rows have %s but no %s', {tn}, count(*), {ln}, {nn}), "
            "(select string_agg(x::text, ', ') from (select d2.ctid x from {t} d2 "
            " where d2.{l} is not null and d2.{n} is null limit 5) s) "
            "from {t} d where d.{l} is not null and d.{n} is null having count(*) > 0").format(
            **p, ln=sql.Literal(legacy_col), nn=sql.Literal(new)))
        parts.append(sql.SQL(
            "select format('%s: %s rows whose %s is not the mapping''s', {tn}, count(*), {nn}), null "
            "from {t} d join {m} m on m.{ml} = d.{l} where d.{n} is distinct from m.{mn} having count(*) > 0").format(
            **p, nn=sql.Literal(new)))
        parts.append(sql.SQL(
            "select format('%s: foreign key %s is not validated', {tn}, {fk}), null from pg_catalog.pg_constraint "
            "where conrelid = {tn}::regclass and conname = {fk} and not convalidated").format(**p))
    parts.append(sql.SQL(
        "select format('index %s is invalid', i.indexrelid::regclass), null from pg_catalog.pg_index i "
        "where i.indrelid = any(array[{}]::regclass[]) and not i.indisvalid").format(
        sql.SQL(", ").join(sql.Literal(str(d.table.name)) for d in cat.dependents)))
    return Check("invariants", sql.SQL(" union all ").join(parts),
                 failure="rows or constraints do not match the mapping",
                 fix="run `pgconverge run expand` again (the backfill picks up missing rows); if rows disagree "
                     "with the mapping, they were written by hand — correct them or roll back with "
                     "`pgconverge rollback --to expand`")


def rollback(spec: Spec, cat: Catalog, live: Catalog | None = None, cats=None) -> list[Step]:
    """Undo expand table by table: give every row its legacy id back, restore NOT NULL, drop the new column.

    New code must have stopped writing only the new column before this runs: once the column
    is gone there is nothing for it to write.
    """
    from pgconverge.operations.columns import DropColumn
    from pgconverge.operations.create_function import DropFunction
    from pgconverge.operations.create_index import DropIndexConcurrently
    from pgconverge.operations.create_trigger import DropTrigger
    from pgconverge.operations.together import Together

    shorts = short_names(cat)
    new = spec.migration.new_column
    steps: list[Step] = []
    for d in reversed(cat.dependents):
        n = Names(spec, d, shorts[d.table.name])
        legacy_col = d.fk.columns[0]
        fwd = f"{PHASE}.{n.short}"
        rid = f"rollback.{fwd}"
        indexes = _indexes(spec, d, n)
        steps.append(Step(f"{rid}.legacy_ids", "rollback", _reverse_fill(spec, cat, d),
                          ("expand.invariants",) if d is cat.dependents[-1] else (), (f"{fwd}.add_column",)))
        if d.column.not_null:
            chk = f"{d.table.name.name}_{legacy_col}_not_null"[:63]
            check = sql.SQL("{} is not null").format(ident(legacy_col))
            steps += [
                Step(f"{rid}.legacy_not_null_check", "rollback",
                     AddCheckNotValid(d.table.name, chk, check, why=f"{legacy_col} was NOT NULL before expand"),
                     (), (f"{fwd}.drop_legacy_not_null",)),
                Step(f"{rid}.validate_legacy_not_null", "rollback", ValidateConstraint(d.table.name, chk), (),
                     (f"{fwd}.drop_legacy_not_null",)),
                Step(f"{rid}.legacy_set_not_null", "rollback", SetNotNull(d.table.name, legacy_col), (),
                     (f"{fwd}.drop_legacy_not_null",)),
                Step(f"{rid}.drop_legacy_not_null_check", "rollback", DropConstraint(d.table.name, chk),
                     (f"{fwd}.drop_legacy_not_null",)),
            ]
        steps.append(Step(f"{rid}.drop_foreign_key", "rollback", DropConstraint(d.table.name, n.fk),
                          (f"{fwd}.foreign_key", f"{fwd}.validate_foreign_key")))
        for i, idx in enumerate(indexes):
            steps.append(Step(f"{rid}.drop_index_{i + 1}", "rollback", DropIndexConcurrently(idx.name, idx.table),
                              (f"{fwd}.index_{i + 1}",)))
        done_with_column = [f"{fwd}.add_column", f"{fwd}.backfill"]
        if d.column.not_null:
            done_with_column += [f"{fwd}.not_null_check", f"{fwd}.validate_not_null_check", f"{fwd}.set_not_null",
                                 f"{fwd}.drop_not_null_check"]
        # The trigger goes with the column, in one transaction: old code inserting in between would leave
        # the new column NULL, and fail where it is NOT NULL.
        steps.append(Step(f"{rid}.drop_column", "rollback", Together(
            (DropTrigger(TRIGGER, d.table.name), DropColumn(d.table.name, new)),
            f"old code's rows need the trigger while {new} exists"), (f"{fwd}.sync_trigger", *done_with_column)))
        steps.append(Step(f"{rid}.drop_sync_function", "rollback", DropFunction(n.sync_fn, ""),
                          (f"{fwd}.sync_function",)))
    return steps


def _reverse_fill(spec: Spec, cat: Catalog, d: Dependent) -> Batched:
    """Rows new code wrote with only the new id get their legacy id (a legacy row is made if none exists)."""
    legacy_col, new = d.fk.columns[0], spec.migration.new_column
    p = dict(l=ident(legacy_col), n=ident(new), legacy_for=qn(align.names(spec)["legacy_for"]))
    return batched_update(spec, d, sql.SQL("{l} = {legacy_for}(d.{n})").format(**p), None,
                          sql.SQL("d.{l} is null and d.{n} is not null").format(**p),
                          f"give {d.table.name} rows written with only {new} their {legacy_col} back")
