"""Before align changes anything: can the configured match kind read the legacy values, and what becomes
of the rows whose value identifies nobody?

The keys are computed by the very SQL align will install, created as temporary functions in a
transaction that is rolled back, so what `plan` reports is what `run align` will do. It reads every
legacy row once (one sequential scan).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql

from pgconverge.catalog.model import Catalog, Table
from pgconverge.config import QualifiedName, Spec
from pgconverge.errors import CatalogError
from pgconverge.execution.sql import qn
from pgconverge.identity import match, phone

MOST = 0.5  # a kind that reads fewer of the non-blank values than this is the wrong kind
EXAMPLES = 20
_PHONE = QualifiedName("pg_temp", "normalize_phone")  # the phone key function the checks create for their transaction


@dataclass(frozen=True)
class MatchCheck:
    rows: int  # legacy rows read
    nonblank: int  # rows with a value in every match column
    keyed: int  # rows the match kind gave a key
    unusable: int  # rows with no key (NULL, blank or unreadable value)
    rule: str  # what happens to those: create or refuse
    examples: list[tuple[str, str]] = field(default_factory=list)  # (legacy id, value) of unusable rows
    # Rules of the canonical table the rows align creates were not checked against (see created_refusals).
    unchecked: list[str] = field(default_factory=list)
    # The rows align would create, checked against the canonical table's rules (None: no rule could refuse one).
    created: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def column_types(spec: Spec, cat: Catalog) -> None:
    """Refuse match columns whose type cannot be keyed, or does not fit the kind."""
    for side, table, cols in (("legacy", cat.legacy, spec.legacy.match_columns),
                              ("canonical", cat.canonical, spec.canonical.match_columns)):
        for c, kind in zip(cols, spec.legacy.match_kinds):
            t = table.column(c).type
            base = t.split("(")[0]
            if kind in ("phone", "email") and base not in match.TEXT_LIKE and not (kind == "phone" and base in (
                    "bigint", "numeric")):
                raise CatalogError(
                    f"{side}.match_column {table.name}.{c} is of type {t}, which legacy.match = \"{kind}\" cannot "
                    "read", fix=f"match on a text column, or set legacy.match = \"exact\" for {t} values")
            if base not in match.KEYABLE:
                raise CatalogError(
                    f"{side}.match_column {table.name}.{c} is of type {t}: its text form depends on session "
                    "settings, so it cannot be part of a match key",
                    fix="match on a text, integer, numeric or uuid column (e.g. a generated text copy in ISO format)")
        gen = [c for c in cols if table.column(c).generated] if side == "canonical" else []
        if gen:
            raise CatalogError(
                f"canonical.match_column {', '.join(f'{table.name}.{c}' for c in gen)} is a generated column: "
                "pgconverge cannot give a canonical row it creates the legacy value there",
                fix="name the column it is generated from in canonical.match_column")


def run(conn: psycopg.Connection, spec: Spec, cat: Catalog) -> MatchCheck:
    """Key every legacy row with the configured kind; refuse a kind that reads too little, or unusable rows
    the rule cannot place. Changes nothing."""
    from pgconverge.planning.align import effective_unmatched

    column_types(spec, cat)
    leg = cat.legacy
    lcols = spec.legacy.match_columns
    # the key align will compute, over a temporary copy of the phone function
    key = match.key_of(spec, "l", lcols, tuple(leg.column(c).type for c in lcols), _PHONE)
    nonblank = sql.SQL(" and ").join(sql.SQL("coalesce(pg_catalog.btrim({}), '') <> ''").format(
        match.as_text("l", c, leg.column(c).type)) for c in lcols)
    shown = _shown(spec, leg)
    table = sql.Identifier(leg.name.schema, leg.name.name)
    mapping = spec.mapping_table
    if conn.execute("select to_regclass(%s)", (str(mapping),)).fetchone()[0]:
        # rows already decided (`pgconverge align --decisions`) need no key
        table = sql.SQL("(select * from {t} x where not exists (select 1 from {m} m where m.{mc} = x.{k}))").format(
            t=table, m=sql.Identifier(mapping.schema, mapping.name), mc=sql.Identifier(spec.mapping_legacy_column),
            k=sql.Identifier(spec.legacy.key))
    with conn.transaction(force_rollback=True):
        conn.execute(phone.normalize_function_sql("pg_temp", spec.migration.default_region))
        rows, filled, keyed = conn.execute(sql.SQL(
            "select count(*), count(*) filter (where x.nb), count(x.k) from "
            "(select {key} as k, {nb} as nb from {t} l) x").format(
                key=key, nb=nonblank, t=table)).fetchone()
        unread = conn.execute(sql.SQL(
            "select {shown} from {t} l where {nb} and {key} is null limit {n}").format(
                shown=shown, t=table, nb=nonblank, key=key,
                n=sql.Literal(EXAMPLES))).fetchall()
        unusable = conn.execute(sql.SQL(
            "select l.{k}::text, {shown} from {t} l where {key} is null order by l.{k} limit {n}").format(
                k=sql.Identifier(spec.legacy.key), shown=shown, t=table,
                key=key, n=sql.Literal(EXAMPLES))).fetchall()
        rule = effective_unmatched(spec, cat)
        refused, unchecked, created = created_refusals(conn, spec, cat, table, key, rule)
    result = MatchCheck(rows, filled, keyed, rows - keyed, rule, [(a, b) for a, b in unusable],
                        unchecked=unchecked, created=created)
    if filled and keyed < MOST * filled:
        raise CatalogError(
            f"legacy.match = {_kinds(spec)} reads only {keyed:,} of the {filled:,} non-empty values of "
            f"{leg.name}.{', '.join(lcols)} ({100 * keyed / filled:.0f}%), e.g. "
            + ", ".join(repr(v) for (v,) in unread[:5])
            + ": every other row would get a new canonical row of its own instead of its match",
            fix=_better_kind(spec, [v for (v,) in unread]))
    not_null = _null_refusals(conn, spec, cat) if result.unusable else []
    if result.unusable and (result.rule == "refuse" or not_null):
        why = (f"a canonical row created for them would be invalid ({', '.join(not_null)})" if not_null
               else "migration.unmatched = \"refuse\" leaves them to you")
        undo = ("relax what refuses them and set migration.unmatched = \"create\"" if not_null
                else "set migration.unmatched = \"create\" to give each a canonical row of its own")
        raise CatalogError(
            f"{result.unusable:,} {leg.name} row(s) have no usable {' / '.join(lcols)} (NULL, empty or unreadable), "
            f"and {why}: "
            + ", ".join(f"{i} ({v!r})" for i, v in result.examples[:EXAMPLES])
            + (" …" if result.unusable > EXAMPLES else ""),
            fix=f"correct those values in the legacy table, or {undo}, or decide them with `pgconverge align "
                "--decisions FILE` (before `run align`: decided rows need no match value)")
    if refused:
        raise CatalogError(
            f"align would create {cat.canonical.name} rows that {cat.canonical.name} refuses, and stop partway: "
            + "; ".join(refused),
            fix=f"correct those values in {leg.name}, or relax the rule, or take the column out of "
                "canonical.copy_columns, or decide those rows with `pgconverge align --decisions FILE` (decided "
                "rows create nothing)")
    return result


_ID = "pgconverge legacy id"  # the created rows' legacy key, named apart from any canonical column


def created_refusals(conn: psycopg.Connection, spec: Spec, cat: Catalog, table: sql.Composable,
                     key: sql.Composable, rule: str) -> tuple[list[str], list[str], int | None]:
    """The rules of the canonical table that the rows align would create break, before align changes anything:
    its CHECK constraints, NOT NULL on a copied column, unique keys over a copied column, foreign keys over
    copied columns. ([what refuses which rows], [rules not checked, and why], the rows read: None when no rule
    could refuse one, so none was read).

    A created row holds the match values in the canonical spelling and the copied columns; every other column gets
    its default. Run inside the caller's rolled-back transaction (its pg_temp phone function computes the keys):
    the rows are gathered once into a temporary table named and typed like the canonical columns they fill, and
    each rule is read over it. A rule that also reads a column with a default is not checked (evaluating the
    default could use a sequence): it is listed instead."""
    can, leg = cat.canonical, cat.legacy
    copies = dict((cc, lc) for lc, cc in spec.canonical.copy_columns)
    matches = dict(zip(spec.canonical.match_columns, spec.legacy.match_columns))
    filled = {*matches, *copies}
    # Columns a created row leaves NULL: no default, not generated, not an identity, not the key (given one).
    nulls = {c.name for c in can.columns if c.name not in filled and c.default is None and not c.generated
             and not c.identity and c.name != spec.canonical.key}
    seen = filled | nulls
    checks, unchecked = [], []
    for con in can.constraints:
        if con.kind != "check" or not con.expression:
            continue  # (a NOT VALID check still holds for new rows)
        if set(con.columns) <= seen:
            checks.append(con)
        elif set(con.columns) & filled:
            unchecked.append(f"check constraint {con.name} (it reads "
                             f"{', '.join(sorted(set(con.columns) - seen))}, filled by a default)")
    uniques = []
    for ix in can.indexes:
        cols = set(ix.columns)
        if not ix.unique or not cols & set(copies):
            continue  # match values alone cannot collide: a created row's key is one no canonical row has
        if ix.predicate is not None or None in cols or not cols <= filled:
            unchecked.append(f"unique index {ix.name.name} (partial, on an expression, or over a column filled by "
                             "a default)")
        else:
            uniques.append(ix)
    fks = [fk for fk in can.foreign_keys if set(fk.columns) <= filled and set(fk.columns) & set(copies)]
    not_null = [c for c in copies if can.column(c) is not None and can.column(c).not_null]
    converted = [cc for cc, lc in copies.items() if leg.column(lc).type != can.column(cc).type]
    if not (checks or uniques or fks or not_null or converted):
        return [], unchecked, None
    from pgconverge.planning.align import created_values

    # As align writes them: match values as its function computes them, copied values by INSERT's assignment.
    cols, vals = [(_ID, "text")], [sql.SQL("l.{}::text").format(sql.Identifier(spec.legacy.key))]
    cols += [(cc, can.column(cc).type) for cc in spec.canonical.match_columns]
    vals += created_values(spec, cat, _PHONE, alias="l", key=sql.SQL("x.k"))
    for cc, lc in copies.items():
        if cc not in matches:
            cols.append((cc, can.column(cc).type))
            vals.append(sql.SQL("l.{}").format(sql.Identifier(lc)))
    for c in sorted(nulls):
        cols.append((c, can.column(c).type))
        vals.append(sql.SQL("null"))
    ckey = match.key_of(spec, "p", spec.canonical.match_columns,
                        tuple(can.column(c).type for c in spec.canonical.match_columns), _PHONE)
    created = sql.Identifier("pg_temp", "pgconverge_created")
    conn.execute(sql.SQL("create temp table {} ({}) on commit drop").format(created, sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in cols)))
    try:
        with conn.transaction():
            conn.execute(sql.SQL("""insert into {created} ({names})
select {vals} from (
  (select distinct on (x.k) x.k, x.l from (select {key} as k, l from {t} l) x
    where x.k is not null and not exists (select 1 from {ct} p where {ckey} = x.k)
    order by x.k, (x.l).{lk})
  union all
  select x.k, x.l from (select {key} as k, l from {t} l) x where x.k is null and {create}) x,
  lateral (select (x.l).*) l""").format(
                created=created, names=sql.SQL(", ").join(sql.Identifier(c) for c, _ in cols),
                vals=sql.SQL(", ").join(vals), key=key, t=table, ct=qn(can.name), ckey=ckey,
                lk=sql.Identifier(spec.legacy.key), create=sql.Literal(rule == "create")))
    except psycopg.errors.DatatypeMismatch:  # no assignment cast: align could not write any created row
        wrong = [f"{leg.name}.{lc} ({leg.column(lc).type}) into {can.name}.{cc} ({can.column(cc).type})"
                 for cc, lc in copies.items() if leg.column(lc).type != can.column(cc).type]
        return [f"canonical.copy_columns copies {', '.join(wrong)}, and Postgres does not convert between those "
                "types when a row is written"], unchecked, None
    except psycopg.errors.DataError as exc:  # a value its column refuses: align would fail on that row the same way
        why = str(exc).strip().splitlines()[0]
        return [f"a copied value does not fit its {can.name} column ({why})"], unchecked, None
    conn.execute(sql.SQL("analyze {}").format(created))
    count = conn.execute(sql.SQL("select count(*) from {}").format(created)).fetchone()[0]
    out = []

    def rows(q: sql.Composable, what: str) -> None:
        try:
            with conn.transaction():
                found = [r[0] for r in conn.execute(sql.SQL(
                    "select x.{} from {} x where {} order by 1 limit {}").format(
                        sql.Identifier(_ID), created, q, sql.Literal(EXAMPLES + 1))).fetchall()]
        except psycopg.errors.InsufficientPrivilege as exc:  # a table the rule reads that this role may not
            unchecked.append(f"{what.split(':')[0]} ({str(exc).strip().splitlines()[0]})")
            return
        if found:
            more = " …" if len(found) > EXAMPLES else ""
            out.append(f"{what}: {leg.name} row(s) {', '.join(found[:EXAMPLES])}{more}")

    for c in not_null:
        rows(sql.SQL("x.{} is null").format(sql.Identifier(c)), f"{can.name}.{c} is NOT NULL, copied from "
                                                                 f"{leg.name}.{copies[c]}, which is NULL")
    for con in checks:
        rows(sql.SQL("({}) is false").format(sql.SQL(con.expression)), f"check constraint {con.name} "
                                                                       f"({con.definition})")
    for ix in uniques:
        on = sql.SQL(" and ").join(sql.SQL("p.{c} = x.{c}").format(c=sql.Identifier(c)) for c in ix.columns)
        rows(sql.SQL("exists (select 1 from {} p where {})").format(qn(can.name), on),
             f"unique index {ix.name.name} ({', '.join(ix.columns)}): a {can.name} row has the value already")
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in ix.columns)
        rows(sql.SQL("({c}) in (select {c} from {t} group by {c} having count(*) > 1)").format(c=cols, t=created),
            f"unique index {ix.name.name} ({', '.join(ix.columns)}): two created rows would have the same value")
    for fk in fks:
        present = sql.SQL(" and ").join(sql.SQL("x.{} is not null").format(sql.Identifier(c)) for c in fk.columns)
        on = sql.SQL(" and ").join(sql.SQL("r.{} = x.{}").format(sql.Identifier(rc), sql.Identifier(c))
                                   for c, rc in zip(fk.columns, fk.ref_columns))
        rows(sql.SQL("{} and not exists (select 1 from {} r where {})").format(present, qn(fk.ref_table), on),
             f"foreign key {fk.name} ({', '.join(fk.columns)} → {fk.ref_table}): no such row there")
    return out, unchecked, count


def _null_refusals(conn: psycopg.Connection, spec: Spec, cat: Catalog) -> list[str]:
    """Why a canonical row with no match value would be refused: NOT NULL, a CHECK that NULL fails, a unique
    index whose NULLs are not distinct."""
    can = cat.canonical
    out = [f"{can.name}.{c} is NOT NULL" for c in spec.canonical.match_columns if can.column(c).not_null]
    cols = list(spec.canonical.match_columns)
    oid = conn.execute("select %s::regclass::oid", (str(can.name),)).fetchone()[0]
    checks = conn.execute(
        "select c.conname, pg_get_expr(c.conbin, c.conrelid), array_agg(a.attname::text order by a.attnum) "
        "from pg_constraint c join pg_attribute a on a.attrelid = c.conrelid and a.attnum = any(c.conkey) "
        "where c.conrelid = %s and c.contype = 'c' group by 1, 2 "
        "having bool_or(a.attname = any(%s))", (oid, cols)).fetchall()
    for name, expr, attnames in checks:
        # The constraint's own expression over a row whose columns are all NULL (the created row's match
        # columns are; its other columns are approximated the same way).
        row = sql.SQL(", ").join(sql.SQL("null::{} as {}").format(sql.SQL(can.column(a).type), sql.Identifier(a))
                                 for a in attnames)
        with conn.transaction(force_rollback=True):
            fails = conn.execute(sql.SQL("select ({}) is false from (select {}) as x").format(
                sql.SQL(expr), row)).fetchone()[0]
        if fails:
            out.append(f"check constraint {name} on {can.name} refuses NULL")
    unique = conn.execute(
        "select i.indexrelid::regclass::text from pg_index i join pg_attribute a on a.attrelid = i.indrelid "
        "and a.attnum = any(i.indkey) where i.indrelid = %s and i.indisunique and "
        "coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false) and a.attname = any(%s)",
        (oid, cols)).fetchall()
    out += [f"unique index {u} treats NULLs as equal" for (u,) in unique]
    return out


def _kinds(spec: Spec) -> str:
    kinds = spec.legacy.match_kinds
    return f'"{kinds[0]}"' if len(set(kinds)) == 1 else str(list(kinds))


def _shown(spec: Spec, leg: Table) -> sql.Composable:
    refs = [match.as_text("l", c, leg.column(c).type) for c in spec.legacy.match_columns]
    return refs[0] if len(refs) == 1 else sql.SQL("concat_ws(' / ', {})").format(sql.SQL(", ").join(refs))


def _better_kind(spec: Spec, values: list[str]) -> str:
    if len(spec.legacy.match_columns) == 1 and values:
        for kind in match.KINDS_BY_LIKELIHOOD:
            if kind != spec.legacy.match_kinds[0] and sum(
                    match.reads(kind, v, spec.migration.default_region) for v in values) >= MOST * len(values):
                return f"the values look like {kind} values: set legacy.match = \"{kind}\""
    return "set legacy.match to the kind that fits the column (\"phone\", \"email\" or \"exact\"), or name the " \
           "right column in legacy.match_column"
