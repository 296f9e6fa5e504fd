"""Every way a table can depend on the legacy key, decided before anything changes (pure: Spec + Catalog).

Each object that depends on a legacy column, the legacy table or its key is one of:

- mirrored: expand builds its twin on the new column and contract makes the twin what the original was
  (keys and unique constraints: a unique index built concurrently in expand, attached with `ADD PRIMARY KEY
  / UNIQUE USING INDEX` at contract; CHECK constraints: rewritten on the parse tree, `NOT VALID` then
  `VALIDATE` after the backfill); rollback restores the original;
- listed: `plan` shows it; the user acts before contract (a function that reads the legacy column);
- refused: `plan`, `run` and `emit` stop before any change, exit 2, naming every refused object with its fix.

Nothing is left to be found by a DDL failing after a drop. What only the data can tell (rows of two legacy
rows merged onto one canonical row that a mirrored unique index would reject) is the first step of expand,
also run by `plan` once align is done (`collisions`); what may appear after planning (a view created
meanwhile) is refused by contract's first check after its gates (`contract_dependencies`), before its first
drop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pglast
from pglast import ast, stream, visitors
from psycopg import sql

from pgconverge.catalog import legacy_uses, mentions
from pgconverge.catalog.model import Catalog, Constraint, Dependent, Index, Policy, Table
from pgconverge.config import QualifiedName, Spec, show_identifier
from pgconverge.errors import PgConvergeError
from pgconverge.execution.sql import ident, qn
from pgconverge.operations.check import Check, Rows

MIRRORED, LISTED, REFUSED = "mirrored", "listed", "refused"
# A unique rule mirrored on the new column holds per person from expand on, where the legacy one held per legacy row.
MERGED_WRITES = ("; from expand on, the mirror holds for the person: old code writing such a row for one legacy row "
                 "of a merged person (align's report lists them) fails while another of the person's legacy rows has "
                 "one, as it would after contract; keep those legacy rows apart with `pgconverge align --decisions "
                 "FILE` before expand if old code must go on writing both")
# Functions whose arguments may be the legacy column in a mirrored expression: they only ask "is it NULL".
_NULL_FUNCTIONS = {"num_nulls", "num_nonnulls"}
_TEXT_TYPES = {"text", "varchar", "bpchar"}


@dataclass(frozen=True)
class Finding:
    object: str  # "check constraint guest_carts_owner_check on public.guest_carts"
    action: str  # MIRRORED, LISTED or REFUSED
    detail: str  # what pgconverge does with it, or why it cannot
    fix: str = ""  # for a refused object: what the user does so that plan accepts it

    def as_dict(self) -> dict:
        return {"object": self.object, "action": self.action, "detail": self.detail,
                **({"fix": self.fix} if self.fix else {})}

    def line(self) -> str:
        return f"{self.object}: {self.detail}" + (f" — fix: {self.fix}" if self.fix else "")


class ShapesRefused(PgConvergeError):
    """Objects depend on the legacy key in a way pgconverge cannot carry over; nothing was changed."""


# -- expressions on the parse tree ------------------------------------------------------------------------------


class _Refs(visitors.Visitor):
    """Every column reference to one of COLUMNS, with the nearest enclosing node that is not a list."""

    def __init__(self, columns):
        super().__init__()
        self.columns, self.found = set(columns), []

    def visit_ColumnRef(self, ancestors, node):
        if node.fields and isinstance(node.fields[-1], ast.String) and node.fields[-1].sval in self.columns:
            a = ancestors
            while a is not None and isinstance(a.node, tuple):
                a = a.parent
            self.found.append((node.fields[-1].sval, a.node if a is not None else None))


class _Rename(visitors.Visitor):
    def __init__(self, renames: dict[str, str]):
        super().__init__()
        self.renames = renames

    def visit_ColumnRef(self, ancestors, node):
        last = node.fields[-1] if node.fields else None
        if isinstance(last, ast.String) and last.sval in self.renames:
            return ast.ColumnRef(fields=(*node.fields[:-1], ast.String(sval=self.renames[last.sval])),
                                 location=node.location)
        return None


def _expression(text: str):
    return pglast.parse_sql(f"select {text}")[0].stmt.targetList[0].val


def rename(text: str, renames: dict[str, str]) -> str:
    """Expression TEXT with every column of RENAMES replaced by its new name, deparsed from the parse tree."""
    node = _expression(text)
    out = _Rename(renames)(node)
    return stream.RawStream()(out if out is not None else node)


def _unsafe(node, columns, text_cast: bool = False) -> list[str]:
    """How NODE uses COLUMNS other than by asking whether they are NULL (or, with TEXT_CAST, as text)."""
    refs = _Refs(columns)
    refs(node)
    out = []
    for col, parent in refs.found:
        if isinstance(parent, ast.NullTest):
            continue
        if isinstance(parent, ast.FuncCall) and parent.funcname[-1].sval in _NULL_FUNCTIONS:
            continue
        if text_cast and isinstance(parent, ast.TypeCast) and parent.typeName.names[-1].sval in _TEXT_TYPES:
            continue
        out.append(col)
    return out


def _text_of_column(node, columns) -> bool:
    """Whether NODE is a legacy column cast to text, and nothing more (its text is as unique as its value)."""
    return (isinstance(node, ast.TypeCast) and node.typeName.names[-1].sval in _TEXT_TYPES
            and isinstance(node.arg, ast.ColumnRef) and isinstance(node.arg.fields[-1], ast.String)
            and node.arg.fields[-1].sval in columns)


def mentions_column(text: str, columns) -> bool:
    refs = _Refs(columns)
    refs(_expression(text))
    return bool(refs.found)


# -- what a dependent table holds -----------------------------------------------------------------------------


def _new_column(spec: Spec, cat: Catalog, d: Dependent) -> str:
    from pgconverge.planning import references

    return references.new_column(spec, cat, d)


def renames(spec: Spec, cat: Catalog, table: QualifiedName) -> dict[str, str]:
    """Legacy column → new column, for every reference of TABLE."""
    return {d.fk.columns[0]: _new_column(spec, cat, d) for d in cat.dependents if d.table.name == table}


def first_reference(cat: Catalog, d: Dependent) -> bool:
    """Whether D is its table's first reference (the one table-wide mirrors, CHECK constraints, go with)."""
    return next(x for x in cat.dependents if x.table.name == d.table.name) is d


def _tables(cat: Catalog) -> list[Dependent]:
    """One reference per dependent table (the first), in catalog order."""
    seen, out = set(), []
    for d in cat.dependents:
        if d.table.name not in seen:
            seen.add(d.table.name)
            out.append(d)
    return out


@dataclass(frozen=True)
class CheckMirror:
    original: Constraint
    name: str  # the mirror's name
    expression: str  # the original's expression on the new columns


def check_mirrors(spec: Spec, cat: Catalog, table: Table) -> list[CheckMirror]:
    """CHECK constraints of TABLE that test a legacy column only for NULL, each with its mirror."""
    from pgconverge.planning.index_mirror import mirrored_name

    ren = renames(spec, cat, table.name)
    taken = {c.name for c in table.constraints} | {fk.name for fk in table.foreign_keys}
    out = []
    for c in table.constraints:
        if c.kind != "check" or not c.expression or not mentions_column(c.expression, ren):
            continue
        if _unsafe(_expression(c.expression), ren, text_cast=False):
            continue
        name = c.name
        for old, new in ren.items():
            name = mirrored_name(name, old, new, taken) if mentions_column(c.expression, {old}) else name
        taken.add(name)
        out.append(CheckMirror(c, name, rename(c.expression, ren)))
    return out


@dataclass(frozen=True)
class KeyMirror:
    constraint: Constraint  # a primary key or unique constraint containing the legacy column
    index: Index  # the index behind it
    mirror: str  # the mirror index expand builds (its name is also the constraint's at contract)


def key_mirrors(spec: Spec, cat: Catalog, d: Dependent) -> list[KeyMirror]:
    """Primary key and unique constraints of D's table that contain D's legacy column, with their mirrors."""
    names = mirror_index_names(spec, cat, d)
    col = d.fk.columns[0]
    out = []
    for c in d.table.constraints:
        if c.kind in ("primary key", "unique") and col in c.columns and c.index in names:
            idx = next(i for i in d.table.indexes if i.name.name == c.index)
            out.append(KeyMirror(c, idx, names[c.index]))
    return out


def mirror_index_names(spec: Spec, cat: Catalog, d: Dependent) -> dict[str, str]:
    """Index of D's table containing its legacy column → the name of the mirror expand builds for it."""
    from pgconverge.planning import expand

    return {idx.name.name: op.name.name for idx, op in expand.index_mirrors(spec, cat, d)}


def constraint_indexes(table: Table) -> set[str]:
    """Indexes that back a constraint (they go with it; DROP INDEX cannot remove them)."""
    return {c.index for c in table.constraints if c.index}


def in_primary_key(d: Dependent) -> bool:
    return d.fk.columns[0] in d.table.primary_key


def fk_deferral(d: Dependent) -> tuple[bool, bool]:
    """(deferrable, initially deferred) of D's foreign key."""
    return d.fk.deferrable, bool(re.search(r"\bINITIALLY DEFERRED\b", d.fk.definition))


def fills_at_commit(d: Dependent) -> bool:
    """Whether D's new column may have to wait for the commit to be filled: its legacy foreign key is deferrable, so
    old code may write the row before its legacy row in one transaction, and the sync trigger then finds no mapping.
    A deferred constraint trigger fills such rows at commit (planning/expand.py)."""
    return d.fk.deferrable


def not_null_at_commit(d: Dependent) -> bool:
    """Whether the new column's NOT NULL is checked at commit (by the deferred trigger) from expand until contract,
    which makes it a real NOT NULL: a NOT NULL or CHECK constraint is checked at once, before the trigger fills
    the row. D as expand saw it (the legacy column NOT NULL)."""
    return fills_at_commit(d) and d.column.not_null


# -- findings -------------------------------------------------------------------------------------------------


def findings(spec: Spec, cat: Catalog) -> list[Finding]:
    """Everything in CAT that depends on the legacy key beyond the foreign keys themselves, and its fate."""
    out: list[Finding] = []
    legacy = cat.legacy.name
    out += _ownership(spec, cat)
    out += _policies_without_helper(spec, cat)
    for fk in cat.legacy.foreign_keys:
        if fk.ref_table == legacy:
            out.append(Finding(
                f"foreign key {fk.name} on {legacy}", LISTED,
                f"the legacy table references itself ({', '.join(fk.columns)} → {', '.join(fk.ref_columns)}); it "
                f"is not a dependent to migrate: it stays with {legacy}, archived by contract with its data, and "
                f"comes back with it on rollback. To keep it on {cat.canonical.name}, add a column there and "
                "fill it through the mapping yourself"))
    for d in cat.dependents:
        out += _foreign_key(spec, cat, d)
    # References themselves: partitioning, inheritance, their new columns' names (planning/references.py).
    from pgconverge.planning.references import refusals

    out += [Finding(obj, REFUSED, problem, fix) for obj, problem, fix in refusals(spec, cat)]
    for d in _tables(cat):
        out += _table(spec, cat, d)
    if cat.dependents:
        out.append(_row_type(cat))
    out += _views(spec, cat)
    out += _functions(spec, cat)
    out += _switch_review(spec, cat)
    out += _rules(cat)
    out += _untyped_references(spec, cat)
    out += _canonical_triggers(cat)
    out += _canonical_writers(spec, cat)
    if cat.dependents:
        out.append(_canonical_deletes(cat))
    out += _legacy_rows_made(spec, cat)
    out += _unplaceable_writes(spec, cat)
    return out


def _unplaceable_writes(spec: Spec, cat: Catalog) -> list[Finding]:
    """Legacy rows old code may write during the migration that pgconverge cannot place: their match column takes a
    value that gives no key (it is nullable, or takes text no CHECK rules out: Django's optional e-mail is '', NOT
    NULL), unmatched is "refuse" in effect, and the canonical table refuses a row without its match values (a NOT
    NULL column with no default). What happens to the rows old code writes for such a person, said before align."""
    from pgconverge.planning import align

    leg, can = cat.legacy, cat.canonical
    if align.effective_unmatched(spec, cat) != "refuse" or not cat.dependents:
        return []
    needed = [c for c in spec.canonical.match_columns if can.column(c) is not None and can.column(c).not_null
              and (can.column(c).generated or can.column(c).default is None)]
    if not needed:
        return []

    def keyless(c: str) -> bool:
        col = leg.column(c)
        if col is None:
            return False
        return not col.not_null or not any(k.kind == "check" and k.validated and c in k.columns
                                           for k in leg.constraints)

    loose = [c for c in spec.legacy.match_columns if keyless(c)]
    if not loose:
        return []
    no_check = "NOT NULL, but no CHECK rules out a value that gives no key, such as an empty string"
    how = ", ".join(f"{c} ({'nullable' if not leg.column(c).not_null else no_check})" for c in loose)
    refs = [f"{d.table.name} ({d.fk.columns[0]})" for d in cat.dependents]
    nullable = [r for d, r in zip(cat.dependents, refs) if not d.column.not_null]
    strict = [r for d, r in zip(cat.dependents, refs) if d.column.not_null]
    detail = (f"{leg.name}.{how} can hold a value that gives no match key, unmatched rows are refused "
              f"(migration.unmatched), and {can.name} takes no row without {', '.join(needed)}: a {leg.name} row old "
              "code writes so during the migration cannot be placed. It waits in pgconverge's pending table (the "
              "coverage checks of `verify`, the switch and contract name it) and old code's write of the row itself "
              "succeeds. From expand on, the rows old code writes for such a person")
    parts = []
    if nullable:
        parts.append(f"in {', '.join(nullable)} are written with the legacy id and without the new id, and the "
                     "checks name them until the person is decided")
    if strict:
        parts.append(f"in {', '.join(strict)} (a NOT NULL reference) fail: the new column is NOT NULL from expand "
                     "on, as it will be after contract (during expand, before its NOT NULL check is validated, such "
                     "a row stops that validation and `pgconverge run expand` names it)")
    return [Finding(
        f"{leg.name} rows old code writes without a usable {align.describe_match(spec)} value", LISTED,
        detail + " " + "; those ".join(parts),
        f"give such people a usable value as they are created (old code's write of it maps them at once), decide "
        f"them with `pgconverge align --decisions FILE`, or stop creating them before expand")]


def _untyped_references(spec: Spec, cat: Catalog) -> list[Finding]:
    """Columns that may hold legacy ids with no foreign key to say so (a polymorphic owner_id beside owner_type):
    pgconverge finds references through foreign keys, so it moves none of these."""
    from pgconverge.planning import align

    mapping = align.names(spec)["mapping"]
    return [Finding(
        f"column {table}.{col}", LISTED,
        f"beside {kind}, with no foreign key: it may hold {cat.legacy.name} ids for some rows (a polymorphic "
        f"reference), which pgconverge does not move; after contract those ids name archived {cat.legacy.name} rows, "
        f"and read as {cat.canonical.name} ids they may name another person",
        f"before contract, give such rows their {cat.canonical.name} id yourself through the mapping ({mapping}: "
        f"{spec.mapping_legacy_column} → {spec.migration.new_column}), with the {kind} value that names "
        f"{cat.canonical.name}, once the code that reads them knows that value")
        for table, col, kind in cat.untyped_references]


def _rules(cat: Catalog) -> list[Finding]:
    """Rewrite rules (CREATE RULE) on the tables pgconverge writes. A rule rewrites the statement before any trigger
    fires, so it sees the values the statement gives, not the row as the sync trigger completes it; and Postgres
    refuses some of pgconverge's statements on a table with rules (INSERT … ON CONFLICT with an INSERT or UPDATE
    rule; an UPDATE in a WITH query, the backfill's, with an UPDATE rule)."""
    out = []
    fix = ("replace it by a trigger (AFTER … FOR EACH ROW sees the row as the sync trigger completes it), or drop it "
           "for the migration")
    for t, role in ((cat.legacy, "legacy"), (cat.canonical, "canonical")):
        for r in t.rules:
            if r.enabled != "D" and r.event != "SELECT":
                out.append(Finding(
                    f"rule {show_identifier(r.name)} on {t.name}", REFUSED,
                    f"a {'DO INSTEAD' if r.instead else 'DO ALSO'} rule on {r.event} of the {role} table: pgconverge "
                    f"inserts, updates and deletes {t.name} rows itself (align's matching and its trigger, the "
                    "rollbacks), which the rule would rewrite, and Postgres refuses INSERT … ON CONFLICT on a table "
                    "with INSERT or UPDATE rules", fix))
    seen = set()
    for d in cat.dependents:
        if d.table.name in seen:
            continue
        seen.add(d.table.name)
        legacy_cols = {x.fk.columns[0] for x in cat.dependents if x.table.name == d.table.name}
        for r in d.table.rules:
            if r.enabled == "D":
                continue
            what = f"rule {show_identifier(r.name)} on {d.table.name}"
            kind = f"a {'DO INSTEAD' if r.instead else 'DO ALSO'} rule on {r.event}"
            named = sorted(c for c in legacy_cols if re.search(rf"(?<![\w$]){re.escape(c)}(?![\w$])", r.definition))
            if r.event == "UPDATE":
                out.append(Finding(what, REFUSED, f"{kind}: expand's backfill updates every row in a WITH query, "
                                                  "which Postgres refuses on a table with UPDATE rules", fix))
            elif named and r.event == "INSERT":
                out.append(Finding(what, REFUSED, f"{kind} reading {', '.join(named)}: it sees the values the "
                                                  f"statement gives, so from expand on it reads {', '.join(named)} as "
                                                  "NULL for every row new code writes (the sync trigger fills it "
                                                  "later)", fix))
            elif named:
                out.append(Finding(what, LISTED, f"{kind} reading {', '.join(named)}, which contract drops: rewrite "
                                                 "it on the new column before contract (its gate names it)"))
    return out


def legacy_readers(spec: Spec, cat: Catalog) -> list[Policy]:
    """Policies that read a legacy column, the legacy table or a function that mentions them: on the legacy table
    itself, those in force (row level security enabled; the others go with it into the archive)."""
    cols = {(d.table.name, d.fk.columns[0]) for d in cat.dependents}
    fns = {f.signature for f in cat.functions}
    out = []
    for p in cat.policies:
        if p.table == cat.legacy.name and not cat.legacy.rls_enabled:
            continue
        if (p.table == cat.legacy.name or set(p.column_refs) & cols
                or any(t == cat.legacy.name for t, _ in p.column_refs) or set(p.function_refs) & fns):
            out.append(p)
    return out


def _policies_without_helper(spec: Spec, cat: Catalog) -> list[Finding]:
    """With no RLS identity helper (legacy.helper = ""), the switch has nothing to rewrite a policy on: one that reads
    the legacy table or a legacy column would break when contract drops them."""
    if spec.has_helper:
        return []
    readers = legacy_readers(spec, cat)
    if not readers:
        return []
    names = ", ".join(f"{p.name} on {p.table}" for p in readers)
    return [Finding(
        f"polic{'ies' if len(readers) > 1 else 'y'} {names}", REFUSED,
        "they read the legacy table or a legacy column, but legacy.helper = "
        "\"\" says the database has no RLS identity helper: the switch rewrites such policies through the helper, "
        "and without one contract would leave them reading what it drops",
        "set legacy.helper to the function these policies call for the caller's legacy id, or rewrite them first "
        f"so that they read neither {cat.legacy.name} nor its references (or drop them)")]


def _legacy_rows_made(spec: Spec, cat: Catalog) -> list[Finding]:
    """The legacy rows expand's sync trigger makes, on a table whose primary key holds the legacy column, for a person
    new code writes a row for who has none (align's legacy_for_canonical): what they hold. That the legacy table
    takes them is checked before align and expand (execution/prechecks.py newcomer_rows)."""
    from pgconverge.planning import align

    keyed = list(dict.fromkeys(str(d.table.name) for d in cat.dependents if in_primary_key(d)))
    if not keyed:
        return []
    leg, can = cat.legacy, cat.canonical
    made = align.reverse_values(spec, cat)
    filled = ", ".join(f"{lc} from {cc}" for lc, cc, _ in made)
    # A NOT NULL legacy column made from a canonical column that may be NULL: refused for a person who has none.
    loose = [f"{cc} NULL ({leg.name}.{lc} is NOT NULL)" for lc, cc, _ in made
             if leg.column(lc) is not None and leg.column(lc).not_null and can.column(cc) is not None
             and not can.column(cc).not_null and cc not in can.primary_key]
    return [Finding(
        f"legacy rows made for {', '.join(keyed)}", LISTED,
        f"the primary key holds the legacy column, which stays filled until contract: from expand on, a row new code "
        f"writes there with the new id alone for a person who has no {leg.name} row (one who signed up through "
        f"{can.name} alone) gets a {leg.name} row made by pgconverge's sync trigger, holding {filled} of the "
        f"{can.name} row, every other column its default. `plan` and `run` check before align and expand that "
        f"{leg.name} takes such a row (NOT NULL, CHECK, unique and foreign keys, the application's BEFORE INSERT "
        "triggers), and refuse if it does not"
        + (f"; {leg.name} refuses it for a person whose {can.name} row has " + ", ".join(loose) if loose else ""),
        f"give such people that value before new code writes for them, or relax that NOT NULL of {leg.name} (a "
        "default does not help: the row gives the column its NULL)" if loose else "")]


def _canonical_deletes(cat: Catalog) -> Finding:
    """From expand on, the new foreign keys reach the dependents from the canonical table: said before it happens."""
    acts = ", ".join(f"{d.table.name} ({d.fk.on_delete})" for d in cat.dependents)
    return Finding(
        f"deletes of {cat.canonical.name} rows", LISTED,
        f"from expand on, deleting a {cat.canonical.name} row reaches the rows of its person through the new foreign "
        f"keys, with the legacy keys' ON DELETE: {acts} (a NO ACTION or RESTRICT refuses the delete while such rows "
        f"exist), as it will once the migration is done; before expand it touched none of them. A {cat.legacy.name} "
        f"row whose {cat.canonical.name} row was deleted is matched again (a new one is created where none matches) "
        "when old code next writes for it, or at the next phase's map_pending",
        f"delete {cat.canonical.name} rows (an auth user's, say) through the application's own flow during the "
        "migration, or hold such deletes until contract")


def _canonical_triggers(cat: Catalog) -> list[Finding]:
    """The application's insert triggers on the canonical table: they fire for every canonical row align creates."""
    out = []
    for trg in cat.canonical.triggers:
        stmt = _trigger_stmt(trg)
        if trg.enabled == "D" or (stmt is not None and not stmt.events & 4):  # disabled, or not on INSERT
            continue
        out.append(Finding(
            f"trigger {show_identifier(trg.name)} on {cat.canonical.name}", LISTED,
            f"fires on insert, so also for each {cat.canonical.name} row align creates for a legacy row that has "
            f"none (it calls {trg.function}()): whatever it does for a new row (a notification, a welcome message, "
            "a call out) happens for every one of them during align, and an error it raises stops the match there",
            f"if that must not happen for these rows, disable it for align (ALTER TABLE {cat.canonical.name} DISABLE "
            f"TRIGGER {show_identifier(trg.name)}; ENABLE it after)"))
    return out


def _insert_at(src: str, table: QualifiedName) -> list[int]:
    """Where SRC (a function's code) has INSERT INTO TABLE, qualified or not, quoted or not."""
    def name(n: str) -> str:
        return r'(?:"' + re.escape(n.replace('"', '""')) + r'"|' + re.escape(n) + r")"
    pattern = r"\binsert\s+into\s+(?:" + name(table.schema) + r"\s*\.\s*)?" + name(table.name) + r"(?![\w$])"
    return [m.start() for m in re.finditer(pattern, src, re.I)]


def legacy_then_canonical(spec: Spec, src: str) -> bool:
    """Whether SRC inserts into the legacy table and after that into the canonical table without ON CONFLICT: from
    align on, pgconverge's trigger on the legacy table has made that person's canonical row by then, so the second
    insert meets it (a unique rule fails it: every sign-up; without one the person is split in two)."""
    legacy = _insert_at(src, spec.legacy.table)
    if not legacy:
        return False
    for at in _insert_at(src, spec.canonical.table):
        if at > legacy[0]:
            statement = src[at:].split(";", 1)[0]
            if not re.search(r"\bon\s+conflict\b", statement, re.I):
                return True
    return False


def _canonical_writers(spec: Spec, cat: Catalog) -> list[Finding]:
    """The application's own ways of making canonical rows from other tables (a sign-up trigger on auth.users that
    inserts the profile): they meet the rows align makes for legacy rows with no match. One that inserts the legacy
    row first and then the canonical row (legacy_then_canonical) meets it on every call: refused."""
    can = cat.canonical.name
    numbers = ", ".join(spec.canonical.match_columns)
    out = []
    for trg, table, fn, *src in cat.canonical_writers:
        if src and legacy_then_canonical(spec, src[0]):
            out.append(Finding(
                f"trigger {show_identifier(trg)} on {table}", REFUSED,
                f"calls {fn}, which inserts into {cat.legacy.name} and then into {can} without ON CONFLICT: from "
                f"align on, pgconverge's trigger on {cat.legacy.name} makes the {can} row of the new "
                f"{cat.legacy.name} row at once, so that second insert meets it on every call (a unique rule over "
                f"{numbers} fails it, and with it the whole write, a sign-up say; without one each person gets two "
                f"{can} rows)",
                f"make {fn} insert the {can} row first, or take over the row already there (INSERT … ON CONFLICT "
                f"({numbers}) DO UPDATE, or an UPDATE first), before align"))
    return out + [Finding(
        f"trigger {show_identifier(trg)} on {table}", LISTED,
        f"calls {fn}, which inserts into {can}: align makes a {can} row for each legacy row that matches none (and "
        f"its trigger does so for every one old code adds until contract), so a row this function inserts later for "
        f"the same person (a sign-up with that {numbers}) meets it: a unique rule over {numbers} fails that insert "
        f"where it sees the same value, and otherwise the person gets a second {can} row, with the legacy rows on the "
        "first (pgconverge matches spellings as one, e-mails by case and spaces, phone numbers by their digits: a "
        "unique rule on the raw column, and ON CONFLICT on it, tell them apart)",
        f"make {fn} take over the {can} row already there for the same {numbers} (INSERT … ON CONFLICT ({numbers}) "
        f"DO UPDATE, or an UPDATE first) before align, or decide such legacy rows by hand (`pgconverge align "
        "--decisions FILE`)") for trg, table, fn, *src in cat.canonical_writers
        if not (src and legacy_then_canonical(spec, src[0]))]


def _switch_review(spec: Spec, cat: Catalog) -> list[Finding]:
    """What the switch's review gate will stop at, known now: policies it cannot rewrite with certainty. Listed
    rather than refused, since rewriting them by hand during align and expand is the way through; said at plan
    so that nobody learns it only after align and expand have run."""
    from pgconverge.planning import rls_walk, switch

    try:
        _auto, review = switch.rewrites(spec, cat)
    except PgConvergeError:
        return []  # what keeps the rewrite from being planned at all is refused elsewhere
    out, by_function = [], {}
    for r in review:
        why = list(dict.fromkeys(r.uncertain))
        # A policy held back only by the functions it calls (a membership helper reading the legacy column): the
        # functions are what to rewrite, listed once each with the policies that call them.
        said = "; ".join(why)
        called = list(dict.fromkeys(rls_walk.SUSPICIOUS_CALL.findall(said)))
        if called and not re.sub(r"(USING|WITH CHECK):|[;\s]", "", rls_walk.SUSPICIOUS_CALL.sub("", said)):
            for f in called:
                by_function.setdefault(f, []).append(switch.policy_name(r))
            continue
        out.append(Finding(f"policy {switch.policy_name(r)}", LISTED,
                           f"the switch cannot rewrite it with certainty ({'; '.join(why)}): its review gate stops "
                           "the switch, before any policy changes, until it is settled",
                           "rewrite it by hand and list it in migration.accept_policies as schema.table.policy (one "
                           "that uses the legacy id as a value, in a cast or a storage path, needs its data to "
                           "follow), or change it now to compare the legacy column with the legacy helper"))
    for f, names in sorted(by_function.items()):
        out.append(Finding(
            f"function {f}", LISTED,
            f"its body uses the legacy column, and {len(names)} polic{'y calls' if len(names) == 1 else 'ies call'} it "
            f"({', '.join(names[:10])}"
            f"{', …' if len(names) > 10 else ''}): the switch cannot rewrite them with certainty, and its review "
            "gate stops the switch, before any policy changes, until the function is settled",
            f"after expand, rewrite {f} to read the new column instead of the legacy one (the policies that call it "
            "then need nothing), or rewrite each of those policies by hand and list them in "
            "migration.accept_policies"))
    return out



def _row_type(cat: Catalog) -> Finding:
    """Expand's ADD COLUMN and contract's DROP COLUMN change the dependents' row type. Postgres refuses to run a
    statement prepared before that if it returns whole rows: nothing pgconverge does can spare those sessions."""
    tables = ", ".join(dict.fromkeys(str(d.table.name) for d in cat.dependents))
    return Finding(
        f"row type of {tables}", LISTED,
        "expand adds a column to each, contract drops the legacy one: an application session that prepared a "
        "statement returning whole rows of one (SELECT *, RETURNING *) before that gets \"cached plan must not "
        "change result type\" when it runs it again (drivers prepare on their own: psycopg a statement run five "
        "times, and then fails on every run until the connection closes; JDBC, pgx and Rails by default); and a "
        "statement that relies on column positions (INSERT or COPY without a column list) gets another column "
        "count",
        "name the columns in such statements, or recycle the application's connection pools right after expand "
        "and right after contract")


def refused(spec: Spec, cat: Catalog) -> list[Finding]:
    return [f for f in findings(spec, cat) if f.action == REFUSED]


def _ownership(spec: Spec, cat: Catalog) -> list[Finding]:
    """Every object a phase ALTERs, replaces or drops whose owner's privileges the role pgconverge connects as does
    not have (a table: ALTER TABLE, ALTER POLICY; a function: CREATE OR REPLACE, ALTER, DROP), and the roles the
    switch's RLS check acts as that it may not SET ROLE to: Postgres would refuse it part way through a phase."""
    if not cat.user or not cat.user_roles:  # a catalog saved before roles were recorded
        return []
    out = []
    for what, owner, does, alter in _owned(spec, cat):
        if owner in cat.user_roles:
            continue
        if owner in cat.user_member_roles:
            why = (f"which is a member of {owner} but does not inherit its privileges (it is NOINHERIT"
                   + (", or it was granted WITH INHERIT FALSE, as a role that CREATEROLE made is to its maker"
                      if cat.server_version >= 160000 else "") + ")")
        else:
            why = f"which is neither a superuser nor a member of {owner}"
        out.append(Finding(
            what, REFUSED, f"owned by {owner}; pgconverge connects as {cat.user}, {why}, so {does} would be "
                           "refused",
            f"as {owner} (or a superuser): {alter}; or {_inherit_fix(cat, owner)}; or connect as {owner}"))
    # The switch creates the canonical helper where it does not exist yet: found out there, that would stop the
    # switch after align and expand had run.
    helper = spec.canonical.helper
    if (helper is not None and cat.canonical_helper is None and cat.user_create_schemas is not None
            and helper.schema in cat.schemas
            and helper.schema not in cat.user_create_schemas):
        schema, user = show_identifier(helper.schema), show_identifier(cat.user)
        out.append(Finding(
            f"schema {schema}", REFUSED,
            f"the switch creates canonical.helper {helper}() there; pgconverge connects as {cat.user}, which may not "
            "create objects in that schema (no CREATE privilege on it), so that would be refused",
            f"as the schema's owner (or a superuser): GRANT CREATE ON SCHEMA {schema} TO {user}; or set "
            f"canonical.helper to a function in a schema {cat.user} may create in"))
    # The switch's RLS check reads the tables as the application's roles (verify/tokens.act_as): found out there, it
    # would stop the switch after align and expand had run. From Postgres 16 a member may be denied SET ROLE.
    may_set = cat.user_set_roles or cat.user_roles  # a catalog saved before SET was recorded
    for role in ("anon", "authenticated"):
        if role in cat.roles and role not in may_set:
            member = role in cat.user_member_roles and cat.server_version >= 160000
            out.append(Finding(
                f"role {role}", REFUSED,
                f"pgconverge connects as {cat.user}, which may not act as {role} (SET ROLE"
                + (f"; it is a member granted WITH SET FALSE" if member else "") + "): the switch checks row "
                "level security by reading the tables as the application's roles",
                f"GRANT {show_identifier(role)} TO {show_identifier(cat.user)}{' WITH SET TRUE' if member else ''}; (Supabase's postgres role "
                "has it)"))
    return out


def _inherit_fix(cat: Catalog, owner: str) -> str:
    """The statements that give CAT's user the privileges of OWNER."""
    user, role = show_identifier(cat.user), show_identifier(owner)
    if cat.server_version >= 160000:  # the grant's own INHERIT option decides; granting again sets it
        inherit = not cat.user_inherits or owner in cat.user_member_roles
        return f"GRANT {role} TO {user}{' WITH INHERIT TRUE' if inherit else ''}"
    out = []
    if owner not in cat.user_member_roles or cat.user_inherits:
        out.append(f"GRANT {role} TO {user}")
    if not cat.user_inherits:
        out.append(f"ALTER ROLE {user} INHERIT")
    return " and ".join(out)


def _owned(spec: Spec, cat: Catalog) -> list[tuple[str, str, str, str]]:
    """(object, its owner, what a phase does to it, the statement that gives it to the connected role) for every
    object a phase changes: the legacy, canonical and dependent tables (and every partition of a partitioned one),
    the tables whose policies the switch rewrites, and the helpers the switch replaces and contract retires."""
    from pgconverge.planning import switch

    out, seen = [], set()
    user = show_identifier(cat.user)

    def table(t: Table, does: str) -> None:
        if t.name not in seen:
            seen.add(t.name)
            out.append((f"table {t.name}", t.owner, does, f"ALTER TABLE {t.name} OWNER TO {user}"))

    for t in (cat.legacy, cat.canonical, *(d.table for d in _tables(cat))):
        table(t, "its ALTER TABLE")
    for d in _tables(cat):
        for p in d.partitions:
            table(p.table, f"its ALTER TABLE (a partition of {d.table.name})")
    try:
        auto, _review = switch.rewrites(spec, cat)
    except PgConvergeError:
        auto = []  # what keeps the rewrite from being planned at all is refused elsewhere
    for r in auto:
        t = cat.table(r.table)
        if t is not None:
            table(t, f"the switch's rewrite of its policy {r.name} (ALTER POLICY)")
    for fn, does in ((cat.legacy_helper, "the switch's CREATE OR REPLACE FUNCTION (and contract's, which retires "
                                         "it)"),
                     (cat.canonical_helper, "the switch's CREATE OR REPLACE FUNCTION")):
        if fn is not None and fn.owner:
            out.append((f"function {fn.signature}", fn.owner, does, f"ALTER FUNCTION {fn.signature} OWNER TO {user}"))
    return out


def _foreign_key(spec: Spec, cat: Catalog, d: Dependent) -> list[Finding]:
    fk, where = d.fk, f"foreign key {d.fk.name} on {d.table.name}"
    out = []
    if d.table.name == cat.canonical.name:
        out.append(Finding(where, REFUSED, f"the canonical table itself references {cat.legacy.name}; expand would "
                                           "give it a column pointing at itself",
                           f"drop {fk.name} (and its column, once nothing reads it) before the migration, or keep the "
                           f"link in a table of its own"))
    for action, what in ((fk.on_delete, "ON DELETE"), (fk.on_update, "ON UPDATE")):
        if action == "SET DEFAULT":
            out.append(Finding(where, REFUSED, f"{what} SET DEFAULT: the new column has no default, so the mirrored "
                                               "key would set it to NULL where the legacy one sets the default",
                               f"change {fk.name} to ON DELETE/UPDATE SET NULL, CASCADE, RESTRICT or NO ACTION "
                               "before the migration"))
    deferrable, deferred = fk_deferral(d)
    kept = [f"{what} {a}" for a, what in ((fk.on_delete, "ON DELETE"), (fk.on_update, "ON UPDATE"))
            if a not in ("NO ACTION", "SET DEFAULT")]
    if deferrable:
        kept.append("DEFERRABLE INITIALLY DEFERRED" if deferred else "DEFERRABLE")
    hazard = ""
    if deferrable:
        from pgconverge.planning import expand

        n = expand.Names(spec, d, "", cat)
        hazard = (f"; being deferrable, it lets old code write a row before its {cat.legacy.name} row in one "
                  "transaction, when the sync trigger finds no mapping yet: from expand on, a constraint trigger "
                  f"deferred to the commit, {n.fill_trigger}, gives such a row its {n.new} from the mapping then "
                  f"(the {cat.legacy.name} row written, align's trigger has mapped it)"
                  + (f", and {n.new}'s NOT NULL is checked by that trigger at commit rather than declared (a NOT "
                     f"NULL or CHECK constraint is checked at once, before the row is filled): contract declares "
                     f"it (CHECK NOT VALID, VALIDATE, SET NOT NULL) before it drops {fk.columns[0]}, and a "
                     f"rollback of contract takes it off again" if not_null_at_commit(d) else ""))
    if kept:
        out.append(Finding(where, MIRRORED, f"{', '.join(kept)} kept on the new foreign key to "
                                            f"{cat.canonical.name}({spec.canonical.key}){hazard}"))
    return out


def _table(spec: Spec, cat: Catalog, d: Dependent) -> list[Finding]:
    from pgconverge.planning import expand

    t = d.table
    ren = renames(spec, cat, t.name)
    legacy_cols = set(ren)
    out = []
    for c in t.constraints:
        what = f"{c.kind} constraint {c.name} on {t.name}" if c.kind != "primary key" else \
            f"primary key {c.name} on {t.name}"
        inside = sorted(legacy_cols & set(c.columns)) or (
            sorted(col for col in legacy_cols if c.expression and mentions_column(c.expression, {col})))
        if not inside and c.kind == "exclusion" and mentions.find(c.definition, legacy_cols):
            inside = sorted(m.name for m in mentions.find(c.definition, legacy_cols))
        if not inside:
            continue
        if c.kind == "exclusion":
            out.append(Finding(what, REFUSED, f"an exclusion constraint on {', '.join(inside)}: adding its twin on "
                                              "the new column builds an index under a lock that stops every write, "
                                              "and it cannot be attached from an index built concurrently",
                               f"drop {c.name} before the migration and re-create it on the new column after "
                               "contract, or replace it by a unique index (pgconverge mirrors those)"))
        elif c.kind == "check":
            bad = _unsafe(_expression(c.expression), ren, text_cast=False)
            if bad:
                out.append(Finding(what, REFUSED, f"CHECK {c.expression} uses {', '.join(sorted(set(bad)))} as a "
                                                  "value, which means something else on the new column",
                                   f"rewrite {c.name} so it only tests {', '.join(inside)} with IS [NOT] NULL, or "
                                   "drop it and re-create it on the new column after contract"))
            else:
                m = next(m for m in check_mirrors(spec, cat, t) if m.original.name == c.name)
                out.append(Finding(what, MIRRORED, f"mirrored as {m.name}: CHECK ({m.expression}), added NOT VALID "
                                                   f"and validated after the backfill; {c.name} goes with "
                                                   f"{', '.join(inside)} at contract; rollback restores it"))
        else:
            out.append(_key(spec, cat, d, c, what, inside))
    for col in t.columns:
        if col.generated and col.default and mentions_column(col.default, legacy_cols):
            out.append(Finding(f"generated column {t.name}.{col.name}", REFUSED,
                               f"computed from a legacy column ({col.default}): contract could not drop it",
                               f"drop {col.name} before the migration, or re-create it computed from the new column "
                               f"after expand (ALTER TABLE {t.name} DROP COLUMN {col.name}, ADD COLUMN …)"))
    if d.column.default and not d.column.generated and not d.column.identity:
        new = expand.Names(spec, d, "", cat).new
        carried = owner_default(spec, d)
        out.append(Finding(f"default of {t.name}.{d.column.name}", MIRRORED if carried else LISTED,
                           f"{d.column.default}: contract gives {new} the default {carried} in the transaction that "
                           f"drops {d.column.name}, so inserts that leave the owner out keep getting one; rollback "
                           "restores both" if carried else
                           f"not a call of the legacy helper: it goes with {d.column.name} at contract and {new} gets "
                           f"no default; new code writes {new}, or give it a default after contract"))
    keyed = constraint_indexes(t)
    for idx in t.indexes:
        if idx.name.name in keyed:
            continue
        out += _index(cat, t, idx, ren)
    out += _triggers(spec, cat, t, ren, expand.TRIGGER)
    for part, trgs in partition_triggers(d):
        out += _triggers(spec, cat, part, ren, expand.TRIGGER, trgs)
    return out


def partition_triggers(d) -> list[tuple[Table, tuple]]:
    """Per partition of D's table, the triggers of its own: not clones of one on the table it belongs to (a clone
    keeps its parent's name, and a table cannot have two triggers of one name). The sync triggers on the
    partitioned table reach every partition; triggers of a partition alone must be read there."""
    tables = {d.table.name: d.table, **{p.table.name: p.table for p in d.partitions}}
    out = []
    for p in d.partitions:
        parent = tables.get(p.parent)
        inherited = {trg.name for trg in parent.triggers} if parent is not None else set()
        own = tuple(trg for trg in p.table.triggers if trg.name not in inherited)
        if own:
            out.append((p.table, own))
    return out


def _key(spec: Spec, cat: Catalog, d: Dependent, c: Constraint, what: str, inside: list[str]) -> Finding:
    if len(inside) > 1:
        return Finding(what, REFUSED, f"contains several legacy columns ({', '.join(inside)}), each with a new "
                                      "column of its own: no single mirror keeps the rule",
                       f"replace {c.name} by a key that contains one of them, or migrate {d.table.name} by hand")
    if d.partitioned:
        return Finding(what, REFUSED, f"{d.table.name} is partitioned, and Postgres cannot make an index the "
                                      f"{c.kind} of a partitioned table (ADD … USING INDEX): contract could not put "
                                      "the mirror in its place",
                       f"replace {c.name} by a unique index (pgconverge mirrors those), or migrate {d.table.name} by "
                       "hand")
    if c.referenced_by:
        return Finding(what, REFUSED, f"foreign keys reference it ({', '.join(c.referenced_by)}); it contains "
                                      f"{inside[0]}, which contract drops, and a key others reference cannot be "
                                      "replaced under them",
                       f"point {', '.join(c.referenced_by)} at a key without {inside[0]} (a surrogate key) before "
                       "the migration")
    dep = next(x for x in cat.dependents if x.table.name == d.table.name and x.fk.columns[0] == inside[0])
    m = next((m for m in key_mirrors(spec, cat, dep) if m.constraint.name == c.name), None)
    if m is None:  # pragma: no cover - a key's index always contains its columns
        return Finding(what, REFUSED, "its index could not be mirrored", f"migrate {d.table.name} by hand")
    extra = (f"; {inside[0]} keeps its NOT NULL until contract drops it, and a row new code writes for an identity "
             "old code never knew gets a legacy row made for it" if c.kind == "primary key" else "")
    return Finding(what, MIRRORED, f"unique index {m.mirror} on the new column, built concurrently in expand (rows "
                                   "that would collide once merged are refused before expand), becomes "
                                   f"{'the primary key' if c.kind == 'primary key' else 'a unique constraint'} "
                                   f"{m.mirror} at contract (USING INDEX){extra}; rollback restores {c.name}"
                                   + MERGED_WRITES)


def _index(cat: Catalog, t: Table, idx: Index, ren: dict[str, str]) -> list[Finding]:
    from pgconverge.planning.index_mirror import contains_column

    if not any(contains_column(idx, c) for c in ren):
        return []
    stmt = pglast.parse_sql(idx.definition)[0].stmt
    what = f"index {idx.name}"
    bad = []
    for el in (*(stmt.indexParams or ()), *(stmt.indexIncludingParams or ())):
        if el.expr is not None and not _text_of_column(el.expr, ren):
            bad += _unsafe(el.expr, ren, text_cast=False)
    if stmt.whereClause is not None:
        bad += _unsafe(stmt.whereClause, ren, text_cast=False)
    if bad:
        return [Finding(what, REFUSED, f"uses {', '.join(sorted(set(bad)))} inside an expression or predicate as a "
                                       "value, which means something else on the new column",
                        f"drop {idx.name.name} before the migration and re-create it on the new column after expand, "
                        "or use the column plainly (or only under IS [NOT] NULL, or cast to text)")]
    if idx.unique:
        return [Finding(what, MIRRORED, "unique: mirrored on the new column (same columns, predicate and "
                                        "uniqueness); rows that would collide once merged are refused before expand"
                                        + MERGED_WRITES)]
    return []


def owner_default(spec: Spec, d: Dependent) -> str | None:
    """The new column's default where the legacy column's is a call of the legacy helper (`auth_customer_id()`,
    cast or not, qualified or not): a call of the canonical helper. None for any other default."""
    from pgconverge.execution.sql import qn, text

    expr = d.column.default
    if not expr or d.column.generated or d.column.identity:
        return None
    try:
        node = pglast.parse_sql(f"select {expr}")[0].stmt.targetList[0].val
    except Exception:  # noqa: BLE001 - not an expression pglast reads: no default carried
        return None
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if not isinstance(node, ast.FuncCall) or node.args:
        return None
    h = spec.legacy.helper
    if h is None or tuple(s.sval for s in node.funcname) not in ((h.name,), (h.schema, h.name)):
        return None
    return text(qn(spec.canonical.helper)) + "()"


def _trigger_stmt(trg):
    try:
        return pglast.parse_sql(trg.definition)[0].stmt
    except Exception:  # noqa: BLE001 - an unparseable definition: judged by its name and function only
        return None


def _own_sync_trigger(spec: Spec, trg) -> bool:
    """pgconverge's sync triggers: one per reference where a table has several ("!pgconverge_sync_buyer_id"), the
    last firing of each where the application has triggers ("~pgconverge_sync_buyer_id"), the deferred fill
    trigger of a reference whose legacy foreign key is deferrable, and the guard of a NOT NULL legacy column
    (expand.owner_guard)."""
    from pgconverge.planning import expand

    return (trg.name.startswith((expand.TRIGGER, expand.LAST_TRIGGER, expand.FILL_TRIGGER, expand.OWNER_TRIGGER))
            and trg.function.schema == spec.migration.private_schema)


def before_row_triggers_after(spec: Spec, cat: Catalog, d, sync: str) -> list[str]:
    """The application's BEFORE row triggers on insert or update of D's table that fire after the trigger named
    SYNC (C order of names), pgconverge's own left out: each may write an id after the sync trigger has run."""
    out = []
    table = cat.table(d.table.name) or d.table
    found = [(None, trg) for trg in table.triggers]
    found += [(part.name, trg) for part, trgs in partition_triggers(d) for trg in trgs]
    for part, trg in found:
        # pgconverge's own: the sync triggers, and align's on a legacy table that references itself
        if _own_sync_trigger(spec, trg) or trg.function.schema == spec.migration.private_schema or trg.name <= sync:
            continue
        stmt = _trigger_stmt(trg)
        # TRIGGER_TYPE_BEFORE = 2; events INSERT = 4, UPDATE = 16 (an unparseable one counts)
        if stmt is None or (stmt.timing & 2 and stmt.row and stmt.events & (4 | 16)):
            out.append(trg.name if part is None else f"{trg.name} (on partition {part})")
    return out


def insert_fillers(t: Table, private_schema: str) -> list[str]:
    """The application's enabled BEFORE INSERT row triggers on T (pgconverge's own, with their functions in
    PRIVATE_SCHEMA, left out): each may fill a column of a row pgconverge writes there that has no default (an
    unparseable definition counts)."""
    out = []
    for trg in t.triggers:
        if trg.enabled == "D" or trg.function.schema == private_schema:
            continue
        stmt = _trigger_stmt(trg)
        if stmt is None or (stmt.timing & 2 and stmt.row and stmt.events & 4):
            out.append(trg.name)
    return out


def _triggers(spec: Spec, cat: Catalog, t: Table, ren: dict[str, str], sync: str,
              triggers: tuple | None = None) -> list[Finding]:
    """T's triggers (or TRIGGERS of it: a partition's own) against the sync triggers and the legacy columns."""
    from pgconverge.planning import expand

    out = []
    fns = {f.name: f for f in cat.functions}
    for trg in t.triggers if triggers is None else triggers:
        if trg.name == sync or _own_sync_trigger(spec, trg) or trg.function.schema == spec.migration.private_schema:
            continue
        stmt = _trigger_stmt(trg)
        what = f"trigger {show_identifier(trg.name)} on {t.name}"
        cols = [c.sval for c in (getattr(stmt, "columns", None) or ())]
        on_cols = sorted(set(cols) & set(ren))
        when = sorted({c for c, _ in _refs_of(getattr(stmt, "whenClause", None), ren)})
        if on_cols or when:
            out.append(Finding(what, REFUSED,
                               "names " + " and ".join(x for x in (
                                   f"{', '.join(on_cols)} in UPDATE OF" if on_cols else "",
                                   f"{', '.join(when)} in its WHEN clause" if when else "") if x)
                               + ": contract could not drop the column under it",
                               f"re-create {trg.name} without the legacy column in UPDATE OF and WHEN (test it inside "
                               "the function instead) before the migration"))
        before_row = stmt is not None and bool(stmt.timing & 2) and bool(stmt.row)
        if before_row and trg.name < sync:
            out.append(Finding(what, REFUSED,
                               f"a BEFORE row trigger that fires before pgconverge's sync trigger {sync!r} (triggers "
                               "of one kind fire in the C order of their names), so it would see rows new code wrote "
                               "without their legacy id",
                               f"rename it so its name sorts after {sync!r} (ALTER TRIGGER {show_identifier(trg.name)} ON {t.name} "
                               "RENAME TO …)"))
        if before_row and trg.name > expand.LAST_TRIGGER:
            out.append(Finding(what, REFUSED,
                               f"a BEFORE row trigger that fires after pgconverge's last sync trigger "
                               f"{expand.LAST_TRIGGER!r} (triggers of one kind fire in the C order of their names), "
                               "so an id it writes would be left disagreeing with the other",
                               f"rename it so its name sorts before {expand.LAST_TRIGGER!r} (ALTER TRIGGER "
                               f"{show_identifier(trg.name)} ON {t.name} RENAME TO …)"))
        if stmt is not None and stmt.events & 16 and not cols and trg.enabled != "D":
            # UPDATE (not UPDATE OF a list, which the backfill's SET of the new column alone never names)
            out.append(Finding(what, LISTED,
                               f"fires on UPDATE ({'each row' if stmt.row else 'each statement'}), so also for expand's "
                               f"backfill, which updates every row of {t.name} to fill the new column: what it does on "
                               "an update (sets updated_at, writes an audit row, notifies) happens for every row then",
                               f"if it must not, have {trg.function}() skip its work (return NEW) when "
                               f"current_setting('{expand.BACKFILL_SETTING}', true) = 'on' (set for the backfill's "
                               "batches only), or disable it for expand (ALTER TABLE … DISABLE TRIGGER, which stops it "
                               "for the application's updates too)"))
        fn = fns.get(trg.function)
        if fn is not None and mentions.find(fn.code, set(ren)):
            out.append(Finding(what, LISTED,
                               f"its function {fn.name}() reads {', '.join(sorted({m.name for m in mentions.find(fn.code, set(ren))}))}: "
                               + ("it fires after the sync trigger, so both ids are filled when it reads them, "
                                  "and should it write one, a last sync trigger makes the other agree; "
                                  if before_row else "")
                               + "rewrite it to use the new column before contract (contract drops the legacy one; "
                                 "its code-references gate names it)"))
    return out


def _refs_of(node, columns):
    if node is None:
        return []
    refs = _Refs(columns)
    refs(node)
    return refs.found


def view_readers(cat: Catalog) -> list[tuple]:
    """Every view that reads the legacy table or a dependent's legacy column, with what it reads: [(view, [what])].
    The columns are those Postgres recorded (pg_depend); a view reading a dependent's whole row (to_jsonb(p)) reads
    its legacy column too, and loses it with the column; a view reading such a view is named with it, since Postgres
    drops or changes them together. A view that reads only other columns of these tables, or none (count(*)), is
    not one."""
    legacy_cols = {(t.name, d.fk.columns[0]) for d in cat.dependents for t in (d.table, *(p.table for p in d.partitions))}
    out: dict = {}
    for v in cat.views:
        reads = sorted(f"{t}.{c}" for t, c in v.column_refs if (t, c) in legacy_cols)
        reads += [f"the whole row of {t}, so {t}.{c}" for t, c in sorted(legacy_cols) if t in v.whole_rows]
        # A catalog read before relation_refs was recorded: the legacy table's name in the definition instead.
        if (cat.legacy.name in v.relation_refs or any(t == cat.legacy.name for t, _ in v.column_refs)
                or not v.relation_refs and mentions.find(v.definition, {cat.legacy.name.name})):
            reads.append(f"the legacy table {cat.legacy.name}")
        if reads:
            out[v.name] = (v, reads)
    grown = True
    while grown:  # views over those views, to any depth
        grown = False
        for v in cat.views:
            over = [t for t in v.relation_refs if t in out and t != v.name]
            if v.name not in out and over:
                out[v.name] = (v, [f"{out[t][0].kind} {t}, which reads {', '.join(out[t][1])}" for t in sorted(over)])
                grown = True
    return [out[v.name] for v in cat.views if v.name in out]


def _views(spec: Spec, cat: Catalog) -> list[Finding]:
    out = []
    accepted = {_norm(v) for v in spec.migration.accept_views}
    for v, reads in view_readers(cat):
        reads = ", ".join(reads)
        what = f"{v.kind} {v.name}"
        if _norm(str(v.name)) in accepted or _norm(f"{v.name.schema}.{v.name.name}") in accepted:
            out.append(Finding(what, LISTED, f"reads {reads}; accepted (migration.accept_views): drop or re-create "
                                             "it before contract, which refuses to start while it still reads them"))
        else:
            out.append(Finding(what, REFUSED, f"reads {reads}, which contract drops or archives",
                               f"drop it (re-create it on the new column and {cat.canonical.name} after contract), or "
                               f"list \"{v.name.schema}.{v.name.name}\" in migration.accept_views and drop or re-create "
                               "it yourself before contract"))
    return out


def _norm(name: str) -> str:
    return name.replace('"', "").lower()


def _functions(spec: Spec, cat: Catalog) -> list[Finding]:
    legacy_cols = {d.fk.columns[0] for d in cat.dependents}
    names = {spec.legacy.table.name, *legacy_cols} | ({spec.legacy.helper.name} if spec.has_helper else set())
    out = []
    for f in cat.functions:
        if f.name in (spec.legacy.helper, spec.canonical.helper) or f.name.schema == spec.migration.private_schema:
            continue
        uses = legacy_uses.of_spec(f, spec, cat) if mentions.find(f.code, names) else []
        if uses:
            out.append(Finding(f"function {f.signature}", LISTED,
                               f"uses {', '.join(sorted({u.word for u in uses}))} ({legacy_uses.describe(uses)}): "
                               "rewrite it before contract (its code-references gate names every such function)"))
    return out


# -- refusing --------------------------------------------------------------------------------------------------


def refuse(spec: Spec, catalogs) -> None:
    """Raise ShapesRefused naming every refused object of every catalog the plan is built from."""
    seen: dict[str, Finding] = {}
    for cat in _distinct(catalogs):
        for f in refused(spec, cat):
            seen.setdefault(f.line(), f)
    if not seen:
        return
    items = list(seen.values())
    raise ShapesRefused(
        f"{len(items)} object(s) depend on the legacy key {spec.legacy.table}({spec.legacy.key}) in a way pgconverge "
        "cannot carry over; nothing was changed:\n" + "\n".join(f"  - {f.line()}" for f in items),
        fix="do what each line says (every blocking object is listed), then run `pgconverge plan` again")


def _distinct(catalogs) -> list[Catalog]:
    from pgconverge.operations.base import PHASES

    out: list[Catalog] = []
    for ph in PHASES:
        try:
            cat = catalogs.for_phase(ph)
        except PgConvergeError:
            continue
        if not any(cat is c for c in out):
            out.append(cat)
    return out


def report(spec: Spec, catalogs) -> list[dict]:
    """Every finding of the catalog the next phase is planned from, for `plan` and `inventory`."""
    cats = _distinct(catalogs)
    return [f.as_dict() for f in findings(spec, cats[-1])] if cats else []


# -- what only the data tells: rows a mirrored unique index would reject ---------------------------------------


def collisions(spec: Spec, cat: Catalog) -> Check | None:
    """A gate listing rows of different legacy rows that one canonical row would own under a mirrored unique
    index (or key): expand's first step, run by `plan` too once align has made the mapping."""
    from pgconverge.planning import align, references
    from pgconverge.planning.index_mirror import contains_column

    m = align.names(spec)["mapping"]
    parts = []
    covers = []
    for d in cat.dependents:
        col = d.fk.columns[0]
        for idx in d.table.indexes:
            if not idx.unique or idx.name.name in {c.index for c in d.table.constraints if c.kind == "exclusion"}:
                continue
            if not contains_column(idx, col):
                continue
            stmt = pglast.parse_sql(idx.definition)[0].stmt
            alias = "pgconverge_new_id"
            stmt = _Rename({col: alias})(stmt) or stmt
            els = [sql.Identifier(alias if el.name == col else el.name) if el.name
                   else sql.SQL("(" + stream.RawStream()(el.expr) + ")") for el in stmt.indexParams]
            where = [sql.SQL("{} is not null").format(e) for e in els] if not stmt.nulls_not_distinct else []
            if stmt.whereClause is not None:
                where.append(sql.SQL("(" + stream.RawStream()(stmt.whereClause) + ")"))
            shown = ", ".join((alias if el.name == col else el.name) if el.name else stream.RawStream()(el.expr)
                              for el in stmt.indexParams)
            shown = shown.replace(alias, _new_column(spec, cat, d))
            parts.append(sql.SQL(
                "select format('%s: %s rows of %s legacy rows would share (%s) = (%s) once merged, which the mirror "
                "of unique index %s forbids', {t}, count(*), count(distinct x.{l}), {shown}, concat_ws(', ', {vals}), "
                "{idx}), string_agg(format('row %s (%s = %s)', x.pgconverge_row, {ln}, x.{l}), ', ' "
                "order by x.pgconverge_row) "
                "from (select d.*, {rid} as pgconverge_row, m.{mn} as {alias} from {tab} d "
                "join {m} m on m.{ml} = d.{l}) x where {where} group by {els} having count(*) > 1").format(
                t=sql.Literal(str(d.table.name)), l=ident(col), ln=sql.Literal(col), shown=sql.Literal(shown),
                vals=sql.SQL(", ").join(sql.SQL("({})::text").format(e) for e in els),
                idx=sql.Literal(str(idx.name)), rid=references.row_id(d, "d"), mn=ident(spec.migration.new_column),
                alias=ident(alias), tab=qn(d.table.name), m=qn(m), ml=ident(spec.mapping_legacy_column),
                where=sql.SQL(" and ").join(where) if where else sql.SQL("true"), els=sql.SQL(", ").join(els)))
            covers.append(with_legacy_id(d))  # the rows it merges: those that have a legacy id
    if not parts:
        return None
    return Check("no rows collide once merged", sql.SQL(" union all ").join(parts),
                 failure="rows of legacy rows merged onto one canonical row would break a unique rule on the new "
                         "column",
                 fix="keep at most one row of each group named (close, delete or merge the others, e.g. UPDATE … SET "
                     "status = 'closed'), or keep those legacy rows apart with `pgconverge align --decisions FILE`; "
                     "then run expand again (nothing was changed)", covers=tuple(covers))


ORPHAN_IDS_SHOWN = 5


def orphans(spec: Spec, cat: Catalog) -> Check | None:
    """A gate listing, for every legacy foreign key declared NOT VALID, the rows whose legacy id has no legacy row:
    no mapping can give them a canonical id, so expand's NOT NULL or invariants would stop half way. Expand's first
    step, run by `plan` too before expand starts; None when every legacy foreign key is validated."""
    parts = []
    covers = []
    for d in cat.dependents:
        if d.fk.validated:
            continue
        col = d.fk.columns[0]
        covers.append(with_legacy_id(d))
        parts.append(sql.SQL(
            "select format('%s: %s rows have a %s with no %s row (foreign key %s is NOT VALID)', {t}, count(*), {c}, "
            "{lt}, {fk}), 'ids ' || array_to_string((array_agg(distinct x.v order by x.v))[1:{n}], ', ') "
            "|| case when count(distinct x.v) > {n} then format(' and %s more', count(distinct x.v) - {n}) else '' end "
            "from (select d.{l}::text as v from {tab} d where d.{l} is not null and not exists (select 1 from {lt_q} "
            "c where c.{k} = d.{l})) x having count(*) > 0").format(
            t=sql.Literal(str(d.table.name)), c=sql.Literal(col), lt=sql.Literal(str(d.fk.ref_table)),
            fk=sql.Literal(d.fk.name), n=sql.Literal(ORPHAN_IDS_SHOWN), l=ident(col), tab=qn(d.table.name),
            lt_q=qn(d.fk.ref_table), k=ident(d.fk.ref_columns[0])))
    if not parts:
        return None
    return Check("no rows point at a missing legacy row", sql.SQL(" union all ").join(parts),
                 failure="rows point at legacy ids that exist nowhere: no mapping can give them a canonical id",
                 fix="delete those rows, point them at an existing legacy row, or set the legacy column NULL where "
                     "it may be NULL; then run again (nothing was changed)", covers=tuple(covers))


def with_legacy_id(d: Dependent) -> Rows:
    """The rows of D's table a check of the legacy id judges: those that have one (a guest's row, with none, says
    nothing about the mapping)."""
    col = d.fk.columns[0]
    return Rows(d.table.name, sql.SQL("{} is not null").format(ident(col)), f"with {col} set")


# -- contract: nothing else may depend on what it drops ----------------------------------------------------------


# The object of pg_depend row d, as a person names it (a view rather than its rewrite rule).
DESCRIBE = sql.SQL(
    "case when d.classid = 'pg_catalog.pg_rewrite'::regclass then (select case when r.rulename <> '_RETURN' then "
    "format('rule %I on %I.%I', r.rulename, n.nspname, c.relname) else format('%s %I.%I', case c.relkind when "
    "'m' then 'materialized view' else 'view' end, n.nspname, c.relname) end from pg_catalog.pg_rewrite r join "
    "pg_catalog.pg_class c on c.oid = r.ev_class join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
    "where r.oid = d.objid) else pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) end")


def unplanned_references(legacy_table: QualifiedName, planned: Catalog) -> sql.Composable:
    """FROM and WHERE of a catalog query over the foreign keys to LEGACY_TABLE that PLANNED (the catalog expand was
    planned from) does not hold: made by the application since (`k` the key, `n` and `c` its table's schema and
    class, `w.parent` the table it was a partition of in PLANNED, NULL for a table of its own)."""
    legacy = sql.Literal(str(legacy_table))
    known = sql.SQL(", ").join(sql.SQL("({}, {}, {})").format(
        sql.Literal(d.table.name.schema), sql.Literal(d.table.name.name), sql.Literal(d.fk.name))
        for d in planned.dependents) or sql.SQL("(null, null, null)")  # NOT IN over NULLs: see the exists below
    # A partition detached since expand (an old year archived) keeps a copy of the partitioned table's foreign key
    parts_of = [sql.SQL("({}, {}, {})").format(
        sql.Literal(p.table.name.schema), sql.Literal(p.table.name.name), sql.Literal(str(d.table.name)))
        for d in planned.dependents for p in d.partitions]
    parts_of = sql.SQL(", ").join(parts_of) if parts_of else sql.SQL("(null, null, null)")
    return sql.SQL(
        "from pg_catalog.pg_constraint k "
        "join pg_catalog.pg_class c on c.oid = k.conrelid join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
        "left join lateral (select v.p as parent from (values {parts}) v(s, t, p) where v.s = n.nspname::text "
        "and v.t = c.relname::text limit 1) w on true "
        "where k.contype = 'f' and k.confrelid = to_regclass({l}) and k.conparentid = 0 "
        "and k.conrelid <> to_regclass({l}) "  # the legacy table's own (customers.referred_by) go with it
        "and not exists (select 1 from (values {known}) v(s, t, c) where v.s = n.nspname::text "
        "and v.t = c.relname::text and v.c = k.conname::text)").format(l=legacy, known=known, parts=parts_of)


def _made_after_expand(spec: Spec, cat: Catalog, planned: Catalog) -> list[sql.Composable]:
    """Gate parts: what the application made on the legacy side since expand was planned (PLANNED, the catalog saved
    then). A foreign key to the legacy table got no new column, sync trigger or backfill: contract would stop at it
    part way. An index (or a key's) holding a dependent's legacy column got no mirror on the new column: contract
    would drop it with the column, and a unique one's rule with it; one whose mirror the application made as well
    (the same columns with the new one in place of the legacy one, as unique) is left to contract. So is a CHECK
    using the legacy column, unless the application made its copy on the new column."""
    from pgconverge.planning import references

    legacy = sql.Literal(str(cat.legacy.name))
    parts = [sql.SQL(
        "select case when w.parent is null then format('foreign key %I on %I.%I references %s and was made after "
        "expand was planned: it has no new column, sync trigger or backfill, so contract would stop at it; drop it "
        "(or point it at the canonical table yourself), or roll back to before expand (pgconverge rollback expand) "
        "and run expand again, which carries it', k.conname, n.nspname, c.relname, {l}) "
        "else format('foreign key %I on %I.%I references %s: %I.%I was a partition of %s when expand was planned and "
        "was detached since, keeping this copy of its foreign key but no sync trigger or backfill, so contract would "
        "stop at it; roll back to before expand (pgconverge rollback expand, which also takes off %I.%I what expand "
        "left there) and run expand again, which carries it as a table of its own; or drop that key', k.conname, "
        "n.nspname, c.relname, {l}, n.nspname, c.relname, w.parent, n.nspname, c.relname) end, null "
        "{unplanned}").format(l=legacy, unplanned=unplanned_references(cat.legacy.name, planned))]
    for d in planned.dependents:
        t, col = sql.Literal(str(d.table.name)), d.fk.columns[0]
        new = references.new_column(spec, planned, d)
        names = sql.Literal([i.name.name for i in d.table.indexes]
                            + [i.name.name for p in d.partitions for i in p.table.indexes])
        attnum = sql.SQL("(select a.attnum from pg_catalog.pg_attribute a where a.attrelid = i.indrelid and "
                         "a.attname = {c} and not a.attisdropped)")
        word = sql.Literal(r"\m" + re.escape(col) + r"\M")
        parts.append(sql.SQL(
            "select format('%sindex %I on %s contains %s and was made after expand was planned: it has no mirror on "
            "%s, so contract would drop it with %s%s; make its mirror (CREATE %sINDEX CONCURRENTLY … ON %s with %s "
            "in place of %s) and drop it, or drop it', case when i.indisunique then 'unique ' else '' end, "
            "ic.relname, tbl, {c}, {n}, {c}, case when i.indisunique then ' and the rule it keeps' else '' end, "
            "case when i.indisunique then 'UNIQUE ' else '' end, tbl, {n}, {c}), null "
            "from pg_catalog.pg_index i join pg_catalog.pg_class ic on ic.oid = i.indexrelid "
            "cross join lateral (select pg_catalog.format('%I.%I', tn.nspname, tc.relname) as tbl "
            "from pg_catalog.pg_class tc join pg_catalog.pg_namespace tn on tn.oid = tc.relnamespace "
            "where tc.oid = i.indrelid) w "
            # the table, or one of its partitions (an index of a partition's own, not one attached to the table's)
            "where (i.indrelid = to_regclass({t}) or i.indrelid in (select p.relid from "
            "pg_catalog.pg_partition_tree(to_regclass({t})) p) and not exists (select 1 from pg_catalog.pg_inherits h "
            "where h.inhrelid = i.indexrelid)) and not i.indisprimary "
            # a key column, or in an expression, INCLUDE or the predicate
            "and ({lnum} = any(i.indkey::int2[]) or pg_catalog.pg_get_indexdef(i.indexrelid) ~ {word}) "
            "and ic.relname::text <> all({names}::text[]) and not exists (select 1 from pg_catalog.pg_index o "
            "where o.indrelid = i.indrelid and o.indisunique = i.indisunique "
            "and o.indkey::int2[] = pg_catalog.array_replace(i.indkey::int2[], {lnum}, {nnum}) "
            "and {lnum} = any(i.indkey::int2[]))").format(
                c=sql.Literal(col), n=sql.Literal(new), t=t, names=names, word=word, lnum=attnum.format(c=sql.Literal(col)),
                nnum=attnum.format(c=sql.Literal(new))))
        # A CHECK using the legacy column (`customer_id is not null or device_id is not null`) goes with it at
        # contract, and with it the rule; expand copied those it saw onto the new column. One made since has no copy,
        # unless the application made that too (the same expression on the new column).
        checks = sql.Literal([k.name for k in d.table.constraints if k.kind == "check"]
                             + [k.name for p in d.partitions for k in p.table.constraints if k.kind == "check"])
        parts.append(sql.SQL(
            "select format('check constraint %I on %s uses %s and was made after expand was planned: it has no copy "
            "on %s, so contract would drop it with %s, and the rule with it; add its copy on %s (ADD CONSTRAINT … "
            "CHECK (…) NOT VALID, then VALIDATE CONSTRAINT) and drop it, or drop it, or roll back to before expand "
            "(pgconverge rollback expand) and run expand again, which copies it', k.conname, tbl, {c}, {n}, {c}, "
            "{n}), null from pg_catalog.pg_constraint k "
            "cross join lateral (select pg_catalog.format('%I.%I', tn.nspname, tc.relname) as tbl "
            "from pg_catalog.pg_class tc join pg_catalog.pg_namespace tn on tn.oid = tc.relnamespace "
            "where tc.oid = k.conrelid) w "
            "where k.contype = 'c' and (k.conrelid = to_regclass({t}) or k.conrelid in (select p.relid from "
            "pg_catalog.pg_partition_tree(to_regclass({t})) p)) and k.conparentid = 0 and not k.coninhcount > 0 "
            "and {lnum} = any(k.conkey) and k.conname::text <> all({checks}::text[]) "
            "and not exists (select 1 from pg_catalog.pg_constraint o where o.conrelid = k.conrelid "
            "and o.contype = 'c' and pg_catalog.pg_get_expr(o.conbin, o.conrelid) = pg_catalog.regexp_replace("
            "pg_catalog.pg_get_expr(k.conbin, k.conrelid), {word}, {n}, 'g'))").format(
                c=sql.Literal(col), n=sql.Literal(new), t=t, checks=checks, word=word,
                lnum=sql.SQL("(select a.attnum from pg_catalog.pg_attribute a where a.attrelid = k.conrelid and "
                             "a.attname = {c} and not a.attisdropped)").format(c=sql.Literal(col))))
    return parts


def contract_dependencies(spec: Spec, cat: Catalog, keys: list[tuple[Dependent, KeyMirror]] = (),
                          planned: Catalog | None = None) -> Check:
    """A gate, run by contract right after its gates and before its first drop, reading the database as it is
    then: every object that would stop DROP COLUMN of a legacy column (views, generated columns, triggers naming
    the column, policies left to the user), every view reading the legacy table, every object still using the
    legacy helper where contract drops it, and every mirror index that KEYS says contract makes a key of but
    that is missing or invalid (or whose columns a primary key needs NOT NULL are not)."""
    from pgconverge.planning import expand

    parts = []
    for d, k in keys:
        t, idx = sql.Literal(str(d.table.name)), sql.Literal(str(QualifiedName(d.table.name.schema, k.mirror)))
        parts.append(sql.SQL(
            "select format('index %s, which contract makes the %s of %s in place of %s, is missing or invalid', "
            "{idx}, {kind}, {t}, {c}), null where not coalesce((select i.indisvalid and i.indisunique from "
            "pg_catalog.pg_index i where i.indexrelid = to_regclass({idx}) and i.indrelid = to_regclass({t})), false) "
            "and to_regclass({t}) is not null").format(idx=idx, t=t, kind=sql.Literal(k.constraint.kind),
                                                        c=sql.Literal(k.constraint.name)))
        if k.constraint.kind == "primary key":
            parts.append(sql.SQL(
                "select format('%s.%s is not NOT NULL, which the primary key made of index %s needs', {t}, "
                "a.attname, {idx}), null from pg_catalog.pg_index i join pg_catalog.pg_attribute a on a.attrelid = "
                "i.indrelid and a.attnum = any(i.indkey) where i.indexrelid = to_regclass({idx}) and not "
                "a.attnotnull").format(idx=idx, t=t))
    describe = DESCRIBE
    for d in cat.dependents:
        col = d.fk.columns[0]
        t = sql.Literal(str(d.table.name))
        # The table and each of its partitions: a view or a policy of one partition (read where the application
        # names the partition) stops the DROP COLUMN of the partitioned table as one of the table would.
        parts.append(sql.SQL(
            "select format('%s uses %s.%s, which contract drops', {desc}, (select format('%I.%I', n.nspname, "
            "c.relname) from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
            "where c.oid = x.rel), {c}), null "
            "from (select to_regclass({t}) as rel union select p.relid from "
            "pg_catalog.pg_partition_tree(to_regclass({t})) p) x "
            "join pg_catalog.pg_attribute a on a.attrelid = x.rel and a.attname = {c} and not a.attisdropped "
            "join pg_catalog.pg_depend d on d.refclassid = 'pg_catalog.pg_class'::regclass "
            "and d.refobjid = x.rel and d.deptype = 'n' and d.refobjsubid = a.attnum "
            "where not (d.classid = 'pg_catalog.pg_constraint'::regclass and exists (select 1 from "
            "pg_catalog.pg_constraint k where k.oid = d.objid and k.conrelid = x.rel)) "
            "and not (d.classid = 'pg_catalog.pg_trigger'::regclass and exists (select 1 from pg_catalog.pg_trigger g "
            "where g.oid = d.objid and g.tgname in ({sync}, {fill}))) "
            "and not (d.classid = 'pg_catalog.pg_class'::regclass and d.objid = x.rel) "
            # one line per object: a publication's column list and its row filter each depend on the column
            "group by d.classid, d.objid, d.objsubid, x.rel").format(
            desc=describe, t=t, c=sql.Literal(col), sync=sql.Literal(expand.Names(spec, d, "", cat).trigger),
            fill=sql.Literal(expand.Names(spec, d, "", cat).fill_trigger)))
    legacy = sql.Literal(str(cat.legacy.name))
    if planned is not None:
        parts += _made_after_expand(spec, cat, planned)
    parts.append(sql.SQL(
        "select format('%s reads %s, which contract archives out of the API roles'' reach', {desc}, {l}), null "
        "from pg_catalog.pg_depend d where d.refclassid = 'pg_catalog.pg_class'::regclass and d.refobjid = "
        "to_regclass({l}) and (d.classid = 'pg_catalog.pg_rewrite'::regclass and d.objid not in (select r.oid from "
        "pg_catalog.pg_rewrite r where r.ev_class = to_regclass({l})) "
        # a policy of another table whose sub-query reads the legacy table (its own go with it into the archive)
        "or d.classid = 'pg_catalog.pg_policy'::regclass and d.deptype = 'n' and d.objid not in (select p.oid from "
        "pg_catalog.pg_policy p where p.polrelid = to_regclass({l}))) "
        "group by d.classid, d.objid, d.objsubid").format(desc=describe, l=legacy))
    if cat.legacy_helper is not None:
        # Dropped, or replaced by a stub that raises on every call: either way a policy, default, view or constraint
        # still calling it would fail every statement that reaches it. The legacy table's own policies go with the
        # table into the archive, and the legacy columns' defaults with the columns.
        fate = ("which contract drops" if spec.migration.legacy_helper_after_contract == "drop" else
                "which contract retires: every call then raises an error")
        columns = sql.SQL(", ").join(sql.SQL("({}, {})").format(sql.Literal(str(d.table.name)), sql.Literal(
            d.fk.columns[0])) for d in cat.dependents) or sql.SQL("(null, null)")
        parts.append(sql.SQL(
            "select format('%s uses %s, {fate}', {desc}, {h}), null from pg_catalog.pg_depend d "
            "where d.refclassid = 'pg_catalog.pg_proc'::regclass and d.refobjid = to_regprocedure({h}) "
            "and d.deptype = 'n' and not (d.classid = 'pg_catalog.pg_policy'::regclass and exists (select 1 from "
            "pg_catalog.pg_policy p where p.oid = d.objid and p.polrelid = to_regclass({l}))) "
            "and not (d.classid = 'pg_catalog.pg_attrdef'::regclass and exists (select 1 from pg_catalog.pg_attrdef a "
            "join pg_catalog.pg_attribute c on c.attrelid = a.adrelid and c.attnum = a.adnum "
            "join (values {columns}) as x(t, col) on (a.adrelid = to_regclass(x.t) or a.adrelid in (select p.relid "
            "from pg_catalog.pg_partition_tree(to_regclass(x.t)) p)) and x.col = c.attname "
            "where a.oid = d.objid))").format(
            fate=sql.SQL(fate.replace("'", "''")), desc=describe, h=sql.Literal(cat.legacy_helper.signature),
            l=legacy, columns=columns))
    # A gate of that moment (the legacy table is archived after it, its own policies with it): `verify` does not run
    # it again.
    return Check("nothing else depends on what contract drops", sql.SQL(" union all ").join(parts), standing=False,
                 replan=True,
                 failure="objects still use what contract drops or archives (nothing was dropped)",
                 fix="drop or re-create each object named so it reads the new column and the canonical table (a view: "
                     "CREATE OR REPLACE VIEW, or DROP VIEW and CREATE VIEW; a trigger: without the legacy column in "
                     "UPDATE OF and WHEN; a policy: on the canonical helper; a publication's column list or row "
                     "filter: ALTER PUBLICATION … SET TABLE with the new column), then run contract again")
