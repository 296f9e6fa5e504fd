"""pgTAP tests of the state the emitted migrations leave: columns, keys, indexes, the helper, RLS per identity."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from pgconverge.catalog.model import Catalog
from pgconverge.config import QualifiedName, Spec
from pgconverge.execution.sql import ident, qn, text
from pgconverge.operations.base import Plan
from pgconverge.operations.columns import DropNotNull
from pgconverge.operations.create_index import CreateIndexConcurrently
from pgconverge.operations.create_trigger import CreateTrigger
from pgconverge.operations.partitions import CreateIndexShell
from pgconverge.operations.together import Together
from pgconverge.planning import align, contract, expand, references, shapes, switch
from pgconverge.verify import rls


def lit(v) -> str:
    return text(sql.Literal(v))


@dataclass
class Sample:
    """A legacy row picked at emit time; its canonical id is read from the mapping when the test runs."""

    label: str
    legacy: str
    subject: str | None = None  # the auth user (token `sub`) when the legacy helper looks the caller up by it
    # Where in the token the helpers read the id claims: () at the top, ("app_metadata",) for
    # auth.jwt() -> 'app_metadata' ->> 'customer_id' (verify/rls.py claim_path).
    claim_path: tuple[str, ...] = ()
    subject_column: str | None = None  # the legacy table's column holding SUBJECT (auth_user_id, say)


@dataclass
class TestFile:
    name: str
    lines: list[str] = field(default_factory=list)
    count: int = 0

    def ok(self, assertion: str) -> None:
        self.lines.append(f"select {assertion};")
        self.count += 1

    def raw(self, line: str) -> None:
        self.lines.append(line)

    def render(self, header: str) -> str:
        # One snapshot for the whole file: the rows an identity is expected to see are read once, before acting as
        # it, and what it then sees must be read in the same data, whatever the application commits meanwhile.
        return (f"{header}\nbegin;\nset transaction isolation level repeatable read;\n"
                f"create extension if not exists pgtap;\nselect plan({self.count});\n\n"
                + "\n".join(self.lines) + "\n\nselect * from finish();\nrollback;\n")


def _owns(spec: Spec, cat: Catalog, archived: tuple[QualifiedName, QualifiedName] | None
          ) -> list[tuple[str, sql.Composable]]:
    """(dependent table, whether the legacy row `l` owns rows there) per dependent: through its legacy column, or
    where contract ARCHIVED the legacy table and the mapping, through the mapping and the new column."""
    key = ident(spec.legacy.key)
    if archived is None:
        return [(str(d.table.name), sql.SQL("exists (select 1 from {t} d where d.{c} = l.{k})").format(
            t=qn(d.table.name), c=ident(d.fk.columns[0]), k=key)) for d in cat.dependents]
    return [(str(d.table.name), sql.SQL(
        "exists (select 1 from {t} d join {m} m on m.{mc} = d.{c} where m.{ml} = l.{k})").format(
        t=qn(d.table.name), m=qn(archived[1]), mc=ident(spec.migration.new_column), c=ident(names.new),
        ml=ident(spec.mapping_legacy_column), k=key)) for d, names in expand.names_of(spec, cat)]


def pick_samples(conn: psycopg.Connection, spec: Spec, cat: Catalog, n: int = 2,
                 archived: tuple[QualifiedName, QualifiedName] | None = None,
                 tables: list[QualifiedName] | None = None) -> list[Sample]:
    """Legacy rows that own rows in as many dependent tables as possible, picked by hash (deterministic); and, for
    each dependent table of TABLES (the policy tables; None: every dependent) whose rows none of them owns, the first
    legacy row by the same hash that owns rows there, searched in the whole legacy table (as `verify --rls` adds
    an owner per table): a table whose rows belong to few people is then tested for its owners too.

    ARCHIVED: where contract moved the legacy table and the mapping, (legacy table, mapping). The legacy
    rows are then read there, and what they own through the mapping and the dependents' new columns (the
    legacy columns are gone). CAT is a catalog with the new columns (expand's or later).
    """
    leg = cat.legacy.name if archived is None else archived[0]
    key = ident(spec.legacy.key)
    ktype = cat.legacy.column(spec.legacy.key).value_type
    owns = _owns(spec, cat, archived)
    score = [sql.SQL("({})::int").format(o) for _, o in owns] or [sql.SQL("0")]
    subject = rls.subject_column(conn, spec)
    subj = sql.SQL("l.{}::text").format(ident(subject)) if subject else sql.SQL("null::text")
    nn = sql.SQL("l.{} is not null").format(ident(subject)) if subject else sql.SQL("true")
    rows = conn.execute(sql.SQL(
        "select l.{k}::text, {subj} from (select * from {t} order by pg_catalog.hashtext({k}::text), {k} limit 500) l "
        "where {nn} order by {owns} desc, pg_catalog.hashtext(l.{k}::text), l.{k} limit {n}").format(
        k=key, t=qn(leg), subj=subj, owns=sql.SQL(" + ").join(score), n=sql.Literal(n), nn=nn)).fetchall()
    wanted = None if tables is None else {str(x) for x in tables}
    for table, own in owns:
        if not rows or (wanted is not None and table not in wanted):
            continue
        if conn.execute(sql.SQL("select exists (select 1 from {t} l where l.{k} = any(%s::text[]::{ty}[]) and {o})"
                                ).format(t=qn(leg), k=key, ty=sql.SQL(ktype), o=own),
                        ([r[0] for r in rows],)).fetchone()[0]:
            continue
        more = conn.execute(sql.SQL(
            "select l.{k}::text, {subj} from {t} l where {nn} and {o} order by pg_catalog.hashtext(l.{k}::text), l.{k} "
            "limit 1").format(k=key, subj=subj, t=qn(leg), nn=nn, o=own)).fetchone()
        if more is not None:
            rows.append(more)
    path = rls.claim_path(conn, spec)
    return [Sample(chr(ord("A") + i), r[0], r[1], path, subject) for i, r in enumerate(rows)]


def unowned_tables(conn: psycopg.Connection, spec: Spec, cat: Catalog, samples: list[Sample],
                   tables: list[QualifiedName], archived: tuple[QualifiedName, QualifiedName] | None = None
                   ) -> list[str]:
    """The dependent tables among TABLES whose rows none of SAMPLES owns (after pick_samples: no legacy row owns
    rows there, as when the table is empty): the RLS tests prove nothing for them."""
    if not samples:
        return []
    leg = cat.legacy.name if archived is None else archived[0]
    wanted = {str(x) for x in tables}
    return [table for table, own in _owns(spec, cat, archived) if table in wanted and not conn.execute(sql.SQL(
        "select exists (select 1 from {t} l where l.{k} = any(%s::text[]::{ty}[]) and {o})").format(
        t=qn(leg), k=ident(spec.legacy.key), ty=sql.SQL(cat.legacy.column(spec.legacy.key).value_type), o=own),
        ([s.legacy for s in samples],)).fetchone()[0]]


# What the identity tests say when emit found no identity to test with: pgTAP's own "No tests run!" names no cause.
NO_SAMPLE = ("no sample identity was available when these tests were emitted (the legacy table had no rows), so "
             "no identity is tested here: emit again from a database with rows")


def _no_sample(t: TestFile) -> None:
    """A failing assertion that names why the file tests no identity, and the fix."""
    t.raw("\n-- " + NO_SAMPLE + ".")
    t.ok(f"fail({lit(NO_SAMPLE)})")


class Tokens:
    """SQL expressions for the claims of a sample identity's old (legacy) and new (canonical) token."""

    def __init__(self, spec: Spec, cat: Catalog, mapping: QualifiedName | None = None,
                 legacy: QualifiedName | None = None):
        self.spec = spec
        self.cat = cat
        self.legacy_type = cat.legacy.column(spec.legacy.key).value_type
        self.mapping = mapping or align.names(spec)["mapping"]  # after contract: the archived mapping
        self.legacy = legacy  # after contract: the archived legacy table (None before)

    def canonical(self, s: Sample) -> str:
        """The canonical id of S as text, from the mapping (read by the test runner, before any role switch)."""
        return text(sql.SQL("(select m.{c}::text from {m} m where m.{l} = {v}::{ty})").format(
            c=ident(self.spec.migration.new_column), m=qn(self.mapping), l=ident(self.spec.mapping_legacy_column),
            v=sql.Literal(s.legacy), ty=sql.SQL(self.legacy_type)))

    def _claims(self, s: Sample, ids: list[tuple[str, str]], top: list[tuple[str, str]]) -> str:
        """The token: role, token_claims and TOP at the top, the id claims IDS at S's claim path (objects that
        replace a token claim of the same name), as verify/rls.py builds its tokens."""
        def obj(pairs: list[tuple[str, str]]) -> str:
            return "jsonb_build_object(" + ", ".join(f"{lit(k)}, {v}" for k, v in pairs) + ")"

        base = [("role", lit("authenticated")), *((k, lit(v)) for k, v in self.spec.migration.token_claims), *top]
        if not s.claim_path or not ids:
            return obj(base + ids)
        nested = obj(ids)
        for k in reversed(s.claim_path):
            nested = obj([(k, nested)])
        return f"({obj(base)} || {nested})"

    def old(self, s: Sample) -> str:
        if s.subject is not None:
            return self._claims(s, [], [("sub", lit(s.subject))])
        return self._claims(s, [(self.spec.legacy.claim, lit(s.legacy))], [])

    def new(self, s: Sample) -> str:
        ids = [(self.spec.canonical.claim, self.canonical(s))]
        if s.subject is None:
            return self._claims(s, ids, [])
        if self.legacy is None:  # the bridged helper maps the legacy row's auth user through the mapping
            return self._claims(s, ids, [("sub", lit(s.subject))])
        # After contract the canonical helper may look the caller up through the canonical table (its successor
        # written before contract): the token carries the auth user that lookup maps to S's canonical id, found
        # when the test runs by trying the candidates (as verify reads it back through the helper's own lookup).
        return f"pg_temp.pgc_subject({self._claims(s, ids, [])}, {self.canonical(s)}, {self._candidates(s)})"

    def _candidates(self, s: Sample) -> str:
        """The auth users S's canonical row may be known by, most likely first: the canonical row's column of the
        legacy subject column's name, then S's legacy row's, then those of the other legacy rows merged onto it."""
        sp, col = self.spec, s.subject_column or ""
        parts = []
        if col and self.cat.canonical.column(col) is not None:
            parts.append(sql.SQL("select c.{s}::text, 0 from {c} c where c.{k}::text = {id}").format(
                s=ident(col), c=qn(self.cat.canonical.name), k=ident(sp.canonical.key), id=sql.SQL(self.canonical(s))))
        parts.append(sql.SQL("select {}, 1").format(sql.Literal(s.subject)))
        if col and self.legacy is not None:
            parts.append(sql.SQL(
                "select l.{s}::text, 2 from {l} l join {m} m on m.{ml} = l.{k} where m.{mn}::text = {id}").format(
                s=ident(col), l=qn(self.legacy), m=qn(self.mapping), ml=ident(sp.mapping_legacy_column),
                k=ident(sp.legacy.key), mn=ident(sp.migration.new_column), id=sql.SQL(self.canonical(s))))
        return text(sql.SQL("array(select x.s from ({}) x(s, o) where x.s is not null order by x.o, x.s)").format(
            sql.SQL(" union all ").join(parts)))


def _subject_function(spec: Spec) -> str:
    """A temporary function giving a token the first candidate auth user for which the canonical helper answers
    the canonical id it is given (the first candidate when none does: the tests then fail, saying so)."""
    h = text(qn(spec.canonical.helper))
    return ("-- The auth user the canonical helper knows each sample identity by (see Tokens.new).\n"
            "create function pg_temp.pgc_subject(claims jsonb, id text, candidates text[]) returns jsonb "
            "language plpgsql as $f$\ndeclare c text;\nbegin\n"
            "  foreach c in array candidates loop\n"
            "    perform pg_temp.pgc_claims(claims || jsonb_build_object('sub', c));\n"
            f"    if {h}()::text is not distinct from id then\n"
            "      return claims || jsonb_build_object('sub', c);\n    end if;\n  end loop;\n"
            "  return claims || jsonb_build_object('sub', candidates[1]);\nend $f$;\n")


def _act_as_function(spec: Spec) -> str:
    """A temporary function publishing claims as PostgREST does (JSON setting and one setting per claim)."""
    clear = sorted({spec.legacy.claim, spec.canonical.claim, "sub", "role",
                    *(k for k, _ in spec.migration.token_claims)})
    arr = "array[" + ", ".join(lit(c) for c in clear) + "]::text[]"
    return ("-- Publishes a token's claims for this transaction the way PostgREST does: the JSON setting\n"
            "-- request.jwt.claims and one request.jwt.claim.<name> setting per claim (older helpers read those).\n"
            "create function pg_temp.pgc_claims(claims jsonb) returns void language plpgsql as $f$\n"
            "declare k text;\nbegin\n"
            "  perform pg_catalog.set_config('request.jwt.claims', claims::text, true);\n"
            f"  foreach k in array {arr} loop\n"
            "    perform pg_catalog.set_config('request.jwt.claim.' || k, '', true);\n  end loop;\n"
            "  for k in select pg_catalog.jsonb_object_keys(claims) loop\n"
            "    if k ~ '^[A-Za-z_][A-Za-z0-9_]*$' then\n"
            "      perform pg_catalog.set_config('request.jwt.claim.' || k, claims ->> k, true);\n"
            "    end if;\n  end loop;\nend $f$;\n")


def align_tests(spec: Spec, cat: Catalog, plan: Plan | None = None) -> TestFile:
    t = TestFile("pgconverge_align.test.sql")
    n = align.names(spec)
    m = n["mapping"]
    t.ok(f"has_table({lit(m.schema)}, {lit(m.name)}, 'the mapping table exists')")
    t.ok(f"has_function({lit(n['normalize'].schema)}, {lit(n['normalize'].name)}, 'the phone key function exists')")
    missing = text(sql.SQL("select count(*) from {l} x where not exists (select 1 from {m} y where y.{ml} = x.{k})"
                           ).format(l=qn(cat.legacy.name), m=qn(m), ml=ident(spec.mapping_legacy_column),
                                    k=ident(spec.legacy.key)))
    t.ok(f"is(({missing}), 0::bigint, 'every {cat.legacy.name} row has a mapping')")
    # Old code keeps writing legacy rows until contract: these triggers give each its mapping and keep it current.
    for table, name in _triggers(plan, "align", {str(cat.legacy.name)}):
        _trigger_on(t, table, name, "the align trigger")
    return t


def _triggers(plan: Plan | None, phase: str, tables: set[str]) -> list[tuple[QualifiedName, str]]:
    """(table, trigger) of the triggers PHASE of PLAN creates on TABLES."""
    def ops(op):
        return [x for o in op.ops for x in ops(o)] if isinstance(op, Together) else [op]

    return [(op.table, op.name) for step in (plan.phase(phase) if plan is not None else ()) for op in ops(step.op)
            if isinstance(op, CreateTrigger) and str(op.table) in tables]


def _trigger_on(t: TestFile, table: QualifiedName, name: str, what: str) -> None:
    """TABLE has the trigger NAME, firing for the application ('O' or 'A': not disabled, nor enabled for replica
    sessions only), on the table and on every partition of it (a partition's copy can be disabled on its own), as
    `verify` checks it. The failing rows name each table, its state and the fix."""
    q = text(sql.SQL(
        "select pg_catalog.format('trigger %s on %s is %s', {n}, x.relid, case when g.oid is null then 'missing' "
        "when g.tgenabled = 'D' then 'disabled' when g.tgenabled = 'R' then 'enabled for replica sessions only' "
        "else 'in state ' || g.tgenabled::text end) || case when g.oid is null then '' else pg_catalog.format("
        "' (fix: alter table %s enable trigger %I)', x.relid, {n}) end "
        "from (select {t}::regclass as relid union select p.relid from pg_catalog.pg_partition_tree({t}::regclass) p) "
        "x left join pg_catalog.pg_trigger g on g.tgrelid = x.relid and g.tgname = {n} "
        "where g.oid is null or g.tgenabled not in ('O', 'A')").format(t=sql.Literal(text(qn(table))),
                                                                        n=sql.Literal(name)))
    t.ok(f"is_empty({lit(q)}, {lit(f'{what} {name} on {table} is there and enabled')})")


def expand_tests(spec: Spec, cat: Catalog, plan: Plan) -> TestFile:
    t = TestFile("pgconverge_expand.test.sql")
    # The legacy columns whose NOT NULL expand drops (one in the primary key keeps it until contract).
    nullable = {(str(step.op.table), step.op.column) for step in plan.phase("expand")
                if isinstance(step.op, DropNotNull)}
    for d, n in expand.names_of(spec, cat):
        new = n.new
        s, tb = lit(d.table.name.schema), lit(d.table.name.name)
        _new_column(t, spec, cat, d, n, expanded=True)
        if d.column.not_null:
            if (str(d.table.name), d.fk.columns[0]) in nullable:
                t.ok(f"col_is_null({s}, {tb}, {lit(d.fk.columns[0])}, "
                     f"'{d.table.name}.{d.fk.columns[0]} may be NULL (new code writes only {new})')")
            else:
                t.ok(f"col_not_null({s}, {tb}, {lit(d.fk.columns[0])}, "
                     f"'{d.table.name}.{d.fk.columns[0]} stays NOT NULL until contract')")
        unlinked = text(sql.SQL("select count(*) from {t} x where x.{l} is not null and x.{n} is null").format(
            t=qn(d.table.name), l=ident(d.fk.columns[0]), n=ident(new)))
        t.ok(f"is(({unlinked}), 0::bigint, 'every {d.table.name} row with {d.fk.columns[0]} has {new}')")
        # The same check as `pgconverge verify` (expand's invariants): the new id is the mapping of the legacy id.
        t.ok(f"is_empty({lit(text(expand.mismatched(spec, d, n)))}, 'every {d.table.name} row''s {new} is the "
             f"mapping of its {d.fk.columns[0]}')")
        # Old code writes only the legacy column until contract: these fill the new one (and check the pair).
        for table, name in _triggers(plan, "expand", {str(d.table.name)}):
            if name in (n.trigger, n.last_trigger):
                _trigger_on(t, table, name, "the sync trigger")
            elif name == n.fill_trigger:
                _trigger_on(t, table, name, "the deferred fill trigger")
    _new_indexes(t, cat, plan)
    return t


def _new_column(t: TestFile, spec: Spec, cat: Catalog, d, n, expanded: bool = False) -> None:
    """D's new column: there, of the canonical key's type, NULL as the legacy column was, its foreign key
    validated. After expand (EXPANDED) and again after contract (nothing of it may go with the legacy side).
    Where the legacy foreign key is deferrable, the NOT NULL is checked at commit after expand and declared by
    contract."""
    ck = cat.canonical.column(spec.canonical.key)
    new = n.new
    s, tb = lit(d.table.name.schema), lit(d.table.name.name)
    where = f"{d.table.name}.{new}"
    t.ok(f"has_column({s}, {tb}, {lit(new)}, '{where} exists')")
    t.ok(f"col_type_is({s}, {tb}, {lit(new)}, {lit(ck.value_type)}, '{where} is {ck.value_type}')")
    t.ok(f"fk_ok({s}, {tb}, {lit(new)}, {lit(cat.canonical.name.schema)}, {lit(cat.canonical.name.name)}, "
         f"{lit(spec.canonical.key)}, '{where} references {cat.canonical.name}({spec.canonical.key})')")
    validated = text(sql.SQL("select coalesce((select convalidated from pg_catalog.pg_constraint where conrelid = "
                             "{}::regclass and conname = {}), false)").format(
        sql.Literal(str(d.table.name)), sql.Literal(n.fk)))
    t.ok(f"ok(({validated}), 'foreign key {n.fk} is there and validated')")
    if d.column.not_null and expanded and shapes.not_null_at_commit(d):
        t.ok(f"col_is_null({s}, {tb}, {lit(new)}, '{where} is NOT NULL at commit (checked by the deferred fill "
             f"trigger: {d.fk.name} is deferrable) until contract declares it')")
        nulls = text(sql.SQL("select count(*) from {} x where x.{} is null").format(qn(d.table.name), ident(new)))
        t.ok(f"is(({nulls}), 0::bigint, 'no {d.table.name} row is without {new}')")
    elif d.column.not_null:
        t.ok(f"col_not_null({s}, {tb}, {lit(new)}, '{where} is NOT NULL, as {d.fk.columns[0]} was')")
    else:
        t.ok(f"col_is_null({s}, {tb}, {lit(new)}, '{where} may be NULL, as {d.fk.columns[0]} may')")


def _new_indexes(t: TestFile, cat: Catalog, plan: Plan) -> None:
    """The indexes expand built on the dependent tables (the legacy ones' mirrors): there and valid; on a
    partitioned table, its own index and every partition's attached to it."""
    tables = {str(d.table.name) for d in cat.dependents}
    for step in plan.phase("expand"):
        if isinstance(step.op, (CreateIndexConcurrently, CreateIndexShell)) and str(step.op.table) in tables:
            i = step.op
            t.ok(f"has_index({lit(i.table.schema)}, {lit(i.table.name)}, {lit(i.name.name)}, "
                 f"'index {i.name.name} on {i.table}')")
            # And each partition's index attached to it: one made invalid on its own leaves the parent's valid.
            invalid = text(sql.SQL(
                "select pg_catalog.format('index %s is missing', {n}) where pg_catalog.to_regclass({n}) is null "
                "union all select pg_catalog.format('index %s is not valid', p.relid) from "
                "pg_catalog.pg_partition_tree(pg_catalog.to_regclass({n})) p join pg_catalog.pg_index x on "
                "x.indexrelid = p.relid where not x.indisvalid").format(n=sql.Literal(text(qn(i.name)))))
            t.ok(f"is_empty({lit(invalid)}, 'index {i.name.name} is valid')")


def helper_tests(spec: Spec, cat: Catalog, samples: list[Sample]) -> TestFile:
    t = TestFile("pgconverge_switch_helper.test.sql")
    h = spec.canonical.helper
    tok = Tokens(spec, cat)
    t.raw(_act_as_function(spec))
    t.ok(f"has_function({lit(h.schema)}, {lit(h.name)}, '{{}}'::name[], '{h}() exists')")
    t.ok(f"function_returns({lit(h.schema)}, {lit(h.name)}, '{{}}'::name[], "
         f"{lit(cat.canonical.column(spec.canonical.key).value_type)}, '{h}() returns the canonical key type')")
    call = text(sql.SQL("{}()::text").format(qn(h)))
    if not samples:
        _no_sample(t)
    for s in samples:
        t.raw(f"\nselect pg_temp.pgc_claims({tok.new(s)});")
        t.ok(f"is({call}, {tok.canonical(s)}, '{h}() for {s.label}''s new token is its canonical id')")
        t.raw(f"select pg_temp.pgc_claims({tok.old(s)});")
        t.ok(f"is({call}, {tok.canonical(s)}, '{h}() for {s.label}''s old token is bridged to its canonical id')")
    t.raw("\nselect pg_temp.pgc_claims(jsonb_build_object('role', 'authenticated'));")
    t.ok(f"is({call}, null, '{h}() without an id claim is NULL')")
    return t


def rls_tests(spec: Spec, cat: Catalog, plan: Plan, samples: list[Sample], after_contract: bool = False,
              uncovered: list[str] = ()) -> TestFile:
    """Each sample sees exactly its own rows of every policy table: with old and new tokens, or after contract
    (legacy tokens retired, the mapping archived) with the canonical token only. UNCOVERED: the policy tables no
    sample owned rows in when emitted (unowned_tables), named in the file."""
    t = TestFile("pgconverge_contract_rls.test.sql" if after_contract else "pgconverge_switch_rls.test.sql")
    tok = Tokens(spec, cat, *_archived(spec, cat, plan)) if after_contract else Tokens(spec, cat)
    tables = switch.policy_tables(plan)
    targets = rls.targets(spec, cat, tables)
    by_name = {str(x.table): x for x in targets}
    ck_type = cat.canonical.column(spec.canonical.key).value_type
    role = "authenticated"
    t.raw(_act_as_function(spec))
    if after_contract and any(s.subject is not None for s in samples):
        t.raw(_subject_function(spec))
    t.raw("-- The rows each sample identity owns, read as the test runner before acting as the identity: through\n"
          "-- the legacy column and the mapping (after contract: as recorded while the legacy column was there),\n"
          "-- not from the new column the policies read.")
    t.raw("create temp table pgc_expected (who text, tbl text, keys text[]) on commit drop;")
    m, ml, mn = qn(tok.mapping), ident(spec.mapping_legacy_column), ident(spec.migration.new_column)
    refs = {(str(d.table.name), d.fk.columns[0]): d for d in cat.dependents}

    def owns(x: rls.Target, s: Sample) -> tuple[sql.Composable, sql.Composable]:
        """(joins, condition): a row of X (read as d) belongs to S through any of its references."""
        canonical = sql.SQL("{}::{}").format(sql.SQL(tok.canonical(s)), sql.SQL(ck_type))
        joins, conds = [], []
        for i, (legacy, new, _lt, _nt) in enumerate(x.owner_pairs):
            if after_contract:
                j, owner = contract.recorded_owner(spec, cat, refs[(str(x.table), legacy)], i + 1)
                joins.append(j)
                conds.append(sql.SQL("{} = {}::text").format(owner, canonical))
            else:  # its legacy id is one of S's (merged legacy rows: several); without one, new code's row
                conds.append(sql.SQL("(d.{l} in (select {ml} from {m} where {mn} = {c}) or d.{l} is null and d.{n} = "
                                     "{c})").format(l=ident(legacy), ml=ml, m=m, mn=mn, c=canonical, n=ident(new)))
        return sql.Composed(joins), sql.SQL(" or ").join(conds)

    def owned(x: rls.Target, s: Sample) -> sql.Composable | None:
        if x.owner_columns:  # the rows any of the table's references links to the identity
            joins, cond = owns(x, s)
            return sql.SQL("select {k}::text from {t} d{j} where {w}").format(
                k=_row_key(x), t=qn(x.table), j=joins, w=cond)
        if x.parent is not None and str(x.parent[1]) in by_name:
            parent_rows = owned(by_name[str(x.parent[1])], s)
            if parent_rows is None:
                return None
            return sql.SQL("select {k}::text from {t} d where d.{fk}::text in ({p})").format(
                k=_row_key(x), t=qn(x.table), fk=ident(x.parent[0]), p=parent_rows)
        return None

    # A table whose policy lets every signed-in caller read it (a chat's messages) shows each identity others'
    # rows by the application's design: there each sample must see all of its own rows, and, before contract, the
    # same rows with its new token as with its old one.
    shared = rls.shared_by_policy(spec, cat, tables)
    checked = [x for x in targets if owned(x, samples[0]) is not None] if samples else []
    if not samples:
        _no_sample(t)
    for s in samples:
        for x in checked:
            t.raw(f"insert into pgc_expected select {lit(s.label)}, {lit(str(x.table))}, "
                  f"coalesce(array_agg(o), '{{}}') from ({text(owned(x, s))}) as e(o);")
    t.raw(f"grant select on pgc_expected to {text(ident(role))};\n")
    if shared:
        t.raw("create temp table pgc_seen (who text, tbl text, keys text[]) on commit drop;")
        t.raw(f"grant select, insert on pgc_seen to {text(ident(role))};\n")
    # Per table, as `verify --rls` judges it: some sample owns rows there; or no row there has an owner (an empty
    # table: nothing to compare, skipped as proving nothing); or rows have owners none of the samples is one of
    # (fails: emit picks an owner of each policy table's rows). And some sample owns rows somewhere, or nothing at all
    # was compared (fails).
    labels = ", ".join(s.label for s in samples)
    for table in uncovered if samples else ():
        t.raw(f"-- No sample identity covers {table}: no row there had an owner when these tests were emitted. Its "
              "assertion below is skipped, as proving nothing for it, while no row there has an owner.")
    for x in checked if samples else ():
        if not x.owner_columns:
            continue
        has_owner = sql.SQL(" or ").join(sql.SQL("d.{} is not null").format(ident(new if after_contract else legacy))
                                         for legacy, new, _lt, _nt in x.owner_pairs)
        nothing = (f"proves nothing for {x.table}: no row there has an owner (an empty table, or rows naming no "
                   "legacy row), so no identity's rows of it are compared; run these tests again once it holds "
                   "rows of their owners")
        unsampled = (f"proves nothing for {x.table}: rows there have owners and none of the sample identities "
                     f"({labels}) is one of them; emit the tests again (emit adds an owner of each policy table's "
                     "rows to the samples)")
        t.ok(f"case when exists (select 1 from pgc_expected where tbl = {lit(str(x.table))} and cardinality(keys) > 0) "
             f"then pass({lit(f'the sample identities own rows in {x.table}')}) when not exists (select 1 from "
             f"{text(qn(x.table))} d where {text(has_owner)}) then skip({lit(nothing)}, 1) else fail({lit(unsampled)}) "
             "end")
    if samples and checked:
        t.ok(f"ok(exists (select 1 from pgc_expected where cardinality(keys) > 0), "
             f"{lit(f'the sample identities ({labels}) own rows in the policy tables: else no row of them has an owner and nothing is compared (proves nothing); run these tests again once the tables hold rows of their owners')})")
    for s in samples:
        others = [o for o in samples if o is not s]
        kinds = (("canonical", tok.new(s)),) if after_contract else (("old", tok.old(s)), ("new", tok.new(s)))
        for kind, claims in kinds:
            t.raw(f"\n-- {s.label} (legacy id {s.legacy}) with its {kind} token")
            t.raw(f"select pg_temp.pgc_claims({claims});")
            t.raw(f"set local role {text(ident(role))};")
            for x in checked:
                key = text(rls._key(x))
                mine = f"(select keys from pgc_expected where who = {lit(s.label)} and tbl = {lit(str(x.table))})"
                if str(x.table) in shared:
                    t.ok(f"is((select count(*) from unnest(coalesce({mine}, '{{}}')) k where k not in (select "
                         f"{key}::text from {text(qn(x.table))})), 0::bigint, '{s.label} ({kind} token) sees all its "
                         f"own rows of {x.table} (read by every signed-in caller, by its policies)')")
                    if kind == "old":
                        t.raw(f"insert into pgc_seen select {lit(s.label)}, {lit(str(x.table))}, coalesce(array_agg("
                              f"{key}::text), '{{}}') from {text(qn(x.table))};")
                    elif kind == "new":
                        t.ok(f"set_eq({lit(f'select {key}::text as k from {text(qn(x.table))}')}, (select keys from "
                             f"pgc_seen where who = {lit(s.label)} and tbl = {lit(str(x.table))}), '{s.label} (new "
                             f"token) sees the rows of {x.table} it sees with its old token')")
                    continue
                # Named: pgTAP keeps the rows in a table, where a column may not be called ctid.
                t.ok(f"set_eq({lit(f'select {key}::text as k from {text(qn(x.table))}')}, coalesce({mine}, '{{}}'), "
                     f"'{s.label} ({kind} token) sees exactly its own rows of {x.table}')")
                for o in others:
                    theirs = (f"(select keys from pgc_expected where who = {lit(o.label)} and tbl = "
                              f"{lit(str(x.table))})")
                    t.ok(f"is((select count(*) from {text(qn(x.table))} where {key}::text = any(coalesce({theirs}, '{{}}')) "
                         f"and not {key}::text = any(coalesce({mine}, '{{}}'))), 0::bigint, "
                         f"'{s.label} ({kind} token) sees none of {o.label}''s rows of {x.table}')")
            t.raw("reset role;")
    return t


def _row_key(x: rls.Target) -> sql.Composable:
    """rls._key(X) read from the table as d (the joins beside it have columns of their own)."""
    if x.key == rls.ROWID:
        return sql.SQL("(d.tableoid::regclass::text || ' ' || d.ctid::text)")
    return sql.SQL("d.ctid") if x.key == "ctid" else sql.SQL("d.{}").format(ident(x.key))


def _archived(spec: Spec, cat: Catalog, plan: Plan) -> tuple[QualifiedName, QualifiedName]:
    """Where contract moves (the mapping, the legacy table)."""
    from pgconverge.emit.contract import archived

    moved = archived(plan)
    return moved[str(align.names(spec)["mapping"])].archived, moved[str(cat.legacy.name)].archived


def contract_tests(spec: Spec, cats, plan: Plan, samples: list[Sample]) -> TestFile:
    """The legacy side gone: columns, keys, indexes and triggers dropped, tables archived, helpers retired."""
    from pgconverge.emit.contract import archived, legacy_indexes

    t = TestFile("pgconverge_contract.test.sql")
    cat = cats.for_phase("contract")
    moved = archived(plan)
    legacy, mapping = moved[str(cat.legacy.name)], moved[str(align.names(spec)["mapping"])]
    # As expand found them: by contract the legacy columns whose NOT NULL expand dropped read as nullable.
    expanded = {references.key(x): x for x in cats.for_phase("expand").dependents}
    for d, n in expand.names_of(spec, cat):
        s, tb, col = lit(d.table.name.schema), lit(d.table.name.name), d.fk.columns[0]
        # What takes the legacy side's place stays: the new column, its NOT NULL and its foreign key.
        _new_column(t, spec, cat, expanded.get(references.key(d), d), n)
        # Each row keeps the owner recorded while its legacy id was there (not the snapshot compared with itself).
        t.ok(f"is_empty({lit(text(contract.relinked(spec, cat, d)))}, 'every {references.label(cat, d)} row keeps "
             f"the owner its legacy id had through the mapping')")
        t.ok(f"hasnt_column({s}, {tb}, {lit(col)}, 'the legacy column {d.table.name}.{col} is gone')")
        fks = text(sql.SQL(
            "select count(*) from pg_catalog.pg_constraint where contype = 'f' and conrelid = {t}::regclass "
            "and (conname = {n} or confrelid = pg_catalog.to_regclass({a}))").format(
            t=sql.Literal(text(qn(d.table.name))), n=sql.Literal(d.fk.name), a=sql.Literal(text(qn(legacy.archived)))))
        t.ok(f"is(({fks}), 0::bigint, 'the legacy foreign key {d.fk.name} is gone and nothing references "
             f"{cat.legacy.name} from {d.table.name}')")
        trigger = n.trigger
        t.ok(f"hasnt_trigger({s}, {tb}, {lit(trigger)}, 'the sync trigger {trigger} on {d.table.name} is gone')")
        for idx in legacy_indexes(spec, cat)[references.key(d)]:
            t.ok(f"hasnt_index({s}, {tb}, {lit(idx.name.name)}, 'the legacy index {idx.name.name} is gone')")
    for what, op in (("legacy table", legacy), ("mapping", mapping)):
        t.ok(f"hasnt_table({lit(op.table.schema)}, {lit(op.table.name)}, 'the {what} {op.table} is no longer there')")
        t.ok(f"has_table({lit(op.archived.schema)}, {lit(op.archived.name)}, 'the {what} is archived as "
             f"{op.archived}')")
        for role in op.revoke_from:
            t.ok(f"ok(not pg_catalog.has_table_privilege({lit(role)}, {lit(text(qn(op.archived)))}, 'select'), "
                 f"'{role} cannot read the archived {what}')")
    t.ok(f"hasnt_trigger({lit(legacy.archived.schema)}, {lit(legacy.archived.name)}, 'pgconverge_align', "
         f"'the align trigger on the legacy table is gone')")
    h = spec.legacy.helper
    if h is None:  # no RLS identity helper (legacy.helper = ""): none retired, no canonical helper to call
        _new_indexes(t, cat, plan)
        return t
    if spec.migration.legacy_helper_after_contract == "drop":
        t.ok(f"hasnt_function({lit(h.schema)}, {lit(h.name)}, '{{}}'::name[], '{h}() is dropped')")
    else:
        t.ok(f"throws_ok({lit(text(sql.SQL('select {}()').format(qn(h))))}, '0A000', null, "
             f"'{h}() is a stub that raises: the helper is retired')")
    _new_indexes(t, cat, plan)
    tok = Tokens(spec, cats.for_phase("switch"), mapping.archived, legacy.archived)
    ch = spec.canonical.helper
    call = text(sql.SQL("{}()::text").format(qn(ch)))
    if samples:
        t.raw(_act_as_function(spec))
    else:
        _no_sample(t)
    if any(smp.subject is not None for smp in samples):
        t.raw(_subject_function(spec))
    for smp in samples:
        t.raw(f"select pg_temp.pgc_claims({tok.new(smp)});")
        t.ok(f"is({call}, {tok.canonical(smp)}, '{ch}() for {smp.label}''s canonical token is its canonical id')")
    return t
