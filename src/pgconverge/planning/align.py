"""The align phase (T0): every legacy row gets a canonical row, recorded in the private mapping."""

from __future__ import annotations

import re
from dataclasses import dataclass

from psycopg import sql

from pgconverge.catalog.model import Catalog, Column, Table
from pgconverge.config import QualifiedName, Spec, parse_qualified
from pgconverge.connection import OWN_APPLICATION_NAMES
from pgconverge.errors import CatalogError
from pgconverge.execution.sql import body, bounded, ident, qn, text
from pgconverge.identity import match, phone
from pgconverge.operations.base import Step
from pgconverge.operations.batched import Batched, max_key
from pgconverge.operations.check import Check
from pgconverge.operations.create_function import CreateFunction
from pgconverge.operations.create_index import simple_index
from pgconverge.operations.create_table import CreateTable
from pgconverge.operations.create_trigger import CreateTrigger
from pgconverge.operations.phone_audit import PhoneAudit
from pgconverge.operations.private_schema import CreatePrivateSchema
from pgconverge.operations.run_sql import RunSql
from pgconverge.operations.snapshot import Snapshot

PHASE = "align"
# Set by the sync trigger while it decides the legacy row a dependent row names: under unmatched = "refuse" that row
# is not left waiting for a person then, since the application's write of the dependent row needs its owner now.
PLACING = "pgconverge.placing_owner"
METHODS = ("exact", "normalized", "created", "manual", "reverse")  # reverse: legacy row made for a canonical one
REVERSE_FLAG = "pgconverge.reverse_aligning"
# The canonical row a legacy row is being created for while REVERSE_FLAG is on (legacy_for_canonical): an
# application trigger on the legacy table that writes a dependent row for the new legacy row (a first cart for every
# new customer) meets it unmapped, and the dependents' sync triggers learn its canonical row from here.
REVERSE_TARGET = "pgconverge.reverse_target"
# Set by expand's backfill batches (planning/expand.py BACKFILL_SETTING), whose sync triggers skip their rows.
BACKFILL_SETTING = "pgconverge.backfill"
# Set by align_legacy_row while it creates the canonical row for a key: the key, and the legacy row it is for.
ALIGNING_KEY = "pgconverge.aligning_key"
ALIGNING = "pgconverge.aligning_legacy"


def names(spec: Spec) -> dict[str, QualifiedName]:
    s = spec.migration.private_schema
    return {
        "normalize": QualifiedName(s, "normalize_phone"),
        "pending": QualifiedName(s, "pending_legacy_rows"),
        "created_keys": QualifiedName(s, "created_match_keys"),
        "retired": QualifiedName(s, "retired_mappings"),
        "align_row": QualifiedName(s, "align_legacy_row"),
        "legacy_trigger_fn": QualifiedName(s, "legacy_after_write"),
        "legacy_key_fn": QualifiedName(s, "legacy_key_moved"),
        "legacy_reuse_fn": QualifiedName(s, "legacy_key_reused"),
        "legacy_for": QualifiedName(s, "legacy_for_canonical"),
        "mapping": spec.mapping_table,
        "match_index": QualifiedName(spec.canonical.table.schema,
                                     bounded(f"pgconverge_{spec.canonical.table.name}_match_key")),
    }


def plan(spec: Spec, cat: Catalog, cats=None) -> list[Step]:
    n = names(spec)
    leg, can = cat.legacy, cat.canonical
    key_insert = _canonical_key_source(spec, can, leg)
    _check_creatable(spec, can)
    _check_caller_defaults(spec, cat)
    lk, ck = leg.column(spec.legacy.key), can.column(spec.canonical.key)
    steps = [
        ("private_schema", CreatePrivateSchema(spec, cat.roles)),
        ("normalize_function", CreateFunction(
            n["normalize"], "text", phone.normalize_function_sql(spec.migration.private_schema,
                                                                 spec.migration.default_region),
            why=f"phone equivalence key (default region {spec.migration.default_region})",
            # The match index on the canonical table calls it whenever the application writes a
            # row there. EXECUTE alone exposes nothing: without USAGE on the private schema
            # nobody can call it by name.
            public_execute=True)),
        ("mapping_table", CreateTable(n["mapping"], sql.SQL(
            "({lc} {lt} primary key, {cc} {ct} not null, method text not null check (method in ({methods})), "
            "match_key text, decided_at timestamptz not null default clock_timestamp(), note text)").format(
                lc=ident(spec.mapping_legacy_column), lt=sql.SQL(lk.declared_value_type),
                cc=ident(spec.migration.new_column), ct=sql.SQL(ck.value_type),
                methods=sql.SQL(", ").join(map(sql.Literal, METHODS))),
            why=f"which {can.name} row each {leg.name} row became",
            extra=(sql.SQL("create index if not exists {} on {} ({})").format(
                sql.Identifier(bounded(f"{n['mapping'].name}_{spec.migration.new_column}")), qn(n["mapping"]),
                ident(spec.migration.new_column)),))),
        # A mapping a deleted legacy row left, given up when the application reuses its key for another person: kept
        # here, so that a rollback of align still deletes the canonical row align created for the one who left.
        ("retired_table", CreateTable(n["retired"], sql.SQL(
            "({lc} {lt}, {cc} {ct} not null, method text not null, match_key text, decided_at timestamptz, note text, "
            "retired_at timestamptz not null default clock_timestamp())").format(
                lc=ident(spec.mapping_legacy_column), lt=sql.SQL(lk.declared_value_type),
                cc=ident(spec.migration.new_column), ct=sql.SQL(ck.value_type)),
            why=f"mappings of deleted {leg.name} rows whose key the application gave another person")),
        ("pending_table", CreateTable(n["pending"], sql.SQL(
            "(legacy_id text primary key, reason text not null, sqlstate text, "
            "at timestamptz not null default clock_timestamp())"),
            why=f"{leg.name} rows the trigger could not map, kept for the coverage gate instead of failing "
                "the application's write")),
        # One row per key a canonical row was created for, written in the creating transaction. Its primary key is
        # what a transaction at REPEATABLE READ or SERIALIZABLE runs into when the key was created after its
        # snapshot: it cannot see that canonical row, and must not create a second one (see align_legacy_row).
        ("created_keys_table", CreateTable(n["created_keys"], sql.SQL(
            "(match_key text primary key, at timestamptz not null default clock_timestamp())"),
            why="keys pgconverge created canonical rows for, so that no writer creates a second one unseen")),
        ("match_index", simple_index(n["match_index"], can.name, sql.SQL("({})").format(canonical_key(spec, cat, None)),
                                     why="find canonical rows by equivalence key")),
        # Statistics of the match key (an expression index has them only once its table is analyzed after it is
        # built): without them the planner guesses that 0.5% of the canonical rows share any one key.
        ("analyze_canonical", RunSql(sql.SQL("analyze {}").format(qn(can.name)),
                                     f"analyze {can.name}: statistics of the new match key")),
        ("align_function", CreateFunction(n["align_row"], str(leg.name), _align_row_function(spec, cat, key_insert),
                                          why="find or create the canonical row for one legacy row (trigger and "
                                              "batches alike)")),
        ("legacy_for_function", CreateFunction(n["legacy_for"], ck.value_type, _legacy_for_function(spec, cat),
                                               why="the legacy row for a canonical row, created if missing (used "
                                                   "by rollbacks)")),
        ("legacy_trigger_function", CreateFunction(n["legacy_trigger_fn"], "", _legacy_trigger_function(spec, cat),
                                                   why="map legacy rows that old code writes from now on")),
        ("legacy_trigger", CreateTrigger("pgconverge_align", leg.name, sql.SQL("after insert or update of {} ").format(
            sql.SQL(", ").join(map(ident, spec.legacy.match_columns))), n["legacy_trigger_fn"],
            why="keeps the mapping complete while old code writes")),
        ("legacy_reuse_function", CreateFunction(n["legacy_reuse_fn"], "", _legacy_reuse_function(spec, cat),
                                                 why="a key the application gives another person again gives up "
                                                     "the mapping the deleted row left")),
        ("legacy_reuse_trigger", CreateTrigger(
            REUSE_TRIGGER, leg.name, sql.SQL("before insert "), n["legacy_reuse_fn"],
            why="before the row is written: a dependent row written in the same statement (a writable CTE, an "
                "application trigger on the legacy table) finds no stale mapping of a reused key")),
        ("legacy_key_function", CreateFunction(n["legacy_key_fn"], "", _legacy_key_function(spec, cat),
                                               why="a legacy row's mapping follows a change of its key")),
        ("legacy_key_trigger", CreateTrigger(
            KEY_TRIGGER, leg.name, sql.SQL("before update of {} ").format(ident(spec.legacy.key)), n["legacy_key_fn"],
            why="the application may change a legacy key (ON UPDATE CASCADE carries it to the dependents): the "
                "person keeps the canonical row it has",
            when=sql.SQL("old.{k} is distinct from new.{k}").format(k=ident(spec.legacy.key)))),
        # Where the legacy table holds its match column unique over live rows alone (soft deletes), those go
        # first: a canonical row created for a person with a closed and a live account is made from the live one.
        *([("match_live", Batched(leg.name, spec.legacy.key, lk.value_type, batch_size=spec.migration.batch_size,
                                  what=f"map the live {leg.name} rows ({legacy_live(spec, leg, leg.name.name)}) first",
                                  upper_bound=max_key(leg.name, spec.legacy.key),
                                  parts=match_batch(spec, cat, live_only=True)))]
          if legacy_live(spec, leg) else []),
        ("match", Batched(leg.name, spec.legacy.key, lk.value_type, batch_size=spec.migration.batch_size,
                          what=f"map every {leg.name} row to a {can.name} row",
                          upper_bound=max_key(leg.name, spec.legacy.key), parts=match_batch(spec, cat))),
        ("map_pending", map_pending(spec, cat)),
        # Statistics of the mapping as filled, before anything plans a query over it: the sync functions' lookups
        # by the new id, contract's refills. Without them Postgres guesses, and may guess a walk of the whole table.
        ("analyze_mapping", RunSql(sql.SQL("analyze {}").format(qn(n["mapping"])),
                                   f"analyze {n['mapping']}: statistics of the mapping as filled")),
        ("coverage_gate", coverage_gate(spec, cat)),
        ("report", _report(spec, cat)),
    ]
    phones = [c for c, k in zip(spec.legacy.match_columns, spec.legacy.match_kinds) if k == "phone"]
    if phones:  # the first phone column: the audit compares the SQL phone key with phonenumbers
        steps.append(("phone_audit", PhoneAudit(leg.name, phones[0], spec.migration.private_schema,
                                                spec.migration.default_region, after=f"{PHASE}.normalize_function")))
    from pgconverge.planning import contract  # the snapshot contract's final validation compares with

    # The owners through the mapping once the coverage gate has found it complete: the report and the phone audit
    # in between read only, so the snapshot runs beside them (execution/background.py SnapshotJob).
    steps.append(("linkage_before", contract.linkage_snapshot(spec, cat, "before", legacy=True,
                                                              after=f"{PHASE}.coverage_gate")))
    steps.append(("counts_before", contract.counts(spec, cat, "counts_before")))
    return [Step(f"{PHASE}.{i}", PHASE, op) for i, op in steps]


def search_path(spec: Spec, cat: Catalog) -> sql.Composable:
    """The search_path the functions pgconverge installs pin: pg_catalog, then the schema of the legacy key's type
    where that is not pg_catalog's (citext's, in public or extensions), and pg_temp. Their = between two legacy keys is
    then the key type's own (citext's ignores case), not text's, which Postgres would reach through citext's implicit
    cast to text and compare byte for byte."""
    col = cat.legacy.column(spec.legacy.key)
    schema = key_type_schema(col.base_type or col.type) if col is not None else None
    return sql.SQL("pg_catalog, {}pg_temp").format(sql.SQL("{}, ").format(ident(schema)) if schema else sql.SQL(""))


def key_type_schema(type_: str) -> str | None:
    """The schema of TYPE as format_type() prints it under search_path = pg_catalog (qualified where it is not
    pg_catalog's), or None for one of pg_catalog."""
    try:
        name = parse_qualified(re.sub(r"(\(.*\))?(\[\])*$", "", type_.strip()), "pg_catalog")
    except ValueError:
        return None
    return None if name.schema == "pg_catalog" else name.schema


def coverage_gate(spec: Spec, cat: Catalog, phase: str = PHASE, redo: str = "") -> Check:
    """Every legacy row has a mapping; those that do not are named, with the reason the trigger recorded. A failure
    sends PHASE's map_pending back: a row left pending after it ran is decided by the next run of the phase.
    Contract's reads the legacy table it archives: a gate of that moment, not run again by `verify`."""
    n = names(spec)
    return Check("coverage", sql.SQL(
        "select format('%s has no mapping%s', l.{lk}, ': ' || p.reason), {lm} from {lt} l "
        "left join {pending} p on p.legacy_id = l.{lk}::text "
        "where not exists (select 1 from {m} m where m.{mlc} = l.{lk}) limit 50").format(
            lk=ident(spec.legacy.key), lm=_legacy_values(spec, "l"), lt=qn(cat.legacy.name), m=qn(n["mapping"]),
            mlc=ident(spec.mapping_legacy_column), pending=qn(n["pending"])),
        failure=f"mapping rows < {cat.legacy.name} rows", fix="re-run `pgconverge run align`; if rows stay unmapped, "
                                                            "record them with `pgconverge align --decisions FILE`, "
                                                            "or give them a usable match value (the trigger maps "
                                                            "them as it is written)",
        # Read the legacy keys through the primary key index: the runtime audit counts sequential
        # scans of the legacy table as use by old code, and this check runs after the switch too.
        settings=(("enable_seqscan", "off"),), redo=(redo or f"{phase}.map_pending",), standing=phase == PHASE,
        covers=(cat.legacy.name,))


def map_pending(spec: Spec, cat: Catalog) -> RunSql:
    """Decide again, in pgconverge's own READ COMMITTED session, each legacy row without a mapping (one the trigger
    left pending: a writer at REPEATABLE READ that could not see the canonical row made for its key, say; or one
    written where triggers do not fire) and each mapped to a canonical row the application has deleted since. A row
    that fails again waits in the pending table with the new reason: the coverage gate names it; nothing here fails
    the step."""
    n = names(spec)
    lk_type = cat.legacy.column(spec.legacy.key).value_type
    code = sql.SQL("""
declare
  r record;
  e_state text;
  e_text text;
begin
  -- unmapped: left pending by the trigger, or written where it did not fire (session_replication_role = replica)
  for r in select l as rec, l.{lk}::text as legacy_id from {lt} l
            where not exists (select 1 from {m} m where m.{mlc} = l.{lk})
          union all  -- mapped to a canonical row the application has deleted since
          select l, l.{lk}::text from {m} m join {lt} l on l.{lk} = m.{mlc}
            where not exists (select 1 from {ct} c where c.{ck} = m.{mcc})
          order by 2 loop
    begin
      perform {align_row}(r.rec);
    exception when others then
      get stacked diagnostics e_state = returned_sqlstate, e_text = message_text;
      insert into {pending} as p (legacy_id, reason, sqlstate) values (r.legacy_id, e_text, e_state)
        on conflict (legacy_id) do update set reason = excluded.reason, sqlstate = excluded.sqlstate,
        at = clock_timestamp();
    end;
  end loop;
end""").format(pending=qn(n["pending"]), lt=qn(cat.legacy.name), lk=ident(spec.legacy.key), ty=sql.SQL(lk_type),
               m=qn(n["mapping"]), mlc=ident(spec.mapping_legacy_column), align_row=qn(n["align_row"]),
               ct=qn(cat.canonical.name), ck=ident(spec.canonical.key), mcc=ident(spec.migration.new_column))
    return RunSql(sql.SQL("do {}").format(body(code)),
                  f"map the {cat.legacy.name} rows the trigger left pending, and those whose {cat.canonical.name} row "
                  "the application has deleted (decided again, as the match decides)")


def describe_match(spec: Spec) -> str:
    pairs = [f"{lc} ~ {cc} ({k})" for lc, cc, k in zip(spec.legacy.match_columns, spec.canonical.match_columns,
                                                        spec.legacy.match_kinds)]
    return " and ".join(pairs)


def _columns(table: Table, columns: tuple[str, ...]) -> tuple[Column, ...]:
    return tuple(table.column(c) for c in columns)


def legacy_key(spec: Spec, cat: Catalog, alias: str = "l") -> sql.Composable:
    """The match key of a legacy row under ALIAS."""
    return match.key_of(spec, alias, _columns(cat.legacy, spec.legacy.match_columns), names(spec)["normalize"])


def canonical_key(spec: Spec, cat: Catalog, alias: str | None = "p") -> sql.Composable:
    """The match key of a canonical row under ALIAS (None: bare column names, as in an index definition)."""
    return match.key_of(spec, alias, _columns(cat.canonical, spec.canonical.match_columns), names(spec)["normalize"])


def _legacy_values(spec: Spec, alias: str) -> sql.Composable:
    """The legacy row's match value(s) as one text, for messages and reports."""
    refs = [sql.SQL("{}.{}::text").format(sql.Identifier(alias), ident(c)) for c in spec.legacy.match_columns]
    return refs[0] if len(refs) == 1 else sql.SQL("concat_ws(' / ', {})").format(sql.SQL(", ").join(refs))


REPORT_LIMIT = 1000


def _report(spec: Spec, cat: Catalog) -> Snapshot:
    """Every identity decision that deserves a human look: merges, duplicate canonical rows, unusable numbers."""
    n = names(spec)
    cvals = [sql.SQL("c.{}::text").format(ident(c)) for c in spec.canonical.match_columns]
    p = dict(m=qn(n["mapping"]), mlc=ident(spec.mapping_legacy_column), mcc=ident(spec.migration.new_column),
             lt=qn(cat.legacy.name), lk=ident(spec.legacy.key), lm=_legacy_values(spec, "l"),
             ct=qn(cat.canonical.name), ck=ident(spec.canonical.key),
             cm=cvals[0] if len(cvals) == 1 else sql.SQL("concat_ws(' / ', {})").format(sql.SQL(", ").join(cvals)),
             ckey=canonical_key(spec, cat, "c"), limit=sql.Literal(REPORT_LIMIT))
    queries = {
        "methods": "select coalesce(jsonb_object_agg(method, n), '{{}}') from "
                   "(select method, count(*) n from {m} group by method) x",
        # several legacy rows, one number: they now share one canonical row
        # (the legacy ids are gathered for the shared canonical rows only, not for every mapping row)
        "merged": "select jsonb_build_object('groups', count(*), 'sample', coalesce(jsonb_agg(x) filter "
                  "(where x.rn <= {limit}), '[]')) from (select m.{mcc} as canonical, jsonb_agg(m.{mlc} order by "
                  "m.{mlc}) as legacy, row_number() over (order by m.{mcc}) rn from {m} m where m.{mcc} in "
                  "(select s.{mcc} from {m} s group by s.{mcc} having count(*) > 1) group by m.{mcc}) x",
        # several canonical rows, one number: the preferred one was chosen, the group is listed.
        # The key is computed once per canonical row (OFFSET 0 keeps the filter from computing it again)
        # to find the duplicated keys; only their rows are then read, through the match index (OFFSET 0
        # again: a hash join would compute every row's key a second time).
        "canonical_duplicates": "select jsonb_build_object('groups', count(*), 'sample', coalesce(jsonb_agg(x) "
                                "filter (where x.rn <= {limit}), '[]')) from (select d.key, "
                                "jsonb_agg(jsonb_build_object('id', c.{ck}, 'number', {cm}, 'chosen', "
                                "exists (select 1 from {m} m where m.{mcc} = c.{ck})) order by c.{ck}) as rows, "
                                "row_number() over (order by d.key) rn from (select k.key from "
                                "(select {ckey} as key from {ct} c offset 0) k where k.key is not null "
                                "group by k.key having count(*) > 1) d cross join lateral (select c.* from {ct} c "
                                "where {ckey} = d.key offset 0) c "
                                "group by d.key) x",
        # NULL or unparseable legacy numbers: each got a canonical row of its own
        "unusable_numbers": "select jsonb_build_object('rows', count(*), 'sample', coalesce(jsonb_agg("
                            "jsonb_build_object('legacy', l.{lk}, 'number', {lm})) filter (where x.rn <= {limit}), "
                            "'[]')) from (select m.{mlc}, row_number() over (order by m.{mlc}) rn from {m} m "
                            "where m.match_key is null) x join {lt} l on l.{lk} = x.{mlc}",
    }
    return Snapshot("align_report", tuple((k, sql.SQL(v).format(**p)) for k, v in queries.items()),
                    "identity decisions and conflicts")


def _canonical_key_source(spec: Spec, can: Table, leg: Table | None = None) -> sql.Composable | None:
    """How a created canonical row gets its key: None = the column's own default or a value the row is given (a
    match or copied column: Supabase's profiles.id is the auth user, copied from customers.user_id), else an
    expression."""
    col = can.column(spec.canonical.key)
    if col.name in {*spec.canonical.match_columns, *(c for _, c in spec.canonical.copy_columns)}:
        return None
    # A key that references another table (Supabase's profiles.id → auth.users) needs a row there first, default or
    # not: a created row would fail its foreign key partway through the match.
    fks = [fk for fk in can.foreign_keys if fk.columns == (col.name,)]
    if (col.default is not None or col.identity) and not fks:
        return None
    if col.value_type == "uuid" and not fks:
        return sql.SQL("gen_random_uuid()")
    if not fks and col.default is None and not col.identity and _insert_fillers(spec, can):
        return None  # an application trigger may make it ('cus_' || a random id, say): the data check tries it
    why = f"references {fks[0].ref_table}({', '.join(fks[0].ref_columns)})" if fks else f"is of type {col.type}"
    has = "has a default but" if col.default is not None or col.identity else "has no default and"
    # A legacy column pointing where the key points (customers.user_id → auth.users) can give created rows their key.
    same = [fk.columns[0] for fk in (leg.foreign_keys if leg is not None else ())
            if fks and len(fk.columns) == 1 and fk.ref_table == fks[0].ref_table and fk.ref_columns == fks[0].ref_columns]
    raise CatalogError(
        f"canonical.key {can.name}.{col.name} {has} {why}: pgconverge cannot create canonical rows "
        "for legacy rows that have none (old code's new rows among them)",
        fix=(f'copy it from {leg.name}.{same[0]}, which references the same rows: canonical.copy_columns = '
             f'{{ {same[0]} = "{col.name}" }} (a legacy row without one then waits for a decision)' if same else
             f"add to {leg.name if leg is not None else 'the legacy table'} a column referencing "
             f"{fks[0].ref_table}({', '.join(fks[0].ref_columns)}) that every row has (old code's new rows too) and "
             f"copy it: canonical.copy_columns = {{ that_column = \"{col.name}\" }}. Deciding the rows that exist "
             "(`pgconverge align --decisions FILE`) does not lift this: a customer old code creates during the "
             f"migration needs a {can.name} row at once, which pgconverge could not make" if fks else
             f"give {can.name}.{col.name} a default (e.g. gen_random_uuid()), or create the missing canonical rows "
             "yourself and record them with `pgconverge align --decisions FILE`"))


def unfilled(spec: Spec, can: Table) -> list[str]:
    """The canonical table's NOT NULL columns that nothing pgconverge writes or defaults fills in a created row (the
    key among them where only an application trigger can make it)."""
    filled = {*spec.canonical.match_columns, *(c for _, c in spec.canonical.copy_columns)}
    if can.column(spec.canonical.key).value_type == "uuid":
        filled.add(spec.canonical.key)  # gen_random_uuid() where it has no default
    return [c.name for c in can.columns
            if c.not_null and c.default is None and not c.generated and not c.identity and c.name not in filled]


def _insert_fillers(spec: Spec, can: Table) -> list[str]:
    from pgconverge.planning.shapes import insert_fillers

    return insert_fillers(can, spec.migration.private_schema)


UNFILLED_FIX = ("add a default to those columns, or copy a legacy column into them with "
                "canonical.copy_columns = { legacy_column = \"canonical_column\" }")


def _check_creatable(spec: Spec, can: Table) -> None:
    missing = unfilled(spec, can)
    # A BEFORE INSERT trigger of the application's may fill them (a generated handle, say): the data check
    # (identity/check.py created_refusals) then writes a created row and rolls it back, and refuses if one stays NULL.
    if missing and not _insert_fillers(spec, can):
        raise CatalogError(
            f"{can.name} has NOT NULL column(s) {', '.join(missing)} with no default: pgconverge cannot fill them "
            "when it creates a canonical row", fix=UNFILLED_FIX)


# What a column default may read that is the session's caller, not the person a row is for.
_CALLER_FUNCTIONS = {("auth", "uid"), ("auth", "jwt"), ("auth", "email"), ("auth", "role")}
_CALLER_VALUES = {"CURRENT_USER", "SESSION_USER", "USER", "CURRENT_ROLE"}


def caller_defaults(spec: Spec, can: Table) -> list[tuple[str, str]]:
    """(column, its default) of the canonical table's columns a created row leaves to their default where that default
    reads who is calling: auth.uid(), auth.jwt(), auth.email(), auth.role(), CURRENT_USER and its kin, a request.jwt
    setting, or the legacy or canonical helper. A canonical row align's trigger creates takes those from whoever wrote
    the legacy row (an admin registering someone), and one align's batches create from no one."""
    from pglast import ast, enums, parse_sql
    from pglast.parser import ParseError

    from pgconverge.catalog.calls import _walk
    from pgconverge.planning.rls_ast import strings

    helpers = {tuple(str(n).split(".")) for n in (spec.legacy.helper, spec.canonical.helper) if n is not None}
    helpers |= {(h[-1],) for h in helpers}
    filled = {*spec.canonical.match_columns, *(c for _, c in spec.canonical.copy_columns)}
    out = []
    for col in can.columns:
        if col.name in filled or col.default is None or col.generated:
            continue
        try:
            nodes = list(_walk(parse_sql(f"select {col.default}")[0].stmt))
        except ParseError:
            continue
        for n in nodes:
            if isinstance(n, ast.FuncCall):
                name = strings(n.funcname)
                arg = n.args[0] if n.args else None
                setting = (name[-1] == "current_setting" and isinstance(arg, ast.A_Const)
                           and isinstance(arg.val, ast.String) and arg.val.sval.startswith("request.jwt"))
                if name in _CALLER_FUNCTIONS or name in helpers or setting:
                    break
            elif (isinstance(n, ast.SQLValueFunction)
                  and enums.SQLValueFunctionOp(n.op).name.replace("SVFOP_", "") in _CALLER_VALUES):
                break
        else:
            continue
        out.append((col.name, col.default))
    return out


def _check_caller_defaults(spec: Spec, cat: Catalog) -> None:
    """Refuse, before any change, a canonical column whose default reads the caller (caller_defaults), where align
    may create canonical rows and the column is not accepted in migration.accept_caller_defaults."""
    can, leg = cat.canonical, cat.legacy
    found = [(c, d) for c, d in caller_defaults(spec, can) if c not in spec.migration.accept_caller_defaults]
    if not found or effective_unmatched(spec, cat) == "refuse":
        return
    fixes = []
    for c, _ in found:
        fk = next((f for f in can.foreign_keys if f.columns == (c,)), None)
        same = [f.columns[0] for f in leg.foreign_keys if fk is not None and len(f.columns) == 1
                and f.ref_table == fk.ref_table and f.ref_columns == fk.ref_columns]
        fixes.append(f'copy it from the legacy column that holds the person\'s own value: canonical.copy_columns = '
                     f'{{ {same[0] if same else "legacy_column"} = "{c}" }}')
    listed = ", ".join(f"{c} (default {d})" for c, d in found)
    raise CatalogError(
        f"{can.name} column(s) {listed} read who is calling: a {can.name} row pgconverge creates for a {leg.name} row "
        "takes them from whoever wrote that row (an admin or a service registering someone would own the new "
        "identity), and a row align's own batches create gets them empty",
        fix="; ".join(dict.fromkeys(fixes)) + "; or, where every legacy row is written by the person it is for "
        "(people signing themselves up) and rows align creates for the existing ones may have it empty, accept it: "
        f"migration.accept_caller_defaults = [{', '.join(repr(c).replace(chr(39), chr(34)) for c, _ in found)}]")


def effective_unmatched(spec: Spec, cat: Catalog) -> str:
    """'create' or 'refuse': what happens to a legacy row whose match value identifies nobody."""
    rule = spec.migration.unmatched
    if rule != "auto":
        return rule
    cols = [cat.canonical.column(c) for c in spec.canonical.match_columns]
    return "refuse" if any(c.not_null or c.generated for c in cols) else "create"


def live_predicates(spec: Spec, can: Table, alias: str = "p") -> list[str]:
    """The WHERE clauses of the canonical table's partial unique indexes over its match columns, as ALIAS.column: the
    rows the application itself holds unique (`… where deleted_at is null`), where the others are retired ones."""
    return _partial_unique_predicates(can, spec.canonical.match_columns, alias)


def legacy_live(spec: Spec, leg: Table, alias: str = "c") -> str | None:
    """The legacy side's rule of the same kind, as one condition over the legacy row ALIAS (None where the legacy
    table has no such index): of a merged person's legacy rows, the ones it holds true are live, the others retired
    (`unique (lower(email)) where deleted_at is null`: the soft-deleted account). Wherever pgconverge picks one of a
    merged person's legacy ids (the sync functions, the legacy-row maker, the bridged legacy helper) it picks a live
    one first, so that old code finds the person's new rows under the account still in use."""
    preds = _partial_unique_predicates(leg, spec.legacy.match_columns, alias)
    return " and ".join(f"({p})" for p in preds) or None


def legacy_live_sql(spec: Spec, leg: Table, alias: str = "c") -> sql.Composable:
    """legacy_live as a boolean that is never NULL (true where the table has no such index)."""
    pred = legacy_live(spec, leg, alias)
    return sql.SQL("coalesce(({}), false)").format(sql.SQL(pred)) if pred else sql.SQL("true")


def mapped_legacy_rows(spec: Spec, cat: Catalog, canonical_id: sql.Composable) -> sql.Composable:
    """`with mine as materialized (…)`: the live legacy rows mapped to CANONICAL_ID (mine.id), with whether each is
    live (mine.live, see legacy_live), for a SELECT over mine ordered by MINE_ORDER. A legacy row the application
    deleted since it was mapped keeps its mapping and is never named again (its id would fail the legacy foreign
    key). Selected through the mapping's index on the new id before they are ordered: written as `where new = $1
    order by legacy limit 1`, a session's cached generic plan could walk the mapping's primary key in order,
    filtering on the new id, and read the whole mapping for every new-code insert."""
    return sql.SQL("with mine as materialized (select m.{ml} as id, {live} as live from {m} m join {lt} c "
                   "on c.{lk} = m.{ml} where m.{mn} = {v})").format(
        ml=ident(spec.mapping_legacy_column), live=legacy_live_sql(spec, cat.legacy, "c"), m=qn(names(spec)["mapping"]),
        lt=qn(cat.legacy.name), lk=ident(spec.legacy.key), mn=ident(spec.migration.new_column), v=canonical_id)


# A merged person's legacy ids in the order pgconverge picks them: a live one first, then the key's own order (no
# min(): there is none for uuid).
MINE_ORDER = sql.SQL("mine.live desc, mine.id")


def _partial_unique_predicates(table: Table, columns, alias: str) -> list[str]:
    from pgconverge.planning.index_mirror import contains_column, qualified_predicate

    wanted = set(columns)
    out = []
    for ix in table.indexes:
        if not (ix.unique and ix.valid and ix.predicate) or not any(contains_column(ix, c) for c in wanted):
            continue
        if all(c is None or c in wanted for c in ix.columns):
            pred = qualified_predicate(ix, alias)
            if pred and pred not in out:
                out.append(pred)
    return out


def _order_by(spec: Spec, can: Table, key: sql.Composable = sql.SQL("k")) -> sql.Composable:
    """Prefer a row the application holds unique (see live_predicates: a soft-deleted profile loses to the live one
    with the same number), then the row already stored in the key's canonical spelling (what exact lookups find),
    then the oldest.

    Over canonical rows aliased p whose match key is KEY, selected first in a subquery of their own (`offset 0`):
    ordered and limited together with the key's filter, a plan could walk an index on this order (created_at, the
    key) and filter every row on the way, where the match index finds the one or two rows sharing the key.
    """
    parts = [sql.SQL("coalesce(({}), false) desc").format(sql.SQL(pred)) for pred in live_predicates(spec, can)]
    if len(spec.canonical.match_columns) == 1:
        c = can.column(spec.canonical.match_columns[0])
        parts.append(sql.SQL("({} = {}) desc").format(match.as_text("p", c),
                                                      match.preferred_form(spec.legacy.match_kinds[0], key)))
    for cand in ("created_at", "inserted_at"):
        if can.column(cand):
            parts.append(sql.SQL("p.{} asc nulls last").format(ident(cand)))
            break
    parts.append(sql.SQL("p.{}").format(ident(spec.canonical.key)))
    return sql.SQL(", ").join(parts)


def created_values(spec: Spec, cat: Catalog, normalize: QualifiedName, alias: str = "r",
                   key: sql.Composable = sql.SQL("k")) -> list[sql.Composable]:
    """Each canonical match column's value in a created row: the legacy value (row ALIAS, match key KEY) in the
    canonical spelling. Also what `plan` checks the canonical table's rules against (identity/check.py)."""
    out = []
    for lc, cc, kind in zip(spec.legacy.match_columns, spec.canonical.match_columns, spec.legacy.match_kinds):
        raw = match.as_text(alias, cat.legacy.column(lc))
        value = match.stored_value(kind, match.part_key(kind, raw, normalize), raw)
        out.append(sql.SQL("case when {} is null then null else ({})::{} end").format(
            key, value, sql.SQL(unsized(cat.canonical.column(cc).type))))
    return out


def unsized(type_: str) -> str:
    """TYPE with no length for a character or bit type (`character varying(80)` → `character varying`,
    `character(30)` → `bpchar`, `bit(8)` → `bit varying`): an explicit cast to the sized type cuts a longer value
    short without a word (and a bare `character` or `bit` is one long), where writing it into the column refuses
    it, so a long e-mail is not stored cut, as another person's."""
    if not re.search(r"\(\d+\)$", type_):
        return type_
    base = re.sub(r"\(\d+\)$", "", type_)
    return {"character": "bpchar", "bit": "bit varying"}.get(base, base) \
        if base in ("character", "bit", "character varying", "bit varying") else type_


def _same_spelling(spec: Spec, cat: Catalog) -> sql.Composable:
    """Whether canonical row p stores legacy row r's match value(s) as written: 'exact', else 'normalized'."""
    return sql.SQL(" and ").join(
        sql.SQL("{} = {}").format(match.as_text("p", cat.canonical.column(cc)),
                                  match.as_text("r", cat.legacy.column(lc)))
        for lc, cc in zip(spec.legacy.match_columns, spec.canonical.match_columns))


def match_batch(spec: Spec, cat: Catalog, live_only: bool = False) -> tuple[sql.Composable, sql.Composable]:
    """One batch of align.match, as the halves of a Batched statement (%(after)s, %(upper)s, %(n)s → scanned,
    last key, mapped). LIVE_ONLY: the legacy rows legacy_live holds alone (align.match_live, before the others).

    Most legacy rows match a canonical row that already exists, and for those the decision is a lookup:
    the preferred canonical row with the row's key (the order `align_legacy_row` uses), 'exact' or
    'normalized' as it says. Those mappings are written here for the whole batch in one statement;
    every other unmapped row (no key, no canonical row yet, reverse alignment in progress, or a key
    another transaction is deciding right now) goes through `align_legacy_row`, which creates rows,
    refuses, or waits for the key's lock as it always did.

    The lookup reads the same committed state the function would read, with one difference kept small
    on purpose: the function waits for the key's advisory lock before looking, so that it sees the
    canonical row a concurrent decision is creating. Here the lock is only tried: a key someone else
    holds is left to the function, which waits. A mapping written meanwhile by the legacy trigger
    wins (on conflict do nothing), as it does in the function.
    """
    n = names(spec)
    leg, can = cat.legacy, cat.canonical
    return (sql.SQL("""b as materialized (
  select r.{lk} as id, r as rec, x.one is not null as mapped, {lkey} as k
    from {lt} as r
    -- a lookup per row through the mapping's primary key (an EXISTS could be planned as a hash of
    -- the whole mapping, read again by every batch)
    left join lateral (select 1 as one from {mapping} m where m.{mlc} = r.{lk} limit 1) as x on true
   where (%(after)s::{ty} is null or r.{lk} > %(after)s::{ty})
     and (%(upper)s::{ty} is null or r.{lk} <= %(upper)s::{ty}){live}
   order by r.{lk} limit %(n)s),
found as materialized (
  select b.id, c.target, c.how, b.k
    from b cross join lateral (select (b.rec).*) as r
    cross join lateral (
      select p.{ck} as target, case when {same} then 'exact' else 'normalized' end as how
        from (select p.* from {canonical} p where {ckey} = b.k offset 0) p order by {order_by} limit 1) as c
   where not b.mapped and b.k is not null
     and pg_catalog.current_setting({flag}, true) is distinct from 'on'
     and pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtextextended('pgconverge:' || b.k, 0))),
added as (
  insert into {mapping} ({mlc}, {mcc}, method, match_key)
  select f.id, f.target, f.how, f.k from found f order by f.id
  on conflict ({mlc}) do nothing),
cleared as (
  delete from {pending} d using found f where d.legacy_id = f.id::text),
rest as materialized (
  select b.id, {align_row}(b.rec) as v from b
   where not b.mapped and not exists (select 1 from found f where f.id = b.id))""").format(
        lk=ident(spec.legacy.key), ty=sql.SQL(leg.column(spec.legacy.key).value_type), lt=qn(leg.name),
        mapping=qn(n["mapping"]), mlc=ident(spec.mapping_legacy_column), mcc=ident(spec.migration.new_column),
        lkey=legacy_key(spec, cat, "r"), ck=ident(spec.canonical.key), same=_same_spelling(spec, cat),
        canonical=qn(can.name), ckey=canonical_key(spec, cat, "p"), order_by=_order_by(spec, can, sql.SQL("b.k")),
        flag=sql.Literal(REVERSE_FLAG), pending=qn(n["pending"]), align_row=qn(n["align_row"]),
        live=sql.SQL("\n     and {}").format(legacy_live_sql(spec, leg, "r")) if live_only else sql.SQL("")), sql.SQL(
        "(select count(*) from b), (select b.id from b order by b.id desc limit 1), "
        "(select count(*) from b where b.mapped) + (select count(*) from found) + (select count(v) from rest)"))


def _align_row_function(spec: Spec, cat: Catalog, key_insert: sql.Composable | None) -> sql.Composable:
    n = names(spec)
    can = cat.canonical
    ck = ident(spec.canonical.key)
    cols = [ident(c) for c in spec.canonical.match_columns] + [ident(c) for _, c in spec.canonical.copy_columns]
    vals = created_values(spec, cat, n["normalize"]) + [sql.SQL("r.{}").format(ident(lc))
                                                        for lc, _ in spec.canonical.copy_columns]
    # For old code's writes, a canonical row the table refuses with the copied values (a unique e-mail another row
    # has, a CHECK on the name) is made with the match values alone: the key stays, if it is copied.
    kept = len(spec.canonical.match_columns)
    bare = [(c, v) for i, (c, v) in enumerate(zip(cols, vals))
            if i < kept or spec.canonical.copy_columns[i - kept][1] == spec.canonical.key]
    bare_cols, bare_vals = [c for c, _ in bare], [v for _, v in bare]
    # And where the canonical table refuses the match values too (a CHECK on the number's form): a row without them.
    empty_cols, empty_vals = bare_cols[kept:], bare_vals[kept:]
    if key_insert is not None:
        for lst, x in ((cols, ck), (vals, key_insert), (bare_cols, ck), (bare_vals, key_insert),
                       (empty_cols, ck), (empty_vals, key_insert)):
            lst.insert(0, x)
    same = _same_spelling(spec, cat)
    refuse = effective_unmatched(spec, cat) == "refuse"
    ck_type = sql.SQL(can.column(spec.canonical.key).value_type)
    code = sql.SQL("""
declare
  k text;
  target {ck_type};
  how text;
  note text;
  refused text;  -- why the canonical table refused a row made for old code's write
  outer_key text := pg_catalog.current_setting({aligning_key}, true);  -- an enclosing creation's, given back after
  outer_legacy text := pg_catalog.current_setting({aligning}, true);
  -- old code writing through the application, not pgconverge's own steps: its write must not fail
  live constant boolean := pg_catalog.current_setting('application_name') not like all (array[{own}]);
begin
  if pg_catalog.current_setting({flag}, true) = 'on' then
    -- A legacy row pgconverge itself is creating for a canonical row: its mapping is written there, after the
    -- insert. A dependent row an application trigger writes for it meanwhile belongs to that canonical row.
    if not exists (select 1 from {mapping} m where m.{mlc} = r.{lk}) then
      return nullif(pg_catalog.current_setting({reverse_target}, true), '')::{ck_type};
    end if;
    return null;
  end if;
  select m.{mcc} into target from {mapping} m where m.{mlc} = r.{lk};
  if found then
    if exists (select 1 from {canonical} p where p.{ck} = target) then
      return target;  -- decided once; a later change of number does not move the row to another identity
    end if;
    -- the application has deleted that canonical row since: decided again, as a row old code writes now would be
    delete from {mapping} m where m.{mlc} = r.{lk};
    target := null;
  end if;
  k := {lkey};
  if k is not null then
    -- one decision per key at a time: batches and triggers creating the same canonical row wait here
    perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('pgconverge:' || k, 0));
    select p.{ck}, case when {same} then 'exact' else 'normalized' end into target, how
      from (select p.* from {canonical} p where {ckey} = k offset 0) p order by {order_by} limit 1;
  end if;
  if target is null then
    if k is null and {refuse} and not (live and pg_catalog.current_setting({placing}, true) is not distinct from 'on') then
      -- unmatched = refuse: a person decides (the coverage gate lists it)
      insert into {pending} (legacy_id, reason) values (r.{lk}::text, {why})
        on conflict (legacy_id) do update set reason = excluded.reason, at = clock_timestamp();
      return null;
    elsif k is null and {refuse} then  -- old code writes a row of it: that write must not fail for want of an owner
      note := {live_why};
    end if;
    if k is not null then
      -- The key's marker, in this transaction. One committed after this transaction's snapshot (repeatable read
      -- or serializable) fails this insert with a serialization failure: a canonical row exists for the key
      -- that this transaction cannot see, and a second one would split the person in two.
      insert into {created_keys} (match_key) values (k) on conflict do nothing;
      -- An application trigger on the canonical table may write a dependent row for the row made now, by the new
      -- id alone: the sync trigger gives it this legacy row (planning/expand.py), the mapping not written yet.
      perform pg_catalog.set_config({aligning_key}, k, true), pg_catalog.set_config({aligning}, r.{lk}::text, true);
    end if;
    {create}
    how := 'created';
    if target is null and k is not null then  -- lost a race with a writer that does not take our lock
      select p.{ck}, 'normalized' into target, how from (select p.* from {canonical} p where {ckey} = k offset 0) p
        order by {order_by} limit 1;
    end if;{bare}
    if k is not null then
      perform pg_catalog.set_config({aligning_key}, coalesce(outer_key, ''), true),
        pg_catalog.set_config({aligning}, coalesce(outer_legacy, ''), true);
    end if;
    if target is null and refused is not null then  -- refused even without its values: it waits, and says why
      raise exception using errcode = 'check_violation', message = pg_catalog.format(
        'pgconverge: could not create a %s row for %s %s: %s', {can_name}, {leg_name}, r.{lk}, refused);
    end if;
    if target is null then
      -- the fix in the message itself: the Supabase CLI, which applies emitted files, prints no HINT
      raise exception using errcode = 'unique_violation', message = pg_catalog.format(
        'pgconverge: could not create a %s row for %s %s: another %s row holds one of the values it would be '
        'created with (%s) under a unique rule; decide the row with `pgconverge align --decisions FILE`, or leave '
        'that column out of canonical.copy_columns', {can_name}, {leg_name}, r.{lk}, {can_name}, {created_cols});
    end if;
  end if;
  insert into {mapping} ({mlc}, {mcc}, method, match_key, note) values (r.{lk}, target, how, k, note)
    on conflict ({mlc}) do nothing;
  delete from {pending} where legacy_id = r.{lk}::text;
  select m.{mcc} into target from {mapping} m where m.{mlc} = r.{lk};
  return target;
end""").format(
        ck_type=ck_type, mcc=ident(spec.migration.new_column), mapping=qn(n["mapping"]),
        mlc=ident(spec.mapping_legacy_column), lk=ident(spec.legacy.key), lkey=legacy_key(spec, cat, "r"),
        ckey=canonical_key(spec, cat, "p"), same=same, ck=ck, canonical=qn(can.name), order_by=_order_by(spec, can),
        cols=sql.SQL(", ").join(cols), vals=sql.SQL(", ").join(vals), refuse=sql.Literal(refuse),
        pending=qn(n["pending"]), why=sql.Literal(f"no usable {describe_match(spec)} value, and unmatched rows "
                                                  "are refused (migration.unmatched)"),
        can_name=sql.Literal(str(can.name)), leg_name=sql.Literal(str(cat.legacy.name)),
        created_cols=sql.Literal(", ".join(spec.canonical.match_columns + tuple(c for _, c in spec.canonical.copy_columns))),
        flag=sql.Literal(REVERSE_FLAG), created_keys=qn(n["created_keys"]), reverse_target=sql.Literal(REVERSE_TARGET),
        aligning_key=sql.Literal(ALIGNING_KEY), aligning=sql.Literal(ALIGNING),
        own=sql.SQL(", ").join(sql.Literal(a) for a in OWN_APPLICATION_NAMES), placing=sql.Literal(PLACING),
        live_why=sql.Literal(f"created when old code wrote a row of its own for it, with no usable "
                             f"{describe_match(spec)} value (unmatched = \"refuse\" would have it wait for a person, "
                             "and that write would fail): review it"),
        **_create(qn(can.name), ck, cols, vals, bare_cols, bare_vals, empty_cols, empty_vals))
    return sql.SQL(
        "create or replace function {f}(r {lt}) returns {ck_type} language plpgsql volatile security definer "
        "set search_path = {path} set row_security = off as {body}").format(
        f=qn(n["align_row"]), lt=qn(cat.legacy.name), ck_type=ck_type, body=body(code), path=search_path(spec, cat))


def _create(table: sql.Composable, ck: sql.Composable, cols: list, vals: list, bare_cols: list,
            bare_vals: list, empty_cols: list, empty_vals: list) -> dict[str, sql.Composable]:
    """PL/pgSQL creating the canonical row into TARGET ("create"), and for old code's writes (LIVE) making one that
    the canonical table refuses with its copied values (a CHECK or a type's length raises; a unique rule leaves
    TARGET empty) again without them ("bare"), and one it refuses with its match values too (a CHECK on the
    number's form) with neither ("empty": a person without a number there, like an unusable one), NOTE saying why:
    the report lists such rows for review. Old code's write goes through either way."""
    name = sql.Literal(text(table))

    def insert(c: list, v: list) -> sql.Composable:
        into = sql.SQL("({}) values ({})").format(sql.SQL(", ").join(c), sql.SQL(", ").join(v)) if c \
            else sql.SQL("default values")
        return sql.SQL("insert into {t} as p {into} on conflict do nothing returning p.{ck} into target;").format(
            t=table, into=into, ck=ck)

    copied = len(bare_cols) != len(cols)
    create = sql.SQL("""if live then
      begin
        {full}
      exception when integrity_constraint_violation or data_exception then
        refused := sqlerrm;
      end;
    else
      {full}
    end if;""").format(full=insert(cols, vals))
    bare = sql.SQL("""
    if target is null and live then
      {bare}
      -- It refuses the match values too: where old code writes a row of its own for it (which must not fail for
      -- want of an owner), a canonical row without them, for a person to look at; else it waits in pending.
      if target is null and pg_catalog.current_setting({placing}, true) is not distinct from 'on' then
        begin
          {empty}
          note := pg_catalog.format('created without its match values, which %s refused (%s): review it', {name},
                                    coalesce(refused, 'a unique rule'));
        exception when integrity_constraint_violation or data_exception then
          null;  -- no canonical row it can have at all: it waits, and says why
        end;
      end if;
      how := 'created';
    end if;""").format(name=name, empty=insert(empty_cols, empty_vals), bare=sql.SQL("""begin
        {insert}
        note := case when refused is not null then pg_catalog.format(
          'created without its copied columns, which %s refused (%s): review it', {name}, refused)
          else pg_catalog.format('created without its copied columns, one of whose values another %s row holds '
                                 'under a unique rule: review it', {name}) end;
      exception when integrity_constraint_violation or data_exception then
        refused := sqlerrm;
      end;""").format(insert=insert(bare_cols, bare_vals), name=name) if copied else sql.SQL(""),
        placing=sql.Literal(PLACING))
    return {"create": create, "bare": bare}


def _if_exists(table: QualifiedName, stmt: sql.Composable) -> sql.Composable:
    """STMT run only where TABLE exists (a DO block: a statement naming a missing table fails when it is parsed)."""
    return sql.SQL("do $pgc$ begin if pg_catalog.to_regclass({t}) is not null then execute {s}; end if; end $pgc$"
                   ).format(t=sql.Literal(text(qn(table))), s=sql.Literal(text(stmt)))


def _foreign_references(spec: Spec, cat: Catalog, live: Catalog | None, expanded: Catalog | None = None):
    """Foreign keys to the canonical table other than expand's own (gone by the time align is undone): those of the
    references align saw, and of those expand was planned with (EXPANDED; a table that became a reference since
    align, a partition detached in between, say)."""
    from pgconverge.planning.references import new_columns

    ours = {(t, new) for c in (cat, expanded) if c is not None for (t, _legacy), new in new_columns(spec, c).items()}
    return tuple(fk for fk in (live or cat).canonical_referenced_by
                 if not (len(fk.columns) == 1 and (fk.table, fk.columns[0]) in ours))


def reverse_values(spec: Spec, cat: Catalog) -> list[tuple[str, str, sql.Composable]]:
    """What a legacy row made by legacy_for_canonical holds: (legacy column, the canonical column it comes from, its
    value over canonical row p). Every other legacy column gets its default. Also what a rollback checks the legacy
    table's rules against before its first change (identity/check.py legacy_refusals)."""
    leg = cat.legacy
    out = [(lc, cc, sql.SQL("p.{}::{}").format(ident(cc), sql.SQL(unsized(leg.column(lc).type))))
           for lc, cc in zip(spec.legacy.match_columns, spec.canonical.match_columns)]
    # Copied values go in by INSERT's assignment conversion, as written.
    out += [(lc, cc, sql.SQL("p.{}").format(ident(cc))) for lc, cc in spec.canonical.copy_columns]
    return out


@dataclass(frozen=True)
class ReverseAligned:
    """The rows of one dependent table (or leaf partition) that a rollback step hands to legacy_for_canonical: those
    with the new id and no legacy id. For each canonical row among their owners that has no legacy row, the function
    makes one; execution/prechecks.py checks, before the rollback's first change, that the legacy table takes them."""

    table: QualifiedName
    legacy: str  # the dependent's legacy column (absent while contract has it dropped: every row is then handed over)
    new: str
    # Over row d: the step takes the legacy id contract kept for it instead (None: no kept ids)
    kept: sql.Composable | None
    kept_table: QualifiedName | None
    legacy_table: QualifiedName
    legacy_key: str
    canonical: QualifiedName
    canonical_key: str
    mapping: QualifiedName
    mapping_legacy: str
    mapping_canonical: str
    values: tuple[tuple[str, str, sql.Composable], ...]  # reverse_values


def reverse_aligned(spec: Spec, cat: Catalog, table: QualifiedName, legacy: str, new: str,
                    kept: sql.Composable | None = None, kept_table: QualifiedName | None = None) -> ReverseAligned:
    return ReverseAligned(table, legacy, new, kept, kept_table, cat.legacy.name, spec.legacy.key, cat.canonical.name,
                          spec.canonical.key, spec.mapping_table, spec.mapping_legacy_column,
                          spec.migration.new_column, tuple(reverse_values(spec, cat)))


def _legacy_for_function(spec: Spec, cat: Catalog) -> sql.Composable:
    """Reverse alignment: the legacy row of a canonical row, made from it when there is none.

    Rows that new code wrote for an identity old code never knew need a legacy owner before
    a rollback can give them back to old code.
    """
    n = names(spec)
    leg, can = cat.legacy, cat.canonical
    lk_type = sql.SQL(leg.column(spec.legacy.key).value_type)
    ck_type = sql.SQL(can.column(spec.canonical.key).value_type)
    made = reverse_values(spec, cat)
    cols = [ident(lc) for lc, _, _ in made]
    vals = [v for _, _, v in made]
    code = sql.SQL("""
declare
  target {lk_type};
  backfill text;
begin
  -- the person's legacy row where there is one (a live one first: see mapped_legacy_rows)
  {mine}
  select mine.id into target from mine order by {order} limit 1;
  if target is not null then
    return target;
  end if;
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('pgconverge:reverse:' || canonical_id::text, 0));
  {mine}
  select mine.id into target from mine order by {order} limit 1;
  if target is not null then
    return target;
  end if;
  -- An application trigger on the legacy table may write a dependent row for the row made here (a first cart for
  -- every new customer): its sync trigger finds the canonical row in REVERSE_TARGET (align_legacy_row), and runs
  -- even inside a rollback's batch, which would have it skip the row.
  backfill := pg_catalog.current_setting({backfill}, true);
  perform pg_catalog.set_config({flag}, 'on', true), pg_catalog.set_config({reverse_target}, canonical_id::text, true),
    pg_catalog.set_config({backfill}, '', true);
  insert into {legacy} as l ({cols}) select {vals} from {canonical} p where p.{ck} = canonical_id
    returning l.{lk} into target;
  perform pg_catalog.set_config({flag}, 'off', true), pg_catalog.set_config({reverse_target}, '', true),
    pg_catalog.set_config({backfill}, coalesce(backfill, ''), true);
  if target is null then
    return null;  -- no such canonical row
  end if;
  insert into {mapping} ({mlc}, {mcc}, method, match_key)
    select target, canonical_id, 'reverse', {ckey} from {canonical} p where p.{ck} = canonical_id;
  return target;
end""").format(lk_type=lk_type, mlc=ident(spec.mapping_legacy_column), mcc=ident(spec.migration.new_column),
               mapping=qn(n["mapping"]), flag=sql.Literal(REVERSE_FLAG), legacy=qn(leg.name),
               reverse_target=sql.Literal(REVERSE_TARGET), backfill=sql.Literal(BACKFILL_SETTING),
               cols=sql.SQL(", ").join(cols), vals=sql.SQL(", ").join(vals), canonical=qn(can.name),
               ck=ident(spec.canonical.key), lk=ident(spec.legacy.key), ckey=canonical_key(spec, cat, "p"),
               mine=mapped_legacy_rows(spec, cat, sql.SQL("canonical_id")), order=MINE_ORDER)
    return sql.SQL(
        "create or replace function {f}(canonical_id {ck_type}) returns {lk_type} language plpgsql volatile "
        "security definer set search_path = {path} set row_security = off as {body}").format(
        f=qn(n["legacy_for"]), ck_type=ck_type, lk_type=lk_type, body=body(code), path=search_path(spec, cat))


def _legacy_trigger_function(spec: Spec, cat: Catalog) -> sql.Composable:
    n = names(spec)
    # Never fail the application's write: a row that cannot be decided now (an error creating its canonical
    # row, say) waits in the pending table, and the coverage gate names it with the reason.
    # A key the application gives a new row again is retired before the row is written (_legacy_reuse_function).
    # Here, after it, only a mapping decided before this statement is retired: one that trigger could not retire
    # (the deleted row's transaction committed while this insert waited for its key). A mapping decided in this
    # statement is the new row's own, made by a dependent row's sync trigger: kept, even without a match key.
    code = sql.SQL("""
begin
  if tg_op = 'INSERT' and pg_catalog.current_setting({flag}, true) is distinct from 'on' then
    with gone as (delete from {mapping} m where m.{mlc} = new.{lk} and not coalesce(m.match_key = ({key}), false)
                    and m.decided_at < pg_catalog.statement_timestamp()
                  returning m.*)
    insert into {retired} ({mlc}, {mcc}, method, match_key, decided_at, note)
      select g.{mlc}, g.{mcc}, g.method, g.match_key, g.decided_at, g.note from gone g;
  end if;
  perform {f}(new);
  return null;
exception when others then
  {park}
  return null;
end""").format(f=qn(n["align_row"]), flag=sql.Literal(REVERSE_FLAG), mapping=qn(n["mapping"]),
                 mlc=ident(spec.mapping_legacy_column), lk=ident(spec.legacy.key), key=legacy_key(spec, cat, "new"),
                 retired=qn(n["retired"]), mcc=ident(spec.migration.new_column),
                 park=_park(spec, sql.SQL(
        "case sqlstate when '40001' then 'written by a transaction whose snapshot is older than the canonical row made "
        "for the same key (repeatable read or serializable): pgconverge maps it at its next step' else sqlerrm end")))
    return _trigger_function(n["legacy_trigger_fn"], code, search_path(spec, cat))


def _park(spec: Spec, reason: sql.Composable) -> sql.Composable:
    """PL/pgSQL, in a trigger's exception handler: the legacy row NEW waits in the pending table with REASON (an
    expression) and the error's SQLSTATE; the coverage gates name it."""
    return sql.SQL("insert into {pending} as p (legacy_id, reason, sqlstate) values (new.{lk}::text, {reason}, "
                   "sqlstate) on conflict (legacy_id) do update set reason = excluded.reason, "
                   "sqlstate = excluded.sqlstate, at = clock_timestamp();").format(
        pending=qn(names(spec)["pending"]), lk=ident(spec.legacy.key), reason=reason)


def _trigger_function(name: QualifiedName, code: sql.Composable, path: sql.Composable) -> sql.Composable:
    """A trigger function of the legacy table. SECURITY DEFINER: old code runs as an API role, which has no access to
    the private schema. PATH: its search_path (search_path())."""
    return sql.SQL(
        "create or replace function {f}() returns trigger language plpgsql security definer "
        "set search_path = {path} set row_security = off as {body}").format(f=qn(name), body=body(code), path=path)


KEY_TRIGGER = "pgconverge_align_key"
# A BEFORE INSERT trigger fires before every AFTER trigger (an application's that writes a dependent row among them)
# and, for a row a writable CTE inserts, before the statement's other parts read it; '~' sorts after letters, digits
# and '_', so it fires after the application's BEFORE triggers and sees the row as it will be written.
REUSE_TRIGGER = "~pgconverge_align_reused"


def _legacy_reuse_function(spec: Spec, cat: Catalog) -> sql.Composable:
    """A key the application gives a new row again (deleted, then inserted: a restore, a CRM sync) finds the mapping
    the deleted row left. It is the new row's only where both carry the same match key (the same person back); else
    it is retired here, BEFORE the row is written, so that the sync trigger of a dependent row written in the same
    statement finds no mapping and decides the new row (as align's trigger would), instead of giving the dependent row
    the deleted person's canonical row. A key a live row still holds is left alone: the insert then fails on it or,
    under ON CONFLICT, is not made."""
    n = names(spec)
    code = sql.SQL("""
begin
  if pg_catalog.current_setting({flag}, true) is distinct from 'on'
      and exists (select 1 from {mapping} m where m.{mlc} = new.{lk}) then
    begin
      with gone as (delete from {mapping} m where m.{mlc} = new.{lk} and not coalesce(m.match_key = ({key}), false)
                      and not exists (select 1 from {lt} l where l.{lk} = new.{lk})
                    returning m.*)
      insert into {retired} ({mlc}, {mcc}, method, match_key, decided_at, note)
        select g.{mlc}, g.{mcc}, g.method, g.match_key, g.decided_at, g.note from gone g;
    exception when others then
      null;  -- never fail the application's write: align's trigger retires the mapping once the row is written
    end;
  end if;
  return new;
end""").format(flag=sql.Literal(REVERSE_FLAG), mapping=qn(n["mapping"]), mlc=ident(spec.mapping_legacy_column),
               lk=ident(spec.legacy.key), key=legacy_key(spec, cat, "new"), lt=qn(cat.legacy.name),
               retired=qn(n["retired"]), mcc=ident(spec.migration.new_column))
    return _trigger_function(n["legacy_reuse_fn"], code, search_path(spec, cat))


def _legacy_key_function(spec: Spec, cat: Catalog) -> sql.Composable:
    """A legacy row whose key the application changes keeps its mapping under the new key (and its wait in the
    pending table): BEFORE the row changes, so the dependents' sync triggers, which ON UPDATE CASCADE fires after it,
    find the person's canonical row under the new key instead of deciding the row again as a new one (a second
    canonical row). A mapping left under the new key by a legacy row deleted since gives way: no live row holds that
    key then, because a key the dependents' foreign keys reference cannot be DEFERRABLE, and a unique key that is not
    refuses two rows the same key even in the middle of a statement (so two rows cannot swap keys)."""
    n = names(spec)
    code = sql.SQL("""
begin
  delete from {mapping} m where m.{ml} = new.{lk};
  update {mapping} m set {ml} = new.{lk} where m.{ml} = old.{lk};
  delete from {pending} p where p.legacy_id = new.{lk}::text;
  update {pending} p set legacy_id = new.{lk}::text where p.legacy_id = old.{lk}::text;
  return new;
exception when others then  -- never fail the application's write: the row is decided again, and said why
  {park}
  return new;
end""").format(mapping=qn(n["mapping"]), ml=ident(spec.mapping_legacy_column), lk=ident(spec.legacy.key),
               pending=qn(n["pending"]), park=_park(spec, sql.SQL(
                   "pg_catalog.format('its key changed from %s and its mapping could not follow: %s', old.{}, "
                   "sqlerrm)").format(ident(spec.legacy.key))))
    return _trigger_function(n["legacy_key_fn"], code, search_path(spec, cat))


# The forward steps after which canonical rows align created may exist: the trigger creates one for every person old
# code signs up from the moment it is in place (a run stopped before the match leaves them too), the match and
# map_pending for the rows already there. drop_legacy_trigger marks align.legacy_trigger undone before the rows are
# deleted (they are deleted once no new one can come), so the trigger's function, which it calls and which is undone
# only after them, stands for it: the trigger is never in place without it.
CREATED_BY = (f"{PHASE}.legacy_trigger", f"{PHASE}.legacy_trigger_function", f"{PHASE}.match_live", f"{PHASE}.match",
              f"{PHASE}.map_pending")


def rollback(spec: Spec, cat: Catalog, live: Catalog | None = None, cats=None) -> list[Step]:
    """Undo align: stop mapping new rows, delete the canonical rows align created (if unused), drop the rest.

    The private schema and its ledger stay: they are the history of what was done.
    """
    from pgconverge.operations.create_function import DropFunction
    from pgconverge.operations.create_index import DropIndexConcurrently
    from pgconverge.operations.create_table import DropTable
    from pgconverge.operations.create_trigger import DropTrigger
    from pgconverge.operations.delete_created import delete_created, referenced_check
    from pgconverge.planning import contract

    n = names(spec)
    leg, can = cat.legacy, cat.canonical
    lk = leg.column(spec.legacy.key)
    expanded = getattr(cats, "saved", {}).get("expand")
    steps = [
        # Refuse before changing anything when created canonical rows are already in use.
        ("created_rows_unused", referenced_check(can.name, spec.canonical.key, n["mapping"], spec.migration.new_column,
                                                 _foreign_references(spec, cat, live, expanded)), (), CREATED_BY),
        # Then stop mapping: no legacy row written from here on gets a canonical row we would miss.
        ("drop_legacy_trigger", DropTrigger("pgconverge_align", leg.name), ("align.legacy_trigger",
                                                                             "align.coverage_gate")),
        ("drop_legacy_key_trigger", DropTrigger(KEY_TRIGGER, leg.name), ("align.legacy_key_trigger",)),
        ("drop_legacy_reuse_trigger", DropTrigger(REUSE_TRIGGER, leg.name), ("align.legacy_reuse_trigger",)),
        # The canonical rows align created for people whose legacy row left and whose key another took (no mapping
        # names them any more), unless something references them by now: then they carry data of their own and stay.
        # The table is read only where it exists (a migration begun before it, or killed before it was made, has
        # none). Before delete_created, which marks align.match undone.
        ("delete_retired_created", RunSql(_if_exists(n["retired"], sql.SQL(
            "delete from {c} p using {r} r where r.method = 'created' and p.{ck} = r.{mc} and not exists (select 1 "
            "from {m} m where m.{mc} = r.{mc}){unused}").format(
                c=qn(can.name), r=qn(n["retired"]), ck=ident(spec.canonical.key), mc=ident(spec.migration.new_column),
                m=qn(n["mapping"]), unused=sql.Composed([sql.SQL(" and not exists (select 1 from {t} x where x.{c} = "
                                                                 "p.{ck})").format(t=qn(fk.table), c=ident(fk.columns[0]),
                                                                                   ck=ident(spec.canonical.key))
                                                         for fk in _foreign_references(spec, cat, live, expanded)
                                                         if len(fk.columns) == 1]))),
            f"delete the {can.name} rows align created for legacy rows deleted since"), (), CREATED_BY),
        ("delete_created", delete_created(can.name, spec.canonical.key, n["mapping"], spec.mapping_legacy_column,
                                          lk.value_type, spec.migration.new_column, spec.migration.batch_size),
         ("align.match_live", "align.match"), CREATED_BY),
        ("drop_legacy_trigger_function", DropFunction(n["legacy_trigger_fn"], ""), ("align.legacy_trigger_function",)),
        ("drop_legacy_key_function", DropFunction(n["legacy_key_fn"], ""), ("align.legacy_key_function",)),
        ("drop_legacy_reuse_function", DropFunction(n["legacy_reuse_fn"], ""), ("align.legacy_reuse_function",)),
        ("drop_align_function", DropFunction(n["align_row"], str(leg.name)), ("align.align_function",)),
        ("drop_legacy_for_function", DropFunction(n["legacy_for"], can.column(spec.canonical.key).value_type),
         ("align.legacy_for_function",)),
        # The statistics the ANALYZE steps gathered go with the index and the table they were of (the canonical
        # table's own columns' are refreshed, which undoes nothing the application relies on).
        ("drop_match_index", DropIndexConcurrently(n["match_index"], can.name), ("align.match_index",
                                                                                 "align.analyze_canonical")),
        ("drop_mapping_table", DropTable(n["mapping"]), ("align.mapping_table", "align.analyze_mapping")),
        ("drop_pending_table", DropTable(n["pending"]), ("align.pending_table", "align.map_pending")),
        ("drop_retired_table", RunSql(sql.SQL("drop table if exists {}").format(qn(n["retired"])),
                                      "drop the table of retired mappings"), ("align.retired_table",)),
        ("drop_created_keys_table", DropTable(n["created_keys"]), ("align.created_keys_table",)),
        ("drop_linkage_snapshot", DropTable(contract.linkage_table(spec, "before")),
         ("align.linkage_before", "align.counts_before")),
        ("drop_normalize_function", DropFunction(n["normalize"], "text"),
         ("align.normalize_function", "align.private_schema", "align.report", "align.phone_audit")),
    ]
    return [Step(f"rollback.align.{i}", "rollback", op, *rest) for i, op, *rest in steps]
