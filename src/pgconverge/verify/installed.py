"""What a phase installed that later phases and the application rely on, compared with what its plan made.

The expectations come from the phase's planned steps (planned from the catalog saved before the phase), never
from the catalog as it is now: a NOT NULL, an index or a trigger dropped or disabled by hand would otherwise take
its own check with it. Each problem row is (what, the statement that puts it back).

- triggers (align's on the legacy table, expand's sync and deferred fill triggers): there, enabled (`O` or `A`:
  one `D`, disabled, or `R`, replica only, does not fire for the application), calling the function pgconverge
  gave them on the events it gave them;
- expand's new columns: there, NOT NULL where expand declared it, their foreign keys and checks there (validated
  where expand validated them), the indexes it built there.
"""

from __future__ import annotations

import re

from psycopg import sql

from pgconverge.execution.sql import bounded, ident, qn, text
from pgconverge.operations.base import Operation, Plan
from pgconverge.operations.check import Check
from pgconverge.operations.columns import AddColumn, SetNotNull
from pgconverge.operations.constraints import (AddCheckNotValid, AddForeignKeyNotValid, DropConstraint,
                                               ValidateConstraint)
from pgconverge.operations.create_index import CreateIndexConcurrently
from pgconverge.operations.create_trigger import CreateTrigger, DropTrigger
from pgconverge.operations.partitions import AddForeignKey, CreateIndexShell
from pgconverge.operations.together import Together

NONE = sql.SQL("select null::text, null::text where false")


def flat(ops) -> list[Operation]:
    """OPS with every Together opened."""
    out: list[Operation] = []
    for op in ops:
        out += flat(op.ops) if isinstance(op, Together) else [op]
    return out


def _lit(x) -> sql.Literal:
    return sql.Literal(str(x))


# -- triggers ---------------------------------------------------------------------------------------------


def _columns(listing: str) -> list[str]:
    """The column names of "a", "b" (or a, b), as rendered."""
    return [q.replace('""', '"') if q else w.lower() for q, w in re.findall(r'"((?:[^"]|"")*)"|(\w+)', listing)]


def _tgtype(op: CreateTrigger) -> tuple[int, list[str]]:
    """pg_trigger.tgtype of OP (row, timing, events) and the columns of its UPDATE OF, sorted."""
    events, _, listing = text(op.timing_events).partition(" of ")
    words = events.lower().split()
    t = 1 | (2 if words[0] == "before" else 0)
    for event, bit in (("insert", 4), ("delete", 8), ("update", 16)):
        if event in words:
            t |= bit
    cols = sorted(_columns(listing))
    return t, cols


def trigger_holds(op: CreateTrigger) -> sql.Composable:
    """Problems of the trigger OP creates: missing, disabled (on its table or a partition), or not the one OP made."""
    tgtype, cols = _tgtype(op)
    create = "; ".join(text(s) for s in op.statements()[1:])
    p = dict(t=_lit(op.table), n=sql.Literal(op.name), f=sql.Literal(text(qn(op.function)) + "()"),
             create=sql.Literal(create), tgtype=sql.Literal(tgtype),
             cols=sql.SQL("array[{}]::text[]").format(sql.SQL(", ").join(sql.Literal(c) for c in cols)),
             when=sql.Literal(op.when is not None), deferred=sql.Literal(op.deferred))
    return sql.SQL(
        "select format('trigger %s on %s is missing', {n}, {t}), {create} "
        "where to_regclass({t}) is not null and not exists (select 1 from pg_catalog.pg_trigger "
        "where tgrelid = to_regclass({t}) and tgname = {n}) "
        "union all "
        # A partition's clone of a partitioned table's trigger has its name, and can be disabled alone.
        "select format('trigger %s on %s.%s is %s', g.tgname, r.nspname, r.relname, case g.tgenabled when 'D' "
        "then 'disabled' when 'R' then 'enabled for replica sessions only' else g.tgenabled::text end), "
        "format('alter table %I.%I enable trigger %I', r.nspname, r.relname, g.tgname) "
        "from pg_catalog.pg_trigger g cross join lateral (select n.nspname, c.relname from pg_catalog.pg_class c "
        "join pg_catalog.pg_namespace n on n.oid = c.relnamespace where c.oid = g.tgrelid) r where g.tgname = {n} and (g.tgrelid = to_regclass({t}) or g.tgrelid in ("
        "select relid from pg_catalog.pg_partition_tree(to_regclass({t})))) and g.tgenabled not in ('O', 'A') "
        "union all "
        "select format('trigger %s on %s is not the one pgconverge created (now: %s)', {n}, {t}, "
        "pg_catalog.pg_get_triggerdef(g.oid)), {create} "
        "from pg_catalog.pg_trigger g where g.tgrelid = to_regclass({t}) and g.tgname = {n} and ("
        "g.tgfoid is distinct from pg_catalog.to_regprocedure({f}) or g.tgtype <> {tgtype} "
        "or array(select a.attname::text from pg_catalog.unnest(g.tgattr::int2[]) k join pg_catalog.pg_attribute a "
        "on a.attrelid = g.tgrelid and a.attnum = k order by 1) <> {cols} "
        "or (g.tgqual is not null) <> {when} or g.tgdeferrable <> {deferred} or g.tginitdeferred <> {deferred})"
    ).format(**p)


def triggers(plan: Plan, phase: str, later: tuple[str, ...] = ()) -> list[CreateTrigger]:
    """The triggers PHASE of PLAN creates, less those it or a phase of LATER (already run) drops again."""
    made = [op for s in plan.phase(phase) for op in flat([s.op]) if isinstance(op, CreateTrigger)]
    dropped = {(str(op.table), op.name) for ph in (phase, *later) for s in plan.phase(ph) for op in flat([s.op])
               if isinstance(op, DropTrigger)}
    return [op for op in made if (str(op.table), op.name) not in dropped]


def triggers_hold(plan: Plan, phases: list[str]) -> Check | None:
    """pgconverge's triggers of the finished PHASES: there, enabled, as created."""
    ops = [op for ph in phases for op in triggers(plan, ph, tuple(x for x in phases if x != ph))]
    if not ops:
        return None
    return Check("pgconverge's triggers hold", sql.SQL(" union all ").join(trigger_holds(op) for op in ops),
                 failure="a trigger pgconverge installed is missing, disabled or changed: old code's writes go "
                         "without what it does (a row without its mapping or its new id)",
                 fix="run the statement given for each (`alter table … enable trigger …` for a disabled one; a "
                     "bulk load's `disable trigger all` or `session_replication_role = replica` leaves this), then "
                     "`pgconverge verify`: expand's invariants name the rows written meanwhile without their new id",
                 covers=())


# -- expand's new columns ---------------------------------------------------------------------------------


def made_holds(ops: list[Operation]) -> sql.Composable:
    """Problems of what OPS (a phase's planned operations, in order) made on the new columns: the column, its
    NOT NULL, its constraints (validated where OPS validate them) and indexes, each gone or changed."""
    ops = flat(ops)
    dropped = {(str(op.table), op.name) for op in ops if isinstance(op, DropConstraint)}
    validated = {(str(op.table), op.name) for op in ops if isinstance(op, ValidateConstraint)}
    parts: list[sql.Composable] = []
    for op in ops:
        if isinstance(op, AddColumn):
            parts.append(sql.SQL(
                "select format('%s.%s is missing', {t}, {c}), null where to_regclass({t}) is not null and not exists "
                "(select 1 from pg_catalog.pg_attribute where attrelid = to_regclass({t}) and attname = {c} and not "
                "attisdropped)").format(t=_lit(op.table), c=sql.Literal(op.column)))
        elif isinstance(op, SetNotNull):
            chk = sql.Identifier(bounded(f"{op.table.name}_{op.column}_not_null"))
            t, c = qn(op.table), ident(op.column)
            fix = text(sql.SQL(
                "alter table {t} add constraint {k} check ({c} is not null) not valid; alter table {t} validate "
                "constraint {k}; alter table {t} alter column {c} set not null; alter table {t} drop constraint {k}"
            ).format(t=t, c=c, k=chk))
            parts.append(sql.SQL(
                "select format('%s.%s is no longer NOT NULL', {t}, {c}), {fix} from pg_catalog.pg_attribute "
                "where attrelid = to_regclass({t}) and attname = {c} and not attisdropped and not attnotnull").format(
                t=_lit(op.table), c=sql.Literal(op.column), fix=sql.Literal(fix)))
        elif isinstance(op, (AddForeignKeyNotValid, AddCheckNotValid, AddForeignKey)) \
                and (str(op.table), op.name) not in dropped:
            kind = "check" if isinstance(op, AddCheckNotValid) else "foreign key"
            valid = isinstance(op, AddForeignKey) or (str(op.table), op.name) in validated
            fix = "; ".join(text(s) for s in op.statements())
            if valid and not isinstance(op, AddForeignKey):
                fix += "; " + text(sql.SQL("alter table {} validate constraint {}").format(
                    qn(op.table), sql.Identifier(op.name)))
            parts.append(sql.SQL(
                "select format('%s: {kind} %s is missing' || {v}, {t}, {n}), {fix} "
                "where to_regclass({t}) is not null and not exists (select 1 from pg_catalog.pg_constraint "
                "where conrelid = to_regclass({t}) and conname = {n}{and_valid})").format(
                kind=sql.SQL(kind), t=_lit(op.table), n=sql.Literal(op.name), fix=sql.Literal(fix),
                v=sql.Literal(" or not validated" if valid else ""),
                and_valid=sql.SQL(" and convalidated" if valid else "")))
        elif isinstance(op, (CreateIndexConcurrently, CreateIndexShell)):
            parts.append(sql.SQL(
                "select format('index %s on %s is missing', {i}, {t}), {fix} "
                "where to_regclass({t}) is not null and not exists (select 1 from pg_catalog.pg_index "
                "where indexrelid = to_regclass({i}) and indrelid = to_regclass({t}))").format(
                i=_lit(op.name), t=_lit(op.table), fix=sql.Literal("; ".join(text(s) for s in op.statements()))))
    return sql.SQL(" union all ").join(parts) if parts else NONE


def expand_holds(plan: Plan) -> Check | None:
    """Expand's new columns as its plan made them, before the switch and contract rely on them."""
    ops = [s.op for s in plan.phase("expand")]
    query = made_holds(ops)
    if query is NONE:
        return None
    return Check("expand's new columns hold", query,
                 failure="what expand made on the new columns is gone or changed",
                 fix="run the statement given for each (expand's own step), then `pgconverge verify`",
                 covers=())


def checks(plan: Plan, phases: list[str]) -> list[tuple[str, Check]]:
    """(step id, check) of what the finished PHASES installed, for `verify` and the gates. After contract none:
    contract's own check reads the new columns, and the triggers are gone."""
    out: list[tuple[str, Check]] = []
    if "contract" in phases:
        return out
    done = [ph for ph in ("align", "expand") if ph in phases]
    if "expand" in done and (c := expand_holds(plan)) is not None:
        out.append(("expand.new_columns_hold", c))
    # A foreign key to the legacy table expand did not plan: read again where expand's own holds are (its gate is
    # about the moment expand ended).
    gate = next((s.op for s in plan.phase("expand") if s.id == "expand.references"), None)
    if "expand" in done and gate is not None:
        out.append(("expand.references", gate))
    if (c := triggers_hold(plan, done)) is not None:
        out.append((f"{done[-1]}.triggers_hold", c))
    return out
