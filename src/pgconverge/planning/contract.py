"""The contract phase (T3): gates, then drop the legacy side and archive it; final validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.catalog.model import Catalog
from pgconverge.config import QualifiedName, Spec
from pgconverge.execution.sql import ident, qn
from pgconverge.operations.archive import ArchiveTable
from pgconverge.operations.base import Lock, Operation, Step
from pgconverge.operations.check import Check
from pgconverge.operations.columns import DropColumn
from pgconverge.operations.constraints import DropConstraint
from pgconverge.operations.create_index import DropIndexConcurrently
from pgconverge.operations.create_trigger import DropTrigger
from pgconverge.operations.drop_policies import DropPolicies
from pgconverge.operations.replace_function import ReplaceFunction
from pgconverge.operations.snapshot import Snapshot
from pgconverge.operations.together import Together
from pgconverge.planning import align, expand, switch
from pgconverge.planning.index_mirror import contains_column

PHASE = "contract"


@dataclass(frozen=True)
class Gates(Operation):
    """Everything that must hold before anything is dropped (see execution/gates.py)."""

    executor: ClassVar[str] = "gates"

    @property
    def description(self) -> str:
        return ("gates: switch verified, invariants clean, no code or database object still naming the legacy "
                "side, no runtime use of the legacy table or helper since the switch")

    @property
    def lock(self) -> Lock:
        return Lock.ACCESS_SHARE

    def statements(self) -> list[sql.Composable]:
        return []


@dataclass(frozen=True)
class RetireFunction(Operation):
    """Drop a function (no CASCADE: objects still using it stop the step, named by Postgres)."""

    name: QualifiedName
    original: str

    @property
    def description(self) -> str:
        return f"drop function {self.name}()"

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("drop function if exists {}()").format(qn(self.name))]

    def reverse(self) -> Operation:
        return ReplaceFunction(self.name, "", self.original, None, why="restore the bridged helper")


def linkage_table(spec: Spec, name: str) -> QualifiedName:
    return QualifiedName(spec.migration.private_schema, f"linkage_{name}")


def linkage_snapshot(spec: Spec, cat: Catalog, name: str, legacy: bool) -> Operation:
    """Every dependent row's owner in canonical ids, kept in a private table to compare with later."""
    from pgconverge.operations.create_table import CreateTable

    m = align.names(spec)["mapping"]
    parts = []
    for d in cat.dependents:
        key = expand._key(d)
        k = ident(key[0]) if key else sql.SQL("ctid")
        owner = (sql.SQL("(select mm.{mn}::text from {m} mm where mm.{ml} = d.{l})").format(
            mn=ident(spec.migration.new_column), m=qn(m), ml=ident(spec.mapping_legacy_column),
            l=ident(d.fk.columns[0])) if legacy else sql.SQL("d.{}::text").format(ident(spec.migration.new_column)))
        parts.append(sql.SQL("select {t}::text, d.{k}::text, {o} from {tab} d").format(
            t=sql.Literal(str(d.table.name)), k=k, o=owner, tab=qn(d.table.name)))
    table = linkage_table(spec, name)
    return CreateTable(table, sql.SQL("(tbl text not null, pk text not null, owner text, primary key (tbl, pk))"),
                       why=f"every dependent row's owner ({'through the mapping' if legacy else 'new column'}), "
                           "for the final validation",
                       extra=(sql.SQL("insert into {} {}").format(qn(table), sql.SQL(" union all ").join(parts)),),
                       reads_tables=True)


def kept_ids_table(spec: Spec) -> QualifiedName:
    return QualifiedName(spec.migration.private_schema, "legacy_owners")


def keep_legacy_ids(spec: Spec, cat: Catalog) -> Operation:
    """Rows whose legacy id a rollback could not derive from the new id (merged legacy rows), kept aside.

    Reverse-filling the legacy column gives each row the first legacy row of its canonical row;
    for legacy rows that were merged onto one canonical row that is not always the one it had.
    """
    from pgconverge.operations.create_table import CreateTable

    m = align.names(spec)["mapping"]
    table = kept_ids_table(spec)
    parts = []
    for d in cat.dependents:
        key = expand._key(d)
        k = ident(key[0]) if key else sql.SQL("ctid")
        parts.append(sql.SQL(
            "select {t}, d.{k}::text, d.{l}::text from {tab} d where d.{l} is distinct from "
            "(select mm.{ml} from {m} mm where mm.{mn} = d.{n} order by mm.{ml} limit 1)").format(
            t=sql.Literal(str(d.table.name)), k=k, l=ident(d.fk.columns[0]), tab=qn(d.table.name),
            ml=ident(spec.mapping_legacy_column), m=qn(m), mn=ident(spec.migration.new_column),
            n=ident(spec.migration.new_column)))
    return CreateTable(table, sql.SQL("(tbl text not null, pk text not null, legacy text, primary key (tbl, pk))"),
                       why="legacy ids a rollback could not derive again (rows of merged legacy rows)",
                       extra=(sql.SQL("insert into {} {}").format(qn(table), sql.SQL(" union all ").join(parts)),),
                       reads_tables=True)


def final_validation(spec: Spec) -> Check:
    before, after = qn(linkage_table(spec, "before")), qn(linkage_table(spec, "after"))
    return Check("final validation", sql.SQL(
        "select format('%s row %s: owner %s before, %s now', b.tbl, b.pk, b.owner, a.owner), null "
        "from {b} b join {a} a using (tbl, pk) where a.owner is distinct from b.owner limit 50").format(
        b=before, a=after), failure="rows are linked to another identity than before the migration",
        fix="roll back with `pgconverge rollback --to contract` and investigate the rows named",
        covers=(linkage_table(spec, "before"),))


def archive_names(spec: Spec, cat: Catalog) -> tuple[QualifiedName, QualifiedName]:
    stamp = cat.read_at or "undated"
    a = spec.migration.archive_schema
    return (QualifiedName(a, f"{cat.legacy.name.name}_{stamp}"[:63]),
            QualifiedName(a, f"{spec.mapping_table.name}_{stamp}"[:63]))


def plan(spec: Spec, cat: Catalog, cats=None) -> list[Step]:
    """CATS gives the catalog switch was planned from: the helpers are derived from their originals."""
    an = align.names(spec)
    shorts = expand.short_names(cat)
    steps: list[Step] = [Step(f"{PHASE}.gates", PHASE, Gates())]

    def add(what: str, op: Operation) -> None:
        steps.append(Step(f"{PHASE}.{what}", PHASE, op))

    add("keep_legacy_ids", keep_legacy_ids(spec, cat))

    for d in cat.dependents:
        n = expand.Names(spec, d, shorts[d.table.name])
        legacy_col = d.fk.columns[0]
        add(f"{n.short}.drop_legacy_foreign_key", DropConstraint(d.table.name, d.fk.name))
        for i, idx in enumerate(i for i in d.table.indexes if not i.primary and contains_column(i, legacy_col)):
            add(f"{n.short}.drop_legacy_index_{i + 1}", DropIndexConcurrently(idx.name, d.table.name))
        # The sync trigger goes with the legacy column: old code still at work then gets "no such column",
        # not a NULL in the new column it does not know about.
        add(f"{n.short}.drop_legacy_column", Together(
            (DropTrigger(expand.TRIGGER, d.table.name), DropColumn(d.table.name, legacy_col)),
            f"the trigger fills {spec.migration.new_column} for writers of {legacy_col}"))
    add("drop_legacy_trigger", DropTrigger("pgconverge_align", cat.legacy.name))
    switch_cat = cats.for_phase("switch") if cats is not None else cat
    helper = switch._helper(spec, switch_cat)
    readers = switch.mapping_owners(spec, switch_cat, helper)  # the switch let them read the mapping
    if helper.canonical_direct_sql:
        add("canonical_helper", ReplaceFunction(spec.canonical.helper, "", helper.canonical_direct_sql,
                                                helper.canonical_sql, why="read the canonical claim only: "
                                                                          "the mapping is archived"))
    if spec.migration.legacy_helper_after_contract == "drop":
        # The legacy table's own policies call the helper; the table is about to be archived out of the
        # API roles' reach, so they go (and come back on rollback) instead of blocking the drop.
        own = tuple(p for p in cat.policies if p.table == cat.legacy.name
                    and cat.legacy_helper.signature in p.function_refs)
        if own:
            add("legacy_table_policies", DropPolicies(
                own, f"they call {spec.legacy.helper}(), which is dropped, on a table that is archived"))
        add("legacy_helper", RetireFunction(spec.legacy.helper, helper.legacy_bridge_sql))
    else:
        add("legacy_helper", ReplaceFunction(spec.legacy.helper, "", _legacy_stub(spec, cat),
                                             helper.legacy_bridge_sql, why="a stub that says the helper is retired"))
    archived, archived_map = archive_names(spec, cat)
    roles = tuple(r for r in spec.migration.api_roles if r in cat.roles)
    grants = tuple((g.grantee, g.privilege) for g in cat.grants
                   if g.object_kind == "table" and g.object_name == str(cat.legacy.name))
    add("archive_legacy_table", ArchiveTable(cat.legacy.name, archived, roles, grants))
    add("archive_mapping", ArchiveTable(an["mapping"], archived_map, roles + readers,
                                        tuple((r, "SELECT") for r in readers)))
    add("linkage_after", linkage_snapshot(spec, cat, "after", legacy=False))
    add("final_validation", final_validation(spec))
    add("counts_after", counts(spec, cat, "counts_after", archived))
    return steps


def _legacy_stub(spec: Spec, cat: Catalog) -> str:
    ret = cat.legacy_helper.returns
    msg = (f"{spec.legacy.helper}() is retired: {cat.legacy.name} was converged into {cat.canonical.name}; "
           f"use {spec.canonical.helper}()")
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {f}() RETURNS {r} LANGUAGE plpgsql STABLE AS $pgc$ begin "
        "raise exception using errcode = 'feature_not_supported', message = {m}; end $pgc$").format(
        f=qn(spec.legacy.helper), r=sql.SQL(ret), m=sql.Literal(msg)).as_string(None)


def counts(spec: Spec, cat: Catalog, name: str, legacy_table: QualifiedName | None = None) -> Snapshot:
    tables = [("legacy", legacy_table or cat.legacy.name), ("canonical", cat.canonical.name)]
    tables += [(str(d.table.name), d.table.name) for d in cat.dependents]
    q = sql.SQL("select jsonb_build_object({})").format(sql.SQL(", ").join(
        sql.SQL("{}, (select count(*) from {})").format(sql.Literal(label), qn(t)) for label, t in tables))
    return Snapshot(name, (("rows", q),), "row counts of the legacy, canonical and dependent tables")


def rollback(spec: Spec, cat: Catalog, live: Catalog | None = None, cats=None) -> list[Step]:
    """Back to the start of contract: the legacy table, its columns, keys, indexes and triggers restored."""
    from pgconverge.operations.columns import AddColumn
    from pgconverge.operations.constraints import AddForeignKeyNotValid, ValidateConstraint
    from pgconverge.operations.create_index import CreateIndexConcurrently
    from pgconverge.planning.index_mirror import recreate

    fwd = {s.id: s for s in plan(spec, cat, cats)}
    exp = {s.id: s for s in expand.plan(spec, cats.for_phase("expand") if cats else cat, cats)
           if s.id.endswith(".sync_trigger")}
    al = {s.id: s for s in align.plan(spec, cats.for_phase("align") if cats else cat, cats)}
    shorts = expand.short_names(cat)
    steps: list[Step] = []

    def add(what: str, op: Operation, reverts: tuple[str, ...]) -> None:
        steps.append(Step(f"rollback.{PHASE}.{what}", "rollback", op, reverts))

    from pgconverge.operations.create_table import DropTable

    add("drop_linkage_after", DropTable(linkage_table(spec, "after")),
        (f"{PHASE}.linkage_after", f"{PHASE}.counts_after", f"{PHASE}.final_validation"))
    add("unarchive_mapping", fwd[f"{PHASE}.archive_mapping"].op.reverse(), (f"{PHASE}.archive_mapping",))
    add("unarchive_legacy_table", fwd[f"{PHASE}.archive_legacy_table"].op.reverse(),
        (f"{PHASE}.archive_legacy_table",))
    add("legacy_helper", fwd[f"{PHASE}.legacy_helper"].op.reverse(), (f"{PHASE}.legacy_helper",))
    if f"{PHASE}.legacy_table_policies" in fwd:
        add("legacy_table_policies", fwd[f"{PHASE}.legacy_table_policies"].op.reverse(),
            (f"{PHASE}.legacy_table_policies",))
    if f"{PHASE}.canonical_helper" in fwd:
        add("canonical_helper", fwd[f"{PHASE}.canonical_helper"].op.reverse(), (f"{PHASE}.canonical_helper",))
    add("legacy_trigger", al["align.legacy_trigger"].op, (f"{PHASE}.drop_legacy_trigger",))
    for d in cat.dependents:
        n = expand.Names(spec, d, shorts[d.table.name])
        legacy_col = d.fk.columns[0]
        col = d.column
        fid = f"{PHASE}.{n.short}"
        # The column and the trigger that fills it commit together: old code, back at work, inserting a row
        # between the two would leave the new column NULL (and fail where it is NOT NULL).
        add(f"{n.short}.legacy_column", Together((
            AddColumn(d.table.name, legacy_col, col.type), exp[f"expand.{n.short}.sync_trigger"].op),
            "old code writes the column as soon as it exists"),
            (f"{fid}.drop_legacy_column",))
        # Runs while the legacy foreign key is still to be restored (the two steps before it have
        # already marked their own forward steps undone).
        steps.append(Step(f"rollback.{fid}.legacy_ids", "rollback", _refill(spec, cat, d), (),
                          (f"{fid}.drop_legacy_foreign_key",)))
        fk = d.fk
        steps.append(Step(f"rollback.{fid}.legacy_foreign_key", "rollback", AddForeignKeyNotValid(
            d.table.name, fk.name, legacy_col, fk.ref_table, fk.ref_columns[0], fk.on_delete, fk.on_update), (),
            (f"{fid}.drop_legacy_foreign_key",)))
        add(f"{n.short}.validate_legacy_foreign_key", ValidateConstraint(d.table.name, fk.name),
            (f"{fid}.drop_legacy_foreign_key",))
        for i, idx in enumerate(i for i in d.table.indexes if not i.primary and contains_column(i, legacy_col)):
            add(f"{n.short}.legacy_index_{i + 1}", CreateIndexConcurrently(idx.name, d.table.name,
                                                                            sql.SQL(recreate(idx))),
                (f"{fid}.drop_legacy_index_{i + 1}",))
    add("drop_kept_ids", DropTable(kept_ids_table(spec)), (f"{PHASE}.keep_legacy_ids", f"{PHASE}.gates"))
    return steps


def _refill(spec: Spec, cat: Catalog, d) -> Operation:
    """The legacy column filled again: the kept id where one was kept, else the canonical row's legacy row."""
    key = expand._key(d)
    p = dict(l=ident(d.fk.columns[0]), n=ident(spec.migration.new_column), lt=sql.SQL(d.column.type),
             keep=qn(kept_ids_table(spec)), t=sql.Literal(str(d.table.name)),
             k=ident(key[0]) if key else sql.SQL("ctid"), legacy_for=qn(align.names(spec)["legacy_for"]))
    return expand.batched_update(
        spec, d, sql.SQL("{l} = coalesce((select x.legacy::{lt} from {keep} x where x.tbl = {t} "
                         "and x.pk = d.{k}::text), {legacy_for}(d.{n}))").format(**p), None,
        sql.SQL("d.{l} is null and d.{n} is not null").format(**p),
        f"give {d.table.name} rows their {d.fk.columns[0]} back")
