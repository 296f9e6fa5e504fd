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
from pgconverge.identity import match, phone

MOST = 0.5  # a kind that reads fewer of the non-blank values than this is the wrong kind
EXAMPLES = 20


@dataclass(frozen=True)
class MatchCheck:
    rows: int  # legacy rows read
    nonblank: int  # rows with a value in every match column
    keyed: int  # rows the match kind gave a key
    unusable: int  # rows with no key (NULL, blank or unreadable value)
    rule: str  # what happens to those: create or refuse
    examples: list[tuple[str, str]] = field(default_factory=list)  # (legacy id, value) of unusable rows

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
    key = match.key_of(spec, "l", lcols, tuple(leg.column(c).type for c in lcols),
                       QualifiedName("pg_temp", "normalize_phone"))
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
    result = MatchCheck(rows, filled, keyed, rows - keyed, effective_unmatched(spec, cat),
                        [(a, b) for a, b in unusable])
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
    return result


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
