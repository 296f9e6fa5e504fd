"""Contract as files: the runner's gates turned into what SQL can check, and the runtime baseline they compare with.

`pgconverge run contract` decides its gates when it runs: the RLS check recorded in the ledger,
the code audit, the runtime audit against the baseline the switch recorded in the ledger. Files
have no runner, so:

- the switch's baseline (a ledger snapshot for the runner) becomes a file at the end of switch that
  records the legacy table's write counters and the legacy helper's call count into
  ``<private schema>.emitted_runtime_baseline``, through a function that can be called again once
  the last old code is retired (what `pgconverge audit runtime --rebaseline` does for the runner);
- the contract gates become two files at the start of contract: one asserting that the switch is in
  place (rewritten policies call the canonical helper, no other policy calls the legacy one, the new
  column is NOT NULL where expand made it so, every legacy row mapped and every dependent row linked),
  and one comparing the counters with the latest baseline, refusing on any write to the legacy table
  or call of the legacy helper since then;
- the code audit cannot be read in SQL: the gate file's header says to run it in CI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from psycopg import sql

from pgconverge.catalog.baseline import Catalogs
from pgconverge.catalog.model import Catalog
from pgconverge.config import QualifiedName, Spec, show_identifier
from pgconverge.execution.sql import archive_access, body, ident, qn, text
from pgconverge.operations.archive import ArchiveTable
from pgconverge.operations.base import Lock, Operation, Plan, Step
from pgconverge.operations.check import Check
from pgconverge.planning import align, contract, references, shapes, switch

ACCEPT_SETTING = "pgconverge.accept_runtime_use"
BASELINE_STEP = "switch.runtime_baseline"
SWITCH_GATE_STEP, RUNTIME_GATE_STEP = contract.EMITTED_GATES


@dataclass(frozen=True)
class EmittedSql(Operation):
    """Plain statements written only into emitted files, with lines for the file's header.

    Safe alone: the emitted files keep the plan's steps and their order; the runner never runs it.
    """

    safe_alone = True

    stmts: tuple[sql.Composable, ...]
    what: str
    header: tuple[str, ...] = ()
    undo: tuple[sql.Composable, ...] = field(default=(), compare=False)

    @property
    def description(self) -> str:
        return self.what

    @property
    def lock(self) -> Lock:
        return Lock.ACCESS_SHARE

    def statements(self) -> list[sql.Composable]:
        return list(self.stmts)


@dataclass(frozen=True)
class EmittedCheck(Check):
    """A gate as an assertion, with lines for the file's header. Safe alone: reads only."""

    safe_alone = True

    header: tuple[str, ...] = ()


def baseline_table(spec: Spec) -> QualifiedName:
    return QualifiedName(spec.migration.private_schema, "emitted_runtime_baseline")


def baseline_function(spec: Spec) -> QualifiedName:
    return QualifiedName(spec.migration.private_schema, "take_runtime_baseline")


def baseline_op(spec: Spec, cat: Catalog) -> EmittedSql:
    """The switch's runtime baseline as a table row, taken by a function that can be called again later."""
    table, fn = baseline_table(spec), baseline_function(spec)
    # No helper, no call count: to_regprocedure('') raises before PostgreSQL 16 ("expected a left parenthesis").
    helper_calls = sql.SQL(
        "(select f.calls from pg_catalog.pg_stat_user_functions f where f.funcid = pg_catalog.to_regprocedure({}))"
    ).format(sql.Literal(cat.legacy_helper.signature)) if cat.legacy_helper else sql.SQL("null::bigint")
    code = sql.SQL(
        "insert into {t} (legacy_table, seq_scan, idx_scan, n_tup_ins, n_tup_upd, n_tup_del, legacy_helper, "
        "helper_calls, track_functions, old_writes, sync_helper_calls, traffic)\n"
        "select {lt}, coalesce(s.seq_scan, 0), coalesce(s.idx_scan, 0), coalesce(s.n_tup_ins, 0), "
        "coalesce(s.n_tup_upd, 0), coalesce(s.n_tup_del, 0), {lh},\n"
        "  {calls},\n"
        "  pg_catalog.current_setting('track_functions'),\n"
        "  ({old}),\n"
        "  ({sync})::bigint,\n"
        "  ({traffic})\n"
        "from (select 1) as one left join pg_catalog.pg_stat_user_tables s on s.relid = pg_catalog.to_regclass({lt})\n"
        "returning taken_at").format(t=qn(table), lt=sql.Literal(text(qn(cat.legacy.name))),
                                     # '' where the database has no RLS identity helper (legacy.helper = "")
                                     lh=sql.Literal(cat.legacy_helper.signature if cat.legacy_helper else ""),
                                     calls=helper_calls,
                                     old=switch.old_writes_values(switch.old_writes_counters(spec, cat)),
                                     sync=switch.sync_helper_calls_value(spec),
                                     traffic=switch.traffic_values(switch.traffic_tables(cat)))
    stmts = (
        sql.SQL("create table if not exists {} (taken_at timestamptz primary key default pg_catalog.clock_timestamp(), "
                "legacy_table text not null, seq_scan bigint not null, idx_scan bigint not null, n_tup_ins bigint not null, n_tup_upd bigint not null, "
                "n_tup_del bigint not null, legacy_helper text not null, helper_calls bigint, "
                "track_functions text not null, old_writes jsonb, sync_helper_calls bigint, traffic jsonb)").format(
                    qn(table)),
        # A table made by an earlier version's file lacks the per-table counters of old code's rows, the count of
        # the helper's calls the sync triggers made and the counters of the canonical and dependent tables.
        *(sql.SQL("alter table {} add column if not exists {} {}").format(qn(table), sql.Identifier(c), sql.SQL(t))
          for c, t in (("old_writes", "jsonb"), ("sync_helper_calls", "bigint"), ("traffic", "jsonb"))),
        sql.SQL("create or replace function {}() returns timestamptz language sql volatile as {}").format(
            qn(fn), body(code)),
        sql.SQL("revoke all on function {}() from public").format(qn(fn)),
        sql.SQL("select {}()").format(qn(fn)),
    )
    undo = (sql.SQL("drop function if exists {}()").format(qn(fn)),
            sql.SQL("drop table if exists {}").format(qn(table)))
    fn_text = text(qn(fn))
    helper = (f", of {cat.legacy_helper.signature} (calls; counted where track_functions is on, which the function "
              "tracking file turns on for this database)" if cat.legacy_helper else
              " (no legacy helper calls: not applicable, no RLS identity helper, legacy.helper = \"\")")
    header = (
        f"Records the usage counters of {cat.legacy.name} (rows inserted, updated, deleted){helper} and the counters of rows old code wrote to each dependent table with "
        f"only the legacy column (sequences the sync triggers advance) into {text(qn(table))}. The contract gate "
        "compares the counters with the latest row: any write or call after it means old code still runs; and "
        "it waits for the observation window (migration.observation_window) to pass since that row was taken.",
        "Old code keeps running until the new code is deployed everywhere. Once the last old deployment is "
        f"retired, take the baseline again with `select {fn_text}();`, so the contract gate sees only use after "
        "that moment (`pgconverge audit runtime --rebaseline` does the same for `pgconverge run`).",
    )
    return EmittedSql(stmts, "record the usage counters of the legacy table and helper (the runtime baseline)",
                      header, undo)


def _policy_calls(expr_of: str, fn: QualifiedName) -> sql.Composable:
    """Whether the policy text EXPR_OF calls FN: its name as Postgres prints it, bare (`auth_profile_id(`) or quoted
    where it must be (`"authProfileId"(`)."""
    quoted = '"' + fn.name.replace('"', '""') + '"'
    pattern = "(?:\\m" + re.escape(fn.name) + "|" + re.escape(quoted) + ")\\s*\\("
    return sql.SQL("{} ~ {}").format(sql.SQL(expr_of), sql.Literal(pattern))


def switch_gate(spec: Spec, cats: Catalogs) -> EmittedCheck:
    """Everything the switch left that contract relies on, as one query of problems."""
    cat = cats.for_phase("contract")
    legacy = cat.legacy.name
    parts: list[sql.Composable] = []
    if spec.has_helper:
        _helper_parts(spec, cats, cat, parts)
    else:
        parts.append(_legacy_readers(cat))
    from pgconverge.planning.references import new_column

    for d in cat.dependents:
        new = new_column(spec, cat, d)
        t = sql.Literal(text(qn(d.table.name)))
        # Where the legacy foreign key is deferrable, contract itself declares it (checked at commit until then).
        if d.column.not_null and not shapes.not_null_at_commit(d):
            parts.append(sql.SQL(
                "select {w}::text, {why}::text where not coalesce((select a.attnotnull from pg_catalog.pg_attribute a "
                "where a.attrelid = pg_catalog.to_regclass({t}) and a.attname = {n} and not a.attisdropped), false)"
            ).format(w=sql.Literal(f"{d.table.name}.{new}"), t=t, n=sql.Literal(new),
                     why=sql.Literal(f"is not NOT NULL (expand makes it so, as {d.fk.columns[0]} was)")))
        parts.append(sql.SQL(
            "select {w}::text, format('%s rows with %s but no %s', n, {l}, {n}) from (select count(*) as n "
            "from {tab} x where x.{lc} is not null and x.{nc} is null) c where n > 0").format(
            w=sql.Literal(str(d.table.name)), l=sql.Literal(d.fk.columns[0]), n=sql.Literal(new), tab=qn(d.table.name),
            lc=ident(d.fk.columns[0]), nc=ident(new)))
    m = align.names(spec)["mapping"]
    parts.append(sql.SQL(
        "select {w}::text, format('%s rows without a mapping row', n) from (select count(*) as n from {l} x "
        "where not exists (select 1 from {m} y where y.{ml} = x.{k})) c where n > 0").format(
        w=sql.Literal(str(legacy)), l=qn(legacy), m=qn(m), ml=ident(spec.mapping_legacy_column),
        k=ident(spec.legacy.key)))
    # Contract's last files move the legacy table and the mapping into the archive schema, creating it where it does
    # not exist: as the role applying the files, read before the first drop rather than found out after it.
    archive = spec.migration.archive_schema
    shown = show_identifier(archive)
    parts.append(sql.SQL(
        "select format('schema %s', {shown}), case when not a.present then format('does not exist, and %s may not "
        "create schemas in database %s: contract could not create it to archive the legacy table and the mapping "
        "(as the database owner: GRANT CREATE ON DATABASE %s TO %s; or set migration.archive_schema to a schema %s "
        "may create tables in)', a.who, a.db, pg_catalog.quote_ident(a.db), pg_catalog.quote_ident(a.who), a.who) "
        "else format('exists, owned by %s, and %s may not create tables in it: contract could not archive the legacy "
        "table and the mapping there (as its owner: GRANT CREATE ON SCHEMA %s TO %s; or set migration.archive_schema "
        "to a schema that does not exist yet)', a.owner, a.who, {shown}, pg_catalog.quote_ident(a.who)) end "
        "from ({access}) a where not a.allowed").format(shown=sql.Literal(shown), access=archive_access(archive)))
    query = sql.SQL("\n  union all ").join(parts)
    header = (
        "Contract gate 1 of 2: the switch is in place. The rewritten policies call the canonical helper, no policy "
        "calls the legacy helper any more, the new column is NOT NULL where expand made it so, every legacy row has "
        "a mapping row and every dependent row its new id; and the role applying the files may create the archive "
        f"schema {shown} or tables in it. The DO block raises, naming what is missing, and "
        "nothing of contract is applied.",
        "Code audit: whether application code still names the legacy table, column or helper cannot be read from "
        "the database. Run `pgconverge audit code DIR --fail-on-findings` over every code base that uses this "
        "database in CI, and apply the contract files only once it passes (`pgconverge run contract` refuses "
        "likewise unless --accept-code-references).",
        "`pgconverge run contract` also requires the RLS equivalence check the switch records in its ledger; "
        "the pgTAP tests under supabase/tests/before_contract check row level security per sample identity "
        "instead: run them before applying contract.",
    )
    return EmittedCheck("switch in place", query, failure="contract cannot start",
                        fix="apply the align, expand and switch files first (or `pgconverge run switch`) where the "
                            "switch is not complete, or what an item says in its parentheses; then apply this file "
                            "again", header=header)


def _legacy_readers(cat: Catalog) -> sql.Composable:
    """Where the database has no RLS identity helper (legacy.helper = ""): the policies that read the legacy table or
    a legacy column (pg_depend), which nothing rewrites (verify/rls.py without_helper): a policy of the legacy table
    itself only where its row level security is on (the others go with it into the archive)."""
    refs = sql.SQL(", ").join(sql.SQL("({}, {})").format(sql.Literal(text(qn(d.table.name))),
                                                          sql.Literal(d.fk.columns[0])) for d in cat.dependents)
    cols = sql.SQL(" or (d.refobjid, d.refobjsubid) in (select a.attrelid, a.attnum::int from (values {}) as x(t, c) "
                   "join pg_catalog.pg_attribute a on a.attrelid = pg_catalog.to_regclass(x.t) and a.attname = x.c)"
                   ).format(refs) if cat.dependents else sql.SQL("")
    return sql.SQL(
        "select format('policy %s.%s', c.oid::regclass, p.polname), {why}::text from pg_catalog.pg_policy p "
        "join pg_catalog.pg_class c on c.oid = p.polrelid where exists (select 1 from pg_catalog.pg_depend d "
        "where d.classid = 'pg_catalog.pg_policy'::regclass and d.objid = p.oid "
        "and d.refclassid = 'pg_catalog.pg_class'::regclass and (d.refobjid = pg_catalog.to_regclass({lt}){cols})) "
        "and (c.relrowsecurity or c.oid is distinct from pg_catalog.to_regclass({lt}))").format(
        why=sql.Literal("reads the legacy table or a legacy column, but legacy.helper = \"\" (no RLS identity "
                        "helper): nothing rewrites it; rewrite or drop it"),
        lt=sql.Literal(text(qn(cat.legacy.name))), cols=cols)


def _helper_parts(spec: Spec, cats: Catalogs, cat: Catalog, parts: list) -> None:
    """The switch gate's checks of the helpers and the policies that call them."""
    canon_h, legacy_h = spec.canonical.helper, spec.legacy.helper
    expr = ("concat_ws(' ', pg_catalog.pg_get_expr(p.polqual, p.polrelid), "
            "pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))")
    auto, _ = switch.rewrites(spec, cats.for_phase("switch"))
    for r in auto:
        if not re.search(r"\b" + re.escape(canon_h.name) + r"\b", switch._statement(r, spec)):
            continue
        parts.append(sql.SQL(
            "select {what}::text, {why}::text where not exists (select 1 from pg_catalog.pg_policy p "
            "where p.polrelid = pg_catalog.to_regclass({t}) and p.polname = {n} and {calls})").format(
            what=sql.Literal(f"policy {switch.policy_name(r)}"),
            why=sql.Literal(f"does not call {canon_h}() (the switch rewrites it)"),
            t=sql.Literal(text(qn(r.table))), n=sql.Literal(r.name), calls=_policy_calls(expr, canon_h)))
    parts.append(sql.SQL(
        "select format('policy %s.%s', p.polrelid::regclass, p.polname), {why}::text from pg_catalog.pg_policy p "
        "where p.polrelid is distinct from pg_catalog.to_regclass({lt}) and {calls}").format(
        why=sql.Literal(f"still calls {legacy_h}(), which contract retires"), lt=sql.Literal(text(qn(cat.legacy.name))),
        calls=_policy_calls(expr, legacy_h)))
    parts.append(sql.SQL("select {}::text, 'does not exist (the switch creates it)'::text "
                         "where pg_catalog.to_regprocedure({}) is null").format(
        sql.Literal(f"function {canon_h}()"), sql.Literal(f"{text(qn(canon_h))}()")))
    if not any(s.id == "contract.canonical_helper" for s in contract.plan(spec, cat, cats)):
        # Contract cannot make the canonical helper read the claim alone (a lookup through the legacy table,
        # say): it must not read what contract archives, or every policy calling it fails afterwards.
        archived = "|".join(re.escape(n) for n in (spec.legacy.table.name, spec.mapping_table.name))
        parts.append(sql.SQL(
            "select {w}::text, {why}::text from pg_catalog.pg_proc f where f.oid = pg_catalog.to_regprocedure({fn}) "
            "and f.prosrc ~ {pat}").format(
            w=sql.Literal(f"function {canon_h}()"), fn=sql.Literal(f"{text(qn(canon_h))}()"),
            pat=sql.Literal(rf"\m({archived})\M"),
            why=sql.Literal(f"reads {spec.legacy.table.name} or {spec.mapping_table.name}, which contract archives: "
                            f"redefine it to find the caller's {spec.canonical.table} row without them (for a "
                            f"lookup by auth.uid(): {switch.by_auth_user(spec, cat)})")))


def _made_since(spec: Spec) -> sql.Composable:
    """PL/pgSQL setting MADE to the legacy rows pgconverge made since SINCE (audit/runtime.py made_since)."""
    from pgconverge.audit import runtime

    mapping, count = runtime.made_since(spec, sql.SQL("since"))
    return sql.SQL("made := 0;\n  if pg_catalog.to_regclass({}) is not null then\n    {} into made;\n  end if;").format(
        sql.Literal(mapping), count)


def _writes(counters: str) -> sql.Composable:
    """The rows inserted, updated and deleted in COUNTERS (a jsonb expression of one table's traffic counters)."""
    return sql.SQL(" + ").join(sql.SQL("coalesce(({} ->> {})::bigint, 0)").format(sql.SQL(counters), sql.Literal(k))
                               for k in ("n_tup_ins", "n_tup_upd", "n_tup_del"))


def _sync_calls(spec: Spec) -> sql.Composable:
    """PL/pgSQL taking the legacy helper's calls the sync triggers made since the baseline off CALLS (audit/runtime.py
    _sync_calls): only where the baseline holds the counter's value and the counter has not gone below it."""
    return sql.SQL("calls := greatest(0, calls - coalesce((select v.n - (bj ->> 'sync_helper_calls')::bigint\n"
                   "      from (select ({})::bigint) as v(n) where v.n >= (bj ->> 'sync_helper_calls')::bigint), 0));"
                   ).format(switch.sync_helper_calls_value(spec))


def runtime_gate(spec: Spec, cat: Catalog, baseline_file: str) -> EmittedSql:
    """A DO block comparing the usage counters with the latest baseline; refuses on any write or helper call."""
    from pgconverge.audit import runtime
    from pgconverge.config import format_duration

    table = baseline_table(spec)
    fn = text(qn(baseline_function(spec)))
    lh = cat.legacy_helper.signature if cat.legacy_helper else None  # None: no RLS identity helper
    window = spec.migration.observation_window
    news = {(str(d.table.name), d.fk.columns[0]): references.new_column(spec, cat, d) for d in cat.dependents}
    counters = [(seq, t, c, news.get((t, c)) or spec.migration.new_column)
                for seq, t, c in switch.old_writes_counters(spec, cat)]
    old_rows = sql.SQL(
        "select coalesce(sum(d.n), 0), string_agg(pg_catalog.format('%s row(s) of %s written with %s only (update "
        "the code that writes them to set %s)', d.n, d.tbl, d.col, d.new), '; ') into old_rows, old_msg\n"
        "    from (select c.tbl, c.col, c.new, case when v.now_n >= v.base_n then v.now_n - v.base_n else v.now_n end "
        "as n\n"
        "            from (values {vals}) as c(seq, tbl, col, new)\n"
        "            cross join lateral (select case when pg_catalog.to_regclass(c.seq) is null then 0 else coalesce("
        "pg_catalog.pg_sequence_last_value(pg_catalog.to_regclass(c.seq)), 0) end as now_n,\n"
        "                                       coalesce((bj -> 'old_writes' ->> c.seq)::bigint, 0) as base_n) v) d\n"
        "   where d.n > 0;").format(vals=sql.SQL(", ").join(
            sql.SQL("({}, {}, {}, {})").format(*(sql.Literal(x) for x in row)) for row in counters)) \
        if counters else sql.SQL("old_rows := 0;")
    # Every refusal states its fix in the message itself (no HINT): the Supabase CLI prints neither HINT nor
    # NOTICE nor WARNING.
    # The fixes are appended (||) rather than formatted in, so no text of theirs is read as a format directive.
    accept = (f"psql -c 'set {ACCEPT_SETTING} = on' -f <this file> (then `supabase migration repair --status "
              "applied <its version>`, so that the Supabase CLI's history has it)")
    fix_use = (f". Fix: find the callers with `pgconverge audit runtime` and `pgconverge audit code DIR`, update "
               f"them and deploy; once no old code runs, take a new baseline (select {fn}();) and apply this file "
               f"again (the observation window then starts over). To go ahead anyway, on purpose: {accept}")
    where = f"supabase/migrations/{baseline_file}" if baseline_file else "the last switch file"
    fix_missing = (f". Fix: apply the switch files first ({where} records the baseline), then apply this file again "
                   "once the observation window has passed; if `pgconverge run switch` made the switch, no file "
                   "recorded one: apply contract with `pgconverge run contract`, which reads the baseline it keeps")
    fix_empty = (f". Fix: take a baseline (select {fn}();) once no old code runs, then apply this file again when "
                 "the observation window has passed")
    fix_track = (". Fix: turn it back on (ALTER DATABASE … RESET track_counts or ALTER ROLE … RESET track_counts, as "
                 "named; or track_counts = on in the server's configuration) and reconnect the application (a session "
                 "keeps the value it started with); check that no old code runs, take a new baseline (select "
                 f"{fn}();) and apply this file again once the observation window has passed. To go ahead anyway, "
                 f"on purpose: {accept}")
    fix_reset = (". Fix: check that no old code runs (`pgconverge audit runtime`, the application's deployments), "
                 f"then take a new baseline (select {fn}();) and apply this file again once the observation window "
                 "has passed")
    accept_tail = f". To go ahead anyway, on purpose: {accept}"
    fix_window = (". Fix: apply this file again once the window has passed, taking no new baseline meanwhile (a new "
                  f"baseline, select {fn}();, starts the window again); or set a shorter "
                  "migration.observation_window in pgconverge.toml and emit the files again; or go ahead now, on "
                  f"purpose: {accept}")
    fix_quiet = (". Fix: check that the application runs against this database and writes, then apply this file "
                 f"again; where the baseline holds no such counters (an earlier version's), take it again (select "
                 f"{fn}();) and wait the window out. To go ahead anyway, on purpose: {accept}")
    template = """
declare
  setting constant text := {accept};
  baseline constant text := {tname};
  legacy_table constant text := {lt};
  legacy_helper constant text := {lh};
  accepted boolean := coalesce(pg_catalog.current_setting(setting, true), '') in ('on', 'true', 'yes', '1');
  window_s constant double precision := {window};
  b record;
  bj jsonb;
  observed double precision;
  off text;
  reset_at timestamptz;
  backwards boolean;
  since timestamptz;
  since_what text;
  left_s double precision;
  old_rows bigint;
  old_msg text;
  s record;
  calls bigint;
  ins bigint;
  made bigint;
  upd bigint;
  del bigint;
  msg text;
  writes bigint;
  traffic_msg text;
begin
  if pg_catalog.to_regclass(baseline) is null then
    if accepted then
      raise warning 'gate runtime use: no runtime baseline recorded (% is missing); accepted by %', baseline, setting;
      return;
    end if;
    raise exception using errcode = 'object_not_in_prerequisite_state', message = pg_catalog.format(
      'gate runtime use: no runtime baseline recorded (%s is missing); nothing of contract was applied', baseline)
      || {fix_missing};
  end if;
  execute pg_catalog.format('select * from %s order by taken_at desc limit 1', baseline) into b;
  if b.taken_at is null then
    if accepted then
      raise warning 'gate runtime use: % holds no baseline; accepted by %', baseline, setting;
      return;
    end if;
    raise exception using errcode = 'object_not_in_prerequisite_state', message = pg_catalog.format(
      'gate runtime use: %s holds no baseline; nothing of contract was applied', baseline) || {fix_empty};
  end if;
  select coalesce(t.seq_scan, 0) as seq_scan, coalesce(t.idx_scan, 0) as idx_scan,
         coalesce(t.n_tup_ins, 0) as n_tup_ins, coalesce(t.n_tup_upd, 0) as n_tup_upd,
         coalesce(t.n_tup_del, 0) as n_tup_del into s
    from (select 1) as one left join pg_catalog.pg_stat_user_tables t on t.relid = pg_catalog.to_regclass(legacy_table);
  select f.calls into calls from pg_catalog.pg_stat_user_functions f
   where f.funcid = pg_catalog.to_regprocedure(legacy_helper);
  calls := coalesce(calls, 0);
  bj := pg_catalog.to_jsonb(b);
  -- Rows old code wrote to the dependent tables with only the legacy column (the sync triggers count them).
  {old_rows}
  -- track_counts off (for the server, this database, or a role that logs in): the table's counters do not move,
  -- so zero writes would prove nothing.
  select pg_catalog.string_agg(o.w, '; ') into off from ({track_counts_off}) as o;
  if off is not null then
    if not accepted then
      raise exception using errcode = 'object_not_in_prerequisite_state', message = pg_catalog.format(
        'gate runtime use: writes to %s are not counted, so not shown absent: track_counts is off %s; nothing of '
        'contract was applied', legacy_table, off) || {fix_track};
    end if;
    raise warning 'gate runtime use: writes to % are not counted: track_counts is off %; accepted by %',
      legacy_table, off, setting;
  end if;
  -- A statistics reset after the baseline (pg_stat_reset(), a restart after a crash): the counters count from the
  -- reset, and what happened between the baseline and the reset was not measured. The window then runs from the
  -- reset (when the server records it), and the gate refuses until it has passed.
  since := b.taken_at;
  since_what := pg_catalog.format('the runtime baseline of %s', b.taken_at);
  select d.stats_reset into reset_at from pg_catalog.pg_stat_database d
   where d.datname = pg_catalog.current_database();
  backwards := s.seq_scan < b.seq_scan or s.idx_scan < b.idx_scan or s.n_tup_ins < b.n_tup_ins
               or s.n_tup_upd < b.n_tup_upd or s.n_tup_del < b.n_tup_del or calls < coalesce(b.helper_calls, 0);
  if backwards or reset_at > b.taken_at then
    if not coalesce(reset_at > b.taken_at, false) then  -- counters went back with no reset time: a crash restart?
      reset_at := case when pg_catalog.pg_postmaster_start_time() > b.taken_at
                       then pg_catalog.pg_postmaster_start_time() end;
    end if;
    left_s := case when reset_at is not null and window_s > 0
                   then window_s - extract(epoch from pg_catalog.clock_timestamp() - reset_at) end;
    if left_s is null or left_s > 0 then
      if not accepted then
        raise exception using errcode = 'object_not_in_prerequisite_state', message = pg_catalog.format(
          'gate runtime use: the server''s statistics were reset %s, after the runtime baseline of %s '
          '(pg_stat_reset(), or a restart after a crash): writes to %s and calls of %s between the two were not '
          'measured (the counters count from the reset); nothing of contract was applied',
          coalesce('at ' || reset_at, 'at a time the server does not record'), b.taken_at, legacy_table,
          legacy_helper) || {fix_reset}
          || case when left_s is not null then pg_catalog.format('; or apply this file again once the observation '
                  'window of %s s has passed since the reset (%s s left)', window_s,
                  pg_catalog.round(left_s::numeric, 1)) else '' end || {accept_tail};
      end if;
      raise warning 'gate runtime use: statistics reset %, after the runtime baseline of %: not measured between; accepted by %',
        coalesce('at ' || reset_at, 'at an unknown time'), b.taken_at, setting;
    end if;
    since := reset_at;
    since_what := pg_catalog.format('the statistics reset at %s', reset_at);
  end if;
  observed := coalesce(extract(epoch from pg_catalog.clock_timestamp() - since), 0);
  if backwards then  -- counted from the reset
    ins := s.n_tup_ins;
    upd := s.n_tup_upd;
    del := s.n_tup_del;
  else
    ins := s.n_tup_ins - b.n_tup_ins;
    upd := s.n_tup_upd - b.n_tup_upd;
    del := s.n_tup_del - b.n_tup_del;
    calls := calls - coalesce(b.helper_calls, 0);
    -- The helper's calls the sync triggers made (a merged person's own legacy row, for new code) are not old code's.
    {sync_calls}
  end if;
  -- Legacy rows pgconverge made for people new code wrote for who had none are not old code's inserts.
  {made_since}
  ins := greatest(0, ins - made);  -- GREATEST is a construct of the grammar, not a function
  if b.track_functions = 'none' then
    raise notice 'gate runtime use: calls of % are not counted (track_functions was none when the baseline was taken)',
      legacy_helper;
  end if;
  msg := pg_catalog.format('%s row(s) of %s inserted, %s updated, %s deleted and %s call(s) of %s since %s', ins,
                           legacy_table, upd, del, calls, legacy_helper, since_what)
         || case when made > 0 then pg_catalog.format(' (besides %s legacy row(s) pgconverge made for people new '
                                                      'code wrote for)', made) else '' end
         || coalesce('; ' || old_msg, '');
  -- Whether the application wrote at all in the window: the writes to the canonical and dependent tables (a
  -- partitioned table's summed over its partitions). A window above 0 that saw none, and no use of the legacy side,
  -- proves nothing: the application down, or pointed at another database.
  select coalesce(sum(t.n), 0), coalesce(pg_catalog.string_agg(pg_catalog.format('%s +%s', t.tbl, t.n), ', ')
                                          filter (where t.n > 0), 'no writes to ' || pg_catalog.string_agg(t.tbl, ', '),
                                          'no statistics row for the canonical or any dependent table')
    into writes, traffic_msg
    from (select n.key as tbl, case when w.now_n >= w.base_n then w.now_n - w.base_n else w.now_n end as n
            from pg_catalog.jsonb_each(({traffic})) as n
            cross join lateral (select {sum_now} as now_n, {sum_base} as base_n) w) t;
  if bj -> 'traffic' is null then
    traffic_msg := 'application traffic: not measured (the baseline holds no counters of the canonical and '
                   'dependent tables)';
  else
    traffic_msg := 'application traffic: ' || traffic_msg;
  end if;
  msg := msg || '; ' || traffic_msg;
  if window_s > 0 and ins + upd + del + calls + old_rows = 0 and observed >= window_s
     and (bj -> 'traffic' is null or writes = 0) then
    if not accepted then
      raise exception using errcode = 'object_not_in_prerequisite_state', message = pg_catalog.format(
        'gate runtime use: the window saw no application traffic: proves nothing (%s since %s: the application '
        'down, or pointed at another database?); nothing of contract was applied', traffic_msg, since_what)
        || {fix_quiet};
    end if;
    raise warning 'gate runtime use: the window saw no application traffic (%); accepted by %', traffic_msg, setting;
  elsif ins + upd + del + calls + old_rows = 0 and observed >= window_s then
    raise notice 'gate runtime use: passed, %; observed for % s (observation window % s)', msg,
      pg_catalog.round(observed::numeric, 1), window_s;
  elsif accepted then
    if observed < window_s then
      raise warning 'gate runtime use: observed for % s only, under the observation window of % s; accepted by %',
        pg_catalog.round(observed::numeric, 1), window_s, setting;
    end if;
    if ins + upd + del + calls + old_rows > 0 then
      raise warning 'gate runtime use: old code still ran: %; accepted by %', msg, setting;
    end if;
  elsif ins + upd + del + calls + old_rows = 0 then
    raise exception using errcode = 'object_not_in_prerequisite_state', message = pg_catalog.format(
      'gate runtime use: the runtime baseline of %s was taken %s s ago, under the observation window of %s s '
      '(%s): %s s left; nothing of contract was applied. Old code that runs now and then needs the time to show '
      'itself', b.taken_at, pg_catalog.round(observed::numeric, 1), window_s, {window_text},
      pg_catalog.round((window_s - observed)::numeric, 1)) || {fix_window};
  else
    raise exception using errcode = 'object_in_use', message = pg_catalog.format(
      'gate runtime use: old code still uses the legacy side: %s; nothing of contract was applied', msg)
      || {fix_use};
  end if;
end"""
    if lh is None:  # no legacy helper: its calls are no signal, and the messages say so rather than count 0
        for old, new in _NO_HELPER_GATE:
            assert old in template
            template = template.replace(old, new)
    code = sql.SQL(template).format(accept=sql.Literal(ACCEPT_SETTING), tname=sql.Literal(text(qn(table))), lt=sql.Literal(text(qn(cat.legacy.name))),
               lh=sql.Literal(lh), window=sql.Literal(float(window)), old_rows=old_rows,
               window_text=sql.Literal(f"migration.observation_window = {format_duration(window)} when the files "
                                       "were emitted"),
               fix_use=sql.Literal(fix_use), fix_missing=sql.Literal(fix_missing), fix_empty=sql.Literal(fix_empty),
               fix_window=sql.Literal(fix_window), fix_track=sql.Literal(fix_track),
               fix_reset=sql.Literal(fix_reset), accept_tail=sql.Literal(accept_tail),
               track_counts_off=sql.SQL(runtime.TRACK_COUNTS_OFF), made_since=_made_since(spec), sync_calls=_sync_calls(spec),
               traffic=switch.traffic_values(switch.traffic_tables(cat)), sum_now=_writes("n.value"),
               sum_base=_writes("(bj -> 'traffic' -> n.key)"), fix_quiet=sql.Literal(fix_quiet))
    stmt = sql.SQL("do {}").format(body(code))
    header = (
        "Contract gate 2 of 2: no runtime use of the legacy side. Reads the usage counters of the legacy table "
        "(pg_stat_user_tables: rows inserted, updated, deleted) and of the legacy helper (pg_stat_user_functions: "
        f"calls) and compares them with the latest baseline in {text(qn(table))} (recorded at the end of switch by "
        f"{baseline_file or 'the last switch file'}). Any write or call since then means old code still runs: the DO "
        "block raises, naming the counts, and nothing of contract is applied. Reads are not counted (the legacy foreign keys read the "
        "table for every row new code writes).",
        "Old code that writes a dependent table with only the legacy column counts too: the sync triggers fill the "
        "new column and advance a counter per table (a sequence in the private schema), which this file compares "
        "with the baseline and names per table, with the fix (update the writers to set the new column).",
        "Counters that cannot move prove nothing: with track_counts off (for the server, this database, or a role "
        "that logs in: pg_db_role_setting) the file refuses, naming where; after a statistics reset later than the "
        "baseline (pg_stat_reset(), a restart after a crash) what happened before the reset was not measured, so it "
        "refuses until the observation window has passed since the reset, or a new baseline is taken.",
        f"Observation window: {format_duration(window)} (migration.observation_window when these files were "
        "emitted). The gate refuses until that long has passed since the latest baseline, so a push that applies "
        "switch and contract together stops here: apply the files again once the window has passed. Set a "
        "shorter window in pgconverge.toml and emit again, or apply this file with the setting below on.",
        "The counters cannot tell who wrote: a write by a person or a script counts too. Once the old code is "
        f"retired, take a new baseline (`select {fn}();`) and apply this file again. The check is skippable on "
        f"purpose, for use you know of and accept: set {ACCEPT_SETTING} = on in the session that applies this "
        f"file (psql -c 'set {ACCEPT_SETTING} = on' -f <this file>, or PGOPTIONS='-c {ACCEPT_SETTING}=on'); it "
        "then warns with the counts instead of refusing, as `pgconverge run contract --accept-runtime-use` does.",
    )
    return EmittedSql((stmt,), "gate: no write to the legacy table and no call of the legacy helper since the "
                               "runtime baseline", header)


# The emitted runtime gate's text where the database has no RLS identity helper (legacy.helper = ""): what replaces
# what, in runtime_gate's DO block.
_NO_HELPER_GATE = (
    ("'(pg_stat_reset(), or a restart after a crash): writes to %s and calls of %s between the two were not '\n"
     "          'measured (the counters count from the reset); nothing of contract was applied',\n"
     "          coalesce('at ' || reset_at, 'at a time the server does not record'), b.taken_at, legacy_table,\n"
     "          legacy_helper)",
     "'(pg_stat_reset(), or a restart after a crash): writes to %s between the two were not '\n"
     "          'measured (the counters count from the reset); nothing of contract was applied',\n"
     "          coalesce('at ' || reset_at, 'at a time the server does not record'), b.taken_at, legacy_table)"),
    ("  if b.track_functions = 'none' then", "  if false then  -- no legacy helper"),
    ("  msg := pg_catalog.format('%s row(s) of %s inserted, %s updated, %s deleted and %s call(s) of %s since %s', ins,\n"
     "                           legacy_table, upd, del, calls, legacy_helper, since_what)",
     "  msg := pg_catalog.format('%s row(s) of %s inserted, %s updated, %s deleted since %s (legacy helper calls: not '\n"
     "                           'applicable: no RLS identity helper, legacy.helper = \"\")', ins, legacy_table, upd, del,\n"
     "                           since_what)"),
)


def adapt(spec: Spec, cats: Catalogs, plan: Plan, baseline_file: str) -> Plan:
    """PLAN with the runner-only baseline and gates replaced by what the files can do in their place."""
    out: list[Step] = []
    cat = cats.for_phase("switch")
    for s in plan.steps:
        if s.id == BASELINE_STEP:
            out.append(replace(s, op=baseline_op(spec, cat)))
        elif isinstance(s.op, contract.Gates):
            out.append(Step(SWITCH_GATE_STEP, s.phase, switch_gate(spec, cats)))
            out.append(Step(RUNTIME_GATE_STEP, s.phase, runtime_gate(spec, cats.for_phase("contract"),
                                                                     baseline_file)))
        else:
            out.append(s)
    return Plan(tuple(out))


def archived(plan: Plan) -> dict[str, ArchiveTable]:
    """The archive operations in PLAN by the name of the table they move."""
    return {str(s.op.table): s.op for s in plan.steps if isinstance(s.op, ArchiveTable)}


def legacy_indexes(spec: Spec, cat: Catalog) -> dict:
    """Per reference (references.key), the indexes contract drops with its legacy column."""
    from pgconverge.planning import contract, references

    return {references.key(d): contract._legacy_indexes(d, cat) for d in cat.dependents}


__all__ = ["ACCEPT_SETTING", "EmittedCheck", "EmittedSql", "adapt", "archived", "baseline_function", "baseline_op",
           "baseline_table", "legacy_indexes", "runtime_gate", "switch_gate"]
