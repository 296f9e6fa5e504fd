"""The contract phase (T3): gates, then drop the legacy side and archive it; final validation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.catalog.model import Catalog, Function
from pgconverge.config import QualifiedName, Spec, parse_qualified
from pgconverge.execution.sql import bounded, ident, qn, text
from pgconverge.operations.archive import ArchiveTable
from pgconverge.operations.base import Lock, Operation, Step
from pgconverge.operations.check import Check, Rows
from pgconverge.operations.columns import DropColumn, DropNotNull, SetDefault
from pgconverge.operations.constraints import AddKeyUsingIndex, DropConstraint, ValidateConstraint
from pgconverge.operations.create_index import DropIndexConcurrently
from pgconverge.operations.create_trigger import DropTrigger
from pgconverge.operations.drop_policies import DropPolicies
from pgconverge.operations.grant import GrantColumn
from pgconverge.operations.replace_function import ReplaceFunction
from pgconverge.operations.snapshot import Snapshot
from pgconverge.operations.partitions import AddForeignKey, DropIndex
from pgconverge.operations.together import Together
from pgconverge.planning import align, expand, partitions, references, shapes, switch
from pgconverge.planning.index_mirror import contains_column

PHASE = "contract"
# The steps the emitted files record in place of the gates step (emit/contract.py adapt): undone with it, so a
# rollback by `pgconverge rollback` after contract was applied from files leaves none of contract recorded done.
EMITTED_GATES = (f"{PHASE}.gate_switch_in_place", f"{PHASE}.gate_runtime_use")


@dataclass(frozen=True)
class Gates(Operation):
    """Everything that must hold before anything is dropped (see execution/gates.py).

    Safe alone: reads only.
    """

    executor: ClassVar[str] = "gates"
    safe_alone: ClassVar[bool] = True
    reads_only: ClassVar[bool] = True

    @property
    def description(self) -> str:
        return ("gates: switch verified, invariants clean, no code or database object still naming the legacy "
                "side, no runtime use of the legacy table or helper since the switch, the archive schema usable")

    @property
    def lock(self) -> Lock:
        return Lock.ACCESS_SHARE

    def statements(self) -> list[sql.Composable]:
        return []


@dataclass(frozen=True)
class RetireFunction(Operation):
    """Drop a function (no CASCADE: objects still using it stop the step, named by Postgres).

    Safe alone: Postgres refuses the drop while a policy or trigger still calls the function, and contract's
    checks found no other caller first.
    """

    safe_alone: ClassVar[bool] = True

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


def linkage_snapshot(spec: Spec, cat: Catalog, name: str, legacy: bool, after: str = "") -> Operation:
    """Every dependent row's owner in canonical ids, kept in a private table to compare with later.

    One INSERT … SELECT reads every dependent table (one snapshot of them all). LEGACY reads owners through the
    mapping, joined (a hash join: one pass over the mapping) rather than looked up row by row. The primary key
    is built once the rows are in (CreateTable.key_after), not kept up to date row by row. AFTER: the step after
    which it may start beside the steps between (CreateTable.after)."""
    from pgconverge.operations.create_table import CreateTable

    parts = []
    for d in cat.dependents:  # one part per reference: a table with two is labelled with each column
        joins, owners = _owners(spec, cat, d, legacy)
        parts.append(sql.SQL("select {t}::text, {k}, {o} from {tab} d{j}").format(
            t=sql.Literal(references.label(cat, d)), k=references.row_id(d, "d", owners),
            o=owners[d.fk.columns[0]], tab=qn(d.table.name), j=joins))
    table = linkage_table(spec, name)
    # The names compare byte by byte (collation "C"): their key is built from millions of them, and a byte order
    # sorts them in about two thirds of the time a locale's order takes; equality is the same in any collation.
    return CreateTable(table, sql.SQL('(tbl text collate "C" not null, pk text collate "C" not null, owner text)'),
                       why=f"every dependent row's owner ({'through the mapping' if legacy else 'new column'}), "
                           "for the final validation",
                       # A key holding the legacy column names two rows of merged legacy rows alike: they are
                       # one row once expand's mirror holds (shapes.collisions refuses them before), keep one.
                       # ON CONFLICT only matters on a table already keyed (see CreateTable.key_after).
                       extra=(sql.SQL("insert into {} {} on conflict do nothing").format(
                           qn(table), sql.SQL(" union all ").join(parts)),),
                       reads_tables=True, key_after=("tbl", "pk"), after=after)


def _owners(spec: Spec, cat: Catalog, d, legacy: bool) -> tuple[sql.Composable, dict[str, sql.Composable]]:
    """The owner, as canonical id text, of D's legacy column and of every legacy column in D's row key, and the
    joins they need. LEGACY: through the mapping, one left join per column (the mapping's key is its legacy
    column, so each row finds at most one owner, NULL where none, as a scalar sub-query would); else from the
    new columns, no join."""
    m = align.names(spec)["mapping"]
    sibling = {x.fk.columns[0]: x for x in references.siblings(cat, d)}
    cols = list(dict.fromkeys([d.fk.columns[0], *(c for c in references.row_key(d.table) or () if c in sibling)]))
    if not legacy:
        return sql.SQL(""), {c: sql.SQL("d.{}::text").format(ident(references.new_column(spec, cat, sibling[c])))
                             for c in cols}
    joins, owners = [], {}
    for i, c in enumerate(cols):
        a = sql.Identifier(f"o{i + 1}")
        joins.append(sql.SQL(" left join {m} {a} on {a}.{ml} = d.{c}").format(
            m=qn(m), a=a, ml=ident(spec.mapping_legacy_column), c=ident(c)))
        owners[c] = sql.SQL("{}.{}::text").format(a, ident(spec.migration.new_column))
    return sql.Composed(joins), owners


def _row_id(spec: Spec, cat: Catalog, d) -> sql.Composable:
    """How snapshots name D's rows (references.row_id) after expand: a legacy column in the key read as its owner's
    canonical id from the new column, so the name outlives the legacy column."""
    return references.row_id(d, "d", _owners(spec, cat, d, legacy=False)[1])


def kept_ids_table(spec: Spec) -> QualifiedName:
    return QualifiedName(spec.migration.private_schema, "legacy_owners")


def keep_legacy_ids(spec: Spec, cat: Catalog) -> Operation:
    """Rows whose legacy id a rollback could not derive from the new id (merged legacy rows), kept aside.

    Reverse-filling the legacy column gives each row the first legacy row of its canonical row;
    for legacy rows that were merged onto one canonical row that is not always the one it had. Compared as text
    byte for byte: a key whose equality ignores case (citext, a nondeterministic collation) takes a row's
    'cust3@shop.org' for its legacy row's 'Cust3@Shop.org', and the rollback gives the row back its own spelling.
    """
    from pgconverge.operations.create_table import CreateTable

    m = align.names(spec)["mapping"]
    table = kept_ids_table(spec)
    parts = []
    for d in cat.dependents:
        # Every row of a merged person, and every row whose legacy id is not its canonical row's one legacy id
        # byte for byte. Which of a merged person's legacy ids the rollback's legacy-row lookup would pick depends
        # on the legacy rows as they are then (a live one first, align.MINE_ORDER), so those are all kept. The
        # mapping is grouped once for the whole table and joined (a sort and a hash join): a per-row sub-query
        # walked the mapping's key for every row.
        parts.append(sql.SQL(
            "select {t}, {k}, d.{l}::text from {tab} d left join (select mm.{mn}, min(mm.{ml}::text) as legacy, "
            "count(*) as several from {m} mm group by mm.{mn}) f on f.{mn} = d.{n} "
            "where d.{l} is not null and (f.several is distinct from 1 "
            "or d.{l}::text collate pg_catalog.\"C\" is distinct from f.legacy collate pg_catalog.\"C\")").format(
            t=sql.Literal(references.label(cat, d)), k=_row_id(spec, cat, d), l=ident(d.fk.columns[0]),
            tab=qn(d.table.name), ml=ident(spec.mapping_legacy_column), m=qn(m), mn=ident(spec.migration.new_column),
            n=ident(references.new_column(spec, cat, d))))
    return CreateTable(table, sql.SQL("(tbl text not null, pk text not null, legacy text, primary key (tbl, pk))"),
                       why="legacy ids a rollback could not derive again (rows of merged legacy rows)",
                       # A key holding the legacy column names two rows of merged legacy rows alike: they are
                       # one row once expand's mirror holds (shapes.collisions refuses them before), keep one.
                       extra=(sql.SQL("insert into {} {} on conflict do nothing").format(
                           qn(table), sql.SQL(" union all ").join(parts)),),
                       reads_tables=True)


def linkage_now(spec: Spec, cat: Catalog) -> Operation:
    """Every dependent row as it is just before the first drop, both ids still there: its new id (owner), its
    legacy id and that id's owner through the mapping (mapped). Rows are named as in align's snapshot (a legacy
    column in the key read through the mapping), so that a row align saw is found again. Emptied first: a run
    after a failed validation reads the rows again."""
    from pgconverge.operations.create_table import CreateTable

    table = linkage_table(spec, "after")
    fills = []
    for d in cat.dependents:
        joins, owners = _owners(spec, cat, d, legacy=True)
        t, n, col = sql.Literal(references.label(cat, d)), ident(references.new_column(spec, cat, d)), d.fk.columns[0]
        both = sql.SQL("insert into {a} select {t}::text, {k}, d.{n}::text, d.{l}::text, {o} from {tab} d{j} "
                       "on conflict do nothing;").format(
            a=qn(table), t=t, k=references.row_id(d, "d", owners), n=n, l=ident(col), o=owners[col],
            tab=qn(d.table.name), j=joins)
        new_only = sql.SQL("insert into {a} select {t}::text, {k}, d.{n}::text, null, null from {tab} d "
                           "on conflict do nothing;").format(a=qn(table), t=t, k=_row_id(spec, cat, d), n=n,
                                                             tab=qn(d.table.name))
        # A run resumed after a rollback that stopped half way may find the legacy column of a table still dropped:
        # its rows are read by their new id alone (plpgsql plans only the branch it takes).
        fills.append(sql.SQL(
            "do $pgc$ begin if exists (select 1 from pg_catalog.pg_attribute where attrelid = "
            "pg_catalog.to_regclass({tn}) and attname = {c} and not attisdropped) then {both} else {new_only} "
            "end if; end $pgc$").format(tn=sql.Literal(text(qn(d.table.name))), c=sql.Literal(col), both=both,
                                        new_only=new_only))
    return CreateTable(table, sql.SQL('(tbl text collate "C" not null, pk text collate "C" not null, owner text, '
                                      'legacy text, mapped text)'),
                       why="every dependent row's new id, legacy id and that id's owner, for the final validation",
                       extra=(sql.SQL("truncate {}").format(qn(table)), *fills),
                       reads_tables=True, key_after=("tbl", "pk"))


def keyless(cat: Catalog) -> list[str]:
    """Labels of the references whose table has no key: their rows are named by a ctid, which an UPDATE (the
    backfill's) changes and a later insert may take over, so they are never matched with align's snapshot."""
    return [references.label(cat, d) for d in cat.dependents if references.row_key(d.table) is None]


def final_validation(spec: Spec, cat: Catalog) -> Check:
    """Before the first drop: every row's new id is the owner its legacy id has through the mapping, read at one
    moment. What the application changed since align (a row re-assigned, unlinked by ON DELETE SET NULL, deleted,
    written) is its own doing and passes; the tally says how many rows kept the owner align recorded."""
    before, after = qn(linkage_table(spec, "before")), qn(linkage_table(spec, "after"))
    kl = sql.SQL("{}::text[]").format(sql.Literal(keyless(cat)))
    tally = sql.SQL(
        "select coalesce(jsonb_object_agg(tbl, jsonb_strip_nulls(jsonb_build_object('rows', now, 'checked', "
        "checked, 'before', was, 'kept', kept, 'moved', moved, 'keyless', nokey))), '{{}}') from ("
        "select coalesce(a.tbl, b.tbl) as tbl, count(a.pk) as now, count(a.legacy) as checked, count(b.pk) as was, "
        "count(*) filter (where a.pk is not null and b.pk is not null and b.owner is not distinct from a.mapped) "
        "as kept, count(*) filter (where a.pk is not null and b.pk is not null and b.owner is distinct from a.mapped)"
        " as moved, null::boolean as nokey "
        # The collation named: a snapshot taken by an earlier release has its names in the database's collation.
        "from (select * from {a} where tbl collate \"C\" <> all({kl})) a "
        "full join (select * from {b} where tbl collate \"C\" <> all({kl})) b "
        "on a.tbl = b.tbl collate \"C\" and a.pk = b.pk collate \"C\" group by 1 "
        "union all select tbl, count(*) filter (where now), count(legacy), count(*) filter (where not now), null, "
        "null, true from (select tbl, true as now, legacy from {a} where tbl collate \"C\" = any({kl}) union all "
        "select tbl, false, null from {b} where tbl collate \"C\" = any({kl})) k group by tbl) t").format(
        a=after, b=before, kl=kl)
    return Check("final validation", sql.SQL(
        "select format('%s row %s: new id %s, but legacy id %s has owner %s through the mapping', "
        "tbl, pk, coalesce(owner, 'NULL'), legacy, coalesce(mapped, 'none')), null "
        "from {a} where legacy is not null and mapped is distinct from owner limit 50").format(a=after),
        failure="rows are linked to another identity than their legacy id's owner through the mapping",
        fix="nothing was dropped: investigate the rows named, then run contract again or roll back with "
            "`pgconverge rollback contract`",
        # It judges the rows that have a legacy id (the tally says how many of each table's rows that is).
        covers=(Rows(linkage_table(spec, "after"), sql.SQL("{} is not null").format(ident("legacy")),
                     "with a legacy id"),),
        redo=(f"{PHASE}.linkage_after",), tally=tally)


def recorded_owner(spec: Spec, cat: Catalog, d, i: int = 1) -> tuple[sql.Composable, sql.Composable]:
    """After contract: (the joins, the owner as text) a row of D's table read as ``d`` must have, from what was
    recorded while its legacy id was there rather than from the new column it is compared with: the owner its
    legacy id had through the mapping when contract read every row before the first drop (linkage_after, which
    the final validation checked the new id against), else the owner align recorded (linkage_before). A row
    neither names (written by new code alone, or since contract) and a row of a table without a key (named by a
    ctid, which changes) are given their new column's value. I numbers the joins' aliases (one per reference)."""
    new = sql.SQL("d.{}::text").format(ident(references.new_column(spec, cat, d)))
    label = references.label(cat, d)
    if label in keyless(cat):
        return sql.SQL(""), new
    a, b = sql.Identifier(f"pgc_after{i}"), sql.Identifier(f"pgc_before{i}")
    p = dict(a=a, b=b, t=sql.Literal(label), r=_row_id(spec, cat, d), new=new,
             after=qn(linkage_table(spec, "after")), before=qn(linkage_table(spec, "before")))
    joins = sql.SQL(" left join {after} {a} on {a}.tbl = {t} and {a}.pk = {r}"
                    " left join {before} {b} on {b}.tbl = {t} and {b}.pk = {r}").format(**p)
    owner = sql.SQL("case when {a}.pk is not null then case when {a}.legacy is not null then {a}.mapped else {new} "
                    "end when {b}.pk is not null then {b}.owner else {new} end").format(**p)
    return joins, owner


def relinked(spec: Spec, cat: Catalog, d) -> sql.Composable:
    """After contract: rows of D's table whose new id is not the owner recorded for them (recorded_owner), as
    (table, row, new id, recorded owner), at most 50."""
    joins, owner = recorded_owner(spec, cat, d)
    new = sql.SQL("d.{}::text").format(ident(references.new_column(spec, cat, d)))
    return sql.SQL("select {t}::text, {r}, {new}, {o} from {tab} d{j} where {new} is distinct from {o} "
                   "limit 50").format(t=sql.Literal(references.label(cat, d)), r=_row_id(spec, cat, d), new=new,
                                      o=owner, tab=qn(d.table.name), j=joins)


def archive_names(spec: Spec, cat: Catalog) -> tuple[QualifiedName, QualifiedName]:
    stamp = cat.read_at or "undated"
    a = spec.migration.archive_schema
    return (QualifiedName(a, bounded(f"{cat.legacy.name.name}_{stamp}")),
            QualifiedName(a, bounded(f"{spec.mapping_table.name}_{stamp}")))


def plan(spec: Spec, cat: Catalog, cats=None) -> list[Step]:
    """CATS gives the catalog switch was planned from: the helpers are derived from their originals."""
    an = align.names(spec)
    steps: list[Step] = [Step(f"{PHASE}.gates", PHASE, Gates())]

    def add(what: str, op: Operation) -> None:
        steps.append(Step(f"{PHASE}.{what}", PHASE, op))

    # No legacy row leaves without its canonical row: those the trigger left pending are decided, then every one
    # must have a mapping before anything is dropped.
    add("map_pending", align.map_pending(spec, cat))
    add("coverage", align.coverage_gate(spec, cat, PHASE))
    # Before the first drop, read from the database as it is then: nothing else may use what contract drops.
    add("dependencies", shapes.contract_dependencies(
        spec, cat, [(d, k) for d in cat.dependents for k in _key_mirrors(spec, cat, cats, d)],
        planned=cats.for_phase("expand") if cats is not None else None))
    add("keep_legacy_ids", keep_legacy_ids(spec, cat))
    # The last read before the first drop, while every row still has both ids: a failure changes nothing.
    add("linkage_after", linkage_now(spec, cat))
    add("final_validation", final_validation(spec, cat))

    for d, n in expand.names_of(spec, cat):
        legacy_col = d.fk.columns[0]
        ed = _expand_dependent(cat, cats, d)[1]
        if shapes.not_null_at_commit(ed):
            # Checked at commit by the deferred fill trigger until now (a declared NOT NULL would refuse old code's
            # row written before its legacy row): declared now, old code being gone, as expand declares it elsewhere.
            for what, op in _declare_not_null(d, n):
                add(f"{n.short}.{what}", op)
        # On a partitioned table: the key declared there, with every partition's copy.
        add(f"{n.short}.drop_legacy_foreign_key", DropConstraint(d.table.name, d.fk.name))
        for i, idx in enumerate(_legacy_indexes(d, cat)):
            # A partitioned table's index has no DROP … CONCURRENTLY: a catalog change under ACCESS EXCLUSIVE.
            add(f"{n.short}.drop_legacy_index_{i + 1}", DropIndex(idx.name, d.table.name) if d.partitioned
                else DropIndexConcurrently(idx.name, d.table.name))
        # The sync trigger goes with the legacy column: old code still at work then gets "no such column",
        # not a NULL in the new column it does not know about.
        add(f"{n.short}.drop_legacy_column", Together(
            (*((DropTrigger(n.fill_trigger, d.table.name),) if shapes.fills_at_commit(ed) else ()),
             DropTrigger(n.trigger, d.table.name), DropTrigger(n.last_trigger, d.table.name),
             DropColumn(d.table.name, legacy_col),
             # An owner the legacy helper filled in by default: the canonical helper fills the new column from now.
             *((SetDefault(d.table.name, n.new, owner),) if (owner := shapes.owner_default(spec, d)) else ())),
            f"the trigger fills {n.new} for writers of {legacy_col}"))
        # Keys and unique constraints containing the legacy column went with it; their mirrors take their place.
        for i, m in enumerate(_key_mirrors(spec, cat, cats, d)):
            deferrable, deferred = _deferral(m.constraint)
            add(f"{n.short}.key_{i + 1}", AddKeyUsingIndex(
                d.table.name, m.mirror, m.constraint.kind, m.mirror, deferrable, deferred,
                why=f"in place of {m.constraint.name}, which went with {legacy_col}"))
    add("drop_legacy_trigger", DropTrigger("pgconverge_align", cat.legacy.name))
    add("drop_legacy_key_trigger", DropTrigger(align.KEY_TRIGGER, cat.legacy.name))
    add("drop_legacy_reuse_trigger", DropTrigger(align.REUSE_TRIGGER, cat.legacy.name))
    switch_cat = cats.for_phase("switch") if cats is not None else cat
    if spec.has_helper:
        readers = _helpers(spec, cat, switch_cat, add)
    else:  # no RLS identity helper (legacy.helper = ""): none to make stand alone, none to retire
        readers = ()
    archived, archived_map = archive_names(spec, cat)
    roles = tuple(r for r in spec.migration.api_roles if r in cat.roles)
    # (A catalog saved by an earlier release named the table unquoted.)
    legacy_names = (str(cat.legacy.name), f"{cat.legacy.name.schema}.{cat.legacy.name.name}")
    grants = tuple((g.grantee, g.privilege, g.grantable) for g in cat.grants
                   if g.object_kind == "table" and g.object_name in legacy_names)
    # Revoking a role's table privileges revokes its column privileges too: those of the roles revoked are kept.
    revoked = {*roles, "PUBLIC"}
    columns = tuple((c.name, kept) for c in cat.legacy.columns
                    if (kept := tuple(p for p in c.privileges if p[0] in revoked)))
    # The sequences its columns own move with it: the API roles' privileges on them go too (and come back on
    # rollback), or a role could still call setval() on the archived table's sequence by its oid.
    sequences: dict[str, list[tuple]] = {}
    for g in cat.grants:
        if g.object_kind == "sequence" and g.grantee in revoked:
            sequences.setdefault(g.object_name, []).append((g.grantee, g.privilege, g.grantable))
    owned = tuple((parse_qualified(name), tuple(gs)) for name, gs in sequences.items())
    # An archive schema this step creates has no privilege for the API roles, nor for the roles that read the mapping
    # through a helper they own: the mapping goes there next.
    add("archive_legacy_table", ArchiveTable(cat.legacy.name, archived, roles, grants, columns, owned,
                                             schema_revoke_from=readers))
    add("archive_mapping", ArchiveTable(an["mapping"], archived_map, roles + readers,
                                        tuple((r, "SELECT") for r in readers)))
    add("counts_after", counts(spec, cat, "counts_after", archived))
    add("new_columns", new_columns_hold(spec, cat, cats, [s.op for s in steps]))
    return steps


def _helpers(spec: Spec, cat: Catalog, switch_cat: Catalog, add) -> tuple[str, ...]:
    """The canonical helper made to stand alone, and the legacy helper retired (dropped or a stub); the roles the
    switch let read the mapping through a helper they own."""
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
        retire = RetireFunction(spec.legacy.helper, helper.legacy_bridge_sql)
        # One transaction: the legacy table without its policies would show its rows to no one while the
        # helper is still there, should the drop fail (DropPolicies is not safe alone).
        add("legacy_helper", Together((DropPolicies(
            own, f"they call {spec.legacy.helper}(), which is dropped, on a table that is archived"), retire),
            "the legacy table never stands without its policies") if own else retire)
    else:
        add("legacy_helper", ReplaceFunction(spec.legacy.helper, "", _legacy_stub(spec, cat),
                                             helper.legacy_bridge_sql, why="a stub that says the helper is retired"))
    return readers


def _declare_not_null(d, n) -> list[tuple[str, Operation]]:
    """The new column's NOT NULL for a reference whose deferred fill trigger checked it at commit, as expand declares
    it elsewhere: CHECK NOT VALID, VALIDATE (reads the table under a lock that lets writes go on), SET NOT NULL
    (proven by the check, reads nothing), the check dropped."""
    from pgconverge.operations.columns import SetNotNull
    from pgconverge.operations.constraints import AddCheckNotValid

    check = sql.SQL("{} is not null").format(ident(n.new))
    return [("not_null_check", AddCheckNotValid(d.table.name, n.not_null_check, check,
                                                why=f"{n.new} is NOT NULL where {d.fk.columns[0]} was; the deferred "
                                                    "fill trigger checked it at commit until now")),
            ("validate_not_null_check", ValidateConstraint(d.table.name, n.not_null_check)),
            ("set_not_null", SetNotNull(d.table.name, n.new)),
            ("drop_not_null_check", DropConstraint(d.table.name, n.not_null_check))]


def new_columns_hold(spec: Spec, cat: Catalog, cats=None, ops: list[Operation] = ()) -> Check:
    """What contract leaves for good, read from the live tables whenever `verify` runs: each new column, its foreign
    key to the canonical table validated, its NOT NULL, the indexes expand built there, and the tables' indexes
    valid (the final validation before it read the rows once, from its snapshot). What to expect comes from expand's
    plan (from the catalog saved before expand) and contract's own OPS (the NOT NULL it declares), never from the
    catalog as it is now: a NOT NULL or an index dropped by hand would take its own check with it."""
    from pgconverge.verify import installed

    ecat = cats.for_phase("expand") if cats is not None else cat
    made = [s.op for s in expand.plan(spec, ecat, cats)] + list(ops)
    parts = [expand.invalid_indexes(cat), installed.made_holds(made)]
    return Check("new columns hold", sql.SQL(" union all ").join(parts), failure="what contract left on the new columns has changed",
                 fix="run the statement given for each: it gives the new column back its foreign key (ADD … NOT "
                     "VALID, then VALIDATE), its NOT NULL or its index; rebuild an invalid index with REINDEX INDEX "
                     "CONCURRENTLY",
                 covers=tuple(d.table.name for d in cat.dependents))


def _direct_helper(op: ReplaceFunction) -> Function:
    """The canonical helper as contract leaves it (reading the claim alone, SECURITY INVOKER), for its rollback."""
    return Function(op.name, f"{op.name}()", "", "", "sql", "s", False, ("search_path=\"\"",), "", op.definition)


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
    tables += list(dict.fromkeys((str(d.table.name), d.table.name) for d in cat.dependents))
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
    steps: list[Step] = []

    def add(what: str, op: Operation, reverts: tuple[str, ...]) -> None:
        steps.append(Step(f"rollback.{PHASE}.{what}", "rollback", op, reverts))

    from pgconverge.operations.create_table import DropTable

    add("drop_linkage_after", DropTable(linkage_table(spec, "after")),
        (f"{PHASE}.linkage_after", f"{PHASE}.counts_after", f"{PHASE}.final_validation", f"{PHASE}.new_columns"))
    add("unarchive_mapping", fwd[f"{PHASE}.archive_mapping"].op.reverse(), (f"{PHASE}.archive_mapping",))
    add("unarchive_legacy_table", fwd[f"{PHASE}.archive_legacy_table"].op.reverse(),
        (f"{PHASE}.archive_legacy_table",))
    if f"{PHASE}.legacy_helper" in fwd:
        add("legacy_helper", fwd[f"{PHASE}.legacy_helper"].op.reverse(), (f"{PHASE}.legacy_helper",))
    if f"{PHASE}.legacy_table_policies" in fwd:
        add("legacy_table_policies", fwd[f"{PHASE}.legacy_table_policies"].op.reverse(),
            (f"{PHASE}.legacy_table_policies",))
    if f"{PHASE}.canonical_helper" in fwd:
        # The direct helper is SECURITY INVOKER and the bridged one reads the mapping as its owner: made a definer
        # first, the bridged body then waits for the statements calling it the old way (switch.definer_first).
        done = (f"{PHASE}.canonical_helper",)
        steps += [dataclasses.replace(s, when=done) for s in switch.definer_first(PHASE, ((
            f"{PHASE}.canonical_helper", spec.canonical.helper, _direct_helper(fwd[done[0]].op), True),),
            prefix="rollback.")]
        add("canonical_helper", fwd[done[0]].op.reverse(), done)
    elif cat.canonical_helper is not None:
        # A helper the switch could not make stand alone (a lookup through auth.uid()): the user rewrote it for
        # contract's gate, reading no mapping. Back to the switched state, old tokens need the switch's bridged one
        # again, or the rewritten policies show a merged person's second legacy row nothing (the rewrite is kept in
        # the ledger's saved definitions).
        switch_cat = cats.for_phase("switch") if cats is not None else cat
        bridged = switch._helper(spec, switch_cat).canonical_sql
        done = (f"{PHASE}.gates",)  # done until the rollback's last step
        steps += [dataclasses.replace(s, when=done) for s in switch.definer_first(PHASE, ((
            f"{PHASE}.canonical_helper", spec.canonical.helper, cat.canonical_helper, True),), prefix="rollback.")]
        steps.append(Step(f"rollback.{PHASE}.canonical_helper", "rollback", ReplaceFunction(
            spec.canonical.helper, "", bridged, cat.canonical_helper.definition,
            why="the switch's bridged helper back: old tokens need it"), (), done))
    add("legacy_trigger", al["align.legacy_trigger"].op, (f"{PHASE}.drop_legacy_trigger",))
    add("legacy_key_trigger", al["align.legacy_key_trigger"].op, (f"{PHASE}.drop_legacy_key_trigger",))
    add("legacy_reuse_trigger", al["align.legacy_reuse_trigger"].op, (f"{PHASE}.drop_legacy_reuse_trigger",))
    # Indexes after every reference's column is back: one may hold the legacy columns of two.
    later: list[Step] = []
    # Expand's names by reference (table and foreign key), as expand planned them: a short name can differ between
    # the two catalogs (one of two same-named tables dropped in between).
    expanded = {references.key(d): n for d, n in expand.names_of(spec, cats.for_phase("expand") if cats else cat)}
    for d, n in expand.names_of(spec, cat):
        en = expanded.get(references.key(d))
        if en is None or f"expand.{en.short}.sync_trigger" not in exp:
            # A reference the application made after expand (contract's gate refuses it, so a contract that ran
            # never dropped it): nothing of contract's to undo there.
            continue
        legacy_col = d.fk.columns[0]
        col = d.column
        fid = f"{PHASE}.{n.short}"
        # The column and the trigger that fills it commit together: old code, back at work, inserting a row
        # between the two would leave the new column NULL (and fail where it is NOT NULL).
        defaults = ((SetDefault(d.table.name, legacy_col, col.default),) if col.default and not col.generated
                    and not col.identity else ())
        if shapes.owner_default(spec, d):
            defaults += (SetDefault(d.table.name, n.new, None),)
        # Its column privileges went with it (where the application's role may use only some columns).
        grants = (GrantColumn(d.table.name, legacy_col, col.privileges, why="as before contract"),) \
            if col.privileges else ()
        # Where contract declared the new column's NOT NULL (the legacy foreign key deferrable), it goes again as the
        # deferred fill trigger comes back, which checks it at commit: old code may write a row before its legacy row.
        ed = _expand_dependent(cat, cats, d)[1]
        at_commit = shapes.not_null_at_commit(ed)
        loosen = (DropNotNull(d.table.name, n.new, why="checked at commit by the deferred fill trigger again"),) \
            if at_commit else ()
        add(f"{n.short}.legacy_column", Together((
            AddColumn(d.table.name, legacy_col, col.declared_type), *defaults, *grants,
            exp[f"expand.{en.short}.sync_trigger"].op, *loosen), "old code writes the column as soon as it exists"),
            (f"{fid}.drop_legacy_column",))
        if at_commit:
            # Also where contract stopped before it dropped the legacy column (the trigger still there).
            add(f"{n.short}.new_not_null", Together((DropConstraint(d.table.name, n.not_null_check), *loosen),
                                                    "the check goes with the NOT NULL it proved"),
                tuple(f"{fid}.{w}" for w, _ in _declare_not_null(d, n)))
        # Runs while the legacy foreign key is still to be restored (the two steps before it have
        # already marked their own forward steps undone).
        fk = d.fk
        if d.partitioned:
            leaves = partitions.leaves(d, expand._now(live, cats))
            ps = partitions.short_names(leaves)
            for leaf in leaves:
                steps.append(Step(f"rollback.{fid}.legacy_ids.{ps[leaf.table.name]}", "rollback",
                                  _refill(spec, cat, d, leaf.table), (), (f"{fid}.drop_legacy_foreign_key",)))
            # No NOT VALID foreign key on a partitioned table: each leaf's, under the name it had, then the
            # table's, which adopts them (operations/partitions.py).
            for leaf in leaves:
                name = leaf.fk_of(fk.name) or fk.name
                steps.append(Step(f"rollback.{fid}.legacy_foreign_key.{ps[leaf.table.name]}", "rollback",
                                  AddForeignKeyNotValid(leaf.table.name, name, legacy_col, fk.ref_table,
                                                        fk.ref_columns[0], fk.on_delete, fk.on_update,
                                                        *shapes.fk_deferral(d), match_full=fk.match_full),
                                  (), (f"{fid}.drop_legacy_foreign_key",)))
                steps.append(Step(f"rollback.{fid}.validate_legacy_foreign_key.{ps[leaf.table.name]}", "rollback",
                                  ValidateConstraint(leaf.table.name, name), (), (f"{fid}.drop_legacy_foreign_key",)))
            steps.append(Step(f"rollback.{fid}.legacy_foreign_key", "rollback", AddForeignKey(
                d.table.name, fk.name, legacy_col, fk.ref_table, fk.ref_columns[0], fk.on_delete, fk.on_update,
                tuple(leaf.table.name for leaf in leaves), *shapes.fk_deferral(d), match_full=fk.match_full), (),
                (f"{fid}.drop_legacy_foreign_key",)))
        else:
            steps.append(Step(f"rollback.{fid}.legacy_ids", "rollback", _refill(spec, cat, d, d.table), (),
                              (f"{fid}.drop_legacy_foreign_key",)))
            legacy_fk = AddForeignKeyNotValid(d.table.name, fk.name, legacy_col, fk.ref_table, fk.ref_columns[0],
                                              fk.on_delete, fk.on_update, *shapes.fk_deferral(d),
                                              match_full=fk.match_full)
            if fk.validated:
                steps.append(Step(f"rollback.{fid}.legacy_foreign_key", "rollback", legacy_fk, (),
                                  (f"{fid}.drop_legacy_foreign_key",)))
        steps.extend(_restore_shapes(spec, cat, cats, d, fid))
        if d.partitioned or fk.validated:
            add(f"{n.short}.validate_legacy_foreign_key", ValidateConstraint(d.table.name, fk.name),
                (f"{fid}.drop_legacy_foreign_key",))
        else:  # declared NOT VALID by its owner: it comes back so, last (it marks the drop undone), never validated
            add(f"{n.short}.legacy_foreign_key", legacy_fk, (f"{fid}.drop_legacy_foreign_key",))
        for i, idx in enumerate(_legacy_indexes(d, cat)):
            if d.partitioned:  # under their own names: the table's index empty, each leaf's built and attached
                names = partitions.index_names(d, idx.name.name, lambda p, own, col=legacy_col: own or
                                               bounded(f"{p.table.name.name}_{col}_idx"))
                shells, builds = partitions.index_tree(d, idx.definition, idx.name.name, names,
                                                       f"{idx.name.name} went with {legacy_col}")
                ops = [*shells, *builds]
                for k, (suffix, op) in enumerate(ops):  # the last marks the drop undone; all run while it is done
                    dropped = (f"{fid}.drop_legacy_index_{i + 1}",)
                    later.append(Step(f"rollback.{fid}.legacy_index_{i + 1}" + (f".{suffix}" if suffix else ""),
                                      "rollback", op, dropped if k == len(ops) - 1 else (), dropped))
                continue
            later.append(Step(f"rollback.{fid}.legacy_index_{i + 1}", "rollback", CreateIndexConcurrently(
                idx.name, d.table.name, sql.SQL(recreate(idx))), (f"{fid}.drop_legacy_index_{i + 1}",)))
    # Once more over every table, now that every refill has run: a row new code wrote by the new id alone, after its
    # table's refill, for a person who had no legacy row until another table's refill made one, gets it now (the sync
    # trigger found none when the row was written). This pass makes no legacy row, so none appears after it: a row
    # written since for a canonical row without one keeps NULL, as such rows do in the switched state.
    for d, n in expand.names_of(spec, cat):
        fid = f"{PHASE}.{n.short}"
        leaves = partitions.leaves(d, expand._now(live, cats)) if d.partitioned else []
        ps = partitions.short_names(leaves) if leaves else {}
        for t in [leaf.table for leaf in leaves] if d.partitioned else [d.table]:
            steps.append(Step(f"rollback.{fid}.legacy_ids_again" + (f".{ps[t.name]}" if leaves else ""), "rollback",
                              _refill(spec, cat, d, t, True), (), (f"{PHASE}.keep_legacy_ids",)))
    steps += later
    # Their comments went with the legacy column, its foreign key and its indexes (pg_graphql reads its directives
    # there): put back once all three are, whichever of them contract got to drop.
    for d, n in expand.names_of(spec, cat):
        comments = _legacy_comments(d, _legacy_indexes(d, cat))
        if comments is not None:
            steps.append(Step(f"rollback.{PHASE}.{n.short}.legacy_comments", "rollback", comments, (),
                              (f"{PHASE}.keep_legacy_ids",)))
    add("drop_kept_ids", DropTable(kept_ids_table(spec)), (f"{PHASE}.keep_legacy_ids", f"{PHASE}.gates",
                                                           *EMITTED_GATES, f"{PHASE}.dependencies",
                                                           f"{PHASE}.map_pending", f"{PHASE}.coverage"))
    return steps


def _legacy_comments(d, indexes: list) -> Operation | None:
    """The comments of D's legacy column, legacy foreign key and INDEXES as they were before contract, each set again
    where its object exists (None: none of them had one)."""
    from pgconverge.operations.run_sql import RunSql

    t, col, fk = qn(d.table.name), d.fk.columns[0], d.fk
    parts = []
    if d.column.comment is not None:
        parts.append(sql.SQL("if exists (select 1 from pg_catalog.pg_attribute where attrelid = {reg}::regclass and "
                             "attname = {c} and not attisdropped) then comment on column {t}.{ci} is {v}; end if;"
                             ).format(reg=sql.Literal(text(t)), c=sql.Literal(col), t=t, ci=ident(col),
                                      v=sql.Literal(d.column.comment)))
    if fk.comment is not None:
        parts.append(sql.SQL("if exists (select 1 from pg_catalog.pg_constraint where conrelid = {reg}::regclass and "
                             "conname = {c}) then comment on constraint {ci} on {t} is {v}; end if;").format(
            reg=sql.Literal(text(t)), c=sql.Literal(fk.name), ci=ident(fk.name), t=t, v=sql.Literal(fk.comment)))
    for idx in indexes:
        if idx.comment is not None:
            parts.append(sql.SQL("if pg_catalog.to_regclass({reg}) is not null then comment on index {i} is {v}; "
                                 "end if;").format(reg=sql.Literal(text(qn(idx.name))), i=qn(idx.name),
                                                   v=sql.Literal(idx.comment)))
    if not parts:
        return None
    return RunSql(sql.SQL("do $pgc$ begin {} end $pgc$").format(sql.SQL(" ").join(parts)),
                  f"the comments of {d.table.name}.{col}, its foreign key and its indexes, as before contract")


def _legacy_indexes(d, cat: Catalog | None = None) -> list:
    """Indexes contract drops concurrently: those containing the legacy column that back no constraint (a key's
    index goes with the column, in the same statement). With CAT, those D owns among its table's references
    (expand.owned_indexes: an index on two legacy columns is the first reference's)."""
    keyed = shapes.constraint_indexes(d.table)
    owned = {i.name.name for i, _ in expand.owned_indexes(cat, d)} if cat is not None else None
    return [i for i in d.table.indexes if not i.primary and i.name.name not in keyed
            and contains_column(i, d.fk.columns[0]) and (owned is None or i.name.name in owned)]


def _expand_dependent(cat: Catalog, cats, d):
    """D as the catalog expand was planned from saw it (the names of the mirrors expand built come from there)."""
    exp = cats.for_phase("expand") if cats is not None else cat
    return exp, next((x for x in exp.dependents if x.table.name == d.table.name and x.fk.name == d.fk.name), d)


def _key_mirrors(spec: Spec, cat: Catalog, cats, d) -> list:
    exp, ed = _expand_dependent(cat, cats, d)
    return shapes.key_mirrors(spec, exp, ed)


def _deferral(c) -> tuple[bool, bool]:
    return "DEFERRABLE" in c.definition and "NOT DEFERRABLE" not in c.definition, "INITIALLY DEFERRED" in c.definition


def _restore_shapes(spec: Spec, cat: Catalog, cats, d, fid: str) -> list[Step]:
    """Rollback steps giving the legacy column back what went with it: its CHECK constraints, and the keys and
    unique constraints that contain it (NOT NULL first for a primary key; its index built concurrently, swapped
    with the mirror's constraint in one transaction, the mirror's index built again as expand left it).

    They run while the legacy foreign key is still to be validated, each skipped where its object is in place (a
    contract stopped before it dropped the column)."""
    from pgconverge.operations.constraints import AddCheckNotValid, DropConstraint
    from pgconverge.operations.columns import SetNotNull
    from pgconverge.operations.create_index import CreateIndexConcurrently, TakeIndexName
    from pgconverge.operations.guarded import Unless
    from pgconverge.planning.index_mirror import recreate, renamed

    t, legacy_col = d.table.name, d.fk.columns[0]
    when = (f"{fid}.drop_legacy_foreign_key",)
    rid = f"rollback.{fid}"
    out: list[Step] = []

    def exists(name: str) -> sql.Composable:
        return sql.SQL("exists (select 1 from pg_catalog.pg_constraint where conrelid = {}::regclass and conname = {})"
                       ).format(sql.Literal(str(t)), sql.Literal(name))

    for i, m in enumerate(shapes.check_mirrors(spec, cat, d.table) if shapes.first_reference(cat, d) else ()):
        c = m.original
        out.append(Step(f"{rid}.legacy_check_{i + 1}", "rollback", Unless(
            AddCheckNotValid(t, c.name, sql.SQL(c.expression), why=f"{c.name} went with {legacy_col}"),
            exists(c.name), "it is still there"), (), when))
        if c.validated:
            out.append(Step(f"{rid}.validate_legacy_check_{i + 1}", "rollback", ValidateConstraint(t, c.name), (),
                            when))
    keys = _key_mirrors(spec, cat, cats, d)
    if any(k.constraint.kind == "primary key" for k in keys):
        chk = bounded(f"{t.name}_{legacy_col}_not_null")
        out += [Step(f"{rid}.legacy_key_not_null_check", "rollback", AddCheckNotValid(
                    t, chk, sql.SQL("{} is not null").format(ident(legacy_col)),
                    why=f"{legacy_col} is part of the primary key again"), (), when),
                Step(f"{rid}.validate_legacy_key_not_null", "rollback", ValidateConstraint(t, chk), (), when),
                Step(f"{rid}.legacy_key_set_not_null", "rollback", SetNotNull(t, legacy_col), (), when),
                Step(f"{rid}.drop_legacy_key_not_null_check", "rollback", DropConstraint(t, chk), (), when)]
    exp, ed = _expand_dependent(cat, cats, d)
    mirror_ops = {idx.name.name: op for idx, op in expand.index_mirrors(spec, exp, ed)}
    for i, k in enumerate(keys):
        c, idx = k.constraint, k.index
        deferrable, deferred = _deferral(c)
        out.append(Step(f"{rid}.legacy_key_{i + 1}_index", "rollback", CreateIndexConcurrently(
            idx.name, t, sql.SQL(recreate(idx)), why=f"the index of {c.name}"), (), when))
        mirror = mirror_ops[idx.name.name]
        # The mirror's index is built again ahead, under another name, so that a unique index over the new column
        # stays in place while its constraint is swapped for the legacy one: new code's ON CONFLICT (profile_id, …)
        # keeps finding its target. It takes the mirror's name afterwards. (A partitioned table's keys containing the
        # legacy column are refused by plan: Postgres has no ADD … USING INDEX there.) The name is cut with a hash
        # where long: a plain cut of a 63-byte mirror name would be the mirror's own name.
        standin = QualifiedName(t.schema, bounded(f"{k.mirror}_standin"))
        # It undoes nothing itself (the mirror's key stays until the swap): it runs where that key was made.
        out.append(Step(f"{rid}.mirror_key_{i + 1}_standin", "rollback", CreateIndexConcurrently(
            standin, t, sql.SQL(renamed(text(mirror.statement), standin.name)),
            why=f"{k.mirror} in place while its constraint goes"), (), (f"{fid}.key_{i + 1}",)))
        out.append(Step(f"{rid}.legacy_key_{i + 1}", "rollback", Unless(Together((
            DropConstraint(t, k.mirror),
            AddKeyUsingIndex(t, c.name, c.kind, idx.name.name, deferrable, deferred, why="as before contract")),
            "the key is never missing between the two"), exists(c.name), f"{c.name} is still there"), (), when))
        out.append(Step(f"{rid}.mirror_key_{i + 1}_name", "rollback", TakeIndexName(
            standin, QualifiedName(t.schema, mirror.name.name), t), (), (f"{fid}.key_{i + 1}",)))
        out.append(Step(f"{rid}.mirror_key_{i + 1}_index", "rollback", mirror,
                        (f"{fid}.key_{i + 1}",), when))
    return out


def _refill(spec: Spec, cat: Catalog, d, table=None, mapped: bool = False) -> Operation:
    """The legacy column filled again: the kept id where one was kept, else the canonical row's legacy row.

    TABLE: D's table, or one of its leaf partitions (walked on its own; rows are named as keep_legacy_ids
    named them, through the partitioned table). MAPPED: only rows whose canonical row has a legacy row already
    (none is made)."""
    table = table if table is not None else d.table
    p = dict(l=ident(d.fk.columns[0]), n=ident(references.new_column(spec, cat, d)), lt=sql.SQL(d.column.value_type),
             keep=qn(kept_ids_table(spec)), t=sql.Literal(references.label(cat, d)),
             k=_row_id(spec, cat, d), legacy_for=qn(align.names(spec)["legacy_for"]),
             m=qn(align.names(spec)["mapping"]), mn=ident(spec.migration.new_column),
             ml=ident(spec.mapping_legacy_column), leg=qn(cat.legacy.name), lk=ident(spec.legacy.key))
    op = expand.batched_update(
        spec, table, sql.SQL("{l} = coalesce((select x.legacy::{lt} from {keep} x where x.tbl = {t} "
                             "and x.pk = {k}), {legacy_for}(d.{n}))").format(**p), None,
        sql.SQL("d.{l} is null and d.{n} is not null").format(**p) + (sql.SQL(
            " and exists (select 1 from {m} m join {leg} l on l.{lk} = m.{ml} where m.{mn} = d.{n})").format(**p)
            if mapped else sql.SQL("")),
        f"give {table.name} rows their {d.fk.columns[0]} back"
        + (" where their canonical row has a legacy row by now" if mapped else ""), not_by=d.fk.columns[0])
    kept = sql.SQL("exists (select 1 from {keep} x where x.tbl = {t} and x.pk = {k} and x.legacy is not null)"
                   ).format(**p)
    return dataclasses.replace(op, legacy_rows=(align.reverse_aligned(
        spec, cat, table.name, d.fk.columns[0], references.new_column(spec, cat, d), kept, kept_ids_table(spec)),))
