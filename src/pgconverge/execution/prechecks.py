"""Data checks `plan` runs ahead of the phase whose first step runs them too, so both refuse alike."""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from pgconverge.config import Spec
from pgconverge.errors import ConfigError, PgConvergeError
from pgconverge.execution.sql import qn, text
from pgconverge.ledger.store import Ledger
from pgconverge.operations.base import Plan, Step
from pgconverge.operations.check import Check

COLLISIONS_STEP = "expand.unique_collisions"


class RowsCollide(PgConvergeError):
    """Rows merged onto one canonical row would break a mirrored unique rule; nothing was changed."""


def _ahead(conn: psycopg.Connection, spec: Spec, plan: Plan, step_id: str, *, after_align: bool) -> tuple | None:
    """(the gate step, the rows it names) for one of expand's first gates, run ahead by `plan` and `run` while expand
    has not started (and, AFTER_ALIGN, once align is done); None where it is not to be run now."""
    step = next((s for s in plan.steps if s.id == step_id), None)
    if step is None or not isinstance(step.op, Check):
        return None
    ledger = Ledger(conn, spec)
    states = ledger.step_states() if ledger.exists() else None
    if after_align and (states is None or not all(
            states.get(s.id) is not None and states[s.id].state == "done" for s in plan.phase("align"))):
        return None  # no mapping yet: the rows cannot be grouped by canonical row
    if states is not None and any(states.get(s.id) is not None and states[s.id].state in ("done", "pending")
                                  for s in plan.phase("expand")):
        return None  # expand has started: its own first step decided
    with conn.transaction():
        conn.execute("set transaction isolation level repeatable read, read only")
        return step, conn.execute(step.op.query).fetchall()


def collisions(conn: psycopg.Connection, spec: Spec, plan: Plan) -> None:
    """Once align is done and before expand has run its first step: refuse the rows expand's first step would."""
    step, rows = _ahead(conn, spec, plan, COLLISIONS_STEP, after_align=True) or (None, None)
    if rows:
        raise RowsCollide(f"{step.op.failure} ({len(rows)} group(s)); expand would refuse them at its first step:\n"
                          + "\n".join(f"  - {a}: {b}" if b is not None else f"  - {a}" for a, b in rows),
                          fix=step.op.fix)


ORPHANS_STEP = "expand.orphans"


class OrphanRows(PgConvergeError):
    """Rows point at legacy ids that exist nowhere (a NOT VALID foreign key let them be); nothing was changed."""


def orphans(conn: psycopg.Connection, spec: Spec, plan: Plan) -> None:
    """Before expand has run its first step (from before align on): refuse the rows expand's first step would."""
    step, rows = _ahead(conn, spec, plan, ORPHANS_STEP, after_align=False) or (None, None)
    if rows:
        raise OrphanRows(f"{step.op.failure}; expand would refuse them at its first step:\n"
                         + "\n".join(f"  - {a}: {b}" for a, b in rows), fix=step.op.fix)


class RollbackBlocked(PgConvergeError):
    """Objects the rollback did not make depend on what it drops: it would stop half way; nothing was changed."""


def rollback_steps(plan: Plan, states: dict) -> list[Step]:
    """The steps of rollback PLAN that will run, by the ledger's STATES: those undoing a forward step whose change may
    be in place (done, or begun and not all or nothing: see Step.live)."""
    return [s for s in plan.steps if s.live(states) and not s.nothing_to_undo(states)]


def rollback_blockers(conn: psycopg.Connection, steps: list[Step], spec: Spec, *,
                      accept_functions: bool = False, accept_flag: str | None = None) -> None:
    """Before a rollback's first change: refuse while any object that the rollback neither drops nor redefines
    depends on what STEPS drop (a policy or view on a new column, a policy calling the canonical helper pgconverge
    made, a view on the mapping): Postgres would refuse that DROP half way through the rollback.

    What the steps drop takes with it what depends on it automatically (its indexes, constraints, defaults, a
    partition's copies); an object depending on any of that in the ordinary way (pg_depend's 'n') stops a DROP
    without CASCADE, unless the rollback drops it too or gives it back its former definition (the switch's
    policies, the helpers).

    Then, unless ACCEPT_FUNCTIONS, the functions of the application whose body reaches what the steps drop
    (function_references): Postgres records no such dependency, so the DROP goes through and every statement
    calling the function fails from then on. ACCEPT_FLAG is the option that accepts them, named in the refusal.

    Then the legacy rows the rollback would make for canonical rows that have none (legacy_rows)."""
    _policies_gone(conn, steps)
    drops = [q for s in steps for q in s.op.drops()]
    if drops:
        _dependencies(conn, steps, drops)
        if not accept_functions:
            found = function_references(conn, steps, spec)
            if found:
                raise FunctionsReachDrops(
                    "the rollback would break the application: functions of yours reach what it drops, and every "
                    "statement calling them would fail once it is gone (Postgres records nothing of what a "
                    "function's body reads, so the DROP would not stop at them; nothing was changed):\n"
                    + "\n".join(f"  - {line}" for line in found),
                    fix=functions_fix(spec, accept_flag))
    legacy_rows(conn, steps)


class FunctionsReachDrops(RollbackBlocked):
    """Functions of the application read or call what a rollback drops: they would fail after it; nothing was
    changed."""


def functions_fix(spec: Spec, accept_flag: str | None) -> str:
    helper = (f", or the legacy helper {spec.legacy.helper}() where it calls {spec.canonical.helper}()"
              if spec.has_helper else "")
    return (f"rewrite each function named back onto the legacy side, as it was before the migration (the legacy "
            f"column{helper}), then run the rollback again" + (f"; or, when none of them is called any more, {accept_flag} rolls back anyway "
                                    "(they fail once what they reach is gone)" if accept_flag else ""))


def _gone(steps: list[Step], drops: list[sql.Composable]) -> sql.Composable:
    """The CTEs moved, gone (what the steps drop, and what goes with it automatically) and redefined."""
    redefines = [q for s in steps for q in s.op.redefines()] or [sql.SQL("select null::oid, null::oid, null::int "
                                                                         "where false")]
    moves = [q for s in steps for q in s.op.moves()] or [sql.SQL("select null::text, null::oid where false")]
    union = sql.SQL(" union ")
    return sql.SQL(
        "with recursive moved(name, oid) as ({moves}), "
        "gone(classid, objid, objsubid) as ({drops} union select a.classid, a.objid, "
        "nullif(a.objsubid, 0) from pg_catalog.pg_depend a join gone g on a.refclassid = g.classid and "
        "a.refobjid = g.objid and (g.objsubid is null or a.refobjsubid = g.objsubid) "
        "where a.deptype in ('a', 'i', 'P', 'S')), "
        "redefined(classid, objid, objsubid) as ({redefines}) ").format(
        drops=union.join(drops), redefines=union.join(redefines), moves=union.join(moves))


def function_references(conn: psycopg.Connection, steps: list[Step], spec: Spec) -> list[str]:
    """The functions of the application (outside pgconverge's schemas, neither dropped nor redefined by STEPS) whose
    body reaches what STEPS drop: a new column (read or written where the body also names its table, or in a
    trigger function on it), a function pgconverge made (the canonical helper), a table (the mapping), an index or
    a constraint by name. One line each, naming what the function reaches and what calls it (policies, views,
    triggers, defaults). A body Postgres keeps only as text (SQL without BEGIN ATOMIC, PL/pgSQL) is in no
    dependency Postgres records; a body that does not parse counts as reaching every name it holds."""
    from pgconverge.catalog import calls, queries
    from pgconverge.catalog.model import Function
    from pgconverge.config import QualifiedName
    from pgconverge.planning.shapes import DESCRIBE

    drops = [q for s in steps for q in s.op.drops()]
    if not drops:
        return []
    rows = conn.execute(_gone(steps, drops) + sql.SQL(
        "select 'column', n.nspname, c.relname, a.attname::text from gone g "
        "join pg_catalog.pg_class c on g.classid = 'pg_catalog.pg_class'::regclass and c.oid = g.objid "
        "join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
        "join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum = g.objsubid and g.objsubid is not null "
        "union select case c.relkind when 'i' then 'index' when 'I' then 'index' else 'table' end, n.nspname, "
        "c.relname, null from gone g "
        "join pg_catalog.pg_class c on g.classid = 'pg_catalog.pg_class'::regclass and c.oid = g.objid "
        "and g.objsubid is null join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
        "where c.relkind in ('r', 'p', 'v', 'm', 'i', 'I', 'S', 'f') "
        "union select 'constraint', n.nspname, c.relname, k.conname::text from gone g "
        "join pg_catalog.pg_constraint k on g.classid = 'pg_catalog.pg_constraint'::regclass and k.oid = g.objid "
        "join pg_catalog.pg_class c on c.oid = k.conrelid join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
        "union select 'function', n.nspname, p.proname, p.oid::text from "
        "(select classid, objid from gone union select classid, objid from redefined) g "
        "join pg_catalog.pg_proc p on g.classid = 'pg_catalog.pg_proc'::regclass and p.oid = g.objid "
        "join pg_catalog.pg_namespace n on n.oid = p.pronamespace")).fetchall()
    own = {spec.migration.private_schema, spec.migration.archive_schema}
    columns = [(QualifiedName(ns, rel), name) for kind, ns, rel, name in rows if kind == "column"]
    tables = [QualifiedName(ns, rel) for kind, ns, rel, _ in rows if kind == "table"]
    columns = [(t, c) for t, c in columns if t not in tables]  # the table goes whole
    indexes = [QualifiedName(ns, rel) for kind, ns, rel, _ in rows if kind == "index"]
    constraints = [(QualifiedName(ns, rel), name) for kind, ns, rel, name in rows if kind == "constraint"]
    # Functions the steps drop or redefine are theirs to change; those dropped are names others may call.
    functions = {int(oid): QualifiedName(ns, rel) for kind, ns, rel, oid in rows if kind == "function"}
    redefined = {int(o) for (o,) in conn.execute(_gone(steps, drops) + sql.SQL(
        "select r.objid from redefined r where r.classid = 'pg_catalog.pg_proc'::regclass")).fetchall()}
    called = {name for oid, name in functions.items() if oid not in redefined}
    words = {c for _, c in columns} | {t.name for t in (*tables, *indexes, *called)} | {c for _, c in constraints}
    if not words:
        return []
    pattern = r"\m(" + "|".join(re.escape(w) for w in sorted(words)) + r")\M"
    found = []
    for (oid, ns, name, sig, args, ret, lang, vol, secdef, config, src, fdef, owner, on) in conn.execute(
            queries.FUNCTIONS_MATCHING, {"skip": sorted(own), "oids": sorted(functions), "pattern": pattern}):
        fn = Function(QualifiedName(ns, name), sig, args, ret, lang, vol, secdef, tuple(config), src, fdef, oid, owner)
        on_tables = frozenset(QualifiedName(s, t) for s, t in on or ())
        reaches = [f"reads {t}.{c}" for t, c in columns if calls.reads_column(fn, t, c, on_tables)]
        reaches += [f"calls {f}()" for f in sorted(called, key=str) if calls.calls_function(fn, f)]
        reaches += [f"names table {t}" for t in tables if calls.names(fn, t.name)]
        reaches += [f"names index {i}" for i in indexes if calls.names(fn, i.name)]
        reaches += [f"names constraint {c} of {t}" for t, c in constraints if calls.names(fn, c)]
        if reaches:
            found.append((oid, f"{fn.name}{sig[sig.index('('):]}", reaches))  # types as in regprocedure
    if not found:
        return []
    callers: dict[int, list[str]] = {}
    for oid, what in conn.execute(sql.SQL(
            "select d.refobjid, {} from pg_catalog.pg_depend d where d.refclassid = 'pg_catalog.pg_proc'::regclass "
            "and d.refobjid = any({}::oid[]) and d.deptype = 'n' order by 2").format(
            DESCRIBE, sql.Literal([o for o, _, _ in found]))).fetchall():
        callers.setdefault(oid, []).append(what)
    return [f"function {sig} {', '.join(dict.fromkeys(reaches))}"
            + (f" (called by {', '.join(dict.fromkeys(callers[oid]))})" if callers.get(oid) else "")
            for oid, sig, reaches in found]


def _policies_gone(conn: psycopg.Connection, steps: list[Step]) -> None:
    """Refuse while a policy the switch rewrote, which the rollback gives back its text from before the switch, is
    gone (the application dropped or renamed it): its ALTER POLICY would fail half way through the rollback."""
    from pgconverge.operations.replace_policies import ReplacePolicies

    gone = []
    # Probes name tables where the rollback finds them (an archived table is moved back first): `moved` says where.
    moves = [q for s in steps for q in s.op.moves()] or [sql.SQL("select null::text, null::oid where false")]
    for s in steps:
        if isinstance(s.op, ReplacePolicies) and not s.op.verify:
            for name, probe, restore in zip(s.op.names, s.op.redefines(), s.op.statements_text):
                found = conn.execute(sql.SQL("with moved(name, oid) as ({}) select count(*) from ({}) p").format(
                    sql.SQL(" union ").join(moves), probe)).fetchone()[0]
                if not found:
                    gone.append((name, restore))
    if gone:
        def one(name: str, restore: str) -> str:
            table, policy = name.rsplit(".", 1)
            return f"  - policy {policy} on {table}; the rollback would give it back: {restore.strip()}"

        raise RollbackBlocked(
            "the rollback would stop half way: it gives the policies the switch rewrote back their text from before "
            "the switch, and these no longer exist (dropped or renamed since the switch; nothing was changed):\n"
            + "\n".join(one(*g) for g in gone),
            fix="create each policy named again under its name, on its table, for the command and roles it had "
                "(`CREATE POLICY name ON table …`; any expression will do: the rollback gives it the text shown), "
                "then run the rollback again; a policy the application made in its place is left as it is (check it "
                "reads the legacy side, as the rest will after the rollback)")


def _dependencies(conn: psycopg.Connection, steps: list[Step], drops: list[sql.Composable]) -> None:
    from pgconverge.planning.shapes import DESCRIBE

    query = _gone(steps, drops) + sql.SQL(
        "select {describe}, string_agg(distinct pg_catalog.pg_describe_object(d.refclassid, d.refobjid, "
        "coalesce(g.objsubid, 0)), ', ') "
        "from pg_catalog.pg_depend d join gone g on d.refclassid = g.classid and d.refobjid = g.objid "
        "and (g.objsubid is null or d.refobjsubid = g.objsubid) where d.deptype = 'n' "
        "and not exists (select 1 from gone x where x.classid = d.classid and x.objid = d.objid "
        "and (x.objsubid is null or x.objsubid = d.objsubid)) "
        "and not exists (select 1 from redefined r where r.classid = d.classid and r.objid = d.objid) "
        "group by d.classid, d.objid, d.objsubid order by 1").format(describe=DESCRIBE)
    rows = conn.execute(query).fetchall()
    if rows:
        raise RollbackBlocked(
            "the rollback would stop half way: objects it did not make depend on what it drops (nothing was "
            "changed):\n" + "\n".join(f"  - {what} depends on {on}" for what, on in rows),
            fix="drop each object named, or put it back as it was before the migration (a policy on the legacy column "
                "or the legacy helper, say), then run the rollback again")


class LegacyRowsRefused(PgConvergeError):
    """A rollback would have to make legacy rows the legacy table refuses: it would stop half way; nothing was
    changed."""


def legacy_rows(conn: psycopg.Connection, steps: list[Step]) -> None:
    """Before a rollback's first change: refuse when its refill of legacy ids (expand's or contract's) would have
    legacy_for_canonical make a legacy row that the legacy table refuses (a NOT NULL column the canonical row has no
    value for, say: a person who signed up by e-mail, whose orders new code wrote). The function would raise at that
    row, half way through the rollback, after the steps before it changed the database.

    From a contracted database the legacy table and the mapping are in the archive schema: they are read where the
    rollback's restore steps find them."""
    from pgconverge.identity.check import legacy_refusals
    from pgconverge.operations.archive import RestoreTable

    made, seen = [], set()
    for s in steps:
        for r in s.op.makes_legacy_rows():
            # A table refilled by contract's rollback and then expand's: the first refill hands over every row.
            if (r.table, r.new) not in seen:
                seen.add((r.table, r.new))
                made.append(r)
    if not made:
        return
    restored = {s.op.table: s.op.archived for s in steps if isinstance(s.op, RestoreTable)}

    def now(name):
        for candidate in (name, restored.get(name)):
            if candidate is not None and conn.execute("select pg_catalog.to_regclass(%s) is not null",
                                                      (text(qn(candidate)),)).fetchone()[0]:
                return candidate
        return None

    legacy_at, mapping_at = now(made[0].legacy_table), now(made[0].mapping)
    if legacy_at is None or mapping_at is None:
        return  # nowhere to be found: the rollback's own steps say so
    kept_at = made[0].kept_table is not None and now(made[0].kept_table) is not None
    refused = legacy_refusals(conn, made, legacy_at, mapping_at, kept_at)
    if refused:
        raise LegacyRowsRefused(refused[0], fix=refused[1])


class NewcomerRowsRefused(PgConvergeError):
    """From expand on, a legacy row pgconverge's sync trigger makes for a person new code writes for would be refused
    by the legacy table, failing the application's write; nothing was changed."""


def newcomer_rows(conn: psycopg.Connection, spec: Spec, plan: Plan, cats) -> None:
    """Before expand has run its first step (from before align on): refuse when the legacy row that expand's sync
    trigger makes, on a table whose primary key holds the legacy column, for a person new code writes a row for who
    has none (align's legacy_for_canonical) would be refused by the legacy table (identity/check.py
    newcomer_refusals, the check a rollback runs on the rows it makes). Align installs the function that makes the
    row and expand the trigger that calls it: refused before either, not when the application's write fails."""
    from pgconverge.identity.check import newcomer_refusals
    from pgconverge.planning import align, references, shapes

    if not plan.phase("expand"):
        return
    ledger = Ledger(conn, spec)
    states = ledger.step_states() if ledger.exists() else {}

    def done(phase: str) -> bool:
        return all(states.get(s.id) is not None and states[s.id].state == "done" for s in plan.phase(phase))

    if any(states.get(s.id) is not None and states[s.id].state in ("done", "pending") for s in plan.phase("expand")):
        return  # expand has started: the trigger is in place
    cat = cats.for_phase("expand")
    keyed = [d for d in cat.dependents if shapes.in_primary_key(d)]
    if not keyed:
        return
    d = keyed[0]
    # As align installs the function (its column list and casts), checked against the legacy table as it is now.
    first = align.reverse_aligned(spec, cats.for_phase("align"), d.table.name, d.fk.columns[0],
                                  references.new_column(spec, cat, d))
    refused = newcomer_refusals(conn, first, list(dict.fromkeys(str(k.table.name) for k in keyed)), done("align"))
    if refused:
        raise NewcomerRowsRefused(refused[0], fix=refused[1])


class ReadOnly(PgConvergeError):
    """The server or the session takes no writes."""


def writable(conn: psycopg.Connection) -> None:
    """Refuse, before anything changes, a server in recovery (a standby) or a session whose transactions are
    read-only by default (default_transaction_read_only set on the server, database or role)."""
    standby, read_only, source = conn.execute(
        "select pg_catalog.pg_is_in_recovery(), s.setting = 'on', s.source from pg_catalog.pg_settings s "
        "where s.name = 'default_transaction_read_only'").fetchone()
    if standby:
        raise ReadOnly("the server is a standby (in recovery): it takes no writes; nothing was changed",
                       fix="connect to the primary: --dsn or DATABASE_URL naming the primary's host")
    if read_only:
        raise ReadOnly(f"this session's transactions are read-only by default (default_transaction_read_only = on, "
                       f"set in the {source} settings); nothing was changed",
                       fix="connect as a role, or to a database, that may write, or `ALTER DATABASE <db> RESET "
                           "default_transaction_read_only;` (or ALTER ROLE … RESET) if the setting is left over")


def lock_timeout(conn: psycopg.Connection, spec: Spec) -> None:
    """Refuse, before anything changes, a migration.lock_timeout_ms that is not well below the server's
    deadlock_timeout. A DDL statement of pgconverge's locks two tables (a dependent, then the legacy table its
    foreign key references), and an application transaction may hold one and want the other: Postgres then cancels
    one of the two, whichever waited deadlock_timeout first. The application's waits on pgconverge's lock last no
    longer than pgconverge's own lock_timeout (it gives up and tries again later), so with lock_timeout_ms at most
    half of deadlock_timeout it is always pgconverge's statement that gives way, never the application's."""
    deadlock_ms = float(conn.execute("select pg_catalog.date_part('epoch', pg_catalog.current_setting("
                                     "'deadlock_timeout')::interval) * 1000").fetchone()[0])
    mine = spec.migration.lock_timeout_ms
    if deadlock_ms and mine * 2 > deadlock_ms:
        raise ConfigError(
            f"{spec.source}: migration.lock_timeout_ms = {mine} is more than half of this server's deadlock_timeout "
            f"({deadlock_ms:g} ms): where an application transaction and one of pgconverge's DDL statements wait for "
            "each other's locks, Postgres could cancel the application's statement instead of pgconverge's; nothing "
            "was changed",
            fix=f"set migration.lock_timeout_ms to at most {int(deadlock_ms // 2)} (the default, 100, waits less and "
                "tries again: raise migration.lock_retries instead), or raise the server's deadlock_timeout")


class Unidentified(PgConvergeError):
    """A dependent table's replica identity would stop the migration, or be lost by it."""


def replica_identity(conn: psycopg.Connection, cat) -> None:
    """Refuse, before anything changes, a dependent table (or leaf partition) whose replica identity the migration
    cannot work with:

    - published for its UPDATEs without a replica identity (NOTHING, or DEFAULT without a primary key): Postgres
      refuses every UPDATE of it, the backfill's and a rollback's among them, so a run would stop half way;
    - identified by an index on the legacy column: expand makes that column nullable (new code writes only the new
      one), which such an index forbids, and contract drops the column and the index with it, after which every
      UPDATE and DELETE of the table fails wherever it is published.
    """
    if cat is None:
        return
    pairs = list(dict.fromkeys((str(t.name), d.fk.columns[0]) for d in cat.dependents
                               for t in (d.table, *(p.table for p in d.leaves))))
    if not pairs:
        return
    # Publications name a table, one of its ancestors (a partitioned table), every table (FOR ALL TABLES) or, from
    # Postgres 15, a schema of one of them (FOR TABLES IN SCHEMA). pg_partition_ancestors() is empty for a table that
    # is not a partition.
    schemas = ("or exists (select from pg_catalog.pg_publication_namespace pn where pn.pnpubid = p.oid "
               "and (pn.pnnspid = c.relnamespace or pn.pnnspid in (select a.relnamespace from pg_catalog.pg_class a "
               "where a.oid in (select relid from pg_catalog.pg_partition_ancestors(c.oid))))) "
               if cat.server_version >= 150000 else "")
    rows = conn.execute(
        "select pg_catalog.format('%%I.%%I', n.nspname, c.relname), t.col, (select pg_catalog.string_agg("
        "p.pubname::text, ', ' order by p.pubname) from pg_catalog.pg_publication p where p.pubupdate and ("
        "p.puballtables or exists (select from pg_catalog.pg_publication_rel r where r.prpubid = p.oid and "
        "(r.prrelid = c.oid or r.prrelid in (select relid from pg_catalog.pg_partition_ancestors(c.oid)))) "
        + schemas + ")), c.relreplident = 'n' or c.relreplident = 'd' and not exists (select from "
        "pg_catalog.pg_index i where i.indrelid = c.oid and i.indisprimary) or c.relreplident = 'i' and not exists "
        "(select from pg_catalog.pg_index i where i.indrelid = c.oid and i.indisreplident), "
        "(select pg_catalog.format('%%I.%%I', n.nspname, x.relname) from pg_catalog.pg_index i join "
        "pg_catalog.pg_class x on x.oid = i.indexrelid join pg_catalog.pg_attribute a on a.attrelid = c.oid "
        "and a.attname = t.col and a.attnum = any(i.indkey) where i.indrelid = c.oid and i.indisreplident "
        "and c.relreplident = 'i') "
        "from rows from (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[])) as t(name, col) "
        "join pg_catalog.pg_class c on c.oid = pg_catalog.to_regclass(t.name) and c.relkind = 'r' "
        "join pg_catalog.pg_namespace n on n.oid = c.relnamespace order by 1",
        ([t for t, _ in pairs], [c for _, c in pairs])).fetchall()
    problems, fixes = [], []
    for table, col, pubs, unidentified, index in rows:
        if pubs and unidentified:
            problems.append(f"{table} has no replica identity and publication {pubs} replicates its UPDATEs: "
                            "Postgres refuses every UPDATE of it, the backfill's and a rollback's among them")
            fixes.append(f"`ALTER TABLE {table} REPLICA IDENTITY FULL;` (or give it a primary key)")
        elif index:
            problems.append(f"{table}'s replica identity is index {index} on {col}: expand makes {col} nullable, "
                            "which that index forbids, and contract drops it with the column, after which every "
                            f"UPDATE and DELETE of {table} fails wherever it is published")
            fixes.append(f"`ALTER TABLE {table} REPLICA IDENTITY FULL;` (or DEFAULT, with a primary key) for the "
                         "migration, and `REPLICA IDENTITY USING INDEX` on the new column's unique index after "
                         "contract")
    if problems:
        raise Unidentified("the migration cannot keep these tables' replica identity; nothing was changed:\n"
                           + "\n".join(f"  - {p}" for p in problems), fix="; ".join(fixes))


def configuration(conn: psycopg.Connection, spec: Spec, cats) -> None:
    """Configuration values that only the database shows wrong, refused before the first change (`plan`, `run` and
    `align --decisions`, ahead of the step that would fail on them or act on them unseen): an API role or an accepted
    policy that does not exist, an archive schema holding the application's tables, a canonical helper the switch
    must not replace, a legacy claim the legacy helper does not read."""
    from pgconverge.config import Settings

    cat = cats.for_phase("switch")
    source = spec.source
    roles = cats.current.roles
    default_roles = Settings().api_roles  # absent from a database that is not Supabase's, and then left alone
    missing = [r for r in spec.migration.api_roles if r not in roles and r not in default_roles]
    if missing:
        raise ConfigError(
            f"{source}: migration.api_roles names {', '.join(map(repr, missing))}, which is no role in this database",
            fix="list the roles the application's requests run as; roles here: "
                + ", ".join(sorted(r for r in roles if not r.startswith("pg_"))[:20]))
    policies = {f"{p.table}.{p.name}" for p in cat.policies}
    unknown = [a for a in spec.migration.accept_policies if a not in policies]
    if unknown:
        table = unknown[0].rsplit(".", 1)[0]
        here = sorted(p.name for p in cat.policies if str(p.table) == table)
        raise ConfigError(
            f"{source}: migration.accept_policies names {', '.join(map(repr, unknown))}, which is no policy in this "
            "database: the switch would leave nothing to you by it",
            fix=(f"policies on {table}: {', '.join(here)}" if here else f"{table} has no policies")
                + "; write each entry as schema.table.policy, as `pgconverge plan switch` names them")
    _accepted_caller_defaults(spec, cats.current.canonical)
    archive = spec.migration.archive_schema
    app_schemas = {d.table.name.schema for d in cat.dependents} | {t.name.schema for t in cat.tables}
    if archive in app_schemas:
        raise ConfigError(
            f"{source}: migration.archive_schema = {archive!r} holds the application's tables "
            f"({', '.join(sorted(str(d.table.name) for d in cat.dependents if d.table.name.schema == archive)[:3])}"
            "…): the API roles still reach what contract would archive there",
            fix="use a schema of its own, such as \"archive\"")
    if "switch" in cats.saved:  # the switch has started: it checked these before its first change
        return
    _canonical_helper(conn, spec, cat)
    _legacy_claim(spec, cat)


def _accepted_caller_defaults(spec: Spec, can) -> None:
    """Every migration.accept_caller_defaults entry is a column of the canonical table whose default reads the
    caller: a misspelt one would accept nothing, and the refusal it was meant for would stand unexplained."""
    from pgconverge.planning import align

    readers = {c for c, _ in align.caller_defaults(spec, can)}
    unknown = [c for c in spec.migration.accept_caller_defaults if c not in readers]
    if unknown:
        raise ConfigError(
            f"{spec.source}: migration.accept_caller_defaults names {', '.join(map(repr, unknown))}, which is no "
            f"column of {can.name} whose default reads who is calling",
            fix=(f"such columns of {can.name}: {', '.join(sorted(readers))}" if readers else
                 f"{can.name} has no such column: remove the entry"))


def _canonical_helper(conn: psycopg.Connection, spec: Spec, cat) -> None:
    """Refuse a canonical helper that exists and that anything the switch does not rewrite calls: the switch makes it
    SECURITY DEFINER and gives it the derived body, so every other caller would change meaning (a policy on
    auth.uid() of a table outside the migration, say). One nothing calls (written for the migration) is replaced."""
    from pgconverge.catalog import calls, queries
    from pgconverge.catalog.model import Function
    from pgconverge.config import QualifiedName, new_helper_example
    from pgconverge.planning import switch
    from pgconverge.planning.shapes import DESCRIBE

    fn = cat.canonical_helper
    if fn is None:
        return
    rewritten = {switch.policy_name(r) for r in switch.rewrites(spec, cat)[0]}
    callers = []
    with conn.transaction():  # names come out schema-qualified
        conn.execute("set local search_path = pg_catalog")
        depending = conn.execute(sql.SQL(
            "select d.classid = 'pg_catalog.pg_policy'::regclass, n.nspname, c.relname, p.polname, {} "
            "from pg_catalog.pg_depend d "
            "left join pg_catalog.pg_policy p on d.classid = 'pg_catalog.pg_policy'::regclass and p.oid = d.objid "
            "left join pg_catalog.pg_class c on c.oid = p.polrelid "
            "left join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
            "where d.refclassid = 'pg_catalog.pg_proc'::regclass and d.refobjid = {} and d.deptype = 'n' "
            "order by 5").format(DESCRIBE, sql.Literal(fn.oid))).fetchall()
    for is_policy, ns, rel, pol, what in depending:
        if not (is_policy and f"{QualifiedName(ns, rel)}.{pol}" in rewritten):
            callers.append(what)
    skip = sorted({spec.migration.private_schema, spec.migration.archive_schema})
    oids = [fn.oid] + ([cat.legacy_helper.oid] if cat.legacy_helper else [])  # the switch replaces the legacy helper
    for (oid, ns, name, sig, args, ret, lang, vol, secdef, config, src, fdef, owner, _) in conn.execute(
            queries.FUNCTIONS_MATCHING, {"skip": skip, "oids": oids,
                                         "pattern": r"\m" + re.escape(fn.name.name) + r"\M"}):
        f = Function(QualifiedName(ns, name), sig, args, ret, lang, vol, secdef, tuple(config), src, fdef, oid, owner)
        if calls.calls_function(f, fn.name):
            callers.append(f"function {f.name}{sig[sig.index('('):]}")
    callers = list(dict.fromkeys(callers))  # a BEGIN ATOMIC body is both recorded and read
    if callers:
        shown = ", ".join(callers[:5]) + (f" and {len(callers) - 5} more" if len(callers) > 5 else "")
        raise ConfigError(
            f"{spec.source}: canonical.helper = {str(spec.canonical.helper)!r} is a function that exists and that "
            f"{shown} call{'s' if len(callers) == 1 else ''}: the switch would make it SECURITY DEFINER and replace its "
            f"body with one reading the '{spec.canonical.claim}' claim, changing what each of them sees",
            fix=f"name a new function for canonical.helper, e.g. {new_helper_example(spec)} (the switch creates it)")


def _legacy_claim(spec: Spec, cat) -> None:
    """Refuse a legacy.claim the legacy helper (and the functions it calls) never names, when the switch could not
    derive the canonical helper: a misspelt claim would otherwise be refused by the switch only, after align and
    expand. A helper that looks the caller up needs no claim and is left alone."""
    import difflib

    from pgconverge.planning import switch

    if cat.legacy_helper is None or not switch.helper_refusals(spec, cat):
        return
    texts = [f.definition or f.source for f in (cat.legacy_helper, *cat.helper_callees)]
    claim = spec.legacy.claim
    if any(re.search(r"(?<![\w$])" + re.escape(claim) + r"(?![\w$])", t) for t in texts):
        return
    words = set(re.findall(r"[A-Za-z_][\w$]*", " ".join(texts)))
    close = difflib.get_close_matches(claim, sorted(words), n=1)
    raise ConfigError(
        f"{spec.source}: legacy.claim = {claim!r}: the legacy helper {spec.legacy.helper}() reads no claim of that "
        "name" + (f" (did you mean {close[0]!r}?)" if close else ""),
        fix="set legacy.claim to the JWT claim that holds the legacy id, as the legacy helper reads it")
