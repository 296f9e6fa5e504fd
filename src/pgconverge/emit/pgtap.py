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
from pgconverge.planning import align, expand, references, switch
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


def pick_samples(conn: psycopg.Connection, spec: Spec, cat: Catalog, n: int = 2,
                 archived: tuple[QualifiedName, QualifiedName] | None = None) -> list[Sample]:
    """Legacy rows that own rows in as many dependent tables as possible, picked by hash (deterministic).

    ARCHIVED: where contract moved the legacy table and the mapping, (legacy table, mapping). The legacy
    rows are then read there, and what they own through the mapping and the dependents' new columns (the
    legacy columns are gone). CAT is a catalog with the new columns (expand's or later).
    """
    leg = cat.legacy.name if archived is None else archived[0]
    key = ident(spec.legacy.key)
    if archived is None:
        owns = [sql.SQL("(exists (select 1 from {t} d where d.{c} = l.{k}))::int").format(
            t=qn(d.table.name), c=ident(d.fk.columns[0]), k=key) for d in cat.dependents]
    else:
        owns = [sql.SQL("(exists (select 1 from {t} d join {m} m on m.{mc} = d.{c} where m.{ml} = l.{k}))::int"
                        ).format(t=qn(d.table.name), m=qn(archived[1]), mc=ident(spec.migration.new_column),
                                 c=ident(names.new), ml=ident(spec.mapping_legacy_column), k=key)
                for d, names in expand.names_of(spec, cat)]
    owns = owns or [sql.SQL("0")]
    subject = rls.subject_column(conn, spec)
    subj = sql.SQL("l.{}::text").format(ident(subject)) if subject else sql.SQL("null::text")
    rows = conn.execute(sql.SQL(
        "select l.{k}::text, {subj} from (select * from {t} order by pg_catalog.hashtext({k}::text), {k} limit 500) l "
        "where {nn} order by {owns} desc, pg_catalog.hashtext(l.{k}::text), l.{k} limit {n}").format(
        k=key, t=qn(leg), subj=subj, owns=sql.SQL(" + ").join(owns), n=sql.Literal(n),
        nn=sql.SQL("l.{} is not null").format(ident(subject)) if subject else sql.SQL("true"))).fetchall()
    path = rls.claim_path(conn, spec)
    return [Sample(chr(ord("A") + i), r[0], r[1], path) for i, r in enumerate(rows)]


class Tokens:
    """SQL expressions for the claims of a sample identity's old (legacy) and new (canonical) token."""

    def __init__(self, spec: Spec, cat: Catalog, mapping: QualifiedName | None = None):
        self.spec = spec
        self.legacy_type = cat.legacy.column(spec.legacy.key).type
        self.mapping = mapping or align.names(spec)["mapping"]  # after contract: the archived mapping

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
        return self._claims(s, [(self.spec.canonical.claim, self.canonical(s))],
                            [("sub", lit(s.subject))] if s.subject is not None else [])


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


def align_tests(spec: Spec, cat: Catalog) -> TestFile:
    t = TestFile("pgconverge_align.test.sql")
    n = align.names(spec)
    m = n["mapping"]
    t.ok(f"has_table({lit(m.schema)}, {lit(m.name)}, 'the mapping table exists')")
    t.ok(f"has_function({lit(n['normalize'].schema)}, {lit(n['normalize'].name)}, 'the phone key function exists')")
    missing = text(sql.SQL("select count(*) from {l} x where not exists (select 1 from {m} y where y.{ml} = x.{k})"
                           ).format(l=qn(cat.legacy.name), m=qn(m), ml=ident(spec.mapping_legacy_column),
                                    k=ident(spec.legacy.key)))
    t.ok(f"is(({missing}), 0::bigint, 'every {cat.legacy.name} row has a mapping')")
    return t


def expand_tests(spec: Spec, cat: Catalog, plan: Plan) -> TestFile:
    t = TestFile("pgconverge_expand.test.sql")
    ck = cat.canonical.column(spec.canonical.key)
    # The legacy columns whose NOT NULL expand drops (one in the primary key keeps it until contract).
    nullable = {(str(step.op.table), step.op.column) for step in plan.phase("expand")
                if isinstance(step.op, DropNotNull)}
    for d, n in expand.names_of(spec, cat):
        new = n.new
        s, tb = lit(d.table.name.schema), lit(d.table.name.name)
        where = f"{d.table.name}.{new}"
        t.ok(f"has_column({s}, {tb}, {lit(new)}, '{where} exists')")
        t.ok(f"col_type_is({s}, {tb}, {lit(new)}, {lit(ck.type)}, '{where} is {ck.type}')")
        t.ok(f"fk_ok({s}, {tb}, {lit(new)}, {lit(cat.canonical.name.schema)}, {lit(cat.canonical.name.name)}, "
             f"{lit(spec.canonical.key)}, '{where} references {cat.canonical.name}({spec.canonical.key})')")
        fk = n.fk
        validated = text(sql.SQL("select convalidated from pg_catalog.pg_constraint where conrelid = {}::regclass "
                                 "and conname = {}").format(sql.Literal(str(d.table.name)), sql.Literal(fk)))
        t.ok(f"ok(({validated}), 'foreign key {fk} is validated')")
        if d.column.not_null:
            t.ok(f"col_not_null({s}, {tb}, {lit(new)}, '{where} is NOT NULL, as {d.fk.columns[0]} was')")
            if (str(d.table.name), d.fk.columns[0]) in nullable:
                t.ok(f"col_is_null({s}, {tb}, {lit(d.fk.columns[0])}, "
                     f"'{d.table.name}.{d.fk.columns[0]} may be NULL (new code writes only {new})')")
            else:
                t.ok(f"col_not_null({s}, {tb}, {lit(d.fk.columns[0])}, "
                     f"'{d.table.name}.{d.fk.columns[0]} stays NOT NULL until contract')")
        else:
            t.ok(f"col_is_null({s}, {tb}, {lit(new)}, '{where} may be NULL, as {d.fk.columns[0]} may')")
        unlinked = text(sql.SQL("select count(*) from {t} x where x.{l} is not null and x.{n} is null").format(
            t=qn(d.table.name), l=ident(d.fk.columns[0]), n=ident(new)))
        t.ok(f"is(({unlinked}), 0::bigint, 'every {d.table.name} row with {d.fk.columns[0]} has {new}')")
    for step in plan.phase("expand"):
        if isinstance(step.op, CreateIndexConcurrently):
            i = step.op
            t.ok(f"has_index({lit(i.table.schema)}, {lit(i.table.name)}, {lit(i.name.name)}, "
                 f"'index {i.name.name} on {i.table}')")
            valid = text(sql.SQL("select indisvalid from pg_catalog.pg_index where indexrelid = {}::regclass").format(
                sql.Literal(str(i.name))))
            t.ok(f"ok(({valid}), 'index {i.name.name} is valid')")
    return t


def helper_tests(spec: Spec, cat: Catalog, samples: list[Sample]) -> TestFile:
    t = TestFile("pgconverge_switch_helper.test.sql")
    h = spec.canonical.helper
    tok = Tokens(spec, cat)
    t.raw(_act_as_function(spec))
    t.ok(f"has_function({lit(h.schema)}, {lit(h.name)}, '{{}}'::name[], '{h}() exists')")
    t.ok(f"function_returns({lit(h.schema)}, {lit(h.name)}, '{{}}'::name[], "
         f"{lit(cat.canonical.column(spec.canonical.key).type)}, '{h}() returns the canonical key type')")
    call = text(sql.SQL("{}()::text").format(qn(h)))
    for s in samples:
        t.raw(f"\nselect pg_temp.pgc_claims({tok.new(s)});")
        t.ok(f"is({call}, {tok.canonical(s)}, '{h}() for {s.label}''s new token is its canonical id')")
        t.raw(f"select pg_temp.pgc_claims({tok.old(s)});")
        t.ok(f"is({call}, {tok.canonical(s)}, '{h}() for {s.label}''s old token is bridged to its canonical id')")
    t.raw("\nselect pg_temp.pgc_claims(jsonb_build_object('role', 'authenticated'));")
    t.ok(f"is({call}, null, '{h}() without an id claim is NULL')")
    return t


def rls_tests(spec: Spec, cat: Catalog, plan: Plan, samples: list[Sample], after_contract: bool = False) -> TestFile:
    """Each sample sees exactly its own rows of every policy table: with old and new tokens, or after contract
    (legacy tokens retired, the mapping archived) with the canonical token only."""
    t = TestFile("pgconverge_contract_rls.test.sql" if after_contract else "pgconverge_switch_rls.test.sql")
    tok = Tokens(spec, cat, _archived_mapping(spec, plan) if after_contract else None)
    tables = switch.policy_tables(plan)
    targets = rls.targets(spec, cat, tables)
    by_name = {str(x.table): x for x in targets}
    ck_type = cat.canonical.column(spec.canonical.key).type
    role = "authenticated"
    t.raw(_act_as_function(spec))
    t.raw("-- The rows each sample identity owns, read as the test runner before acting as the identity.")
    t.raw("create temp table pgc_expected (who text, tbl text, keys text[]) on commit drop;")

    def owned(x: rls.Target, s: Sample) -> sql.Composable | None:
        key = rls._key(x)
        if x.owner_columns:  # the rows any of the table's references links to the identity
            return sql.SQL("select {k}::text from {t} where {w}").format(k=key, t=qn(x.table), w=sql.SQL(" or ").join(
                sql.SQL("{n} = {c}::{ty}").format(n=ident(new), c=sql.SQL(tok.canonical(s)), ty=sql.SQL(ck_type))
                for _l, new, _lt, _nt in x.owner_pairs))
        if x.parent is not None and str(x.parent[1]) in by_name:
            parent_rows = owned(by_name[str(x.parent[1])], s)
            if parent_rows is None:
                return None
            return sql.SQL("select {k}::text from {t} where {fk}::text in ({p})").format(
                k=key, t=qn(x.table), fk=ident(x.parent[0]), p=parent_rows)
        return None

    checked = [x for x in targets if owned(x, samples[0]) is not None] if samples else []
    for s in samples:
        for x in checked:
            t.raw(f"insert into pgc_expected select {lit(s.label)}, {lit(str(x.table))}, "
                  f"coalesce(array_agg(o), '{{}}') from ({text(owned(x, s))}) as e(o);")
    t.raw(f"grant select on pgc_expected to {text(ident(role))};\n")
    for s in samples:
        for x in checked:
            if x.owner_columns:
                t.ok(f"ok((select cardinality(keys) > 0 from pgc_expected where who = {lit(s.label)} and tbl = "
                     f"{lit(str(x.table))}), 'sample {s.label} owns rows in {x.table}')")
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


def _archived_mapping(spec: Spec, plan: Plan) -> QualifiedName:
    from pgconverge.emit.contract import archived

    return archived(plan)[str(align.names(spec)["mapping"])].archived


def contract_tests(spec: Spec, cats, plan: Plan, samples: list[Sample]) -> TestFile:
    """The legacy side gone: columns, keys, indexes and triggers dropped, tables archived, helpers retired."""
    from pgconverge.emit.contract import archived, legacy_indexes
    from pgconverge.planning import contract

    t = TestFile("pgconverge_contract.test.sql")
    cat = cats.for_phase("contract")
    moved = archived(plan)
    legacy, mapping = moved[str(cat.legacy.name)], moved[str(align.names(spec)["mapping"])]
    for d in cat.dependents:
        s, tb, col = lit(d.table.name.schema), lit(d.table.name.name), d.fk.columns[0]
        t.ok(f"hasnt_column({s}, {tb}, {lit(col)}, 'the legacy column {d.table.name}.{col} is gone')")
        fks = text(sql.SQL(
            "select count(*) from pg_catalog.pg_constraint where contype = 'f' and conrelid = {t}::regclass "
            "and (conname = {n} or confrelid = pg_catalog.to_regclass({a}))").format(
            t=sql.Literal(text(qn(d.table.name))), n=sql.Literal(d.fk.name), a=sql.Literal(text(qn(legacy.archived)))))
        t.ok(f"is(({fks}), 0::bigint, 'the legacy foreign key {d.fk.name} is gone and nothing references "
             f"{cat.legacy.name} from {d.table.name}')")
        trigger = expand.Names(spec, d, "", cat).trigger
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
    if spec.migration.legacy_helper_after_contract == "drop":
        t.ok(f"hasnt_function({lit(h.schema)}, {lit(h.name)}, '{{}}'::name[], '{h}() is dropped')")
    else:
        t.ok(f"throws_ok({lit(text(sql.SQL('select {}()').format(qn(h))))}, '0A000', null, "
             f"'{h}() is a stub that raises: the helper is retired')")
    tok = Tokens(spec, cats.for_phase("switch"), mapping.archived)
    ch = spec.canonical.helper
    call = text(sql.SQL("{}()::text").format(qn(ch)))
    if samples:
        t.raw(_act_as_function(spec))
    for smp in samples:
        t.raw(f"select pg_temp.pgc_claims({tok.new(smp)});")
        t.ok(f"is({call}, {tok.canonical(smp)}, '{ch}() for {smp.label}''s canonical token is its canonical id')")
    final = contract.final_validation(spec, cat)
    t.ok(f"is_empty({lit(text(final.query))}, 'every dependent row was linked to its legacy id''s owner through "
         f"the mapping')")
    return t
