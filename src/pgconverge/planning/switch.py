"""The switch phase (T2): authorization follows the canonical id, with no gap for old or new tokens."""

from __future__ import annotations

import dataclasses

from psycopg import sql

from pgconverge.catalog.model import Catalog
from pgconverge.config import QualifiedName, Spec
from pgconverge.execution.sql import ident, qn, text
from pgconverge.operations.base import Step
from pgconverge.operations.check import Check
from pgconverge.operations.create_function import CreateFunction
from pgconverge.operations.grant import GrantRead
from pgconverge.operations.replace_function import MakeDefiner, ReplaceFunction, SettleCalls
from pgconverge.operations.replace_policies import LOCK_BUDGET_MS, ReplacePolicies
from pgconverge.operations.run_sql import RunSql
from pgconverge.operations.snapshot import Snapshot
from pgconverge.operations.together import Together
from pgconverge.planning import align
from pgconverge.planning.rls_initplan import once_per_query
from pgconverge.planning.rls_rewrite import (
    PolicyRewrite, derive_canonical_helper, policy_statement, rewrite_policies,
)

PHASE = "switch"


def policy_name(r: PolicyRewrite) -> str:
    return f"{r.table}.{r.name}"


def rewrites(spec: Spec, cat: Catalog) -> tuple[list[PolicyRewrite], list[PolicyRewrite]]:
    """(policies to rewrite, policies that need a person), leaving the legacy table's own policies alone."""
    auto, review = [], []
    if not spec.has_helper:  # nothing to rewrite on: plan refuses a policy that reads the legacy side (shapes.py)
        return auto, review
    for r in rewrite_policies(cat, spec):
        if r.table == cat.legacy.name or not (r.changed or r.uncertain):
            continue  # the legacy table keeps its policies (on the bridged legacy helper) until contract
        if r.uncertain:
            if policy_name(r) not in spec.migration.accept_policies:
                review.append(r)
        else:
            auto.append(r)
    return auto, review


def _helper(spec: Spec, cat: Catalog):
    m = align.names(spec)["mapping"]
    return derive_canonical_helper(
        cat.legacy_helper, canonical_helper=spec.canonical.helper, legacy_claim=spec.legacy.claim,
        canonical_claim=spec.canonical.claim, canonical_key_type=cat.canonical.column(spec.canonical.key).value_type,
        mapping=m, mapping_legacy_column=spec.mapping_legacy_column, mapping_canonical_column=spec.migration.new_column,
        callees=cat.helper_callees, server_version=cat.server_version, auth_link=auth_link(spec, cat),
        prefer=_prefer(spec, cat))


def _prefer(spec: Spec, cat: Catalog) -> tuple[QualifiedName, str, str] | None:
    """The legacy table, its key and its live rule (align.legacy_live over alias c), where it has one."""
    live = align.legacy_live(spec, cat.legacy, "c")
    return (cat.legacy.name, spec.legacy.key, live) if live else None


AUTH_USERS = QualifiedName("auth", "users")


def auth_link(spec: Spec, cat: Catalog) -> tuple[QualifiedName, str, str] | None:
    """(canonical table, key, column) where the canonical table holds each row's auth user, one row per user: the
    auth users themselves (the canonical table is auth.users, keyed by id), its key itself (Supabase's profiles.id
    references auth.users) or a unique column referencing auth.users(id). Where the column is the key, the canonical
    key is the auth user's id."""
    can = cat.canonical
    if can.name == AUTH_USERS:
        return (can.name, spec.canonical.key, spec.canonical.key) if spec.canonical.key == "id" else None
    for fk in can.foreign_keys:
        col = fk.columns[0]
        if (len(fk.columns) == 1 and fk.ref_table == AUTH_USERS and fk.ref_columns == ("id",)
                and (col == spec.canonical.key or (col,) in can.unique_keys or (col,) == can.primary_key)):
            return can.name, spec.canonical.key, col
    return None


def by_auth_user(spec: Spec, cat: Catalog) -> str:
    """How the canonical helper finds the caller by its auth user once the legacy table and the mapping are gone."""
    link = auth_link(spec, cat)
    if link is not None and link[1] == link[2]:
        typ = cat.canonical.column(spec.canonical.key).type
        return (f"{spec.canonical.table}.{spec.canonical.key} is the auth user's id, so `select auth.uid()::{typ}` "
                "is the helper")
    return ("through the canonical table's own link to the auth user: a column naming one auth user per row under a "
            "unique rule (one a person shares between rows, an owner of several accounts say, needs a condition "
            "that picks their own row), or the key itself where the application makes it the auth user's id, and "
            "then `select auth.uid()` is the helper")


def mapping_owners(spec: Spec, cat: Catalog, helper) -> tuple[str, ...]:
    """Owners of helpers that read the mapping after the switch as SECURITY DEFINER, pgconverge's role aside.

    CREATE OR REPLACE keeps a function's owner: the bridged legacy helper, and a canonical helper that
    existed before, read the private mapping as whoever owns them.
    """
    owners = {cat.canonical_helper.owner} if cat.canonical_helper else set()
    if helper.legacy_bridge_sql != helper.legacy_original_sql:
        owners.add(cat.legacy_helper.owner)
    return tuple(sorted(o for o in owners if o and cat.user and o != cat.user))


def helper_refusals(spec: Spec, cat: Catalog, helper=None) -> list[str]:
    """Why the canonical helper cannot be derived from the legacy one with certainty (empty: it can, or there is no
    helper at all: legacy.helper = "")."""
    if not spec.has_helper:
        return []
    helper = helper or _helper(spec, cat)
    out = list(helper.uncertain)
    out += [f"its owner {r} is an API role, and the derived helpers read the private mapping as their owner: "
            "give it another owner first (ALTER FUNCTION … OWNER TO …)"
            for r in mapping_owners(spec, cat, helper) if r in spec.migration.api_roles]
    return out


def helper_fix(spec: Spec, cat: Catalog) -> str:
    if not spec.has_helper:
        return ""
    typ = cat.legacy_helper.returns if cat.legacy_helper else "the key type"
    return (f"rewrite {spec.legacy.helper}() as one SELECT (LANGUAGE sql) or one RETURN (plpgsql) of the "
            f"'{spec.legacy.claim}' claim, read from request.jwt.claims, request.jwt.claim.{spec.legacy.claim} or "
            f"auth.jwt() and cast to {typ}, or of a lookup of the caller's {spec.legacy.table} row by auth.uid() "
            f"(a function it calls may do the reading; schema-qualify every name; where no column of "
            f"{spec.legacy.table} holds its person's auth user id, a lookup by e-mail say, add one and fill it "
            "first), or point legacy.helper at the function that does; then run `pgconverge plan` again")


def plan(spec: Spec, cat: Catalog, cats=None) -> list[Step]:
    if not spec.has_helper:
        return _plan_without_helper(spec, cat, cats)
    auto, review = rewrites(spec, cat)
    helper = _helper(spec, cat)
    legacy_sig = cat.legacy_helper.signature
    execute_for = tuple(sorted({g.grantee for g in cat.grants if g.object_kind == "function"
                                and g.object_name == legacy_sig and g.privilege == "EXECUTE"}))
    problems = [(f"policy {policy_name(r)}", "; ".join(r.uncertain)) for r in review]
    helper_problems = helper_refusals(spec, cat, helper)
    problems += [(f"helper {spec.legacy.helper}", u) for u in helper_problems]
    readers = mapping_owners(spec, cat, helper)
    gate = sql.SQL(" union all ").join(
        sql.SQL("select {}::text, {}::text").format(sql.Literal(a), sql.Literal(b)) for a, b in problems
    ) if problems else sql.SQL("select null::text, null::text where false")
    fix = ("rewrite them by hand and list them in migration.accept_policies (as schema.table.policy), or "
           "change them so they compare the legacy column or helper directly") if review else ""
    steps = [
        coverage_gate(spec, cat),
        links_gate(spec, cat, cats),
        Step(f"{PHASE}.review", PHASE, Check(
            "rewritable", gate, failure="pgconverge cannot rewrite these with certainty",
            fix=" / ".join(f for f in (fix, helper_fix(spec, cat) if helper_problems else "") if f))),
        *definer_first(PHASE, (
            (f"{PHASE}.legacy_helper", spec.legacy.helper, cat.legacy_helper,
             helper.legacy_bridge_sql != helper.legacy_original_sql),
            (f"{PHASE}.canonical_helper", spec.canonical.helper, cat.canonical_helper, True))),
        Step(f"{PHASE}.canonical_helper", PHASE, _with_readers(ReplaceFunction(
            spec.canonical.helper, "", helper.canonical_sql,
            cat.canonical_helper.definition if cat.canonical_helper else None, execute_for,
            why=f"reads the {spec.canonical.claim} claim as {spec.legacy.helper} reads {spec.legacy.claim}; "
                "tokens with only the legacy claim are bridged through the mapping"), spec, readers)),
        Step(f"{PHASE}.legacy_helper", PHASE, ReplaceFunction(
            spec.legacy.helper, "", helper.legacy_bridge_sql, helper.legacy_original_sql,
            why="keeps working for new tokens (reverse-mapped); its calls are counted for the runtime audit")),
        Step(f"{PHASE}.policies", PHASE, ReplacePolicies(
            tuple(_statement(r, spec) for r in auto), tuple(r.reverse_statement for r in auto),
            tuple(policy_name(r) for r in auto), lock_order(cat, {r.table for r in auto}),
            checked=tuple(str(t) for t in lock_order(cat, accepted_tables(spec, cat) - {r.table for r in auto})),
            lock_budget_ms=max(LOCK_BUDGET_MS, spec.migration.lock_timeout_ms))),
        Step(f"{PHASE}.function_tracking", PHASE, _track_functions()),
        Step(f"{PHASE}.runtime_baseline", PHASE, runtime_baseline(spec, cat)),
    ]
    return steps


def _plan_without_helper(spec: Spec, cat: Catalog, cats=None) -> list[Step]:
    """The switch where the database has no RLS identity helper (legacy.helper = ""): the moment the application's
    code moves to the new column. No helper to derive and no policy to rewrite (plan refuses one that reads the
    legacy side); the runtime baseline that contract's gate compares against is taken all the same."""
    return [
        coverage_gate(spec, cat),
        links_gate(spec, cat, cats),
        Step(f"{PHASE}.review", PHASE, Check(
            "rewritable", sql.SQL("select null::text, null::text where false"),
            failure="pgconverge cannot rewrite these with certainty", fix="")),
        Step(f"{PHASE}.policies", PHASE, ReplacePolicies((), (), (), ())),
        Step(f"{PHASE}.runtime_baseline", PHASE, runtime_baseline(spec, cat)),
    ]


LINKS = f"{PHASE}.expand_invariants"
COVERAGE = f"{PHASE}.coverage"


def coverage_gate(spec: Spec, cat: Catalog) -> Step:
    """Before the switch's first change: every legacy row has its canonical row. A person old code created since
    expand that pgconverge could not place (no usable match value) has rows without the new id, which the links gate
    would name; this names the person, and the way to place them (`align --decisions`, a usable value), which
    running expand again does not give. Nothing to send back: no step of the switch or before it decides them."""
    gate = align.coverage_gate(spec, cat, PHASE)
    return Step(COVERAGE, PHASE, dataclasses.replace(gate, redo=(), standing=False))


def links_gate(spec: Spec, cat: Catalog, cats=None) -> Step:
    """Before the switch's first change: expand's invariants (expand.invariants), read again now. From the switch on,
    new code reads the dependents by the new column, so a row with a legacy id and no new id (in a partition attached
    after expand, say, or written with the sync trigger bypassed), or one whose ids disagree, would be invisible to
    it or shown to the wrong person. A failure names the rows (how many, and the first few) and sends expand's
    backfills back, as contract's gate does: `pgconverge run expand` fills them, and the switch runs after it. Planned
    from expand's catalog, as expand's own check was. A gate about the moment of the switch: `verify` runs expand's
    own check instead (standing=False)."""
    from pgconverge.planning import expand

    ecat = cats.for_phase("expand") if cats is not None else cat
    inv = expand.invariants(spec, ecat)
    failure = ("expand's invariants do not hold, and from the switch on new code reads by the new column (rows "
               "without it, or with another one, would be hidden from their owner or shown to another): nothing "
               "was changed")
    if not expand.names_of(spec, ecat):  # nothing to look at: not a pass
        return Step(LINKS, PHASE, Check(
            "expand invariants", sql.SQL("select {}::text, null::text").format(sql.Literal(
                f"no table references {spec.legacy.table} in the catalog expand was planned from: the check looked "
                "at nothing and proves nothing")), failure=failure,
            fix="check legacy.table and legacy.key in pgconverge.toml: pgconverge finds the dependent tables through "
                "their foreign keys",
            standing=False))
    return Step(LINKS, PHASE, dataclasses.replace(
        inv, name="expand invariants", failure=failure,
        fix=f"{expand.sent_back(inv.redo, 'switch')}; for what that does not fix: {inv.fix}", standing=False))


def becomes_definer(fn, new_is_definer: bool) -> bool:
    """Whether replacing FN (None: it does not exist yet) turns a SECURITY INVOKER function into a definer."""
    return fn is not None and new_is_definer and not fn.security_definer


def definer_first(phase: str, replaced: tuple, prefix: str = "") -> list[Step]:
    """Before bodies that read as their owner replace SECURITY INVOKER functions: a step per such function making it
    SECURITY DEFINER on its old body, then one step waiting for the transactions that call any of them the old way
    (replace_function.SettleCalls). REPLACED: (id of the step replacing it, name, the function as it is or None
    when new, whether the new body is a definer). PREFIX names rollback steps ("rollback.")."""
    steps = [Step(f"{prefix}{step_id}_definer", "rollback" if prefix else phase, MakeDefiner(
        name, "", fn.definition, pin_search_path=not any(c.startswith("search_path=") for c in fn.config),
        why="statements begun from now on call it as its owner, as its new body will need"))
        for step_id, name, fn, definer in replaced if becomes_definer(fn, definer)]
    if steps:
        steps.append(Step(f"{prefix}{phase}.settle_helpers", "rollback" if prefix else phase, SettleCalls(
            tuple((s.op.name, s.op.arg_types) for s in steps))))
    return steps


def _with_readers(op: ReplaceFunction, spec: Spec, readers: tuple[str, ...]):
    """OP, preceded (same transaction) by the grants the helpers' owners need to read the mapping."""
    if not readers:
        return op
    grant = GrantRead(align.names(spec)["mapping"], readers, "the helpers run as their owners")
    return Together((grant, op), "no helper call may find the mapping unreadable")


def lock_order(cat: Catalog, tables: set) -> tuple[str, ...]:
    """TABLES with every table after the tables it references (parents first), then by name."""
    refs = {}
    for t in tables:
        tab = cat.table(t)
        refs[t] = {fk.ref_table for fk in (tab.foreign_keys if tab else ()) if fk.ref_table in tables and fk.ref_table != t}
    out: list = []
    while len(out) < len(tables):
        ready = sorted((t for t in tables if t not in out and refs[t] <= set(out)), key=str)
        if not ready:  # a reference cycle: take the rest by name
            ready = sorted((t for t in tables if t not in out), key=str)
        out.append(ready[0])
    return tuple(str(t) for t in out)


def _statement(r: PolicyRewrite, spec: Spec) -> str:
    helper = spec.canonical.helper
    return policy_statement(r.name, r.table, once_per_query(r.new_using, helper),
                            once_per_query(r.new_with_check, helper))


def _track_functions() -> RunSql:
    # Calls of the legacy helper are counted only with track_functions on; a superuser may turn it on
    # for this database (new sessions pick it up). Anyone else gets the audit's "unavailable" note.
    return RunSql(
        sql.SQL("do $pgc$ begin if (select rolsuper from pg_catalog.pg_roles where rolname = current_user) then "
                "execute pg_catalog.format('alter database %I set track_functions = ''all''', "
                "pg_catalog.current_database()); end if; end $pgc$"),
        "count function calls in this database (track_functions = all) where the role may set it")


def old_writes_counters(spec: Spec, cat: Catalog) -> list[tuple[str, str, str]]:
    """(sequence, table, legacy column) of every reference: the sequence counts the rows old code writes to the
    table with the legacy column alone (expand's sync trigger calls nextval on it)."""
    from pgconverge.planning import expand

    return [(text(qn(n.old_writes)), str(d.table.name), n.legacy) for d, n in expand.names_of(spec, cat)]


def old_writes_values(counters: list[tuple[str, str, str]]) -> sql.Composable:
    """A query of one jsonb object: every counter's value by sequence name (null where the sequence is missing)."""
    if not counters:
        return sql.SQL("select '{}'::jsonb")
    return sql.SQL("select jsonb_build_object({})").format(sql.SQL(", ").join(
        sql.SQL("{s}::text, case when pg_catalog.to_regclass({s}) is null then null else "
                "coalesce(pg_catalog.pg_sequence_last_value(pg_catalog.to_regclass({s})), 0) end").format(
            s=sql.Literal(seq)) for seq, _, _ in counters))


def runtime_baseline(spec: Spec, cat: Catalog) -> Snapshot:
    """Counters the runtime audit compares against: legacy table scans and writes, legacy helper calls, and
    the rows old code wrote to each dependent table with only the legacy column (expand's counters)."""
    helper = () if cat.legacy_helper is None else (("legacy_helper", sql.SQL(
        "select coalesce((select to_jsonb(s) - 'funcid' from pg_catalog.pg_stat_user_functions s "
        "where s.funcid = {}::regprocedure), 'null'::jsonb)").format(sql.Literal(cat.legacy_helper.signature))),)
    return Snapshot("runtime_baseline", (
        ("old_writes", old_writes_values(old_writes_counters(spec, cat))),
        ("legacy_table", sql.SQL(
            "select coalesce((select to_jsonb(s) - 'relid' from pg_catalog.pg_stat_user_tables s "
            "where s.relid = {}::regclass), 'null'::jsonb)").format(sql.Literal(str(cat.legacy.name)))),
        *helper,
        ("traffic", traffic_values(traffic_tables(cat))),
        *((("sync_helper_calls", sync_helper_calls_value(spec)),) if helper else ()),
        ("taken_at", sql.SQL("select to_jsonb(clock_timestamp())")),
    ), "the usage counters of the legacy table and helper" if helper else "the usage counters of the legacy table")


def sync_helper_calls_value(spec: Spec) -> sql.Composable:
    """A query of one jsonb value: the legacy helper's calls the sync triggers made (expand's counter), null where
    the counter is missing."""
    from pgconverge.planning import expand

    s = sql.Literal(text(qn(expand.helper_calls_sequence(spec))))
    return sql.SQL("select to_jsonb(case when pg_catalog.to_regclass({s}) is null then null else "
                   "coalesce(pg_catalog.pg_sequence_last_value(pg_catalog.to_regclass({s})), 0) end)").format(s=s)


def traffic_tables(cat: Catalog) -> list[str]:
    """The tables whose counters show that an application ran at all: the canonical table and every dependent."""
    return list(dict.fromkeys([str(cat.canonical.name), *(str(d.table.name) for d in cat.dependents)]))


# The statistics counters the runtime audit reads of a table (pg_stat_user_tables); traffic_values sums them.
TRAFFIC_COUNTERS = ("seq_scan", "idx_scan", "n_tup_ins", "n_tup_upd", "n_tup_del")


def traffic_values(tables: list[str]) -> sql.Composable:
    """A jsonb object: each of TABLES (that has a statistics row) → its pg_stat_user_tables counters. A partitioned
    table's own row counts nothing (its rows live in its partitions), so a table's counters are the sums over its
    whole partition tree. The emitted runtime gate runs it inside PL/pgSQL: its aliases are none of that block's
    variables."""
    sums = sql.SQL(", ").join(
        sql.SQL("{k}, coalesce(sum(ts.{c}), 0)").format(k=sql.Literal(c), c=sql.Identifier(c)) for c in TRAFFIC_COUNTERS)
    return sql.SQL(
        "select coalesce(pg_catalog.jsonb_object_agg(tn.name, tc.v), '{{}}'::jsonb) "
        "from pg_catalog.unnest({tables}::text[]) as tn(name) "
        "cross join lateral (select count(ts.relid) as n, pg_catalog.jsonb_build_object({sums}) as v "
        "from pg_catalog.pg_stat_user_tables ts where ts.relid in (select pg_catalog.to_regclass(tn.name) "
        "union select tp.relid from pg_catalog.pg_partition_tree(pg_catalog.to_regclass(tn.name)) tp)) tc "
        "where tc.n > 0").format(tables=sql.Literal(tables), sums=sums)


def rollback(spec: Spec, cat: Catalog, live: Catalog | None = None, cats=None) -> list[Step]:
    """Give the people the switch let in without a legacy row one, then restore every policy and function
    definition exactly as it was."""
    fwd = {s.id: s for s in plan(spec, cat, cats)}
    return [
        *newcomer_refills(spec, cat, live, cats),
        Step("rollback.switch.policies", "rollback", fwd[f"{PHASE}.policies"].op.reverse(),
             (f"{PHASE}.policies", f"{PHASE}.runtime_baseline", f"{PHASE}.review", COVERAGE, LINKS,
              *(i for i in (f"{PHASE}.function_tracking", f"{PHASE}.settle_helpers") if i in fwd))),
        *sync_functions_back(spec, cat, cats),
        *([] if not spec.has_helper else [
            Step("rollback.switch.legacy_helper", "rollback", fwd[f"{PHASE}.legacy_helper"].op.reverse(),
                 tuple(i for i in (f"{PHASE}.legacy_helper", f"{PHASE}.legacy_helper_definer") if i in fwd)),
            Step("rollback.switch.canonical_helper", "rollback", fwd[f"{PHASE}.canonical_helper"].op.reverse(),
                 tuple(i for i in (f"{PHASE}.canonical_helper", f"{PHASE}.canonical_helper_definer") if i in fwd))]),
    ]


def policy_tables(plan) -> list:
    """The tables whose policies the switch rewrites (in lock order), and those whose policies are left to the user,
    read from a built plan: the tables the RLS equivalence check reads."""
    from pgconverge.config import parse_qualified

    step = next(s for s in plan.steps if s.id == f"{PHASE}.policies")
    return [parse_qualified(t) for t in (*step.op.tables, *step.op.checked)]


def accepted_tables(spec: Spec, cat: Catalog) -> set:
    """Tables with a policy that needs a person and is accepted (migration.accept_policies): rewritten by hand, so
    the RLS check must read them too, or a switch that leaves every policy to the user would compare nothing."""
    if not spec.has_helper:
        return set()
    return {r.table for r in rewrite_policies(cat, spec)
            if r.table != cat.legacy.name and r.uncertain and policy_name(r) in spec.migration.accept_policies}


NEWCOMERS = "rollback_switch_newcomers"  # the ledger snapshot naming who the rollback of the switch made legacy rows for


def newcomer_refills(spec: Spec, cat: Catalog, live: Catalog | None = None, cats=None) -> list[Step]:
    """Before the policies read the legacy helper again: the rows new code wrote by the canonical id alone get their
    legacy id, through a legacy row made for their owner where it has none (align's legacy_for_canonical).

    After the switch the derived helper serves a caller the canonical table knows and the legacy one does not (a
    sign-up through the canonical table, a lookup helper finding it by auth.uid()): its rows carry the new id only.
    The restored policies compare the legacy column with the legacy helper, NULL for such a caller, so without a
    legacy row and a filled legacy column that person would see none of its rows and be refused every insert. The
    steps run only where the switch's policies were rewritten.

    New code may go on signing people up while the rollback runs, and the switched policies let it write for them
    until the restored ones are in place. So first every sync function makes the legacy row of a row written with the
    new id alone, as the refill does (expand's fill_legacy, as `rollback expand` has it from its refill on); then the
    rollback waits for the transactions open before that to end (a row one of them wrote the old way is committed, and
    the refill finds it); then the refill walks the rows written before. From then on no write leaves a row without
    its legacy id, whenever its owner signed up. Once the restored policies are in place, sync_functions_back gives
    every sync function expand's body again (see there for why the filling stops)."""
    from pgconverge.planning import expand, partitions

    when = (f"{PHASE}.policies",)
    deps = expand.names_of(spec, cat)
    steps = [Step(f"rollback.{PHASE}.newcomers", "rollback", Snapshot(NEWCOMERS, (
        ("people", _newcomers(spec, cat, deps, count=True)), ("by_table", _newcomers(spec, cat, deps, count=False))),
        "the people who own rows by the canonical id alone and have no legacy row, given one next"), (), when)]
    fills = _sync_functions(spec, cat, cats, fill_legacy=True)
    steps += [Step(f"rollback.{PHASE}.sync_fills_legacy.{short}", "rollback", CreateFunction(
        fn, "", body, why=f"a row of {table} written with {new} alone gets its {legacy} from now on, a legacy row "
                          "made where its owner has none, until the restored policies are in place"), (), when)
        for short, fn, body, table, legacy, new in fills]
    if fills:
        steps.append(Step(f"rollback.{PHASE}.settle_sync_functions", "rollback", SettleCalls(
            tuple((fn, "") for _, fn, *_ in fills), became="began filling the legacy id",
            risk="A row one of them wrote with the new id alone may have no legacy id, and the refill after this "
                 "would not see it before it commits."), (), when))
    for d, n in deps:
        rid = f"rollback.{PHASE}.legacy_ids.{n.short}"
        if d.partitioned:
            leaves = partitions.leaves(d, expand._now(live, cats))
            shorts = partitions.short_names(leaves)
            steps += [Step(f"{rid}.{shorts[leaf.table.name]}", "rollback",
                           expand._reverse_fill(spec, cat, n, leaf.table), (), when) for leaf in leaves]
        else:
            steps.append(Step(rid, "rollback", expand._reverse_fill(spec, cat, n, d.table), (), when))
    return steps


def newcomer_link_gap(spec: Spec, cat: Catalog) -> str | None:
    """Why the restored legacy helper would not find the people the rollback of the switch makes legacy rows for, or
    None: a helper that looks the caller up by auth.uid() through a column of the legacy table that a legacy row
    legacy_for_canonical makes leaves empty (neither a match column nor a copied one: align's reverse_values). Such a
    person would see none of its rows after the rollback, and be refused every insert. The rollback goes on (it is
    how a broken switch is left); this says so before its first change, with the fix."""
    from pgconverge.planning.rls_helper import lookup_link

    if cat.legacy_helper is None:
        return None
    link = lookup_link(cat.legacy_helper, cat.helper_callees)
    if link is None or (link[0] is not None and link[0] != cat.legacy.name) or cat.legacy.column(link[1]) is None:
        return None
    column = link[1]
    filled = {*spec.legacy.match_columns, *(lc for lc, _ in spec.canonical.copy_columns)}
    if column in filled:
        return None
    auth = auth_link(spec, cat)
    m = align.names(spec)["mapping"]
    if auth is not None:
        fix = sql.SQL(
            "update {leg} l set {link} = p.{ac} from {m} m join {can} p on p.{ck} = m.{mn} where m.{ml} = l.{lk} "
            "and m.method = 'reverse' and l.{link} is null").format(
            leg=qn(cat.legacy.name), link=ident(column), ac=ident(auth[2]), m=qn(m), can=qn(auth[0]),
            ck=ident(auth[1]), mn=ident(spec.migration.new_column), ml=ident(spec.mapping_legacy_column),
            lk=ident(spec.legacy.key))
        how = (f"after the rollback, give those rows their auth user: {text(fix)} (the rows the mapping "
               f"records with method 'reverse' are the ones pgconverge made)")
    else:
        how = (f"after the rollback, set {column} of the {cat.legacy.name} rows the mapping {m} records with method "
               "'reverse' (the ones pgconverge made) to each person's auth user")
    return (f"{spec.legacy.helper}() finds the caller by {cat.legacy.name}.{column}, which the {cat.legacy.name} rows "
            f"this rollback makes for people the switch let in without one leave empty ({column} is neither a match "
            "column nor in canonical.copy_columns): the restored helper will not find those people, who would see "
            f"none of their rows and be refused every insert. Fix: {how}")


def _sync_functions(spec: Spec, cat: Catalog, cats, fill_legacy: bool) -> list[tuple]:
    """(step name, sync function, its CREATE OR REPLACE, table, legacy column, new column) of every reference: the body
    expand installs (planned from expand's catalog, as expand was), or with FILL_LEGACY the one that also makes the
    legacy row of a row written with the new id alone (expand's _key_fill, always)."""
    from pgconverge.planning import expand

    ecat = cats.for_phase("expand") if cats is not None else cat
    return [(n.short, n.sync_fn, expand._sync_function(spec, ecat, d, n, expand.reconciles(spec, ecat, d, n),
                                                        fill_legacy=fill_legacy), d.table.name, n.legacy, n.new)
            for d, n in expand.names_of(spec, ecat)]


def sync_functions_back(spec: Spec, cat: Catalog, cats=None) -> list[Step]:
    """Once the restored policies are in place: every sync function gets expand's body back, which makes no legacy
    row (it fills the legacy id where its owner has one).

    The filling stops there because it helps nobody the rollback has not covered. Under the restored policies a
    person without a legacy row cannot use the application whatever the trigger does: their first insert is checked
    against the legacy helper, which reads a claim their token lacks or, as a lookup, cannot see a legacy row made
    within the same statement (a STABLE function reads the statement's snapshot), and the refused insert takes the
    legacy row with it. This is the state the switch began from, where new code cannot sign people up either: new
    code that makes people without a legacy row has to stop by the end of the rollback (`pgconverge run switch`
    again serves them, their rows kept by the new id). Going on would also leave the legacy table growing with rows
    pgconverge made, and a state the forward switch would have to undo. The step runs wherever a step of the
    switch's helpers or policies is done (these are undone after it)."""
    return [Step(f"rollback.{PHASE}.sync_function.{short}", "rollback", CreateFunction(
        fn, "", body, why=f"as expand made it: rows of {table} written with {new} alone get {legacy} where their owner "
                          "has a legacy row; the rollback's refill gave one to everyone who owned rows"), (),
        (f"{PHASE}.policies", f"{PHASE}.legacy_helper", f"{PHASE}.canonical_helper"))
        for short, fn, body, table, legacy, new in _sync_functions(spec, cat, cats, fill_legacy=False)]


def _newcomers(spec: Spec, cat: Catalog, deps: list, count: bool) -> sql.Composable:
    """One jsonb value: how many canonical ids own rows written without a legacy id and have no legacy row (COUNT), or
    those rows' number per table."""
    m = align.names(spec)["mapping"]
    if not deps:
        return sql.SQL("select to_jsonb(0)" if count else "select '{}'::jsonb")
    p = dict(m=qn(m), ml=ident(spec.mapping_legacy_column), mn=ident(spec.migration.new_column),
             leg=qn(cat.legacy.name), lk=ident(spec.legacy.key))
    parts = [sql.SQL("select {label}::text t, d.{n} c from {t} d where d.{l} is null and d.{n} is not null "
                     "and not exists (select 1 from {m} m join {leg} x on x.{lk} = m.{ml} where m.{mn} = d.{n})"
                     ).format(label=sql.Literal(str(d.table.name)), t=qn(d.table.name), l=ident(n.legacy),
                              n=ident(n.new), **p)
             for d, n in deps]
    rows = sql.SQL(" union all ").join(parts)
    if count:
        return sql.SQL("select to_jsonb(count(distinct x.c::text)) from ({}) x").format(rows)
    return sql.SQL("select coalesce(jsonb_object_agg(t, n), '{{}}'::jsonb) from (select x.t, count(*) n from ({}) x "
                   "group by x.t) y").format(rows)
