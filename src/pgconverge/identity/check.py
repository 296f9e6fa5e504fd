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
from pgconverge.config import QualifiedName, Spec, show_identifier
from pgconverge.errors import CatalogError
from pgconverge.execution.sql import qn, text
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
    key = match.key_of(spec, "l", tuple(leg.column(c) for c in lcols), _PHONE)
    nonblank = sql.SQL(" and ").join(sql.SQL("coalesce(pg_catalog.btrim({}), '') <> ''").format(
        match.as_text("l", leg.column(c))) for c in lcols)
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
    # Match values alone cannot collide: a created row's key is one no canonical row has.
    checks, uniques, fks, unchecked = _rules(can, filled, nulls, set(copies))
    not_null = [c for c in copies if can.column(c) is not None and can.column(c).not_null]
    converted = [cc for cc, lc in copies.items() if leg.column(lc).type != can.column(cc).type]
    from pgconverge.planning.align import created_values, unfilled

    # NOT NULL columns nothing fills but, plan let them through, an application trigger may: tried below.
    trial = [c for c in unfilled(spec, can) if c not in filled]
    if not (checks or uniques or fks or not_null or converted or trial):
        return [], unchecked, None

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
    ckey = match.key_of(spec, "p", tuple(can.column(c) for c in spec.canonical.match_columns), _PHONE)
    failed = _gather(conn, cols, sql.SQL("""select {vals} from (
  (select distinct on (x.k) x.k, x.l from (select {key} as k, l from {t} l) x
    where x.k is not null and not exists (select 1 from {ct} p where {ckey} = x.k)
    order by x.k, (x.l).{lk})
  union all
  select x.k, x.l from (select {key} as k, l from {t} l) x where x.k is null and {create}) x,
  lateral (select (x.l).*) l""").format(
        vals=sql.SQL(", ").join(vals), key=key, t=table, ct=qn(can.name), ckey=ckey,
        lk=sql.Identifier(spec.legacy.key), create=sql.Literal(rule == "create")))
    if failed == "types":  # no assignment cast: align could not write any created row
        wrong = [f"{leg.name}.{lc} ({leg.column(lc).type}) into {can.name}.{cc} ({can.column(cc).type})"
                 for cc, lc in copies.items() if leg.column(lc).type != can.column(cc).type]
        return [f"canonical.copy_columns copies {', '.join(wrong)}, and Postgres does not convert between those "
                "types when a row is written"], unchecked, None
    if failed:  # a value its column refuses: align would fail on that row the same way
        return [f"a copied value does not fit its {can.name} column ({failed})"], unchecked, None
    count = conn.execute(sql.SQL("select count(*) from {}").format(_CREATED)).fetchone()[0]
    wrong = [(sql.SQL("x.{} is null").format(sql.Identifier(c)),
              f"{can.name}.{c} is NOT NULL, copied from {leg.name}.{copies[c]}, which is NULL") for c in not_null]
    out = []
    for what, found, _n, _cond in _refused(conn, qn(can.name), str(can.name), wrong, checks, uniques, fks,
                                             unchecked):
        more = " …" if len(found) > EXAMPLES else ""
        out.append(f"{what}: {leg.name} row(s) {', '.join(found[:EXAMPLES])}{more}")
    if trial and not out:
        if not count:  # none to create now: a row as one old code writes next would get, made from a legacy row's
            conn.execute(sql.SQL("""insert into {c} select {vals} from (
  select x.k, x.l from (select {key} as k, l from {t} l) x where x.k is not null limit 1) x,
  lateral (select (x.l).*) l""").format(c=_CREATED, vals=sql.SQL(", ").join(vals), key=key, t=table))
        from pgconverge.planning.align import UNFILLED_FIX
        from pgconverge.planning.shapes import insert_fillers

        out += _tried(conn, can.name, str(can.name), insert_fillers(can, spec.migration.private_schema),
                      [c for c, _ in cols if c != _ID and c not in nulls], trial, bool(count), UNFILLED_FIX)
    return out, unchecked, count


TRIED = 100  # rows written, and rolled back, to see what the application's insert triggers fill


def _tried(conn: psycopg.Connection, at: QualifiedName, label: str, triggers: list[str], given: list[str],
           trial: list[str], made: bool, fix: str, flags: dict[str, str] | None = None) -> list[str]:
    """Write the first TRIED rows of _CREATED into the table AT (LABEL: its name as told, which AT may be archived
    under), giving the columns GIVEN, in a
    savepoint that is rolled back: whether the application's BEFORE INSERT TRIGGERS fill the NOT NULL columns
    TRIAL, which have no default. MADE: the rows are ones pgconverge would write (any refusal counts), else one made
    up from another row (only NOT NULL can be read from it). FLAGS: settings for the savepoint (pgconverge's own
    triggers there stand aside for a row pgconverge itself writes). Every effect goes with the savepoint."""
    cols = sql.SQL(", ").join(map(sql.Identifier, given))
    names = ", ".join(triggers)
    unfilled = f"{label} has NOT NULL column(s) {', '.join(trial)} with no default"
    if not conn.execute(sql.SQL("select exists (select 1 from {})").format(_CREATED)).fetchone()[0]:
        return [f"{unfilled}; trigger(s) {names} may fill them, but with no row to make one from, a written row "
                f"could not be tried ({fix})"]
    try:
        with conn.transaction(force_rollback=True):
            for name, value in (flags or {}).items():
                conn.execute("select pg_catalog.set_config(%s, %s, true)", (name, value))
            conn.execute(sql.SQL("insert into {t} ({c}) select {c} from {x} order by {i} limit {n}").format(
                t=qn(at), c=cols, x=_CREATED, i=sql.Identifier(_ID), n=sql.Literal(TRIED)))
    except psycopg.Error as exc:
        ours = exc.diag.table_name == at.name
        if isinstance(exc, psycopg.errors.NotNullViolation) and ours and exc.diag.column_name in trial:
            return [f"{unfilled}, and trigger(s) {names} left {exc.diag.column_name} NULL in a row written as a "
                    f"trial and rolled back ({fix})"]
        # A unique, check or foreign key rule of the table itself is checked after the BEFORE triggers and NOT NULL:
        # those held. Anything else (a value that does not convert, an error of a trigger) comes before or from
        # them: on a made-up row it tells nothing.
        held = ours and isinstance(exc, psycopg.errors.IntegrityError) and not isinstance(
            exc, psycopg.errors.NotNullViolation)
        if not made and not held:
            return [f"{unfilled}; trigger(s) {names} may fill them, but a trial row made up from another row was "
                    f"refused ({str(exc).strip().splitlines()[0]}), so pgconverge cannot tell ({fix})"]
        refused = exc
    else:
        return []
    return [f"a {label} row, written as a trial and rolled back, was refused: "
            f"{str(refused).strip().splitlines()[0]}"] if made else []


_CREATED = sql.Identifier("pg_temp", "pgconverge_created")  # the rows a check gathers, named like their table's columns


def _rules(target: Table, filled: set[str], nulls: set[str], varying: set[str]) -> tuple[list, list, list, list[str]]:
    """Which of TARGET's rules rows written with the columns FILLED (values given) and NULLS (left NULL, no default)
    can break, every other column taking its default: (CHECK constraints, unique indexes, foreign keys, [rules not
    checked, and why]). Only unique indexes and foreign keys over a column of VARYING are of interest (the other
    values cannot collide); a rule that also reads a column filled by a default is listed as not checked."""
    seen = filled | nulls
    checks, uniques, unchecked = [], [], []
    for con in target.constraints:
        if con.kind != "check" or not con.expression:
            continue  # (a NOT VALID check still holds for new rows)
        if set(con.columns) <= seen:
            checks.append(con)
        elif set(con.columns) & filled:
            unchecked.append(f"check constraint {con.name} (it reads "
                             f"{', '.join(sorted(set(con.columns) - seen))}, filled by a default)")
    for ix in target.indexes:
        cols = set(ix.columns)
        if not ix.unique or not cols & varying:
            continue
        if ix.predicate is not None or None in cols or not cols <= filled:
            unchecked.append(f"unique index {ix.name.name} (partial, on an expression, or over a column filled by "
                             "a default)")
        else:
            uniques.append(ix)
    fks = [fk for fk in target.foreign_keys if set(fk.columns) <= filled and set(fk.columns) & varying]
    return checks, uniques, fks, unchecked


def _gather(conn: psycopg.Connection, cols: list[tuple[str, str]], rows: sql.Composable) -> str | None:
    """Write ROWS (a query whose columns are COLS, in order) into the temporary table _CREATED, typed as COLS say,
    as an INSERT would convert them. None when it took them; "types" when a value has no assignment conversion to
    its column's type; else why a value did not fit its column. The table goes with the caller's transaction."""
    conn.execute(sql.SQL("create temp table {} ({}) on commit drop").format(_CREATED, sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in cols)))
    try:
        with conn.transaction():
            conn.execute(sql.SQL("insert into {} ({}) {}").format(
                _CREATED, sql.SQL(", ").join(sql.Identifier(c) for c, _ in cols), rows))
    except psycopg.errors.DatatypeMismatch:
        return "types"
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:  # a domain's CHECK or NOT NULL, too
        return str(exc).strip().splitlines()[0]
    conn.execute(sql.SQL("analyze {}").format(_CREATED))
    return None


def _refused(conn: psycopg.Connection, at: sql.Composable, label: str, wrong: list[tuple[sql.Composable, str]],
             checks: list, uniques: list, fks: list, unchecked: list[str], *, made: str = "created rows",
             limit: int = EXAMPLES):
    """The rows of _CREATED that a rule refuses, rule by rule: [(what refuses them, the first LIMIT + 1 of their
    _ID, how many, the condition over row x)]. WRONG: (condition, what) pairs of the caller's own (NOT NULL); AT:
    the table the rows are for, where it is now (its present rows for the unique keys), LABEL its name as told;
    MADE what the rows are called. A rule whose tables this role may not read is added to UNCHECKED."""
    rules = list(wrong)
    for con in checks:
        rules.append((sql.SQL("({}) is false").format(sql.SQL(con.expression)),
                      f"check constraint {con.name} ({con.definition})"))
    for ix in uniques:
        on = sql.SQL(" and ").join(sql.SQL("p.{c} = x.{c}").format(c=sql.Identifier(c)) for c in ix.columns)
        rules.append((sql.SQL("exists (select 1 from {} p where {})").format(at, on),
                      f"unique index {ix.name.name} ({', '.join(ix.columns)}): a {label} row has the value already"))
        cols = sql.SQL(", ").join(sql.SQL("x.{}").format(sql.Identifier(c)) for c in ix.columns)
        bare = sql.SQL(", ").join(sql.Identifier(c) for c in ix.columns)
        rules.append((sql.SQL("({c}) in (select {b} from {t} group by {b} having count(*) > 1)").format(
            c=cols, b=bare, t=_CREATED),
            f"unique index {ix.name.name} ({', '.join(ix.columns)}): two {made} would have the same value"))
    for fk in fks:
        present = sql.SQL(" and ").join(sql.SQL("x.{} is not null").format(sql.Identifier(c)) for c in fk.columns)
        on = sql.SQL(" and ").join(sql.SQL("r.{} = x.{}").format(sql.Identifier(rc), sql.Identifier(c))
                                   for c, rc in zip(fk.columns, fk.ref_columns))
        rules.append((sql.SQL("{} and not exists (select 1 from {} r where {})").format(present, qn(fk.ref_table), on),
                      f"foreign key {fk.name} ({', '.join(fk.columns)} → {fk.ref_table}): no such row there"))
    out = []
    for cond, what in rules:
        try:
            with conn.transaction():
                found = conn.execute(sql.SQL(
                    "select x.{}, count(*) over () from {} x where {} order by 1 limit {}").format(
                        sql.Identifier(_ID), _CREATED, cond, sql.Literal(limit + 1))).fetchall()
        except psycopg.errors.InsufficientPrivilege as exc:  # a table the rule reads that this role may not
            unchecked.append(f"{what.split(':')[0]} ({str(exc).strip().splitlines()[0]})")
            continue
        if found:
            out.append((what, [r[0] for r in found], found[0][1], cond))
    return out


REVERSE_EXAMPLES = 10


def _made_refusals(conn: psycopg.Connection, first, target: Table, legacy_at: QualifiedName, source: sql.Composable,
                   ids: sql.Composable, *, made: bool, gives: str) -> tuple[list, str | None, list[str]]:
    """What refuses the legacy rows legacy_for_canonical would make (FIRST: planning/align.py ReverseAligned, its
    column list and casts) for the canonical rows p of SOURCE (a FROM clause over p; IDS: a query of their keys as
    text, for the examples), in TARGET (the legacy table as loaded now, at LEGACY_AT). MADE: the rows are ones
    pgconverge would make; else one made up from another canonical row, of which only what holds for any row counts:
    a NOT NULL column no value reaches, a CHECK that reads only such columns, a type that does not convert. GIVES:
    how a refusal says that nothing gives a column a value. ([(what refuses, the first keys, how many, the condition
    over row x)], why a value did not fit its column or None, the NOT NULL columns with no default the made rows
    leave empty). Run inside the caller's rolled-back transaction: the rows go into _CREATED."""
    from pgconverge.planning.align import REVERSE_FLAG
    from pgconverge.planning.shapes import insert_fillers

    filled = {lc for lc, _, _ in first.values}
    nulls = {c.name for c in target.columns if c.name not in filled and c.default is None and not c.generated
             and not c.identity}
    checks, uniques, fks, unchecked = _rules(target, filled, nulls, filled)
    if not made:  # a value of another person's row proves nothing about the next one's
        checks, uniques, fks = [c for c in checks if set(c.columns) <= nulls], [], []
    cols = [(_ID, "text")] + [(lc, target.column(lc).type) for lc, _, _ in first.values]
    vals = [sql.SQL("p.{}::text").format(sql.Identifier(first.canonical_key))] + [v for _, _, v in first.values]
    cols += [(c, target.column(c).type) for c in sorted(nulls)]
    vals += [sql.SQL("null") for _ in sorted(nulls)]
    failed = _gather(conn, cols, sql.SQL("select {} {}").format(sql.SQL(", ").join(vals), source))
    legacy, canonical = first.legacy_table, first.canonical
    source_of = {lc: cc for lc, cc, _ in first.values}
    defaultless: list[str] = []  # NOT NULL legacy columns the made rows get no value for: a default fixes them
    if failed and (made or failed == "types"):
        rows = conn.execute(sql.SQL("select c, count(*) over () from ({}) x(c) order by 1 limit {}").format(
            ids, sql.Literal(REVERSE_EXAMPLES + 1))).fetchall()
        why = ("Postgres does not convert " + ", ".join(
            f"{canonical}.{cc} into {legacy}.{lc} ({target.column(lc).type})" for lc, cc in source_of.items())
            + " when a row is written (one of them)" if failed == "types" else
            f"a value does not fit its {legacy} column ({failed}), among the rows for")
        return [(why, [r[0] for r in rows], rows[0][1] if rows else 0, sql.SQL("true"))], failed, defaultless
    if failed:  # a made-up value that does not fit says nothing about the next person's: a row of NULLs stands in
        conn.execute(sql.SQL("insert into {} default values").format(_CREATED))
        failed = None
    wrong, trial = [], []
    fillers = insert_fillers(target, first.mapping.schema)
    for c in sorted(filled | nulls):
        col = target.column(c)
        if col is None or not col.not_null or (c in source_of and not made):
            continue
        if c not in source_of and fillers:  # the application's insert trigger may fill it: tried below
            trial.append(c)
            continue
        what = (f"{legacy}.{c} is NOT NULL, and {canonical}.{source_of[c]}, which it is made from, is NULL"
                if c in source_of else f"{legacy}.{c} is NOT NULL and has no default, and {gives}")
        if c not in source_of:
            defaultless.append(c)
        wrong.append((sql.SQL("x.{} is null").format(sql.Identifier(c)), what))
    refused = _refused(conn, qn(legacy_at), str(legacy), wrong, checks, uniques, fks, unchecked,
                       made="legacy rows made", limit=REVERSE_EXAMPLES)
    if trial and not refused:  # pgconverge's own trigger there stands aside, as for legacy_for_canonical's
        tried = _tried(conn, legacy_at, str(legacy), fillers, [lc for lc, _, _ in first.values], trial,
                       made, f"give {legacy}.{', '.join(trial)} a default, or make the trigger fill it",
                       flags={REVERSE_FLAG: "on"})
        if tried:
            defaultless += trial
            rows = conn.execute(sql.SQL("select x.{i}, count(*) over () from {c} x order by 1 limit {n}").format(
                i=sql.Identifier(_ID), c=_CREATED, n=sql.Literal(REVERSE_EXAMPLES + 1))).fetchall()
            refused = [(tried[0] + ", among the rows for", [r[0] for r in rows], rows[0][1] if rows else 0,
                        sql.SQL("true"))]
    return refused, failed, defaultless


def legacy_refusals(conn: psycopg.Connection, made: list, legacy_at: QualifiedName, mapping_at: QualifiedName,
                    kept_at: bool) -> tuple[str, str] | None:
    """Before a rollback's first change: the legacy rows its steps MADE (planning/align.py ReverseAligned, one per
    dependent table walked) would have legacy_for_canonical make, checked against the legacy table's rules as they
    are now: NOT NULL, CHECK constraints, unique keys, foreign keys, the conversion of each value to its column's
    type. LEGACY_AT, MAPPING_AT: where the legacy table and the mapping are now (archived, from a contracted
    database); KEPT_AT: whether contract's kept legacy ids are there to be read. (what refuses which canonical rows,
    the fix), or None when the legacy table takes every row, or none is to be made.

    The rows are gathered, as the function writes them, into a temporary table typed like the legacy columns, in a
    transaction that is rolled back: nothing changes."""
    from pgconverge.catalog.introspect import load_table

    first = made[0]
    with conn.transaction(force_rollback=True):
        conn.execute("set local search_path = pg_catalog")
        oid = conn.execute("select pg_catalog.to_regclass(%s)::oid", (text(qn(legacy_at)),)).fetchone()[0]
        target = load_table(conn, oid)
        # The rows handed over, by canonical id, with the table they are in.
        owners = sql.Identifier("pg_temp", "pgconverge_owners")
        parts = []
        for r in made:
            there = conn.execute("select exists (select 1 from pg_catalog.pg_attribute where attrelid = "
                                 "pg_catalog.to_regclass(%s) and attname = %s and not attisdropped)",
                                 (text(qn(r.table)), r.legacy)).fetchone()[0]
            where = [sql.SQL("d.{} is not null").format(sql.Identifier(r.new))]
            if there:  # else dropped by contract: the rollback adds it back empty
                where.append(sql.SQL("d.{} is null").format(sql.Identifier(r.legacy)))
            if r.kept is not None and kept_at:
                where.append(sql.SQL("not {}").format(r.kept))
            parts.append(sql.SQL("select d.{n} as c, {t}::text as tbl from {tab} d where {w}").format(
                n=sql.Identifier(r.new), t=sql.Literal(str(r.table)), tab=qn(r.table),
                w=sql.SQL(" and ").join(where)))
        # One row per canonical row and table, with the rows written for it there (N).
        conn.execute(sql.SQL("create temp table {o} on commit drop as select o.c, o.tbl, count(*) as n from ({u}) o "
                             "join {can} p on p.{ck} = o.c where not exists (select 1 from {m} m join {leg} l "
                             "on l.{lk} = m.{ml} where m.{mc} = o.c) group by o.c, o.tbl").format(
            o=owners, u=sql.SQL(" union all ").join(parts), can=qn(first.canonical),
            ck=sql.Identifier(first.canonical_key), m=qn(mapping_at), leg=qn(legacy_at),
            lk=sql.Identifier(first.legacy_key), ml=sql.Identifier(first.mapping_legacy),
            mc=sql.Identifier(first.mapping_canonical)))
        if not conn.execute(sql.SQL("select exists (select 1 from {})").format(owners)).fetchone()[0]:
            return None
        source = sql.SQL("from {can} p where p.{ck} in (select c from {o})").format(
            can=qn(first.canonical), ck=sql.Identifier(first.canonical_key), o=owners)
        ids = sql.SQL("select distinct c::text from {}").format(owners)
        refused, failed, defaultless = _made_refusals(conn, first, target, legacy_at, source, ids, made=True,
                                                      gives="the rollback gives it no value")
        legacy, canonical = first.legacy_table, first.canonical
        if not refused:
            return None
        bad = sql.SQL(" or ").join(cond for *_, cond in refused)
        which = sql.SQL("where o.c::text in (select x.{} from {} x where {})").format(
            sql.Identifier(_ID), _CREATED, bad) if not failed else sql.SQL("")
        affected = conn.execute(sql.SQL("select o.tbl, sum(o.n), count(distinct o.c) from {} o {} group by 1 order by 1"
                                        ).format(owners, which)).fetchall()
    lines = []
    for what, found, n, _ in refused:
        more = f" … ({n} in all)" if len(found) > REVERSE_EXAMPLES else ""
        lines.append(f"{what}: {canonical} row(s) {', '.join(found[:REVERSE_EXAMPLES])}{more}")
    written = ", ".join(f"{tbl} {n:,} (for {people:,} of them)" for tbl, n, people in affected)
    tables = ", ".join(tbl for tbl, _, _ in affected)
    message = (f"the rollback would stop half way (nothing was changed): it must make a {legacy} row for each "
               f"{canonical} row that new code wrote rows for and that has none, and {legacy} would refuse these:\n"
               + "\n".join(f"  - {line}" for line in lines) + f"\n  rows written for them: {written}")
    # Contract archived the legacy table under another name: the default goes on the table as it is now.
    now = str(legacy_at)
    at = legacy if now == str(legacy) else f"{now} (contract archived {legacy} there; the rollback moves it back)"
    keep = (f"give {at} a default on {', '.join(defaultless)} (ALTER TABLE {now} ALTER COLUMN … SET DEFAULT …, a "
            "key's own sequence or generator, say): the legacy rows the rollback makes take it, and nothing new code "
            "wrote is touched; or " if defaultless else "")
    fix = (f"{keep}give those {canonical} rows the values {legacy} needs (the columns named above); failing that, "
           f"delete the rows of {tables} written for them, or give those rows an owner that has a {legacy} row "
           "(both change what new code wrote); then run the rollback again")
    return message, fix


NEWCOMERS_READ = 10_000  # canonical rows with no legacy row the forward check reads, at most


def newcomer_refusals(conn: psycopg.Connection, first, tables: list[str], mapped: bool) -> tuple[str, str] | None:
    """Before align and expand change anything: the legacy row the sync trigger of TABLES (dependents whose primary
    key holds the legacy column) has legacy_for_canonical make, from expand on, for a person new code writes a row
    for who has none (a sign-up through the canonical table alone), checked against the legacy table's rules as
    they are now, as a rollback checks the rows it makes (FIRST: planning/align.py ReverseAligned, the function's
    column list and casts). A row the legacy table refuses fails the application's write inside that trigger.

    MAPPED (align is done): the canonical rows that have no legacy row now are the first such people; up to
    NEWCOMERS_READ of them are checked as they are. Without them (before align, or none yet), a row made up from
    one canonical row stands in for the next person, and only what holds for any row counts: a NOT NULL column that
    has no default and gets no value, a CHECK that reads only such columns, a type that does not convert, and
    whether the application's BEFORE INSERT trigger fills such a column (a trial write, rolled back). (what
    refuses, the fix), or None. Nothing changes: the transaction is rolled back."""
    from pgconverge.catalog.introspect import load_table

    legacy, canonical = first.legacy_table, first.canonical
    with conn.transaction(force_rollback=True):
        conn.execute("set local search_path = pg_catalog")
        oid = conn.execute("select pg_catalog.to_regclass(%s)::oid", (text(qn(legacy)),)).fetchone()[0]
        if oid is None:
            return None
        target = load_table(conn, oid)
        people = sql.Identifier("pg_temp", "pgconverge_newcomers")
        can, ck = qn(canonical), sql.Identifier(first.canonical_key)
        found = 0
        if mapped:
            conn.execute(sql.SQL(
                "create temp table {o} on commit drop as select p.{ck} as c from {can} p where not exists (select 1 "
                "from {m} m join {leg} l on l.{lk} = m.{ml} where m.{mc} = p.{ck}) limit {n}").format(
                o=people, ck=ck, can=can, m=qn(first.mapping), leg=qn(legacy), lk=sql.Identifier(first.legacy_key),
                ml=sql.Identifier(first.mapping_legacy), mc=sql.Identifier(first.mapping_canonical),
                n=sql.Literal(NEWCOMERS_READ)))
            found = conn.execute(sql.SQL("select count(*) from {}").format(people)).fetchone()[0]
        if found:
            source = sql.SQL("from {} p where p.{} in (select c from {})").format(can, ck, people)
            ids = sql.SQL("select c::text from {}").format(people)
        else:
            source = sql.SQL("from (select) o left join lateral (select * from {} limit 1) p on true").format(can)
            ids = sql.SQL("select null::text where false")
        refused, failed, defaultless = _made_refusals(conn, first, target, legacy, source, ids, made=bool(found),
                                                      gives="pgconverge gives it no value")
        same = {r[0] for r in conn.execute(
            "select attname::text from pg_catalog.pg_attribute where attrelid = pg_catalog.to_regclass(%s) "
            "and attnum > 0 and not attisdropped", (text(qn(canonical)),)).fetchall()}
    if not refused:
        return None
    lines = []
    for what, keys, n, _ in refused:
        what = what.removesuffix(", among the rows for")
        if found:
            more = f" … ({n} in all)" if len(keys) > REVERSE_EXAMPLES else ""
            lines.append(f"{what}: {canonical} row(s) {', '.join(keys[:REVERSE_EXAMPLES])}{more}, which have no "
                         f"{legacy} row now")
        else:
            lines.append(what)
    read = (f" (read: the {found:,} {canonical} rows that have no {legacy} row"
            + (f", the first {NEWCOMERS_READ:,}" if found >= NEWCOMERS_READ else "") + ")") if found else ""
    message = (f"from expand on, a row new code writes into {', '.join(tables)} with the new id alone for a person "
               f"who has no {legacy} row (one who signed up through {canonical} alone) gets a {legacy} row made for "
               "that person by pgconverge's sync trigger (the legacy column is part of the primary key, so it must "
               f"be filled until contract), and {legacy} would refuse that row: the application's write would fail "
               f"(nothing was changed){read}:\n" + "\n".join(f"  - {line}" for line in lines))
    fixes = []
    if defaultless:
        cols = ", ".join(defaultless)
        alter = (f"ALTER TABLE {legacy} ALTER COLUMN {show_identifier(defaultless[0])} SET DEFAULT …"
                 if len(defaultless) == 1 else f"ALTER TABLE {legacy} ALTER COLUMN … SET DEFAULT …, for each")
        fixes.append(f"give {legacy}.{cols} a default ({alter}): the {legacy} rows pgconverge makes take it")
        fixes.append(f"or fill it from a column of {canonical}: canonical.copy_columns = {{ "
                     + ", ".join(f'{c} = "{c if c in same else f"<{canonical} column>"}"' for c in defaultless)
                     + " } (before align, which installs the function that makes the rows)")
    if found and (not defaultless or len(refused) > 1):
        fixes.append(f"give those {canonical} rows the values {legacy} needs (the columns named above), or relax "
                     "the rule")
    fix = "; ".join(fixes) + "; then run `pgconverge plan` again"
    return message, fix


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
        row = sql.SQL(", ").join(sql.SQL("null::{} as {}").format(sql.SQL(can.column(a).value_type), sql.Identifier(a))
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
    refs = [match.as_text("l", leg.column(c)) for c in spec.legacy.match_columns]
    return refs[0] if len(refs) == 1 else sql.SQL("concat_ws(' / ', {})").format(sql.SQL(", ").join(refs))


def _better_kind(spec: Spec, values: list[str]) -> str:
    if len(spec.legacy.match_columns) == 1 and values:
        for kind in match.KINDS_BY_LIKELIHOOD:
            if kind != spec.legacy.match_kinds[0] and sum(
                    match.reads(kind, v, spec.migration.default_region) for v in values) >= MOST * len(values):
                return f"the values look like {kind} values: set legacy.match = \"{kind}\""
    return "set legacy.match to the kind that fits the column (\"phone\", \"email\" or \"exact\"), or name the " \
           "right column in legacy.match_column"
