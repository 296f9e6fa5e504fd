"""RLS equivalence: the rows each identity sees, and the writes it may make, before and after the switch.

Both sides are read from one data snapshot: the "before" side is captured in a transaction whose
snapshot is exported, the policies are rewritten and committed elsewhere, and the "after" side
imports that snapshot. Data then is identical on both sides while the policies (read from the
catalog, which is never read through the imported snapshot) are the new ones, so concurrent
application writes cannot make a correct switch look wrong.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import psycopg
from pglast import ast
from psycopg import errors, sql

from pgconverge.catalog.introspect import function_and_callees
from pgconverge.catalog.model import Catalog
from pgconverge.config import QualifiedName, Spec
from pgconverge.errors import PgConvergeError
from pgconverge.execution.sql import ident, qn, text
from pgconverge.planning import align
from pgconverge.planning.rls_ast import strings, walk
from pgconverge.planning.rls_helper import is_auth_user, resolved_body
from pgconverge.verify.tokens import act_as


@dataclass(frozen=True)
class Target:
    """A table whose rows an identity may see, and how to name, find and copy a row."""

    table: QualifiedName
    key: str  # a single-column key, or "ctid"
    key_type: str
    insert_columns: tuple[str, ...]
    # How to find the rows that belong to an identity without reading the whole table:
    # A dependent table: its legacy and new id columns, a pair per reference (l1, n1, l2, n2, …).
    owner_columns: tuple[str, ...] = ()
    parent: tuple[str, QualifiedName] | None = None  # (fk column, dependent table) for tables reached through one
    owner_types: tuple[str, ...] = ()  # types of owner_columns

    @property
    def owner_pairs(self) -> list[tuple[str, str, str, str]]:
        """(legacy column, new column, legacy type, new type) per reference."""
        c, t = self.owner_columns, self.owner_types
        return list(zip(c[0::2], c[1::2], t[0::2], t[1::2]))
    parent_type: str = ""  # type of the parent fk column
    # A permissive policy lets some role read it (SELECT or ALL): not a table its owners may only insert into.
    readable: bool = True
    # A table without owner columns of its own: the chain of single-column foreign keys that leads from it to a table
    # that has them (order notes → order items → orders), one hop per key: (its column, that column's type, the table
    # it references, the column it references). A row belongs to the owners of the row at the end of the chain.
    chain: tuple[tuple[str, str, QualifiedName, str], ...] = ()
    # The owner columns (legacy, new) of that last table, a pair per reference, and their types.
    chain_owner_columns: tuple[str, ...] = ()
    chain_owner_types: tuple[str, ...] = ()

    @property
    def chain_owner_pairs(self) -> list[tuple[str, str, str, str]]:
        c, t = self.chain_owner_columns, self.chain_owner_types
        return list(zip(c[0::2], c[1::2], t[0::2], t[1::2]))


@dataclass(frozen=True)
class Identity:
    canonical: str
    legacy: tuple[str, ...]  # the legacy rows merged onto it
    # When the legacy helper looks the caller up by auth.uid() instead of reading the legacy claim: the
    # auth user (the token's `sub`) of each legacy row, in the order of LEGACY; None for a row without one.
    subjects: tuple[str | None, ...] | None = None
    # Where in the token the helper reads the claim: () at the top, ("app_metadata",) for
    # auth.jwt() -> 'app_metadata' ->> 'customer_id' (the derived helper reads the canonical claim there too).
    claim_path: tuple[str, ...] = ()
    # How old code's token spells each legacy id, in the order of LEGACY: for a key whose equality ignores case (citext,
    # a nondeterministic collation), in another case than stored where the key takes it for the same (SPELLED_OTHERWISE
    # says how the check chooses it); else as stored. None: as stored.
    spellings: tuple[str, ...] | None = None

    @property
    def spelled_otherwise(self) -> bool:
        return self.spellings is not None and self.spellings != self.legacy


@dataclass
class Capture:
    """Visible row keys per table, per token; write outcomes per (writer, owner) pair."""

    seen: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # token → table → keys
    writes: dict[str, str] = field(default_factory=dict)  # "writer|owner|table|L or C" → outcome
    others: dict[str, list[str]] = field(default_factory=dict)  # table → random keys every identity checks
    # Tables with several references: row key → the identities it names (each may see it).
    parties: dict[str, dict[str, set]] = field(default_factory=dict)
    # Tables whose policy reads a whole table for every caller (see SCAN_BOUND_S), and how many of the
    # tokens they were checked for: table → {"first_token_s", "tokens_checked", "tokens"}.
    scan_bound: dict[str, dict] = field(default_factory=dict)
    # The rows each sampled identity owns, read as the migration role: table → canonical id → keys. Through the
    # legacy or new column of the table, or, for a table reached through a parent, through the parent's own rows.
    owned: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # Tables whose rows' owners are known (an owner column, or a parent's): a row there that a token sees and its
    # identity does not own is another's, whether or not that other is sampled.
    owner_known: set[str] = field(default_factory=set)
    # Tables no permissive policy lets anyone read: those its owners may only insert into (table_coverage).
    insert_only: set[str] = field(default_factory=set)
    # table → keys a signed-in caller who is nobody in particular sees, among the sampled owners' rows and the
    # shared random ones: rows the application shows everyone (a public listing, a `using (true)` read). Seeing
    # them proves nothing about the policies that pick out an owner (coverage, table_coverage).
    shared: dict[str, set[str]] = field(default_factory=dict)


# The check asks each token only for the rows it may concern (an index lookup), so a table whose visibility check
# takes longer than SCAN_BOUND_S for one token, or longer than SCAN_SLOW_S with all tokens together then exceeding
# SCAN_BUDGET_S, is not read through an index: its policy scans a table for every caller (an uncorrelated IN over
# an unindexed column, say), so the cost grows with the table times the tokens. Such a table is checked for as
# many tokens as fit in SCAN_BUDGET_S (the first token always; another only while its expected cost still fits),
# and the capture says so; the others keep every token, however many the sample asks for. Such a policy costs the
# application the same read on every query of the table.
SCAN_BOUND_S = 1.0
# Owners whose writes are probed per table (each: its own row, and the next identity trying the same row).
WRITE_OWNERS = 20
SCAN_SLOW_S = 0.1
SCAN_BUDGET_S = 10.0


def targets(spec: Spec, cat: Catalog, tables: list[QualifiedName]) -> list[Target]:
    from pgconverge.planning.references import new_column

    deps: dict[QualifiedName, list] = {}
    for d in cat.dependents:  # every reference of a table: a row belongs to whoever any of them names
        deps.setdefault(d.table.name, []).append(d)
    ck_type = cat.canonical.column(spec.canonical.key).value_type
    out = []
    for name in tables:
        t = cat.table(name)
        if t is None:
            continue
        # Not a legacy column (a table keyed by one alone, `wallets(customer_id primary key)`): contract drops it, so
        # the rows are named by their ctids, as a table's without a single-column key are.
        legacy = {d.fk.columns[0] for d in deps.get(name, ())}
        key = t.primary_key[0] if len(t.primary_key) == 1 and t.primary_key[0] not in legacy else "ctid"
        if key == "ctid" and any(d.partitioned for d in deps.get(name, ())):
            key = ROWID  # a ctid names a row within one partition only
        key_type = {"ctid": "tid", ROWID: "text"}.get(key) or t.column(key).value_type
        cols = tuple(c.name for c in t.columns if not c.generated and not (c.name == key and (c.default or c.identity)))
        news = [new_column(spec, cat, d) for d in deps.get(name, ())]
        cols += tuple(n for n in news if n not in cols)
        owner = tuple(x for d, n in zip(deps.get(name, ()), news) for x in (d.fk.columns[0], n))
        parent = next(((fk.columns[0], fk.ref_table) for fk in t.foreign_keys
                       if fk.ref_table in deps and len(fk.columns) == 1), None)
        types = tuple(x for d in deps.get(name, ()) for x in (d.column.value_type, ck_type))
        readable = any(p.table == name and p.permissive and p.command in ("ALL", "SELECT") for p in cat.policies)
        chain = () if owner else owner_chain(cat, name, deps)
        root = deps.get(chain[-1][2], ()) if chain else ()
        out.append(Target(name, key, key_type, cols, owner, parent, types,
                          t.column(parent[0]).value_type if parent else "", readable, chain,
                          tuple(x for d in root for x in (d.fk.columns[0], new_column(spec, cat, d))),
                          tuple(x for d in root for x in (d.column.value_type, ck_type))))
    # Parents first, so a child's candidates can be derived from them.
    return sorted(out, key=lambda x: x.parent is not None)


# The longest chain of foreign keys followed from a table to the table that names its rows' owners.
MAX_CHAIN = 8


def owner_chain(cat: Catalog, name: QualifiedName, deps: dict[QualifiedName, list]
                ) -> tuple[tuple[str, str, QualifiedName, str], ...]:
    """The shortest chain of single-column foreign keys from NAME to a table in DEPS (one with owner columns), as
    Target.chain: breadth first, each table once (a cycle of keys ends), at most MAX_CHAIN hops; () where none leads
    there (its owners cannot be told)."""
    seen = {name}
    level: list[tuple[QualifiedName, tuple]] = [(name, ())]
    for _ in range(MAX_CHAIN):
        following = []
        for table, path in level:
            t = cat.table(table)
            for fk in (t.foreign_keys if t is not None else ()):
                if len(fk.columns) != 1 or fk.ref_table in seen:
                    continue
                hop = path + ((fk.columns[0], t.column(fk.columns[0]).type, fk.ref_table, fk.ref_columns[0]),)
                if fk.ref_table in deps:
                    return hop
                if cat.table(fk.ref_table) is not None and fk.ref_table not in (cat.legacy.name, cat.canonical.name):
                    seen.add(fk.ref_table)
                    following.append((fk.ref_table, hop))
        level = following
    return ()


def _chain_from(t: Target) -> sql.Composable:
    """FROM clause reading T's rows as `d` joined along its chain to the owning row, `o`."""
    out = sql.SQL("{} d").format(qn(t.table))
    prev = "d"
    for i, (fk, _type, ref, ref_col) in enumerate(t.chain):
        alias = "o" if i == len(t.chain) - 1 else f"x{i + 1}"
        out = sql.SQL("{} join {} {} on {}.{} = {}.{}").format(out, qn(ref), ident(alias), ident(alias),
                                                              ident(ref_col), ident(prev), ident(fk))
        prev = alias
    return out


def subject_column(conn: psycopg.Connection, spec: Spec) -> str | None:
    """The legacy-table column the legacy helper compares with auth.uid() (``c.auth_user_id = auth.uid()``).

    Set when the helper identifies the caller by the token's `sub` (a uid_lookup helper) rather than by
    the legacy claim: a legacy caller's token then carries that column's value as `sub`. None otherwise.
    """
    # Its body as the derivation sees it: plpgsql's RETURN, and a lookup inside a function it wraps, too.
    fn, callees = function_and_callees(conn, spec.legacy.helper)
    body = resolved_body(fn, callees) if fn is not None else None
    if body is None:
        return None
    stmts = [body]
    table = spec.legacy.table
    for stmt in stmts:
        tables = [n for n in walk(stmt) if isinstance(n, ast.RangeVar)]
        # Names (alias or table name) under which the legacy table is read.
        names = {n.alias.aliasname if n.alias else n.relname for n in tables
                 if n.relname == table.name and n.schemaname in (None, table.schema)}
        for node in walk(stmt):
            if not (isinstance(node, ast.A_Expr) and strings(node.name) == ("=",)):
                continue
            for col, other in ((node.lexpr, node.rexpr), (node.rexpr, node.lexpr)):
                # auth.uid() as is, or as Supabase advises writing it in policies, `(select auth.uid())`
                if isinstance(col, ast.ColumnRef) and is_auth_user(other):
                    parts = strings(col.fields)
                    if parts[-2:-1] and parts[-2] in names or len(parts) == 1 and len(tables) == 1 and names:
                        return parts[-1]
    return None


def claim_path(conn: psycopg.Connection, spec: Spec, helper: QualifiedName | None = None,
               claim: str | None = None) -> tuple[str, ...]:
    """The keys above the legacy claim where the legacy helper reads it as a JSON path (`x -> 'app_metadata' ->>
    'customer_id'`); () where it reads it at the top of the token, or not as a path at all. HELPER and CLAIM: another
    helper and the claim it reads (the canonical ones, after contract)."""
    fn, callees = function_and_callees(conn, helper or spec.legacy.helper)
    body = resolved_body(fn, callees) if fn is not None else None
    claim = claim or spec.legacy.claim
    if body is None:
        return ()

    def key(node) -> str | None:
        return node.val.sval if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String) else None

    for node in walk(body):
        if (isinstance(node, ast.A_Expr) and strings(node.name) in (("->>",), ("->",))
                and key(node.rexpr) == claim):
            path, up = [], node.lexpr
            while isinstance(up, ast.A_Expr) and strings(up.name) == ("->",) and key(up.rexpr) is not None:
                path.insert(0, key(up.rexpr))
                up = up.lexpr
            return tuple(path)
    return ()


def reverse_lookup(conn: psycopg.Connection, helper: QualifiedName) -> tuple[QualifiedName, str, str] | None:
    """For a helper that looks the caller up (`select l.profile_id from link.users l where l.auth_user_id =
    auth.uid()`): (the table, the column it returns, the column it compares with auth.uid()), so that a test token
    for an id can carry the auth user that id belongs to. None for any other shape."""
    fn, callees = function_and_callees(conn, helper)
    body = resolved_body(fn, callees) if fn is not None else None
    if body is None or len(body.fromClause or ()) != 1 or not isinstance(body.fromClause[0], ast.RangeVar) \
            or len(body.targetList or ()) != 1:
        return None
    rv = body.fromClause[0]
    names = {rv.alias.aliasname if rv.alias else rv.relname}
    target = body.targetList[0].val
    if not isinstance(target, ast.ColumnRef) or not _own(strings(target.fields), names):
        return None
    for node in walk(body.whereClause):
        if isinstance(node, ast.A_Expr) and strings(node.name) == ("=",):
            for col, other in ((node.lexpr, node.rexpr), (node.rexpr, node.lexpr)):
                if isinstance(col, ast.ColumnRef) and is_auth_user(other) and _own(strings(col.fields), names):
                    return (QualifiedName(rv.schemaname or "public", rv.relname), strings(target.fields)[-1],
                            strings(col.fields)[-1])
    return None


def returns_uid(conn: psycopg.Connection, helper: QualifiedName) -> bool:
    """Whether HELPER is `select auth.uid()` (cast or not, or `auth.jwt() ->> 'sub'`): the caller's id is its auth
    user's, as where the canonical table is auth.users or keyed by the auth user (Supabase's profiles.id references
    auth.users)."""
    fn, callees = function_and_callees(conn, helper)
    body = resolved_body(fn, callees) if fn is not None else None
    if body is None or body.fromClause or len(body.targetList or ()) != 1:
        return False
    return is_auth_user(body.targetList[0].val)


def _own(parts: tuple[str, ...], names: set[str]) -> bool:
    return len(parts) == 1 or len(parts) == 2 and parts[0] in names


def sample(conn: psycopg.Connection, spec: Spec, n: int, only: list[str] | None = None) -> list[Identity]:
    """Canonical rows that have legacy rows, picked deterministically (by hash), with their legacy ids.

    For a legacy helper that looks the caller up by auth.uid(), also the auth user of each legacy row. ONLY: these
    canonical ids (as text) instead of a sample.
    """
    m = align.names(spec)["mapping"]
    subject = subject_column(conn, spec)
    subjects, join = sql.SQL(""), sql.SQL("")
    if subject:
        subjects = sql.SQL(", array_agg(x.{s}::text order by m.{l})").format(
            s=ident(subject), l=ident(spec.mapping_legacy_column))
        join = sql.SQL(" left join {t} x on x.{k} = m.{l}").format(
            t=qn(spec.legacy.table), k=ident(spec.legacy.key), l=ident(spec.mapping_legacy_column))
    spelled = _spelled_otherwise(conn, spec)
    spellings = sql.SQL(", array_agg({} order by m.{})").format(spelled, ident(spec.mapping_legacy_column)) \
        if spelled is not None else sql.SQL("")
    q = sql.SQL("select m.{c}::text, array_agg(m.{l}::text order by m.{l}){s}{sp} from {mt} m{j}{w} group by m.{c} "
                "order by hashtext(m.{c}::text), m.{c}::text {lim}").format(
        c=ident(spec.migration.new_column), l=ident(spec.mapping_legacy_column), mt=qn(m), s=subjects, j=join,
        sp=spellings, w=sql.SQL("") if only is None else sql.SQL(" where m.{}::text = any(%s::text[])").format(
            ident(spec.migration.new_column)),
        lim=sql.SQL("limit {}").format(sql.Literal(n)) if n and only is None else sql.SQL(""))
    path = claim_path(conn, spec)
    return [Identity(r[0], tuple(r[1]), tuple(r[2]) if subject else None, path,
                     tuple(r[-1]) if spelled is not None else None)
            for r in conn.execute(q, None if only is None else (only,)).fetchall()]


SPELLED_OTHERWISE = ("old code's tokens spell the legacy key in another case than stored (upper, else lower case) "
                     "where the key's equality takes it for the same (citext, a nondeterministic collation)")


def _spelled_otherwise(conn, spec: Spec) -> sql.Composable | None:
    """For a legacy key of a string type: the mapping row m's legacy id in upper case, else in lower case, where the
    legacy key's own = (citext's, or text's under a case-insensitive collation) takes that for the legacy row's, else
    as stored. Asked of the legacy table, not of the mapping: the check is to find out whether what pgconverge put in
    between compares as the key does. None for a key of another type, or without the legacy table."""
    row = conn.execute(
        "with recursive d(t, depth) as (select a.atttypid, 0 from pg_catalog.pg_attribute a "
        "  where a.attrelid = pg_catalog.to_regclass(%s) and a.attname = %s "
        "  union all select t.typbasetype, d.depth + 1 from d join pg_catalog.pg_type t on t.oid = d.t "
        "  and t.typtype = 'd') "
        "select pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(t.typname), t.typcategory = 'S', "
        "(select bn.nspname from d join pg_catalog.pg_type b on b.oid = d.t join pg_catalog.pg_namespace bn "
        "  on bn.oid = b.typnamespace order by d.depth desc limit 1) "
        "from d join pg_catalog.pg_type t on t.oid = d.t join pg_catalog.pg_namespace n on n.oid = t.typnamespace "
        "where d.depth = 0", (text(qn(spec.legacy.table)), spec.legacy.key)).fetchone()
    if row is None or not row[1]:
        return None
    type_, schema = row[0], row[2]
    # the = of the key's type (a domain's base type) itself, named with its schema, whatever the session's search_path
    raw = sql.SQL("m.{}::text").format(ident(spec.mapping_legacy_column))
    return sql.SQL(
        "coalesce((select s.v from unnest(array[pg_catalog.upper({t}), pg_catalog.lower({t})]) s(v) "
        'where s.v <> ({raw} collate pg_catalog."C") and exists (select from {lt} l where l.{lk} operator({eq}.=) '
        's.v::{ty} and (l.{lk}::text collate pg_catalog."C") = {raw}) limit 1), {raw})').format(
            t=sql.SQL('({} collate pg_catalog."default")').format(raw), raw=raw, lt=qn(spec.legacy.table),
            lk=ident(spec.legacy.key), eq=ident(schema), ty=sql.SQL(type_))


def _owners(spec: Spec, cat: Catalog, t: Target, by: dict[str, Target], contracted: bool
            ) -> tuple[sql.Composable, list[tuple[sql.Composable, str]]] | None:
    """How to read the owners of T's rows: (FROM clause naming the owning row `o`, [(owner column of o, its type)]).
    A table with owner columns owns its rows itself (legacy ids, or the new ids once CONTRACTED); a table reached
    through a chain of foreign keys (Target.chain: a parent, a grandparent, …) belongs to the owners of the row at
    its end. None where its owners cannot be told (no such chain)."""
    from pgconverge.planning.references import new_column

    def columns(table: QualifiedName, pairs: list[tuple[str, str, str, str]]) -> list[tuple[sql.Composable, str]]:
        if contracted:  # the legacy columns are gone; the new ones hold the canonical ids
            ck = cat.canonical.column(spec.canonical.key).value_type
            deps = [d for d in cat.dependents if d.table.name == table]
            return [(ident(new_column(spec, cat, d)), ck) for d in deps]
        return [(ident(legacy), ltype) for legacy, _, ltype, _ in pairs]

    if t.owner_columns:
        cols = columns(t.table, t.owner_pairs)
        return (sql.SQL("{} o").format(qn(t.table)), cols) if cols else None
    if not t.chain:
        return None
    cols = columns(t.chain[-1][2], t.chain_owner_pairs)
    return (_chain_from(t), cols) if cols else None


def owner_unknown(targets_: list[Target]) -> list[str]:
    """The checked tables whose rows' owners cannot be told: no owner column, and no chain of single-column foreign
    keys to a table with one (its owners' view is not checked there, only what other identities see)."""
    return [str(t.table) for t in targets_ if not t.owner_columns and not t.chain]


def owned_tables(conn, spec: Spec, cat: Catalog, targets_: list[Target], contracted: bool) -> list[str]:
    """The checked tables some row of which has an owner (through its own columns, or those of the row its chain of
    foreign keys leads to)."""
    by = {str(t.table): t for t in targets_}
    out = []
    for t in targets_:
        how = _owners(spec, cat, t, by, contracted)
        if how is None:
            continue
        rows, cols = how
        cond = sql.SQL(" or ").join(sql.SQL("o.{} is not null").format(c) for c, _ in cols)
        if conn.execute(sql.SQL("select exists (select from {} where {})").format(rows, cond)).fetchone()[0]:
            out.append(str(t.table))
    return out


def cover_tables(conn, spec: Spec, cat: Catalog, targets_: list[Target], identities: list[Identity],
                 contracted: bool = False) -> list[Identity]:
    """IDENTITIES, and for every checked table that has rows with owners but no sampled owner, one owner of its rows
    more (the first of them by the hash the sample is ordered by, so the same database gives the same sample): a table
    whose rows belong to few identities (refunds, disputes) is then compared for its owners too, whatever the sample
    size, instead of being passed over because the sample happened to miss all of them."""
    by = {str(t.table): t for t in targets_}
    out = list(identities)
    for t in targets_:
        how = _owners(spec, cat, t, by, contracted)
        if how is None:
            continue
        rows, cols = how
        ids = [i.canonical for i in out] if contracted else [x for i in out for x in i.legacy]
        mine = sql.SQL(" or ").join(sql.SQL("o.{c} = any(%(ids)s::text[]::{ty}[])").format(c=c, ty=sql.SQL(ty))
                                    for c, ty in cols)
        if conn.execute(sql.SQL("select exists (select from {} where {})").format(rows, mine),
                        {"ids": ids}).fetchone()[0]:
            continue
        if contracted:
            owners = sql.SQL(" union ").join(sql.SQL("select o.{c}::text from {r} where o.{c} is not null").format(
                c=c, r=rows) for c, _ in cols)
            q = sql.SQL("select x.id from ({}) x(id) order by hashtext(x.id), x.id limit 1").format(owners)
        else:
            # Legacy ids compared as the legacy key's type, not as text (numeric(12,2)'s 1001.00 is the key's 1001).
            m = align.names(spec)["mapping"]
            owners = sql.SQL(" union ").join(sql.SQL("select o.{c}::{ty} from {r} where o.{c} is not null").format(
                c=c, r=rows, ty=sql.SQL(cat.legacy.column(spec.legacy.key).value_type)) for c, _ in cols)
            q = sql.SQL("select m.{c}::text from {m} m join ({o}) x(id) on x.id = m.{l} "
                        "order by hashtext(m.{c}::text), m.{c}::text limit 1").format(
                c=ident(spec.migration.new_column), m=qn(m), o=owners, l=ident(spec.mapping_legacy_column))
        row = conn.execute(q).fetchone()
        if row is None:
            continue  # no row has an owner (or none a sampled identity could be): nothing to add
        more = _contracted_identities(conn, spec, [row[0]]) if contracted else sample(conn, spec, 0, only=[row[0]])
        out += [i for i in more if i.canonical not in {x.canonical for x in out}]
    return out


def sample_covering(conn, spec: Spec, cat: Catalog, targets_: list[Target], n: int,
                    contracted: bool = False) -> list[Identity]:
    """The sample of N identities (0: all of them), with an owner added for each checked table the sample misses
    (cover_tables). Before contract from the mapping; after it (CONTRACTED) from the dependents' new columns."""
    picked = contracted_sample(conn, spec, cat, n) if contracted else sample(conn, spec, n)
    return picked if not n else cover_tables(conn, spec, cat, targets_, picked, contracted)


def _claims(spec: Spec, claim: str, value: str, path: tuple[str, ...] = ()) -> dict:
    """The test token: token_claims, and CLAIM = VALUE at PATH (inside the objects named, made where missing)."""
    out = {**dict(spec.migration.token_claims)}
    at = out
    for k in path:
        at[k] = dict(at[k]) if isinstance(at.get(k), dict) else {}
        at = at[k]
    at[claim] = value
    return out


def _legacy_token(spec: Spec, ident_: Identity, i: int) -> dict:
    """The token of the caller owning legacy row ident_.legacy[i], as the application minted it before the switch."""
    if ident_.subjects is None:
        spelled = ident_.spellings[i] if ident_.spellings is not None else ident_.legacy[i]
        return _claims(spec, spec.legacy.claim, spelled, ident_.claim_path)
    sub = ident_.subjects[i]  # looked up by auth.uid(): the token names its auth user, not the legacy row
    return {**dict(spec.migration.token_claims), **({"sub": sub} if sub else {})}


def _canonical_token(spec: Spec, ident_: Identity) -> dict:
    """A token minted after the switch: the canonical claim (and, with a uid lookup, the same auth user)."""
    claims = _claims(spec, spec.canonical.claim, ident_.canonical, ident_.claim_path)
    if ident_.subjects is not None and ident_.subjects[0]:
        claims["sub"] = ident_.subjects[0]
    return claims


# The auth user of the stranger token: a signed-in caller whom no row names.
NOBODY = "00000000-0000-0000-0000-000000000000"


def _stranger_token(spec: Spec) -> dict:
    """A token as the application mints them (token_claims) that names no identity: no legacy or canonical claim,
    and an auth user no row belongs to."""
    return {**dict(spec.migration.token_claims), "sub": NOBODY}


def _clear(spec: Spec) -> tuple[str, ...]:
    return (spec.legacy.claim, spec.canonical.claim, "sub", *dict(spec.migration.token_claims))


ROWID = "tableoid+ctid"  # Target.key of a partitioned table without a single-column key


def _key(t: Target, alias: str | None = None) -> sql.Composable:
    """The expression naming a row of T (of T read as ALIAS, where given)."""
    at = sql.SQL("") if alias is None else sql.SQL("{}.").format(ident(alias))
    if t.key == ROWID:
        return sql.SQL("({a}tableoid::regclass::text || ' ' || {a}ctid::text)").format(a=at)
    return sql.SQL("{}ctid").format(at) if t.key == "ctid" else sql.SQL("{}{}").format(at, ident(t.key))


def _visible(conn, spec: Spec, t: Target, claims: dict | None, among: list[str] | None) -> list[str]:
    """Keys of T's rows the caller sees, among the given candidate keys (None: the whole table)."""
    conn.execute("savepoint pgc_rls")
    try:
        act_as(conn, claims, clear=_clear(spec))
        where = sql.SQL("") if among is None else sql.SQL(" where {k} = any(%s::{ty}[])").format(
            k=_key(t), ty=sql.SQL(t.key_type))
        rows = conn.execute(sql.SQL("select {k}::text from {t}{w} order by 1").format(
            k=_key(t), t=qn(t.table), w=where), (among,) if among is not None else None).fetchall()
    except errors.InsufficientPrivilege as exc:
        rows, denied = [], exc
    else:
        denied = None
    finally:
        conn.execute("rollback to savepoint pgc_rls")
    if denied is not None:
        _denied(conn, t, "anon" if claims is None else "authenticated", denied)
    return [r[0] for r in rows]


def _denied(conn, t: Target, role: str, exc: errors.InsufficientPrivilege) -> None:
    """A role without the grant to read T sees none of its rows; one with it that is refused all the same
    (EXECUTE on a helper its policy calls, say) is a broken policy, and the check must not pass."""
    if "permission denied to set role" in str(exc):  # pgconverge's own role may not act as the API role
        me = conn.execute("select current_user").fetchone()[0]
        raise PgConvergeError(
            f"pgconverge connects as {me}, which may not act as role {role} to check row level security: "
            f"{str(exc).strip()}",
            fix=f"as a superuser or a role with ADMIN on it, `GRANT {role} TO {me};` (Supabase's postgres role "
                "has it)")
    may = conn.execute("select has_schema_privilege(%s, %s, 'usage') and has_table_privilege(%s, %s, 'select')",
                       (role, t.table.schema, role, str(t.table))).fetchone()[0]
    if may:
        raise PgConvergeError(
            f"role {role} may read {t.table} but is refused when it does: {str(exc).strip()}",
            fix="the table's policies call something this role may not use: grant it (e.g. EXECUTE on the helper), "
                "or fix the policy; until then the application fails on this table")


def _visible_all(conn, spec: Spec, targets_: list[Target], claims: dict | None,
                 among: dict[str, list[str] | None]) -> dict[str, list[str]]:
    """_visible for every table in one round trip (a UNION ALL of one branch per table)."""
    if not targets_:
        return {}
    branches, params = [], []
    for t in targets_:
        keys = among[str(t.table)]
        where = sql.SQL("") if keys is None else sql.SQL(" where {k} = any(%s::{ty}[])").format(
            k=_key(t), ty=sql.SQL(t.key_type))
        if keys is not None:
            params.append(keys)
        branches.append(sql.SQL("(select {n}::text as t, {k}::text as k from {t}{w})").format(
            n=sql.Literal(str(t.table)), k=_key(t), t=qn(t.table), w=where))
    conn.execute("savepoint pgc_rls")
    try:
        act_as(conn, claims, clear=_clear(spec))
        rows = conn.execute(sql.SQL(" union all ").join(branches) + sql.SQL(" order by 1, 2"), params).fetchall()
    except errors.InsufficientPrivilege:
        rows = None  # a table the role may not read at all: table by table (that one sees nothing)
    finally:
        conn.execute("rollback to savepoint pgc_rls")
    if rows is None:
        return {str(t.table): _visible(conn, spec, t, claims, among[str(t.table)]) for t in targets_}
    out: dict[str, list[str]] = {str(t.table): [] for t in targets_}
    for table, key in rows:
        out[table].append(key)
    return out


def _owned_conds(conn, t: Target | QualifiedName, pairs, alias: str) -> list[sql.Composable]:
    """Per owner pair of T: its rows the identity owns (%(c)s, its canonical id; %(l)s, its legacy ids). Compared in
    the columns' own types, so their indexes serve; once the new column exists the sync trigger keeps it equal to the
    mapping of the legacy one, so it alone suffices. ALIAS ("o.") qualifies the columns."""
    out = []
    for legacy_col, new_col, legacy_type, new_type in pairs:
        if _has_column(conn, t, new_col):
            out.append(sql.SQL("{}{} = %(c)s::{}").format(sql.SQL(alias), ident(new_col), sql.SQL(new_type)))
        else:
            out.append(sql.SQL("{}{} = any(%(l)s::text[]::{}[])").format(sql.SQL(alias), ident(legacy_col),
                                                                       sql.SQL(legacy_type)))
    return out


def _has_column(conn, t: Target | QualifiedName, column: str) -> bool:
    table = t.table if isinstance(t, Target) else t
    return conn.execute("select exists (select 1 from pg_attribute where attrelid = %s::regclass and attname = %s "
                        "and not attisdropped)", (text(qn(table)), column)).fetchone()[0]


def candidates(conn, spec: Spec, targets_: list[Target], ident_: Identity, others: dict[str, list[str]],
               parties: dict[str, dict[str, set]] | None = None,
               owned: dict[str, dict[str, list[str]]] | None = None,
               known: set[str] | None = None) -> dict[str, list[str] | None]:
    """Per table, the rows linked to IDENTITY (read as the migration role) plus the shared random sample.

    RLS is then evaluated on these rows only: an index lookup per identity instead of a full
    scan, so the check stays affordable on large tables; a policy that leaks rows to everyone
    shows up in the random sample every identity also looks at. OWNED, when given, receives the rows the
    identity itself owns per table (without the random sample): what its own tokens should be able to see.
    """
    out: dict[str, list[str] | None] = {}
    own: dict[str, list[str]] = {}  # table → the identity's own rows (a child's: those under its own parent rows)
    for t in targets_:
        mine: list[str] | None = None
        if t.owner_columns:
            # A table with several references: the rows any of them links to the identity.
            cond = sql.SQL(" or ").join(_owned_conds(conn, t, t.owner_pairs, ""))
            mine = [r[0] for r in conn.execute(sql.SQL("select {k}::text from {t} where {c}").format(
                k=_key(t), t=qn(t.table), c=cond), {"l": list(ident_.legacy), "c": ident_.canonical}).fetchall()]
            own[str(t.table)] = mine
            if parties is not None and len(t.owner_pairs) > 1:  # a row names several: each may see it
                for k in mine:
                    parties.setdefault(str(t.table), {}).setdefault(k, set()).add(ident_.canonical)
        elif (t.parent is not None and len(t.chain) == 1 and str(t.parent[1]) in out
              and out[str(t.parent[1])] is not None):
            # The children of the parent rows checked (the identity's own and the random sample), each flagged
            # whether it hangs under a parent row the identity owns.
            rows = conn.execute(sql.SQL(
                "select {k}::text, {fk} = any(%s::text[]::{ty}[]) from {t} where {fk} = any(%s::text[]::{ty}[])"
            ).format(k=_key(t), t=qn(t.table), fk=ident(t.parent[0]), ty=sql.SQL(t.parent_type)),
                (own.get(str(t.parent[1]), []), out[str(t.parent[1])])).fetchall()
            mine = [r[0] for r in rows]
            own[str(t.table)] = [r[0] for r in rows if r[1]]
            if parties is not None and str(t.parent[1]) in parties:  # under a row that names several: each may see it
                for k in own[str(t.table)]:
                    parties.setdefault(str(t.table), {}).setdefault(k, set()).add(ident_.canonical)
        elif t.chain:
            # Further down (a grandchild, …): the rows whose chain of foreign keys ends at a row the identity owns,
            # read through the owner columns of that row as above.
            root = t.chain[-1][2]
            conds = _owned_conds(conn, root, t.chain_owner_pairs, "o.")
            if conds:
                mine = [r[0] for r in conn.execute(sql.SQL("select distinct {k}::text from {f} where {c}").format(
                    k=_key(t, "d"), f=_chain_from(t),
                    c=sql.SQL(" or ").join(conds)), {"l": list(ident_.legacy), "c": ident_.canonical}).fetchall()]
                own[str(t.table)] = mine
                if parties is not None and len(t.chain_owner_pairs) > 1:  # under a row that names several
                    for k in mine:
                        parties.setdefault(str(t.table), {}).setdefault(k, set()).add(ident_.canonical)
        if mine is not None and known is not None:
            known.add(str(t.table))
        out[str(t.table)] = None if mine is None else sorted(set(mine) | set(others.get(str(t.table), [])))
    if owned is not None:
        for table, keys in own.items():
            if keys:
                owned.setdefault(table, {})[ident_.canonical] = keys
    return out


def random_rows(conn, t: Target, n: int = 200) -> list[str]:
    return [r[0] for r in conn.execute(sql.SQL("select {k}::text from {t} order by random() limit {n}").format(
        k=_key(t), t=qn(t.table), n=sql.Literal(n))).fetchall()]


def _write(conn, spec: Spec, t: Target, claims: dict, row: dict) -> str:
    """Insert a copy of ROW as the identity, in a savepoint that is always rolled back."""
    conn.execute("savepoint pgc_write")
    try:
        act_as(conn, claims, clear=_clear(spec))
        cols = sql.SQL(", ").join(map(ident, t.insert_columns))
        conn.execute(sql.SQL("insert into {t} ({c}) select {c} from jsonb_populate_record(null::{t}, %s)").format(
            t=qn(t.table), c=cols), (psycopg.types.json.Jsonb(row),))
        return "allowed"
    except (errors.UniqueViolation, errors.ExclusionViolation):
        # Postgres checks a new row against the insert policies before its constraints and before the row meets an
        # index, so a copy refused by its unique key got past the policies: the answer to what the probe asks. (A
        # table without a single-column key is copied whole, its key included.)
        return "allowed"
    except errors.InsufficientPrivilege as exc:
        return "refused" if "row-level security" in str(exc) else f"error {exc.sqlstate}"
    except psycopg.Error as exc:
        return f"error {exc.sqlstate}"
    finally:
        conn.execute("rollback to savepoint pgc_write")


def capture(conn, spec: Spec, targets_: list[Target], identities: list[Identity], *, legacy: bool,
            canonical: bool, writes: bool = True, others: dict[str, list[str]] | None = None,
            stop: Callable[[], None] | None = None, progress: Callable[[int, int], None] | None = None) -> Capture:
    """Run inside an open transaction; leaves it as it found it (savepoints only).

    OTHERS is the random sample of rows to check for every identity; taken here when not given,
    so a later capture on the same snapshot can reuse the earlier one's. STOP() is called between
    identities, tokens and write probes, where it may raise to end the capture (a signal: see
    execution/interrupt.py); the transaction is then left as it was, as after any error. PROGRESS(done, total)
    is told after each identity whose tokens were compared.
    """
    stop = stop or (lambda: None)
    if writes:
        targets_ = [_live_columns(conn, t) for t in targets_]
    cap = Capture(others=others if others is not None else {str(t.table): random_rows(conn, t) for t in targets_},
                  insert_only={str(t.table) for t in targets_ if not t.readable})
    # Anonymous callers: checked on the shared random sample (a full scan per table would evaluate
    # every policy on every row, which on a large database takes minutes and proves no more).
    cap.seen["anon"] = {str(t.table): _visible(conn, spec, t, None, cap.others[str(t.table)]) for t in targets_}
    total = sum((len(i.legacy) if legacy else 0) + (1 if canonical else 0) for i in identities)
    for done, ident_ in enumerate(identities, 1):
        stop()
        among = candidates(conn, spec, targets_, ident_, cap.others, cap.parties, cap.owned, cap.owner_known)
        tokens: list[tuple[str, dict]] = []
        if legacy:
            tokens += [(f"L:{lid}", _legacy_token(spec, ident_, i)) for i, lid in enumerate(ident_.legacy)]
        if canonical:
            tokens.append((f"C:{ident_.canonical}", _canonical_token(spec, ident_)))
        for name, claims in tokens:
            stop()
            cap.seen[name] = _visible_timed(conn, spec, targets_, claims, among, cap, first=len(cap.seen) == 1,
                                            tokens=total)
        if progress is not None:
            progress(done, len(identities))
    for t in targets_:
        table = str(t.table)
        if table in cap.scan_bound:  # a whole-table read per token: left out, as for the tokens it skips
            continue
        among = {k for keys in cap.owned.get(table, {}).values() for k in keys} | set(cap.others.get(table, ()))
        if among:
            stop()
            cap.shared[table] = set(_visible(conn, spec, t, _stranger_token(spec), sorted(among)))
    if writes and identities:
        # Per table, up to WRITE_OWNERS identities with a row there to copy: each tries to insert a copy of its own
        # row, and (with a second identity in the sample) the next identity tries to insert the same row. One
        # identity alone still probes its own writes, which is what new code's inserts need.
        for t in targets_:
            probed = 0
            for i, owner in enumerate(identities):
                if probed >= WRITE_OWNERS:
                    break
                other = identities[(i + 1) % len(identities)] if len(identities) > 1 else None
                keys = _model_rows(cap, t, owner)
                if not keys:
                    continue  # it owns no row there to copy: no probe, and no refusal (write_owners_by_table)
                probed += 1
                row = _row(conn, t, keys[0])
                if row is None:
                    continue
                row = _owned_by(row, t, owner)
                for writer in (owner, other):
                    if writer is None:
                        continue
                    if writer is other and keys[0] in cap.owned.get(str(t.table), {}).get(other.canonical, ()):
                        # the other identity is a party to that row too (a child of a transfer between the two):
                        # its insert tells nothing about another's rows
                        continue
                    stop()
                    base = f"{writer.canonical}|{owner.canonical}|{t.table}"
                    # As the code that holds each token writes: old code the legacy column alone, new code the new
                    # one alone; the sync trigger fills the other (a disabled one leaves the policy a NULL to judge).
                    # A merged owner's row is copied whole: the sync trigger would ask the legacy helper which of its
                    # legacy rows is meant, a call the runtime gate would count as old code's.
                    merged = len(owner.legacy) > 1
                    if legacy:
                        cap.writes[f"{base}|L"] = _write(conn, spec, t, _legacy_token(spec, writer, 0),
                                                         row if merged else _without(row, t, new=True))
                    if canonical:
                        cap.writes[f"{base}|C"] = _write(conn, spec, t, _canonical_token(spec, writer),
                                                         row if merged else _without(row, t, new=False))
    return cap


def _model_rows(cap: Capture, t: Target, owner: Identity) -> list[str]:
    """The rows of T whose copy OWNER's write probes insert: rows OWNER owns (Capture.owned), read as the migration
    role, never merely rows its tokens see: on a table other policies share (public rows, a `using (true)` read) the
    first row a token sees is often another's, whose copy the policies rightly refuse. A merged person's rows only
    where its first legacy token sees them (another of its rows may name another of its legacy ids, which that token
    may not write). A table whose owners cannot be told (owner_unknown): the rows the owner's first token sees."""
    table = str(t.table)
    first = f"L:{owner.legacy[0]}" if owner.legacy else f"C:{owner.canonical}"
    seen = cap.seen.get(first, cap.seen.get(f"C:{owner.canonical}", {})).get(table)
    if table not in cap.owner_known:
        return list(seen or ())
    mine = sorted(cap.owned.get(table, {}).get(owner.canonical, ()))
    if len(owner.legacy) > 1:
        return [k for k in mine if k in set(seen or ())]
    return mine


def _row(conn, t: Target, key: str) -> dict | None:
    """T's row KEY names (a key value, a ctid, or a partition's name and a ctid there) as jsonb; None if it is gone.

    A table without a single-column key is named by its rows' ctids, read in this transaction's snapshot, so a
    ctid it saw still names the same row; a partitioned one by the partition and the ctid there, fetched by ctid
    (a TID scan of each partition) and kept for the partition named."""
    if t.key == ROWID:
        part, tid = key.rsplit(" ", 1)
        q = sql.SQL("select to_jsonb(x) from {t} x where x.ctid = %s::tid and x.tableoid = %s::regclass").format(
            t=qn(t.table))
        args: tuple = (tid, part)
    else:
        q = sql.SQL("select to_jsonb(x) from {t} x where {k} = %s::{ty}").format(
            t=qn(t.table), k=_key(t), ty=sql.SQL(t.key_type))
        args = (key,)
    got = conn.execute(q, args).fetchone()
    return got[0] if got else None


def _live_columns(conn, t: Target) -> Target:
    """T with the insert columns the table has now: after contract its legacy columns are gone, and a write probe
    naming one would fail on the column, never reaching the policy."""
    have = {r[0] for r in conn.execute("select attname from pg_catalog.pg_attribute where attrelid = %s::regclass "
                                       "and attnum > 0 and not attisdropped", (text(qn(t.table)),))}
    cols = tuple(c for c in t.insert_columns if c in have)
    return t if cols == t.insert_columns else replace(t, insert_columns=cols)


def _visible_timed(conn, spec: Spec, targets_: list[Target], claims: dict, among: dict[str, list[str] | None],
                   cap: Capture, *, first: bool, tokens: int = 1) -> dict[str, list[str]]:
    """_visible_all, timing each table on the first of TOKENS; scan-bound tables only while their budget lasts."""
    if first:
        out = {}
        for t in targets_:
            t0 = time.monotonic()
            out.update(_visible_all(conn, spec, [t], claims, among))
            took = time.monotonic() - t0
            if took > SCAN_BOUND_S or (took > SCAN_SLOW_S and took * tokens > SCAN_BUDGET_S):
                cap.scan_bound[str(t.table)] = {"first_token_s": round(took, 2), "spent_s": took,
                                                "tokens_checked": 1}
        return out
    fast = [t for t in targets_ if str(t.table) not in cap.scan_bound]
    out = _visible_all(conn, spec, fast, claims, among)
    for t in targets_:
        info = cap.scan_bound.get(str(t.table))
        # Another token only if it fits the budget at the cost of the first: a table whose one read takes longer
        # than the budget is checked for the first token alone, not for a second that would overshoot by as much.
        if info is None or info["spent_s"] + info["first_token_s"] > SCAN_BUDGET_S:
            continue
        t0 = time.monotonic()
        out.update(_visible_all(conn, spec, [t], claims, among))
        info["spent_s"] += time.monotonic() - t0
        info["tokens_checked"] += 1
    return out


def rows_seen(cap: Capture) -> int:
    """Distinct rows the identities' tokens saw (the anonymous caller aside); 0: nothing was compared."""
    return len({(t, k) for token, tables in cap.seen.items() if token != "anon"
                for t, keys in tables.items() for k in keys})


def rows_by_table(cap: Capture) -> dict[str, int]:
    """Distinct rows of each table the identities' tokens saw (the anonymous caller aside): rows compared there."""
    out: dict[str, set] = {}
    for token, tables in cap.seen.items():
        if token != "anon":
            for t, keys in tables.items():
                out.setdefault(t, set()).update(keys)
    return {t: len(k) for t, k in out.items()}


def scan_bound_summary(*caps: Capture) -> dict[str, dict]:
    """Per scan-bound table: seconds for the first token, and tokens checked out of those captured."""
    out: dict[str, dict] = {}
    for i, cap in enumerate(caps):
        tokens = len(cap.seen) - 1  # without the anonymous caller
        for table, info in cap.scan_bound.items():
            out[f"{table}" if i == 0 else f"{table} (after)"] = {
                "first_token_s": info["first_token_s"], "tokens_checked": info["tokens_checked"], "tokens": tokens}
    return out


def compare(before: Capture, after: Capture, identities: list[Identity], shared: dict[str, int] | None = None
            ) -> list[str]:
    """Every difference between what each identity saw before (legacy tokens) and after (both tokens); any row
    an identity sees but does not own, outside the tables SHARED by design (shared_by_design of BEFORE); and rows an
    anonymous caller sees, none or, on a table it read before, the same."""
    problems = anonymous(after, public_by_design(before), before)
    for ident_ in identities:
        tables = after.seen.get(f"C:{ident_.canonical}", {}).keys() or before.seen.get(
            f"L:{ident_.legacy[0]}", {}).keys()
        for table in tables:
            seen_before = [before.seen[f"L:{lid}"].get(table) for lid in ident_.legacy]
            if any(x is None for x in seen_before):
                continue  # a scan-bound table not checked for this identity (see Capture.scan_bound)
            expected = sorted(set().union(*seen_before))
            for token in [f"L:{lid}" for lid in ident_.legacy] + [f"C:{ident_.canonical}"]:
                got = after.seen.get(token, {}).get(table)
                if got is not None and got != expected:
                    missing, extra = set(expected) - set(got), set(got) - set(expected)
                    problems.append(f"{token} on {table}: {len(missing)} rows no longer visible "
                                    f"{sorted(missing)[:3]}, {len(extra)} newly visible {sorted(extra)[:3]}")
    for key, outcome in after.writes.items():
        base, kind = key.rsplit("|", 1)
        ref = before.writes.get(f"{base}|L")  # what the writer's legacy token could do before
        if ref is not None and ref != outcome and not (inconclusive(ref) or inconclusive(outcome)):
            writer, owner, table = base.split("|")
            token = "legacy" if kind == "L" else "canonical"
            problems.append(f"{writer} ({token} token) inserting a row of {owner} into {table}: "
                            f"{ref} before, {outcome} after")
    return problems + isolation(after, identities, shared)


def write_probes_by_table(*caps: Capture) -> dict[str, int]:
    """Write probes per table (keys of Capture.writes: writer|owner|table|token), over CAPS together."""
    out: dict[str, int] = {}
    for cap in caps:
        for key in cap.writes:
            table = key.split("|")[2]
            out[table] = out.get(table, 0) + 1
    return out


def own_inserts(cap: Capture, token: str = "C") -> dict[str, bool]:
    """Per table with an own-row probe of TOKEN (C: canonical, L: legacy): whether some owner was allowed to insert
    a copy of a row of its own there."""
    out: dict[str, bool] = {}
    for key, outcome in cap.writes.items():
        writer, owner, table, kind = key.split("|")
        # a table whose owners cannot be told copies a row its owner's token sees, maybe another's: no own row
        if writer == owner and kind == token and table in cap.owner_known and not inconclusive(outcome):
            out[table] = out.get(table, False) or outcome == "allowed"
    return out


def write_owners_by_table(*caps: Capture) -> dict[str, int]:
    """Per table, the sampled owners whose own-row write probe ran (a copy of a row each owns, Capture.owned), over
    CAPS together; an identity that owns no row of a table is not probed there, and is no refusal."""
    out: dict[str, set] = {}
    for cap in caps:
        for key in cap.writes:
            writer, owner, table, _ = key.split("|")
            if writer == owner and table in cap.owner_known:
                out.setdefault(table, set()).add(owner)
    return {t: len(o) for t, o in out.items()}


def insertable(spec: Spec, cat: Catalog, tables: list[QualifiedName]) -> set[str]:
    """TABLES a permissive policy lets signed-in callers insert into (INSERT or ALL): their owners are meant to
    write rows of their own there. Read from the definitions, where no switch recorded what owners could insert."""
    wanted = {str(t) for t in tables}
    return {str(p.table) for p in cat.policies if str(p.table) in wanted and p.permissive
            and p.command in ("ALL", "INSERT") and (not p.roles or {"authenticated", "public"} & set(p.roles))}


def own_inserts_refused(cap: Capture, expected: set[str]) -> list[str]:
    """After contract: a table in EXPECTED (owners could insert their own rows there at the switch, or its policies
    allow inserts) where every sampled owner's canonical token is refused inserting a row of its own."""
    out = []
    for table, allowed in sorted(own_inserts(cap, "C").items()):
        if table in expected and not allowed:
            n = sum(1 for k, o in cap.writes.items() if k.endswith(f"|{table}|C") and k.split("|")[0] ==
                    k.split("|")[1] and o == "refused")
            if n:
                out.append(f"no sampled owner may insert a row of its own into {table} with its canonical token ({n} "
                           "refused), although owners could insert their own rows there: new code cannot write it")
    probed = write_owners_by_table(cap)
    for table in sorted(expected):
        # sampled identities own rows there, and not one of them had a row its write probe could copy
        if cap.owned.get(table) and table in cap.owner_known and not probed.get(table):
            out.append(f"proves nothing about new code's inserts into {table}: {len(cap.owned[table])} sampled "
                       "identities own rows there and none of their own rows could be copied by a write probe "
                       "(0 owners probed): raise --sample (0 = every identity)")
    return out


def unsampled(conn, spec: Spec, cat: Catalog, targets_: list[Target], cap: Capture, identities: list[Identity],
              contracted: bool) -> list[str]:
    """A checked table that has rows with owners, none of them a sampled identity (Capture.owned): the check saw
    nothing of any owner's there, so it proves nothing about that table. (A table whose policy scans a table per
    caller may have sampled owners it was not checked for: the verdict says how many tokens it was checked for.)"""
    bare = [t for t in targets_ if not cap.owned.get(str(t.table))]
    return [f"proves nothing about {t}: rows there have owners and none of the {len(identities)} sampled identities "
            "is one of them (its owners' view was not checked): raise --sample (0 = every identity)"
            for t in owned_tables(conn, spec, cat, bare, contracted)] if bare else []


def nothing_owned(tables: list[str], identities: int) -> str:
    """The verdict of a check that compared nothing: no row of the checked tables has an owner."""
    return (f"proves nothing: no row of {', '.join(tables) or 'the checked tables'} has an owner (the tables are "
            f"empty, or their rows name no legacy row; {identities} sampled identities), so no identity's rows "
            "were compared: check again once the tables hold rows of their owners")


NO_HELPER = "not applicable: no RLS identity helper (legacy.helper = \"\")"


def without_helper(conn, spec: Spec, cat: Catalog) -> tuple[dict, list[str]]:
    """The RLS check where the database has no RLS identity helper (legacy.helper = ""): no token identifies anyone,
    and the switch rewrites no policy, so there is nothing to compare. What it looks at instead, live: every policy on
    the migrated tables (legacy, canonical, dependents) and any other that reads the legacy table or a legacy column.
    (summary, problems): a policy in force that reads the legacy side is a problem (contract would leave it reading
    what it drops); otherwise the summary says plainly that the check is not applicable, and why."""
    names = list(dict.fromkeys((cat.legacy.name, cat.canonical.name, *(d.table.name for d in cat.dependents))))
    tables = [str(t) for t in names]
    refs = [(text(qn(d.table.name)), d.fk.columns[0]) for d in cat.dependents]
    rows = conn.execute(
        "with reads as (select d.objid from pg_catalog.pg_depend d "
        "  where d.classid = 'pg_catalog.pg_policy'::regclass and d.refclassid = 'pg_catalog.pg_class'::regclass "
        "  and (d.refobjid = pg_catalog.to_regclass(%(legacy)s) or (d.refobjid, d.refobjsubid) in ("
        "    select a.attrelid, a.attnum::int from unnest(%(t)s::text[], %(c)s::text[]) x(t, c) "
        "    join pg_catalog.pg_attribute a on a.attrelid = pg_catalog.to_regclass(x.t) and a.attname = x.c))) "
        "select n.nspname, c.relname, p.polname, c.relrowsecurity, p.oid in (select objid from reads), "
        "p.polrelid = pg_catalog.to_regclass(%(legacy)s) "
        "from pg_catalog.pg_policy p join pg_catalog.pg_class c on c.oid = p.polrelid "
        "join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
        "where p.polrelid in (select pg_catalog.to_regclass(t) from pg_catalog.unnest(%(tables)s::text[]) t) "
        "or p.oid in (select objid from reads) order by 1, 2, 3",
        {"legacy": text(qn(cat.legacy.name)), "t": [t for t, _ in refs], "c": [c for _, c in refs],
         "tables": [text(qn(t)) for t in names]}).fetchall()
    # A policy of the legacy table itself goes with it into the archive: one in force still needs the helper.
    policies = [{"policy": f"{QualifiedName(ns, rel)}.{name}", "rls_enabled": on, "reads_legacy": reads,
                 "problem": reads and (on or not own)} for ns, rel, name, on, reads, own in rows]
    problems = [f"policy {p['policy']} reads {cat.legacy.name} or a legacy column"
                + (" (row level security is off on its table, but the policy depends on them)" if not p["rls_enabled"]
                   else "") + ", but legacy.helper = \"\" says the database has no RLS identity helper: nothing "
                "rewrites it, and contract would leave it reading what it drops"
                for p in policies if p.pop("problem")]
    if not policies:
        verdict = f"{NO_HELPER} and no policy on the migrated tables"
    else:
        verdict = (f"{NO_HELPER} and no policy on the migrated tables that reads the legacy table or a legacy column "
                   f"is in force ({len(policies)} polic{'y' if len(policies) == 1 else 'ies'} there: "
                   + ", ".join(p["policy"] + (" (reads the legacy table, archived with it; row level security off)"
                                              if p["reads_legacy"] else "") for p in policies) + ")")
    return {"not_applicable": "" if problems else verdict, "identities": 0, "tables": tables,
            "policies": policies, "legacy_helper": None}, problems


def rls_disabled(conn, tables: list[str]) -> list[str]:
    """TABLES whose row level security is disabled (relrowsecurity off): their policies are not applied at all."""
    from pgconverge.config import parse_qualified

    if not tables:
        return []
    off = {r[0] for r in conn.execute(
        "select t from unnest(%s::text[]) t where not (select c.relrowsecurity from pg_catalog.pg_class c "
        "where c.oid = pg_catalog.to_regclass(t))", ([text(qn(parse_qualified(t))) for t in tables],)).fetchall()}
    return sorted(t for t in tables if text(qn(parse_qualified(t))) in off)


def design_notes(shared: dict[str, int], public: dict[str, int], disabled: list[str],
                 anon_now: dict[str, int] | None = None) -> list[str]:
    """How a verdict names the tables it could not hold to isolation: those whose row level security is disabled
    (their policies inert, every caller reads every row), those shared by the application's own policies, and
    those anonymous callers read, or may read by a policy's definition. ANON_NOW: the rows anonymous callers read
    on each table in this check, where it counted them (a table a policy opens only by its definition is said to be
    read by them only where they did)."""
    out = [f"{t}: row level security is disabled on it, so its policies do not apply and every caller, anonymous "
           "ones too, reads every row" + (" (old and new tokens compared, isolation not checked there)" if t in shared
                                          else "") + f"; if that is not meant: ALTER TABLE {t} ENABLE ROW LEVEL "
           "SECURITY" for t in disabled]
    out += shared_notes({t: n for t, n in shared.items() if t not in disabled})
    for t, n in sorted(public.items()):
        if t not in disabled:
            now = (anon_now or {}).get(t, 0)
            if n or now:
                what = f"{n} rows, read before the switch" if n else f"{now} rows, read now"
                out.append(f"{t}: anonymous callers read its rows ({what}), as the application's own original "
                           "policies let them (not held to none there)")
            else:
                out.append(f"{t}: a policy of the application's own on it, for every role or for anon, reads no "
                           "identity, so anonymous callers are not held to reading none of its rows there" + (
                               " (they read none of them now)" if t in (anon_now or {}) else ""))
    return out


def inconclusive(outcome: str) -> bool:
    """A write probe the snapshot could not answer: its foreign key check met a row the application changed or
    deleted after the snapshot (a serialization failure, class 40), which says nothing about the policies."""
    return outcome.startswith("error 40")


def inconclusive_writes(*caps: Capture) -> int:
    """Write probes of CAPS that ended in such a failure: not compared, and counted in the check's coverage."""
    return sum(inconclusive(o) for cap in caps for o in cap.writes.values())


def _without(row: dict, t: Target, *, new: bool) -> dict:
    """ROW without its new ids (NEW) or its legacy ids, where it has both: the row old code, or new code, writes."""
    pairs = [(l, n) for l, n, _, _ in t.owner_pairs if l in row and n in row]
    return {k: (None if any(k == (n if new else l) for l, n in pairs) else v) for k, v in row.items()}


def _owned_by(row: dict, t: Target, owner: Identity) -> dict:
    """ROW with every reference naming OWNER, where the table has several (a transfer from OWNER to OWNER): the
    write probes then ask what they ask of a one-owner table, whether a row of OWNER may be written by whom."""
    pairs = t.owner_pairs
    if len(pairs) < 2:
        return row
    mine = next(((l, n) for l, n, _, _ in pairs if n in row and str(row[n]) == owner.canonical), None) or next(
        ((l, n) for l, n, _, _ in pairs if row.get(l) is not None and str(row[l]) in owner.legacy), None)
    if mine is None:
        return row
    out = dict(row)
    for l, n, _, _ in pairs:
        for col, src in ((l, mine[0]), (n, mine[1])):
            if col in row and src in row:
                out[col] = row[src]
    return out


def _leaks(cap: Capture, identities: list[Identity]):
    """(table, problem) for every row visible to two different identities, unless it names both (a table with several
    references); and, where the rows' owners are known (Capture.owner_known), for every row a token sees that its
    identity does not own: the shared random sample shows a row another identity owns, sampled or not (with one
    identity sampled, the only way a leak shows)."""
    for table, _, _, problem in _sightings(cap, identities):
        yield table, problem


def _sightings(cap: Capture, identities: list[Identity]):
    """_leaks as (table, the identities that see the row (canonical ids), the row's key, problem)."""
    owner: dict[tuple[str, str], str] = {}
    for ident_ in identities:
        tokens = [f"L:{lid}" for lid in ident_.legacy] + [f"C:{ident_.canonical}"]
        for token in tokens:
            for table, keys in cap.seen.get(token, {}).items():
                mine = set(cap.owned.get(table, {}).get(ident_.canonical, ())) if table in cap.owner_known else None
                for k in keys:
                    if mine is not None and k not in mine:
                        yield table, (ident_.canonical,), k, (
                            f"{table} row {k} is visible to {ident_.canonical} ({token}), which does not own it")
                        continue
                    prev = owner.setdefault((table, k), ident_.canonical)
                    named = cap.parties.get(table, {}).get(k, ())
                    if prev != ident_.canonical and not (prev in named and ident_.canonical in named):
                        yield table, (prev, ident_.canonical), k, (
                            f"{table} row {k} is visible to {prev} and to {ident_.canonical}")


def isolation(cap: Capture, identities: list[Identity], shared: dict[str, int] | None = None,
              design: set[tuple[str, str, str]] | None = None) -> list[str]:
    """No identity sees another's rows (_leaks), except in the tables SHARED by the application's own design and the
    rows of DESIGN, (table, canonical id, key): rows the application's own original policies show that identity
    (own_policies_design)."""
    design = design or set()
    return [p for t, who, k, p in _sightings(cap, identities)
            if t not in (shared or {}) and not all((t, i, k) in design for i in who)][:50]


def own_policies_design(conn, spec: Spec, cat: Catalog, targets_: list[Target], cap: Capture,
                        identities: list[Identity], *, live_are_original: bool
                        ) -> tuple[dict[str, int], set[tuple[str, str, str]], list[str]]:
    """Which of the rows the identities see and do not own (_sightings) the application's own original policies show
    them: those are its design (a team's members see each other's memberships), not a leak; a row only the policies
    in force show is one. Run inside CAPTURE's transaction, on its snapshot. (counts per table, {(table, canonical
    id, key)} shown by the original policies, notes).

    LIVE_ARE_ORIGINAL (before the switch): the policies in force are the application's own, which pgconverge has not
    rewritten, so every such row is its design. After the switch, each identity's legacy tokens ask CAT's policies
    (the definitions as the switch began) about the rows it sees: their USING, as the query's own condition, on top
    of the policies in force, with the functions of CAT (those reading the legacy side) whose body was changed since
    put back as they were, in a savepoint rolled back at once (nothing is committed, and no table is locked). A view
    changed since is read as it is now."""
    seen: dict[tuple[str, str], set[str]] = {}
    for table, who, k, _ in _sightings(cap, identities):
        for i in who:
            seen.setdefault((table, i), set()).add(k)
    design: set[tuple[str, str, str]] = set()
    notes: list[str] = []
    if live_are_original:
        design = {(t, i, k) for (t, i), keys in seen.items() for k in keys}
    elif seen:
        by_table = {str(t.table): t for t in targets_}
        by_id = {i.canonical: i for i in identities}
        conn.execute("savepoint pgc_original")
        try:
            notes = _original_functions(conn, spec, cat)
            views = _original_views(conn, cat, notes)
            for (table, who), keys in sorted(seen.items()):
                t, ident_ = by_table.get(table), by_id.get(who)
                if t is None or ident_ is None or not ident_.legacy:
                    continue
                cond = _original_using(cat, t.table, views)
                shown: set[str] = set()
                for n in range(len(ident_.legacy)):
                    shown |= set(_visible_where(conn, spec, t, _legacy_token(spec, ident_, n), sorted(keys), cond))
                design |= {(table, who, k) for k in shown}
        finally:
            conn.execute("rollback to savepoint pgc_original")
    counts: dict[str, int] = {}
    for t, _, _ in design:
        counts[t] = counts.get(t, 0) + 1
    return counts, design, notes


def _original_using(cat: Catalog, table: QualifiedName, views: dict[QualifiedName, str] | None = None
                    ) -> sql.Composable:
    """The condition CAT's policies put on a signed-in caller's SELECT of TABLE: any permissive USING (SELECT or ALL,
    for authenticated or public), and every restrictive one; false where none lets it read. VIEWS: views changed
    since, read instead as the temporary copies of their definitions there named (_original_views)."""
    ps = [p for p in cat.policies if p.table == table and p.command in ("ALL", "SELECT") and p.using is not None
          and (not p.roles or {"authenticated", "public"} & set(p.roles))]

    def text_(using: str) -> sql.SQL:
        # the text goes into a query with parameters: a % of its own (`id % 4 = 0`) is doubled
        return sql.SQL(_reading_views(using, views or {}).replace("%", "%%"))

    permissive = [sql.SQL("coalesce(({}), false)").format(text_(p.using)) for p in ps if p.permissive]
    restrictive = [sql.SQL("coalesce(({}), false)").format(text_(p.using)) for p in ps if not p.permissive]
    if not permissive:
        return sql.SQL("false")
    return sql.SQL(" and ").join([sql.SQL("({})").format(sql.SQL(" or ").join(permissive)), *restrictive])


def _original_functions(conn, spec: Spec, cat: Catalog) -> list[str]:
    """Put back, in the open savepoint, the functions of CAT (those reading the legacy side, as the switch began)
    whose definition changed since (a hand rewrite of a membership helper), the helpers aside (the switch bridges the
    legacy one itself). Notes naming those that could not be."""
    helpers = {h for h in (spec.legacy.helper, spec.canonical.helper) if h is not None}
    notes = []
    for fn in cat.functions:
        if fn.name in helpers or not fn.definition:
            continue
        now = conn.execute("select pg_catalog.pg_get_functiondef(p.oid) from pg_catalog.pg_proc p "
                           "where p.oid = pg_catalog.to_regprocedure(%s)", (fn.signature,)).fetchone()
        if now is not None and now[0] == fn.definition:
            continue
        conn.execute("savepoint pgc_function")
        try:
            conn.execute(fn.definition)
        except psycopg.Error as exc:
            conn.execute("rollback to savepoint pgc_function")
            notes.append(f"{fn.signature}: its definition as the switch began could not be put back to ask the "
                         f"original policies ({str(exc).strip()}): the rows they show through it are judged by its "
                         "body now")
    return notes


def _reading_views(using: str, views: dict[QualifiedName, str]) -> str:
    """USING with each view of VIEWS it reads replaced by the temporary copy named there (kept under its own name
    as the alias, so the columns it qualifies still resolve)."""
    if not views:
        return using
    from pgconverge.planning.rls_ast import deparse, parse_expression

    try:
        tree = parse_expression(using)
    except Exception:  # noqa: BLE001 - not parsed: read as written
        return using
    changed = False
    for node in walk(tree):
        if isinstance(node, ast.RangeVar):
            name = QualifiedName(node.schemaname or "public", node.relname)
            if name in views:
                if node.alias is None:
                    node.alias = ast.Alias(aliasname=node.relname)
                node.schemaname, node.relname, changed = "pg_temp", views[name], True
    return deparse(tree) if changed else using


def _original_views(conn, cat: Catalog, notes: list[str]) -> dict[QualifiedName, str]:
    """Temporary copies, in the open savepoint, of CAT's views (those reading the legacy side, as the switch began)
    whose definition changed since (a hand rewrite): {view: its copy's name}. Nothing of the application's is locked
    or changed; NOTES names a view whose copy could not be made."""
    out: dict[QualifiedName, str] = {}
    for i, v in enumerate(cat.views):
        if v.kind != "view":
            continue
        now = conn.execute("select pg_catalog.pg_get_viewdef(pg_catalog.to_regclass(%s))",
                           (text(qn(v.name)),)).fetchone()
        if now is not None and now[0] == v.definition:
            continue
        copy = f"pgc_original_view_{i}"
        conn.execute("savepoint pgc_view")
        try:
            conn.execute(sql.SQL("create temporary view {} as {}").format(
                ident(copy), sql.SQL(v.definition.strip().rstrip(";"))))
            conn.execute(sql.SQL("grant select on {} to public").format(ident(copy)))
        except psycopg.Error as exc:
            conn.execute("rollback to savepoint pgc_view")
            notes.append(f"{v.name}: its definition as the switch began could not be read again to ask the original "
                         f"policies ({str(exc).strip()}): the rows they show through it are judged by the view now")
            continue
        out[v.name] = copy
    return out


def _visible_where(conn, spec: Spec, t: Target, claims: dict, among: list[str], cond: sql.Composable) -> list[str]:
    """Keys among AMONG of T's rows the caller sees that also meet COND (read as the caller, the policies in force
    applying too)."""
    conn.execute("savepoint pgc_rls")
    try:
        act_as(conn, claims, clear=_clear(spec))
        rows = conn.execute(sql.SQL("select {k}::text from {t} where {k} = any(%s::{ty}[]) and ({c})").format(
            k=_key(t), t=qn(t.table), ty=sql.SQL(t.key_type), c=cond), (among,)).fetchall()
    except psycopg.Error:
        rows = []  # the original condition cannot be asked any more (it reads what is gone): not shown
    finally:
        conn.execute("rollback to savepoint pgc_rls")
    return [r[0] for r in rows]


def shared_by_design(cap: Capture, identities: list[Identity]) -> dict[str, int]:
    """Tables where identities see rows they do not own under the application's original policies, read before
    pgconverge changed any (a chat whose messages every signed-in user reads): {table: such sightings}. The
    migration keeps them so; there the check compares old tokens with new ones, and cannot check isolation."""
    out: dict[str, int] = {}
    for table, _ in _leaks(cap, identities):
        out[table] = out.get(table, 0) + 1
    return out


def public_by_design(cap: Capture) -> dict[str, int]:
    """Tables whose rows an anonymous caller reads under the application's original policies (a catalogue, reviews
    anyone may read): {table: rows seen}, read before pgconverge changed any."""
    return {t: len(rows) for t, rows in cap.seen.get("anon", {}).items() if rows}


def anonymous(cap: Capture, public: dict[str, int] | None = None, before: Capture | None = None) -> list[str]:
    """Rows an anonymous caller sees: none, outside the tables PUBLIC by design; there, with BEFORE (the switch's
    capture under the original policies), exactly the rows it saw then."""
    out = []
    for k, v in cap.seen.get("anon", {}).items():
        if k in (public or {}):
            was = before.seen.get("anon", {}).get(k) if before is not None else None
            if was is not None and sorted(was) != sorted(v):
                out.append(f"anonymous caller sees {len(v)} rows of {k}, {len(was)} under the original policies")
        elif v:
            out.append(f"anonymous caller sees {len(v)} rows of {k}")
    return out


_IDENTITY = re.compile(r"auth\.uid\s*\(|'sub'|request\.jwt\.claim\.sub")


def shared_by_policy(spec: Spec, cat: Catalog, tables: list[QualifiedName],
                     roles: tuple[str, ...] = ("authenticated", "public"), functions: bool = True) -> set[str]:
    """TABLES (of the switch's RLS check) that a permissive policy lets ROLES read whatever the caller's
    identity: its USING reads neither helper, auth.uid(), the `sub` claim nor the identity claims (`true`,
    `auth.role() = 'authenticated'`). Read from the definitions, for the emitted tests and `verify --rls` before the
    switch, where no capture under the original policies was taken first (shared_by_design reads the rows).
    FUNCTIONS=False: a policy that calls a function of the database's own (`team_id in (select my_teams())`) does not
    count, as that function may read the caller."""
    helpers = {f"{h}()" for h in (spec.legacy.helper, spec.canonical.helper) if h is not None}
    claims = {f"'{spec.legacy.claim}'", f"'{spec.canonical.claim}'"}
    wanted = {str(t) for t in tables}
    out = set()
    for p in cat.policies:
        if (str(p.table) in wanted and p.permissive and p.command in ("ALL", "SELECT") and p.using is not None
                and (set(roles) & set(p.roles) or not p.roles)
                and not helpers & set(p.function_refs) and (functions or not p.function_refs)
                and not _IDENTITY.search(p.using)
                and not any(c in p.using for c in claims)):
            out.add(str(p.table))
    return out


def recorded_design(spec: Spec, cat: Catalog, eq: dict | None) -> tuple[dict[str, int], dict[str, int]]:
    """(shared, public) by design once the switch has run: the tables the switch saw shared (shared_by_design) and
    read by anonymous callers (public_by_design) under the original policies, from EQ, its rls_equivalence snapshot;
    and the same, by the policies' definitions (shared_by_policy), for the tables of accepted policies.

    The switch's capture leaves those tables out (their policies are rewritten by hand after it), so it recorded no
    design for them, and every row there that another identity or an anonymous caller reads looked like a leak: a
    public bucket's files on storage.objects blocked contract for good. Their design is read from the definitions in
    CAT, the catalog saved as the switch began, i.e. the application's own policies, never the hand rewrites live now:
    a rewrite that opens such a table to others, or to anonymous callers, is judged against what the table was and
    still fails as a leak. The definitions show only a policy that reads no identity at all (`sharing <> 'private'`,
    `true`); one that mixes the owner test with sharing is not recognised, and its shared rows are called a leak, a
    refusal rather than a leak passed."""
    from pgconverge.planning.switch import accepted_tables

    eq = eq or {}
    shared, public = dict(eq.get("shared_by_design") or {}), dict(eq.get("public_by_design") or {})
    accepted = sorted(accepted_tables(spec, cat), key=str)
    if accepted:
        # A policy calling a function of the database's own is judged row by row (own_policies_design): the function
        # may read the caller (a team's membership helper), and a hand rewrite of it may open the table.
        for t in shared_by_policy(spec, cat, accepted, functions=False):
            shared.setdefault(t, 0)
        for t in shared_by_policy(spec, cat, accepted, ("anon", "public")):
            public.setdefault(t, 0)
    return shared, public


def shared_notes(shared: dict[str, int]) -> list[str]:
    """How a verdict names the tables shared by design: what was compared there, and what was not."""
    return [f"{t}: rows are visible to callers who do not own them under the application's own original "
            f"policies ({f'{n} sightings, read before the switch' if n else 'by their definitions'}): old and new "
            "tokens compared, isolation not checked there" for t, n in sorted(shared.items())]


def consistency(cap: Capture, identities: list[Identity], shared: dict[str, int] | None = None,
                public: dict[str, int] | None = None, design: set[tuple[str, str, str]] | None = None) -> list[str]:
    """After the switch, one snapshot: every token of an identity (old or new) sees the same rows."""
    problems = anonymous(cap, public)
    for ident_ in identities:
        tokens = [f"L:{lid}" for lid in ident_.legacy] + [f"C:{ident_.canonical}"]
        ref = cap.seen.get(tokens[-1])
        for token in tokens[:-1]:
            got = cap.seen.get(token)
            if ref is not None and got is not None and got != ref:
                diff = [t for t in ref if t in got and ref[t] != got[t]]
                if not diff:
                    continue
                problems.append(f"{token} and C:{ident_.canonical} see different rows in {', '.join(diff)}")
    # Old and new code write alike too: a writer's legacy and canonical tokens may insert the same rows.
    for key, old in cap.writes.items():
        base, kind = key.rsplit("|", 1)
        new = cap.writes.get(f"{base}|C")
        if kind == "L" and new is not None and new != old and not (inconclusive(old) or inconclusive(new)):
            writer, owner, table = base.split("|")
            problems.append(f"{writer} inserting a row of {owner} into {table}: {old} with the legacy token, "
                            f"{new} with the canonical one")
    return problems + isolation(cap, identities, shared, design)


def own_policies_notes(counts: dict[str, int], switched: bool) -> list[str]:
    """How a verdict names the rows own_policies_design found shown by the application's own policies."""
    when = "as they were when the switch began" if switched else "in force, which pgconverge has not rewritten"
    return [f"{t}: {n} sightings of rows by sampled identities that do not own them, each shown to that identity by "
            f"the application's own policies ({when}): shared by the application's own policies, not a leak"
            for t, n in sorted(counts.items())]


def contracted_sample(conn, spec: Spec, cat: Catalog, n: int) -> list[Identity]:
    """After contract there is no mapping: canonical ids that own rows of any dependent, picked by hash."""
    from pgconverge.planning.references import new_column

    if not cat.dependents:
        return []
    q = sql.SQL(" union ").join(sql.SQL("select {c}::text from {t} where {c} is not null").format(
        c=ident(new_column(spec, cat, d)), t=qn(d.table.name)) for d in cat.dependents)
    q = sql.SQL("select c from ({}) x(c) order by hashtext(c), c {}").format(
        q, sql.SQL("limit {}").format(sql.Literal(n)) if n else sql.SQL(""))
    return _contracted_identities(conn, spec, [r[0] for r in conn.execute(q).fetchall()])


def _contracted_identities(conn, spec: Spec, ids: list[str]) -> list[Identity]:
    """The identities of canonical IDS after contract, their tokens as the canonical helper reads them."""
    # The token as the canonical helper reads it: its claim at the same path; a helper that looks the caller up
    # by auth.uid() gets the auth user of each id, read back through its own lookup.
    path = claim_path(conn, spec, spec.canonical.helper, spec.canonical.claim)
    back = reverse_lookup(conn, spec.canonical.helper)
    if back is None and returns_uid(conn, spec.canonical.helper):  # the canonical key is the auth user itself
        return [Identity(i, (), (i,), path) for i in ids]
    if back is None:
        return [Identity(i, (), None, path) for i in ids]
    table, target, subject = back
    subs = dict(conn.execute(sql.SQL(
        "select x.{t}::text, min(x.{s}::text) from {tab} x where x.{t}::text = any(%s) group by 1").format(
            t=ident(target), s=ident(subject), tab=qn(table)), (ids,)).fetchall())
    return [Identity(i, (), (subs.get(i),), path) for i in ids]


def owned_rows_exist(conn, spec: Spec, cat: Catalog, targets_: list, contracted: bool) -> bool:
    """Whether any row of the checked tables names an owner: then someone's rows were there to be seen."""
    from pgconverge.planning.references import new_column

    checked = {str(t.table) for t in targets_}
    return any(conn.execute(sql.SQL("select exists (select from {} where {} is not null)").format(
        qn(d.table.name), ident(new_column(spec, cat, d) if contracted else d.fk.columns[0]))).fetchone()[0]
        for d in cat.dependents if str(d.table.name) in checked)


def blind(conn, spec: Spec, cat: Catalog, targets_: list, identities: list[Identity], cap: Capture,
          contracted: bool) -> list[str]:
    """Why the check proves nothing (empty when it looked): the sampled owners hardly saw their own rows (tokens
    missing a claim the policies read), or no sampled identity owns a row although rows have owners; and, table by
    table, a compared table where not one of its sampled owners saw its own rows (hidden_from_owners)."""
    covered = coverage(conn, spec, cat, identities, cap, contracted)
    token = "canonical" if contracted else "old"
    per_table, _ = hidden_from_owners(spec, table_coverage(cap, identities), "any")
    if covered["owning"] and covered["share"] < MIN_COVERAGE:
        return per_table + [
                f"proves nothing: of {covered['owning']} sampled identities that own rows, {covered['seeing_own']} "
                f"saw any of them with a{'n' if token == 'old' else ''} {token} token; the policies and helpers read "
                f"the claims {', '.join(claims_read(conn, cat)) or '(none found)'}: give migration.token_claims the "
                "claims the application's tokens carry"]
    if not covered["owning"]:
        if owned_rows_exist(conn, spec, cat, targets_, contracted):
            return [f"proves nothing: none of the {len(identities)} sampled identities owns a row of these tables, "
                    "although rows have owners: raise --sample (0 = every identity)"]
        if not owned_tables(conn, spec, cat, targets_, contracted):  # empty tables, or rows that name no one
            return [nothing_owned([str(t.table) for t in targets_], len(identities))]
    return per_table + unsampled(conn, spec, cat, targets_, cap, identities, contracted)


def check_now(conn, spec: Spec, cat: Catalog, tables: list[QualifiedName], switched: bool, sample_size: int,
              contracted: bool = False, progress: Callable[[int, int], None] | None = None) -> tuple[dict, list[str]]:
    """verify --rls: isolation (and, once switched, old/new token agreement) on one consistent snapshot."""
    with conn.transaction():
        conn.execute("set transaction isolation level repeatable read")
        targets_ = targets(spec, cat, tables)
        identities = sample_covering(conn, spec, cat, targets_, sample_size, contracted)
        cap = capture(conn, spec, targets_, identities, legacy=not contracted, canonical=switched, progress=progress)
        proves_nothing = blind(conn, spec, cat, targets_, identities, cap, contracted)
        disabled = rls_disabled(conn, [str(t) for t in tables])
        # Rows an identity sees and does not own that the application's own policies show it (before the switch the
        # ones in force; after it the definitions as the switch began): its design, not a leak. After contract the
        # original policies read what is gone: the tables recorded as shared stand in (recorded_design).
        own, design, own_notes = own_policies_design(conn, spec, cat, targets_, cap, identities,
                                                     live_are_original=not switched) \
            if not contracted else ({}, set(), [])
    by_table = table_coverage(cap, identities)
    # Tables the application shares by design, as the switch read them under the original policies before its
    # rewrite (none recorded, as from emitted files: every table is held to isolation), and for the tables of accepted
    # policies by the original definitions (recorded_design). Before the switch, by the
    # policies' definitions: what the rows show now is what is being judged.
    eq: dict = {}
    if switched or contracted:
        from pgconverge.ledger.store import Ledger

        ledger = Ledger(conn, spec)
        eq = (ledger.latest_snapshot("rls_equivalence") or {}) if ledger.exists() else {}
        shared, public = recorded_design(spec, cat, eq)
    else:
        # No policy rewritten yet: what anonymous callers read is the application's own design too.
        shared = {t: 0 for t in shared_by_policy(spec, cat, tables)}
        public = {t: 0 for t in shared_by_policy(spec, cat, tables, ("anon", "public"))}
        public.update(public_by_design(cap))
    not_proven = (hidden_from_owners(spec, by_table)[1] + design_notes(shared, public, disabled,
                                                                  {t: len(r) for t, r in cap.seen.get("anon", {}).items()})
                  + own_policies_notes(own, switched) + own_notes)
    problems = (consistency(cap, identities, shared, public, design) if switched and not contracted
                else anonymous(cap, public) + isolation(cap, identities, shared, design)) + proves_nothing
    if contracted:  # new code's inserts: where owners could write their own rows, the canonical token still may
        expected = set(eq["owners_insert"]) if "owners_insert" in eq else insertable(spec, cat, tables)
        problems += own_inserts_refused(cap, expected)
    return {"identities": len(identities), "tokens": len(cap.seen), "tables": [str(t) for t in tables],
            "legacy_spelled_otherwise": 0 if contracted else sum(i.spelled_otherwise for i in identities),
            "write_probes": len(cap.writes), "write_probes_by_table": write_probes_by_table(cap),
            "write_owners_by_table": write_owners_by_table(cap), "switched": switched or contracted,
            "scan_bound": scan_bound_summary(cap),
            "rows_seen": rows_seen(cap), "coverage_by_table": by_table, "not_proven": not_proven,
            "shared_by_design": shared, "public_by_design": public, "rls_disabled": disabled,
            "shared_by_own_policies": own, "owner_unknown": owner_unknown(targets_)}, problems


# The equivalence check proves something only if the sampled identities see their own rows before the switch:
# below this share of the identities that own rows, the tokens evidently miss a claim the policies need.
MIN_COVERAGE = 0.5
_CLAIM_READ = re.compile(r"->>?\s*'([^']+)'|request\.jwt\.claim\.([A-Za-z0-9_]+)|claim\w*\(\s*'([^']+)'")


def coverage(conn, spec: Spec, cat: Catalog, identities: list[Identity], before: Capture,
             contracted: bool = False) -> dict:
    """Of the sampled identities that own rows of a dependent table, how many saw one of them with an old token
    (CONTRACTED: with a canonical token, owning by the new columns, the legacy ones being gone). A table listed in
    migration.rls_hidden_from_owners is left out: its owners are not meant to see their rows there."""
    from pgconverge.planning.references import new_column

    def keys(i: Identity) -> list[str]:
        return [i.canonical] if contracted else list(i.legacy)

    token = "C:" if contracted else "L:"
    key_type = (cat.canonical.column(spec.canonical.key) if contracted else cat.legacy.column(spec.legacy.key)
                ).value_type
    ids = [k for i in identities for k in keys(i)]
    owning, seeing, public_only = set(), set(), set()
    hidden = set(spec.migration.rls_hidden_from_owners)
    for d in cat.dependents:
        if str(d.table.name) in hidden:
            continue
        column = new_column(spec, cat, d) if contracted else d.fk.columns[0]
        # The ids as the identities spell them, compared as the key's type: a column of another scale (numeric(12,2)
        # holds 1001 as 1001.00) names the same owner in another text.
        owned = {r[0] for r in conn.execute(sql.SQL(
            "select x.id from unnest(%s::text[]) x(id) where exists (select from {t} where {c} = x.id::{ty})").format(
                c=ident(column), t=qn(d.table.name), ty=sql.SQL(key_type)), (ids,))}
        shared = before.shared.get(str(d.table.name), set())
        for i in identities:
            # a token a scan-bound table was not checked for (no key at all) neither counts nor fails
            mine = [k for k in keys(i) if k in owned and str(d.table.name) in before.seen.get(f"{token}{k}", {})]
            rows = set(before.owned.get(str(d.table.name), {}).get(i.canonical, ()))
            if mine and rows and not rows - shared:
                # every row of it there a stranger sees too: it has nothing private there to see, which is not the
                # tokens' failing (table_coverage leaves it out of the table's owners, and the verdict says so)
                owning.add(i.canonical)
                seeing.add(i.canonical)
                public_only.add(i.canonical)
                continue
            if mine:
                owning.add(i.canonical)
                # rows a stranger sees too (public ones) show nothing about the owner policies
                if any(set(before.seen[f"{token}{k}"][str(d.table.name)]) - shared for k in mine):
                    seeing.add(i.canonical)
    return {"identities": len(identities), "owning": len(owning), "seeing_own": len(seeing),
            "share": round(len(seeing) / len(owning), 3) if owning else 0.0,
            **({"owning_public_rows_only": len(public_only)} if public_only else {})}


def table_coverage(cap: Capture, identities: list[Identity]) -> dict[str, dict]:
    """Per compared table: how many sampled identities own rows there (Capture.owned), how many of them saw at least
    one of those rows with any of their tokens, and the rows the tokens saw there in all (rows compared).

    An owner whose tokens were none of them checked on a table (a scan-bound table, see Capture.scan_bound)
    neither counts nor fails, as in coverage()."""
    seen_rows = rows_by_table(cap)
    out: dict[str, dict] = {}
    tables = list(dict.fromkeys([*cap.owned, *(t for ts in cap.seen.values() for t in ts)]))
    for table in tables:
        owners = seeing = public_only = 0
        mine_by = cap.owned.get(table, {})
        shared = cap.shared.get(table, set())
        for ident_ in identities:
            mine = mine_by.get(ident_.canonical)
            if not mine:
                continue
            if not set(mine) - shared:  # every row of it a stranger sees too: neither counts nor fails
                public_only += 1
                continue
            tokens = [f"L:{lid}" for lid in ident_.legacy] + [f"C:{ident_.canonical}"]
            views = [cap.seen[tok][table] for tok in tokens if table in cap.seen.get(tok, {})]
            if not views:
                continue
            owners += 1
            mine = set(mine) - shared
            if any(mine.intersection(v) for v in views):
                seeing += 1
        # Owners who may insert a row of their own there while another identity may not (a table they may only
        # insert into): the policy tells them apart on writes, where it shows them nothing to read.
        writing = sum(1 for ident_ in identities if _writes_own_only(cap, ident_.canonical, table)) \
            if table in cap.insert_only else 0
        out[table] = {"owners": owners, "owners_seeing_own": seeing, "rows_seen": seen_rows.get(table, 0),
                      "owners_writing_own": writing, **({"owners_of_public_rows_only": public_only}
                                                        if public_only else {})}
    return out


def _writes_own_only(cap: Capture, owner: str, table: str) -> bool:
    """Whether OWNER's write probe of its own row of TABLE was allowed, and another writer's of the same row
    refused (keys of Capture.writes: writer|owner|table|token)."""
    own = other = False
    for key, outcome in cap.writes.items():
        writer, whose, where, _ = key.split("|")
        if whose == owner and where == table:
            own |= writer == owner and outcome == "allowed"
            other |= writer != owner and outcome == "refused"
    return own and other


def hidden_from_owners(spec: Spec, by_table: dict[str, dict], token: str = "any") -> tuple[list[str], list[str]]:
    """(problems, notes): a compared table where sampled identities own rows but not one of them saw any of its own
    there proves nothing about that table, whatever the other tables show; one listed in
    migration.rls_hidden_from_owners (a table meant to be unreadable to its owners) is a note instead."""
    problems, notes = [], []
    exempt = set(spec.migration.rls_hidden_from_owners)
    for table, c in by_table.items():
        if not c["owners"] or c["owners_seeing_own"]:
            continue
        if c.get("owners_writing_own"):
            notes.append(f"{table}: none of its {c['owners']} sampled owners sees its own rows, and "
                         f"{c['owners_writing_own']} may insert their own where another identity may not: checked on "
                         "who may write them")
            continue
        if table in exempt:
            notes.append(f"{table}: none of its {c['owners']} sampled owners sees its own rows, as "
                         "migration.rls_hidden_from_owners declares: compared for isolation only, not proven")
            continue
        problems.append(
            f"proves nothing about {table}: {c['owners']} sampled identities own rows there and "
            f"{c['owners_seeing_own']} of them saw any of them with {token} token; the policy hides owners' own "
            "rows: check the policy (and what it reads: a table its sub-query reads may itself be hidden by RLS), "
            "the claims in migration.token_claims, or the grants on what it reads; a table meant to be unreadable "
            f"to its owners (only an admin claim reads it, say) can be listed in migration.rls_hidden_from_owners "
            f"(\"{table}\"), which the verdict then reports as not proven")
    return problems, notes


def claims_read(conn, cat: Catalog) -> list[str]:
    """Claim names the policies and the functions they call read (`->> 'x'`, `request.jwt.claim.x`, `claim('x')`)."""
    texts = [p.using or "" for p in cat.policies] + [p.with_check or "" for p in cat.policies]
    texts += [f.definition or "" for f in (*cat.functions, *getattr(cat, "helper_callees", ()))]
    texts += [r[0] for r in conn.execute(
        "select distinct pg_get_functiondef(f.oid) from pg_depend d join pg_proc f on f.oid = d.refobjid "
        "where d.classid = 'pg_policy'::regclass and d.refclassid = 'pg_proc'::regclass and f.prokind = 'f' "
        "and f.pronamespace <> 'pg_catalog'::regnamespace")]
    return sorted({a or b or c for t in texts for a, b, c in _CLAIM_READ.findall(t)})
