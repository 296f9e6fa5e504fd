"""Preflight: what remains of the migration, and its rollback, run first on a sampled copy of the target.

The copy holds the target's whole schema (pg_dump --schema-only, restored with the roles it names, as
the rehearsal does) and a sample of rows of every table the plan touches: the legacy, canonical and
dependent tables (each partition of a partitioned one), with rows holding NULLs and empty strings,
the smallest and largest values of every key and match column, legacy rows that look like one
person spelled twice (merged onto one canonical row), random others, and then every row those rows
refer to through a foreign key (the canonical rows of the mapping, the legacy rows of the dependents,
an auth.users row...). When the target already has a ledger, the private schema comes across too
(its ledger in full, the mapping for the sampled rows), so a resumed run preflights what remains.

Rows are inserted with session_replication_role = replica (no foreign key checks, no user triggers:
they are real rows, checked when they were written); NOT NULL and CHECK constraints hold as on the
target. Then every remaining phase runs on the copy with the Runner, the contract gates that depend
on the application (code references, runtime use, the observation window) accepted, and the whole
rollback after it; the copy's schema must then be what it was at the start. The target is only read:
read-only sessions, one repeatable-read snapshot for the sample.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psycopg
from psycopg import sql

from pgconverge import rehearse as rh
from pgconverge.catalog import baseline
from pgconverge.config import QualifiedName, Spec
from pgconverge.connection import CONNECT_TIMEOUT_S, Target, connect, redact
from pgconverge.errors import PgConvergeError
from pgconverge.execution.prechecks import RollbackBlocked
from pgconverge.execution import gates
from pgconverge.operations.base import PHASES, Plan, Step

# PGCONVERGE_PREFLIGHT=off: `run` skips the preflight (as --skip-preflight does).
ENABLE_ENV = "PGCONVERGE_PREFLIGHT"
# Admin DSN of a scratch server for the copy (as --preflight-server).
SERVER_ENV = "PGCONVERGE_PREFLIGHT_SERVER"
PER_TABLE = 300  # rows sampled per table before the rows they refer to
EDGE = 3  # rows per NULL / empty string / smallest / largest of each column looked at
CLOSURE_ROUNDS = 5  # foreign keys followed this many tables deep


class CopyUnfaithful(PgConvergeError):
    """A table the plan touches could not be copied as it is (the copy's server lacks what it uses)."""

    exit_code = 2


class PreflightFailed(PgConvergeError):
    """A step failed on the copy: nothing was changed on the target."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None, result: Result):
        super().__init__(problem, fix)
        self.result = result

    def as_dict(self) -> dict:
        return {**super().as_dict(), "preflight": self.result.as_dict()}


@dataclass
class Stage:
    name: str  # copy, phases, rollback
    seconds: float
    detail: str
    passed: bool = True


@dataclass
class Failure:
    stage: str
    step: str | None
    error: str  # what Postgres (or the gate) said
    sqlstate: str | None
    object: str | None
    fix: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Result:
    server: str
    database: str
    stages: list[Stage] = field(default_factory=list)
    sample: dict[str, int] = field(default_factory=dict)  # table -> rows copied
    phases: list[str] = field(default_factory=list)
    rollback_to: str | None = None
    schema_restored: bool | None = None  # None: not compared (the copy started mid-migration)
    schema_differences: list[str] = field(default_factory=list)
    plan_matches: bool | None = None
    failure: Failure | None = None
    kept: bool = False
    skipped_extensions: list[str] = field(default_factory=list)  # left out of the copy; the plan's tables did not need them
    deferred: str | None = None  # contract stopped at a gate only the team can satisfy (views, a helper to rewrite)
    # The rollback refused before its first change, for objects the team made on what it drops (a view on the new
    # column): a real rollback refuses the same way until they go, which is the team's to do, not the plan's.
    rollback_deferred: str | None = None
    # Functions the policies call whose reads cannot be told from their body (dynamic SQL, a body that does not
    # parse): the copy may lack the rows they read (named; an RLS check on the copy that sees nothing is a note).
    unread_functions: list[str] = field(default_factory=list)
    rls_not_proven: list[str] = field(default_factory=list)  # those RLS checks on the copy, as they ended

    @property
    def passed(self) -> bool:
        return self.failure is None

    def as_dict(self) -> dict:
        return {"verdict": "passed" if self.passed else "failed", "server": self.server, "database": self.database,
                "kept": self.kept, "seconds": round(sum(s.seconds for s in self.stages), 2),
                "stages": [{"stage": s.name, "seconds": round(s.seconds, 2), "passed": s.passed,
                            "detail": s.detail} for s in self.stages],
                "sample": {"tables": len(self.sample), "rows": sum(self.sample.values()), "per_table": self.sample},
                "phases": self.phases, "rollback_to": self.rollback_to, "schema_restored": self.schema_restored,
                "schema_differences": self.schema_differences[:20], "plan_matches": self.plan_matches,
                "skipped_extensions": self.skipped_extensions, "deferred": self.deferred,
                "rollback_deferred": self.rollback_deferred, "unread_functions": self.unread_functions,
                "rls_not_proven": self.rls_not_proven,
                "failure": self.failure.as_dict() if self.failure else None}


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "").strip().lower() not in ("off", "0", "no", "false")


def remaining(plan: Plan, conn: psycopg.Connection, spec: Spec) -> list[Step]:
    """The plan's steps the target's ledger does not record as done (every step without a ledger)."""
    from pgconverge.ledger.store import Ledger

    ledger = Ledger(conn, spec)
    states = ledger.step_states() if ledger.exists() else {}
    return [s for s in plan.steps if s.phase in PHASES and (s.id not in states or states[s.id].state != "done")]


# -- the copy ---------------------------------------------------------------------------------------

def _server(server: str | None) -> tuple[str, str]:
    if server:
        return server, "--preflight-server"
    if os.environ.get(SERVER_ENV):
        return os.environ[SERVER_ENV], f"${SERVER_ENV}"
    return rh.target_admin_dsn()


def _rel(conn: psycopg.Connection, oid: int) -> tuple[str, str]:
    return conn.execute("select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                        "where c.oid = %s", (oid,)).fetchone()


def _leaves(conn: psycopg.Connection, name: QualifiedName | str) -> list[int]:
    """Oids of the tables holding NAME's rows: itself, or every leaf partition of a partitioned table."""
    reg, kind = conn.execute("select c.oid, c.relkind from pg_class c where c.oid = to_regclass(%s)",
                             (str(name),)).fetchone() or (None, None)
    if reg is None:
        return []
    if kind == "r":
        return [reg]
    return [r[0] for r in conn.execute(
        "select relid::oid from pg_partition_tree(%s::oid) t join pg_class c on c.oid = t.relid "
        "where t.isleaf and c.relkind = 'r'", (reg,)).fetchall()]


def _columns(conn: psycopg.Connection, oid: int) -> list[tuple[str, str, bool]]:
    """(name, type, generated) of every live column of OID, in order."""
    return [tuple(r) for r in conn.execute(
        "select attname, format_type(atttypid, atttypmod), attgenerated <> '' from pg_attribute "
        "where attrelid = %s and attnum > 0 and not attisdropped order by attnum", (oid,)).fetchall()]


# The foreign keys of a table: (referenced table, its columns here, the referenced columns, their types there).
FOREIGN_KEYS = (
    "select confrelid::oid, "
    "  array(select a.attname from unnest(conkey) with ordinality k(n, i) join pg_attribute a "
    "        on a.attrelid = conrelid and a.attnum = k.n order by k.i), "
    "  array(select a.attname from unnest(confkey) with ordinality k(n, i) join pg_attribute a "
    "        on a.attrelid = confrelid and a.attnum = k.n order by k.i), "
    "  array(select format_type(a.atttypid, a.atttypmod) from unnest(confkey) with ordinality k(n, i) "
    "        join pg_attribute a on a.attrelid = confrelid and a.attnum = k.n order by k.i) "
    "from pg_constraint where contype = 'f' and conrelid = %s")


class _Sampler:
    """Chooses rows on the source (one repeatable-read snapshot): tableoid -> set of ctid texts."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.rows: dict[int, set[str]] = {}
        self.new: dict[int, set[str]] = {}
        self.unread: list[str] = []  # functions the policies call whose reads cannot be told (see policy_reads)

    def _q(self, query: sql.Composable, params=None) -> list[tuple]:
        with self.conn.transaction():  # a savepoint: a column that cannot be ordered fails alone
            try:
                return self.conn.execute(query, params).fetchall()
            except psycopg.Error:
                raise _Skip from None

    def take(self, query: sql.Composable, params=None) -> None:
        """Add the rows QUERY selects; it returns (tableoid, ctid::text)."""
        try:
            found = self._q(query, params)
        except _Skip:
            return
        for oid, ctid in found:
            if ctid not in self.rows.setdefault(oid, set()):
                self.rows[oid].add(ctid)
                self.new.setdefault(oid, set()).add(ctid)

    def edges(self, oid: int, columns: list[str]) -> None:
        """NULLs, empty strings, the smallest and the largest values of COLUMNS in table OID."""
        rel = sql.SQL("{}.{}").format(*map(sql.Identifier, _rel(self.conn, oid)))
        have = {c for c, _, _ in _columns(self.conn, oid)}
        for col in (c for c in dict.fromkeys(columns) if c in have):
            c = sql.Identifier(col)
            base = sql.SQL("select tableoid::oid, ctid::text from only {} ").format(rel)
            self.take(base + sql.SQL("where {} is null limit {}").format(c, EDGE))
            self.take(base + sql.SQL("where {}::text = '' limit {}").format(c, EDGE))
            self.take(base + sql.SQL("where {} is not null order by {} asc limit {}").format(c, c, EDGE))
            self.take(base + sql.SQL("where {} is not null order by {} desc limit {}").format(c, c, EDGE))

    def random(self, oid: int, n: int) -> None:
        rel = sql.SQL("{}.{}").format(*map(sql.Identifier, _rel(self.conn, oid)))
        est = self.conn.execute("select reltuples from pg_class where oid = %s", (oid,)).fetchone()[0] or 0
        if est < 20 * n:  # small: a true random sample
            self.take(sql.SQL("select tableoid::oid, ctid::text from only {} order by random() limit {}").format(
                rel, n))
        else:  # large: pages at random, without reading the whole table
            pct = min(100.0, 300.0 * n / est)
            self.take(sql.SQL("select tableoid::oid, ctid::text from only {} tablesample system ({}) limit {}").format(
                rel, sql.Literal(pct), n))

    def referring(self, oid: int, n: int) -> None:
        """Rows of table OID that refer by a foreign key to rows already chosen (up to N per foreign key): the
        memberships of the sampled people, the rows of the sampled accounts."""
        fks = self.conn.execute(FOREIGN_KEYS, (oid,)).fetchall()
        rel = sql.SQL("{}.{}").format(*map(sql.Identifier, _rel(self.conn, oid)))
        for ref, cols, refcols, _types in fks:
            chosen = [(leaf, sorted(self.rows[leaf])) for leaf in _leaf_oids(self.conn, ref) if self.rows.get(leaf)]
            if not chosen:
                continue
            keys = sql.SQL(" union all ").join(
                sql.SQL("select {} from only {} where ctid = any({}::tid[])").format(
                    sql.SQL(", ").join(map(sql.Identifier, refcols)),
                    sql.SQL("{}.{}").format(*map(sql.Identifier, _rel(self.conn, leaf))), sql.Literal(ctids))
                for leaf, ctids in chosen)
            self.take(sql.SQL("select tableoid::oid, ctid::text from only {} where ({}) in ({}) limit {}").format(
                rel, sql.SQL(", ").join(map(sql.Identifier, cols)), keys, sql.Literal(n)))

    def follow(self, rounds: int = CLOSURE_ROUNDS) -> None:
        """Add every row the chosen rows refer to by a foreign key, and the rows those refer to, and so on."""
        for _ in range(rounds):
            todo, self.new = self.new, {}
            for oid, ctids in todo.items():
                fks = self.conn.execute(FOREIGN_KEYS, (oid,)).fetchall()
                rel = sql.SQL("{}.{}").format(*map(sql.Identifier, _rel(self.conn, oid)))
                for ref, cols, refcols, types in fks:
                    try:
                        values = self._q(sql.SQL("select distinct {} from only {} where ctid = any({}::tid[]) and {}")
                                         .format(sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c))
                                                                   for c in cols), rel, sql.Literal(sorted(ctids)),
                                                 sql.SQL(" and ").join(sql.SQL("{} is not null").format(
                                                     sql.Identifier(c)) for c in cols)))
                    except _Skip:
                        continue
                    if not values:
                        continue
                    refrel = sql.SQL("{}.{}").format(*map(sql.Identifier, _rel(self.conn, ref)))
                    names = [sql.Identifier(f"v{i}") for i in range(len(cols))]
                    self.take(sql.SQL("select tableoid::oid, ctid::text from {} where ({}) in "
                                      "(select {} from unnest({}) as u({}))").format(
                        refrel, sql.SQL(", ").join(map(sql.Identifier, refcols)),
                        sql.SQL(", ").join(sql.SQL("{}::{}").format(n, sql.SQL(t)) for n, t in zip(names, types)),
                        sql.SQL(", ").join(sql.SQL("{}::text[]").format(sql.Literal([v[i] for v in values]))
                                           for i in range(len(cols))),
                        sql.SQL(", ").join(names)))
            if not self.new:
                return


def _leaf_oids(conn: psycopg.Connection, oid: int, depth: int = 4) -> list[int]:
    """The tables holding the rows relation OID shows: itself, each leaf partition, or for a view the tables it
    reads (DEPTH views deep)."""
    kind = conn.execute("select relkind from pg_class where oid = %s", (oid,)).fetchone()
    kind = kind[0] if kind else None
    if kind == "r":
        return [oid]
    if kind == "p":
        return [r[0] for r in conn.execute(
            "select relid::oid from pg_partition_tree(%s::oid) t join pg_class c on c.oid = t.relid "
            "where t.isleaf and c.relkind = 'r'", (oid,)).fetchall()]
    if kind in ("v", "m") and depth:
        refs = conn.execute("select distinct d.refobjid::oid from pg_rewrite r join pg_depend d on d.classid = "
                            "'pg_rewrite'::regclass and d.objid = r.oid and d.refclassid = 'pg_class'::regclass "
                            "where r.ev_class = %s and d.refobjid <> %s", (oid, oid)).fetchall()
        return [leaf for (ref,) in refs for leaf in _leaf_oids(conn, ref, depth - 1)]
    return []


def _search_path(conn: psycopg.Connection, fn) -> list[str]:
    """The schemas FN's unqualified names resolve in: its own search_path setting, else the session's, then its
    own schema."""
    setting = next((c.split("=", 1)[1] for c in fn.config if c.startswith("search_path=")), None)
    if setting is None:
        setting = conn.execute("select current_setting('search_path')").fetchone()[0]
    schemas = [x.strip().strip('"') for x in setting.split(",") if x.strip()]
    return [x for x in schemas if x and x != "$user"] + [fn.name.schema]


def policy_reads(conn: psycopg.Connection, oids: list[int]) -> tuple[list[int], list[str]]:
    read, by_functions, unread = _policy_reads(conn, oids)
    return sorted({*read, *by_functions}), unread


def _policy_reads(conn: psycopg.Connection, oids: list[int]) -> tuple[list[int], list[int], list[str]]:
    """What the policies of tables OIDS read beyond their own table: the tables their sub-queries name, and those the
    functions they call read, directly or through the functions those call, whatever their security (a SECURITY
    DEFINER helper reading a membership table nothing else names). Returns (table oids, each leaf partition and the
    tables under a view; the functions whose reads cannot be told from their body, each with why: "f(integer) runs
    SQL built at run time (EXECUTE)"). _policy_reads: the tables the policies name themselves and those the
    functions read, apart."""
    from pgconverge.catalog import calls, introspect

    rels: set[int] = set()
    by_functions: set[int] = set()
    fns_oids: set[int] = set()
    for refclass, ref in conn.execute(
            "select d.refclassid::regclass::text, d.refobjid::oid from pg_policy p join pg_depend d on d.classid = "
            "'pg_policy'::regclass and d.objid = p.oid where p.polrelid = any(%s::oid[]) and d.refobjid <> p.polrelid "
            "and d.refclassid in ('pg_class'::regclass, 'pg_proc'::regclass)", (list(oids),)).fetchall():
        (rels if refclass == "pg_class" else fns_oids).add(ref)
    direct = introspect.functions(conn, sorted(fns_oids))
    seen = {f.oid for f in direct}
    fns = direct + [f for f in introspect.callees(conn, [f for f in direct if f.language in ("sql", "plpgsql")])
                    if f.oid not in seen]
    unread = []
    for fn in fns:
        if fn.language in ("c", "internal"):  # an extension's or the server's own: nothing of the database's
            continue
        names, why = calls.reads(fn)
        if names is None:
            unread.append(f"{fn.signature} {why}")
            continue
        path = _search_path(conn, fn)
        for name in names:
            found = conn.execute(
                "select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.relname = %s "
                "and n.nspname = any(%s::text[]) and c.relkind in ('r', 'p', 'v', 'm') "
                "order by array_position(%s::text[], n.nspname::text) limit 1",
                (name[-1], [name[0]] if len(name) == 2 else path, path)).fetchone()
            if found:
                by_functions.add(found[0])
    return (sorted({leaf for r in rels for leaf in _leaf_oids(conn, r)}),
            sorted({leaf for r in by_functions for leaf in _leaf_oids(conn, r)}), unread)


class _Skip(Exception):
    pass


def _match_key(kind: str, column: sql.Composable) -> sql.Composable:
    """A rough equivalence key, only to find rows of one person spelled differently (no private functions
    exist before align): the last nine digits of a phone number, else the trimmed lower-case text. Under the
    default collation: Postgres runs no regular expression under a nondeterministic one."""
    text = sql.SQL('({}::text collate pg_catalog."default")').format(column)
    if "phone" in kind:
        return sql.SQL("right(regexp_replace({}, '[^0-9]', '', 'g'), 9)").format(text)
    return sql.SQL("lower(btrim({}))").format(text)


def _choose(conn: psycopg.Connection, spec: Spec, plan: Plan, cats: baseline.Catalogs) -> _Sampler:
    s = _Sampler(conn)
    cat = cats.live or cats.for_phase("align")
    leg, can = spec.legacy, spec.canonical
    new = spec.migration.new_column
    lcols = [leg.key, *leg.match_columns]
    ccols = [can.key, *can.match_columns]
    legacy = _leaves(conn, leg.table)
    canonical = _leaves(conn, can.table)
    for oid in legacy:
        s.edges(oid, lcols)
        s.random(oid, PER_TABLE // 2)
    for oid in canonical:
        s.edges(oid, ccols)
        s.random(oid, PER_TABLE // 3)
    # legacy rows that look like one person spelled twice: merged onto one canonical row by align
    kind, mcol = leg.match_kinds[0], sql.Identifier(leg.match_columns[0])
    key = _match_key(kind, mcol)
    ltab = sql.SQL("{}.{}").format(sql.Identifier(leg.table.schema), sql.Identifier(leg.table.name))
    ctab = sql.SQL("{}.{}").format(sql.Identifier(can.table.schema), sql.Identifier(can.table.name))
    if legacy:
        s.take(sql.SQL("select tableoid::oid, ctid::text from {t} where {k} in (select {k} from {t} where {k} <> '' "
                       "group by 1 having count(*) > 1 limit 20)").format(t=ltab, k=key))
    mapping = conn.execute("select to_regclass(%s)::oid", (str(spec.mapping_table),)).fetchone()[0]
    mtab = sql.SQL("{}.{}").format(sql.Identifier(spec.mapping_table.schema), sql.Identifier(spec.mapping_table.name))
    ml, mc = sql.Identifier(spec.mapping_legacy_column), sql.Identifier(new)
    if mapping is not None:  # after align: groups of the mapping itself
        s.take(sql.SQL("select l.tableoid::oid, l.ctid::text from {l} l where l.{k}::text in (select {ml}::text "
                       "from {m} where {mc} in (select {mc} from {m} group by 1 having count(*) > 1 limit 20))").format(
            l=ltab, k=sql.Identifier(leg.key), ml=ml, m=mtab, mc=mc))
    # the canonical rows the sampled legacy rows would match (align then matches instead of creating)
    if legacy and canonical:
        chosen = sorted(ct for oid in legacy for ct in s.rows.get(oid, ()))
        if chosen:
            ckey = _match_key(kind, sql.Identifier(can.match_columns[0]))
            s.take(sql.SQL("select tableoid::oid, ctid::text from {c} where {ck} in (select {lk} from only {l} "
                           "where ctid = any({ids}::tid[])) and {ck} <> '' limit {n}").format(
                c=ctab, ck=ckey, lk=key, l=ltab, ids=sql.Literal(chosen), n=PER_TABLE))
    # every dependent table, each partition of a partitioned one
    for d in cat.dependents if cat else ():
        for oid in _leaves(conn, d.table.name):
            s.edges(oid, [*d.fk.columns, new, *d.table.primary_key])
            s.random(oid, PER_TABLE // 2)
    # tables the policies read (memberships and the like), so the RLS check has rows to compare
    for t in cat.tables if cat else ():
        for oid in _leaves(conn, t.name):
            if oid not in s.rows:
                s.random(oid, PER_TABLE // 3)
    # and what those policies read beyond the tables above: in their sub-queries, and in the functions they call
    # (basejump's has_role_on_account() reads account_user, which no policy names and nothing refers to)
    checked = {*legacy, *canonical, *(o for d in (cat.dependents if cat else ()) for o in _leaves(conn, d.table.name)),
               *(o for t in (cat.tables if cat else ()) for o in _leaves(conn, t.name))}
    named, by_functions, s.unread = _policy_reads(conn, sorted(checked))
    read = sorted({oid for oid in (*named, *by_functions) if oid not in checked})
    for oid in read:
        if oid not in s.rows:
            s.random(oid, PER_TABLE // 3)
    s.follow()  # the legacy rows the dependents' rows name, first: their mapping rows come next
    # the mapping rows of every sampled legacy row, and the canonical rows they name
    if mapping is not None and legacy:
        chosen = sorted(ct for oid in legacy for ct in s.rows.get(oid, ()))
        s.take(sql.SQL("select tableoid::oid, ctid::text from {m} where {ml}::text in (select {k}::text from only {l} "
                       "where ctid = any({ids}::tid[]))").format(m=mtab, ml=ml, k=sql.Identifier(leg.key), l=ltab,
                                                                 ids=sql.Literal(chosen)))
        picked = sorted(s.rows.get(mapping, ()))
        if picked and canonical:
            s.take(sql.SQL("select tableoid::oid, ctid::text from {c} where {ck}::text in (select {mc}::text "
                           "from {m} where ctid = any({ids}::tid[]))").format(
                c=ctab, ck=sql.Identifier(can.key), mc=mc, m=mtab, ids=sql.Literal(picked)))
    # the rows of those tables that name the rows chosen so far (a membership keyed by the auth user: every sampled
    # person's), so that the sampled identities see on the copy what they see on the target. A table a function
    # the policies call reads counts too when it is also a dependent or the legacy table (Midday's users_on_team,
    # keyed by the legacy member and read by the helper every team policy calls: its random sample held few of the
    # sampled authors' memberships, and their rows were invisible to them on the copy); one a policy's sub-query
    # names is the parent of the rows it shows (a cart of its items), which the rows chosen already refer to. The
    # legacy rows first: the memberships of the people they add come next.
    for oid in sorted({*read, *by_functions}, key=lambda o: o not in legacy):
        s.referring(oid, 3 * PER_TABLE)
        s.follow()
    return s


def _copy_rows(src: psycopg.Connection, dst: psycopg.Connection, oid: int, ctids: set[str] | None) -> int:
    """Copy table OID's rows (those at CTIDS, or all) from SRC into the same table of DST; return the count."""
    schema, name = _rel(src, oid)
    cols = [sql.Identifier(c) for c, _, generated in _columns(src, oid) if not generated]
    rel = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
    where = sql.SQL(" where ctid = any({}::tid[])").format(sql.Literal(sorted(ctids))) if ctids is not None \
        else sql.SQL("")
    collist = sql.SQL(", ").join(cols)
    n = 0
    with src.cursor().copy(sql.SQL("copy (select {} from only {}{}) to stdout").format(collist, rel, where)) as out, \
            dst.cursor().copy(sql.SQL("copy {} ({}) from stdin").format(rel, collist)) as inp:
        for chunk in out:
            inp.write(chunk)
            n += bytes(chunk).count(b"\n")
    return n


def _snapshot_tables(plan: Plan) -> dict:
    """Private tables the plan fills from whole tables (linkage snapshots): "schema.name" -> its CreateTable."""
    from pgconverge.operations.create_table import CreateTable

    return {f"{s.op.name.schema}.{s.op.name.name}": s.op for s in plan.steps
            if isinstance(s.op, CreateTable) and s.op.reads_tables}


def _plan_tables(cats: baseline.Catalogs) -> list[str]:
    """The tables the plan reads or changes: legacy, canonical, every dependent and every table with a policy."""
    cat = cats.live or next(iter(cats.saved.values()), None)
    if cat is None:
        return []
    names = {cat.legacy.name, cat.canonical.name, *(d.table.name for d in cat.dependents),
             *(p.table for p in cat.policies)}
    return sorted(str(n) for n in names)


_SHAPE = """select (select count(*) from pg_attribute where attrelid = c.oid and attnum > 0 and not attisdropped),
                   (select count(*) from pg_constraint where conrelid = c.oid),
                   (select count(*) from pg_trigger where tgrelid = c.oid and not tgisinternal),
                   (select count(*) from pg_policy where polrelid = c.oid),
                   (select count(*) from pg_index where indrelid = c.oid)
            from pg_class c where c.oid = to_regclass(%s)"""


def _refuse_unfaithful(source_dsn: str, copy_dsn: str, tables: list[str], missing: list[str], errors: list[str],
                       admin: str) -> None:
    """Raise when a table the plan touches did not come across whole (what it needs was left out with MISSING)."""
    with rh.connect_source(source_dsn) as src, psycopg.connect(copy_dsn, connect_timeout=CONNECT_TIMEOUT_S) as dst:
        differ = [t for t in tables if src.execute(_SHAPE, (t,)).fetchone() != dst.execute(_SHAPE, (t,)).fetchone()]
    if differ:
        raise CopyUnfaithful(
            f"the preflight cannot copy {', '.join(differ)} faithfully: they use what the extensions "
            f"{', '.join(missing)} provide, which the server {redact(admin)} lacks"
            + (f" (first error: {errors[0].strip()})" if errors else ""),
            fix="name a scratch server that has those extensions with --preflight-server, or run without the "
                "preflight (--skip-preflight), knowing it would have tried every step on a copy first")


def _fill(source_dsn: str, copy_dsn: str, spec: Spec, plan: Plan, cats: baseline.Catalogs
          ) -> tuple[dict[str, int], list[str]]:
    """Sample the source in one snapshot and write the rows into the copy; return rows per table, and the functions
    the policies call whose reads the copy may lack (see policy_reads)."""
    counts: dict[str, int] = {}
    with rh.connect_source(source_dsn) as src, psycopg.connect(copy_dsn, connect_timeout=CONNECT_TIMEOUT_S) as dst:
        src.autocommit = False
        src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with src.transaction():
            src.execute("set local row_security = off")
            dst.execute("set session_replication_role = replica")  # no FK checks, no user triggers
            sampler = _choose(src, spec, plan, cats)
            private = spec.migration.private_schema
            mapping = src.execute("select to_regclass(%s)::oid", (str(spec.mapping_table),)).fetchone()[0]
            # the ledger (and the rest of the private schema) in full: a resumed run goes on from it
            ledger_tables = [r[0] for r in src.execute(
                "select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = %s and c.relkind = 'r' and c.oid is distinct from %s", (private, mapping)).fetchall()]
            snapshots = _snapshot_tables(plan)
            for oid in ledger_tables:
                if ".".join(_rel(src, oid)) not in snapshots:
                    counts[".".join(_rel(src, oid))] = _copy_rows(src, dst, oid, None)
            for oid, ctids in sampler.rows.items():
                if ctids:
                    counts[".".join(_rel(src, oid))] = _copy_rows(src, dst, oid, ctids)
            seqs = src.execute("select schemaname, sequencename, last_value from pg_sequences "
                               "where last_value is not null").fetchall()
            for schema, name, value in seqs:
                dst.execute("select setval(to_regclass(%s), %s)",
                            (sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name)).as_string(dst),
                             value))
            if ledger_tables:
                from pgconverge.ledger.store import Ledger

                # The copy is the target's whole schema with a sample of its rows: the ledger's home there, recorded
                # as such once the target's own record is found to be the target's (check_home, which refuses naming
                # the target otherwise). Without it, the copy of a run killed before its first trigger lacked what
                # the home check looks for, and its ledger was refused as one restored on its own.
                if Ledger(src, spec).exists():
                    Ledger(dst, spec).record_home()
            # snapshots of every dependent row taken by steps done on the target: taken again over the sample
            for name, op in snapshots.items():
                if dst.execute("select to_regclass(%s)", (str(op.name),)).fetchone()[0] is not None:
                    try:
                        with dst.transaction():  # a savepoint
                            for statement in op.extra:
                                dst.execute(statement)
                    except psycopg.errors.UndefinedColumn:
                        # It reads a legacy column that contract has dropped since (contract resumed after a later
                        # step failed): it cannot be taken again, and the copy goes on without its rows (a rollback
                        # there refills legacy ids through the mapping alone).
                        pass
                    counts[name] = dst.execute(sql.SQL("select count(*) from {}").format(
                        sql.Identifier(op.name.schema, op.name.name))).fetchone()[0]
        dst.commit()
    with psycopg.connect(copy_dsn, autocommit=True) as conn:
        conn.execute("analyze")
    return counts, sampler.unread


# -- comparing the schema ------------------------------------------------------------------------------

# An ACL as its privileges, in one order whatever order they were granted in: a NULL one (never granted or revoked)
# read as the default it stands for (the owner's privileges), which a rollback that revokes and grants again
# writes out. The grantor is left out: a grant restored by a superuser names the owner as its grantor.
_ACL = """(select coalesce(string_agg(e, ',' order by e), '') from (
            select case when x.grantee = 0 then 'PUBLIC' else pg_get_userbyid(x.grantee) end || '=' || x.privilege_type
                   || case when x.is_grantable then '*' else '' end as e from aclexplode({}) x) x)"""

_SCHEMA_STATE = """
with s as (select oid, nspname from pg_namespace where nspname <> all(%(skip)s) and nspname !~ '^pg_'
           and nspname <> 'information_schema')
select format('relation %%s.%%s %%s rls=%%s/%%s acl=%%s', s.nspname, c.relname, c.relkind, c.relrowsecurity,
              c.relforcerowsecurity, """ + _ACL.format("coalesce(c.relacl, acldefault('r', c.relowner))") + """)
  from pg_class c join s on s.oid = c.relnamespace
  where c.relkind in ('r', 'p', 'v', 'm', 'f')
union all
select format('column %%s.%%s.%%s %%s %%s %%s acl=%%s', s.nspname, c.relname, a.attname,
              format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
              """ + _ACL.format("a.attacl") + """)
  from pg_attribute a join pg_class c on c.oid = a.attrelid join s on s.oid = c.relnamespace
  left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
  where c.relkind in ('r', 'p', 'v', 'm', 'f') and a.attnum > 0 and not a.attisdropped
union all
select format('constraint %%s.%%s.%%s %%s %%s', s.nspname, c.relname, con.conname, pg_get_constraintdef(con.oid),
              con.convalidated)
  from pg_constraint con join pg_class c on c.oid = con.conrelid join s on s.oid = c.relnamespace
union all
select format('index %%s valid=%%s', pg_get_indexdef(i.indexrelid), i.indisvalid)
  from pg_index i join pg_class c on c.oid = i.indrelid join s on s.oid = c.relnamespace
union all
select format('trigger %%s %%s', pg_get_triggerdef(t.oid), t.tgenabled)
  from pg_trigger t join pg_class c on c.oid = t.tgrelid join s on s.oid = c.relnamespace where not t.tgisinternal
union all
select format('policy %%s.%%s.%%s %%s %%s %%s %%s', s.nspname, c.relname, p.polname, p.polcmd, p.polroles::text,
              pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
  from pg_policy p join pg_class c on c.oid = p.polrelid join s on s.oid = c.relnamespace
union all
select format('function %%s %%s acl=%%s', p.oid::regprocedure, md5(pg_get_functiondef(p.oid)),
              """ + _ACL.format("coalesce(p.proacl, acldefault('f', p.proowner))") + """)
  from pg_proc p join s on s.oid = p.pronamespace where p.prokind in ('f', 'p')
union all
select format('view %%s.%%s %%s', s.nspname, c.relname, md5(pg_get_viewdef(c.oid)))
  from pg_class c join s on s.oid = c.relnamespace where c.relkind in ('v', 'm')
"""


def schema_state(conn: psycopg.Connection, spec: Spec) -> list[str]:
    """Tables, columns, constraints, indexes, triggers, policies, functions and views of every user schema but
    the private one (its ledger records the preflight), with the privileges on tables, columns and functions, as
    sorted text."""
    rows = conn.execute(_SCHEMA_STATE, {"skip": [spec.migration.private_schema]}).fetchall()
    return sorted(r[0] for r in rows)


def _diff(before: list[str], after: list[str]) -> list[str]:
    b, a = set(before), set(after)
    return [f"- {x}" for x in sorted(b - a)] + [f"+ {x}" for x in sorted(a - b)]


# -- running on the copy -------------------------------------------------------------------------------

class _Tracker:
    """A runner progress that remembers the step in flight."""

    def __init__(self):
        self.step: Step | None = None

    def step_started(self, step: Step) -> None:
        self.step = step

    def step_finished(self, step: Step, status: str, seconds: float) -> None:
        pass

    def batch(self, step: Step, rows_done: int, total: int, rows_per_s: float) -> None:
        pass

    def note(self, text: str) -> None:
        pass


def _failure(stage: str, exc: BaseException, step: Step | None) -> Failure:
    """What failed on the copy: the step, what Postgres said, the object it named, and a fix."""
    pg = exc if isinstance(exc, psycopg.Error) else None
    cause = exc.__cause__
    while pg is None and cause is not None:
        pg = cause if isinstance(cause, psycopg.Error) else None
        cause = cause.__cause__
    from pgconverge.ledger.store import LedgerElsewhere

    if isinstance(exc, LedgerElsewhere):  # the copy's ledger, not the target's: its fix does not apply there
        error, fix = f"on the copy: {exc.problem}", _copy_fix("a database made and dropped by the preflight", False)
    elif isinstance(exc, PgConvergeError):
        error, fix = exc.problem, exc.fix or ""
    else:
        error, fix = str(exc).strip() or type(exc).__name__, ""
    sqlstate, obj = None, None
    if pg is not None:
        d = pg.diag
        sqlstate = pg.sqlstate
        error = (d.message_primary or str(pg).strip()) + (f" ({d.message_detail})" if d.message_detail else "")
        if d.table_name:
            obj = f"{d.schema_name}.{d.table_name}" if d.schema_name else d.table_name
            if d.constraint_name:
                obj += f" constraint {d.constraint_name}"
            elif d.column_name:
                obj += f" column {d.column_name}"
        context = (d.context or "").strip().splitlines()
        func = next((line for line in context if line.startswith("PL/pgSQL function")), None)
        if func and "pgconverge" not in func.split(" line ")[0]:
            obj = (obj + ", " if obj else "") + func.split(" line ")[0].replace("PL/pgSQL ", "")
        klass = (sqlstate or "")[:2]
        if klass == "23":
            fix = (f"rows of the target would break {obj or 'a constraint'} when this step writes them: fix those rows "
                   "or the constraint (or the configuration that produces the values), then run again")
        elif sqlstate == "P0001" or func:
            fix = (f"a function of the database raised an error when this step wrote rows ({obj or 'a trigger'}): "
                   "make it accept the migration's writes (or disable that trigger for the run), then run again")
        else:
            fix = ("fix what Postgres names above on the target (or the configuration that produced the SQL), then "
                   "run again")
    if obj is None and step is not None:
        obj = step.op.lock_target or None
    return Failure(stage, step.id if step else None, error, sqlstate, obj, fix)


def _spec_for_copy(spec: Spec) -> Spec:
    """The observation window (time for the application to show itself) means nothing on a copy: 0 there."""
    m = spec.migration
    if hasattr(m, "observation_window"):
        current = getattr(m, "observation_window")
        zero = type(current)() if current is not None and not isinstance(current, (int, float)) else 0
        try:
            m = dataclasses.replace(m, observation_window=zero)
        except (TypeError, ValueError):
            m = dataclasses.replace(m, observation_window=0)
        return dataclasses.replace(spec, migration=m)
    return spec


def run(spec: Spec, target: Target, plan: Plan, cats: baseline.Catalogs, *, server: str | None = None,
        keep: bool = False, on_stage: Callable[[Stage], None] | None = None) -> Result:
    """Copy the target (schema, sampled rows), run every remaining phase and the whole rollback there.

    Returns the result, passed or not; raises PgConvergeError only when the copy itself cannot be made.
    """
    from pgconverge.execution import killpoint

    with killpoint.suspended():  # the test suite's kill and failure points are meant for the target
        return _run(spec, target, plan, cats, server=server, keep=keep, on_stage=on_stage)


def _run(spec: Spec, target: Target, plan: Plan, cats: baseline.Catalogs, *, server: str | None,
         keep: bool, on_stage: Callable[[Stage], None] | None) -> Result:
    from pgconverge.execution.interrupt import Interrupted
    from pgconverge.execution.runner import GateFailed, Runner
    from pgconverge.planning import plan as planner

    say = on_stage or (lambda _s: None)
    admin, where = _server(server)
    database = f"pgconverge_preflight_{secrets.token_hex(4)}"
    result = Result(server=f"{where}", database=database)
    spec = _spec_for_copy(spec)

    def stage(name: str, t0: float, detail: str, passed: bool = True) -> None:
        st = Stage(name, time.monotonic() - t0, detail, passed)
        result.stages.append(st)
        say(st)

    t0 = time.monotonic()
    src = rh.inspect_source(target.dsn)
    rh.check_version(src)
    rh.refuse_same_database(src, admin, database)
    # Extensions the copy's server lacks (a Supabase database has several the embedded server does not bundle)
    # are left out; what needed them fails to restore. That is refused below only if it touches the plan's tables.
    missing = rh.missing_extensions(src, admin)
    made = False
    try:
        with tempfile.TemporaryDirectory(prefix="pgconverge-preflight-") as tmp:
            path = Path(tmp) / "schema.dump"
            rh.dump(src, path, extra_args=("--schema-only",))
            sweep_orphans(admin)
            copy_dsn = rh.create_database(admin, database)
            made = True
            _mark(admin, database, "running")
            rh.create_missing_roles(src, admin)
            _, restore_errors = rh.restore(path, copy_dsn, missing)
        if missing:
            _refuse_unfaithful(target.dsn, copy_dsn, _plan_tables(cats), missing, restore_errors, admin)
        result.skipped_extensions = list(missing)
        result.sample, result.unread_functions = _fill(target.dsn, copy_dsn, spec, plan, cats)
        rows = sum(v for k, v in result.sample.items() if not k.startswith(spec.migration.private_schema + "."))
        stage("copy", t0, f"schema and {rows:,} sampled rows of {len(result.sample)} tables into {database} "
                          f"({where})" + (f"; it may lack what some functions the policies call read: {_unread(result)}"
                                          if result.unread_functions else ""))

        copy = Target(copy_dsn, "preflight copy")
        tracker = _Tracker()
        t0 = time.monotonic()
        try:
            with connect(copy) as conn:
                before = schema_state(conn, spec)
                ccats = baseline.load(conn, spec)
                if cats.taken_in:  # as on the target: expand takes in the references made since it was planned
                    from pgconverge.ledger.store import Ledger
                    from pgconverge.planning import expand

                    ccats, _ = expand.take_in(spec, ccats, Ledger(conn, spec).step_states())
                fresh = not started_mid_migration(conn, spec)
            cplan = planner.build(spec, ccats)
        except PgConvergeError as exc:
            # The copy could not be read or planned: about the copy, not the target, whatever the error's own fix says
            result.failure = Failure("copy", None, f"on the copy {database}: {exc.problem}", None, None,
                                     _copy_fix(database, keep))
            stage("phases", t0, "not started: the copy could not be read or planned", False)
            return result
        # the same steps (their SQL differs only by the names contract stamps with the time of planning)
        only_here = sorted({s.id for s in plan.steps} - {s.id for s in cplan.steps})
        only_copy = sorted({s.id for s in cplan.steps} - {s.id for s in plan.steps})
        result.plan_matches = not only_here and not only_copy
        result.phases = [ph for ph in PHASES if cplan.phase(ph)]
        t0 = time.monotonic()
        failed = None
        try:
            # The copy holds a sample: it may lack rows a policy reads to show an owner its own rows (the
            # membership a team's rows are read through, a row joined on something other than a foreign key), so an
            # RLS check that sees nothing there is noted and the copy goes on; the check on the target's rows still
            # decides, before its rewrite. A step that fails on the copy still refuses.
            accept = {gates.CODE, gates.RUNTIME, gates.COPY_UNREAD}
            with Runner(copy, spec, cplan, progress=tracker, command="preflight", catalogs=ccats,
                        accept=frozenset(accept)) as runner:
                if not result.plan_matches:  # a pass would be about another plan than the one run will execute
                    raise PgConvergeError(
                        "the copy plans other steps than the target (only on the target: "
                        f"{', '.join(only_here[:10]) or 'none'}; only on the copy: {', '.join(only_copy[:10]) or 'none'})",
                        fix="run with --keep-preflight-copy and compare `pgconverge plan --json` on the copy and the "
                            "target; --skip-preflight runs without it")
                for ph in result.phases:
                    try:
                        runner.run_phase(ph)
                    except GateFailed as exc:
                        if ph != "contract":
                            raise
                        # Contract's gates and its dependency check wait for work only the team can do (views to
                        # drop, a helper to rewrite): not a failure of the plan. The rest of contract is not tried.
                        at = getattr(tracker.step, "id", tracker.step)
                        result.deferred = f"contract stopped at {at} on the copy: {exc.problem}"
                    finally:
                        result.rls_not_proven = list(runner.rls_not_proven)
        except Interrupted:
            raise  # a signal: the run stops, it is not the preflight's verdict
        except Exception as exc:  # noqa: BLE001 - every failure on the copy is the preflight's verdict
            failed = _failure("phases", exc, tracker.step)
        stage("phases", t0, (f"{', '.join(result.phases)} on the copy"
                             + (f" ({result.deferred}; the rest of contract was not tried)" if result.deferred else "")
                             + ("; on the sampled copy the RLS check saw too few owners' own rows, not a refusal: "
                                "the copy may lack rows the policies read to show them"
                                + (f" (and what some functions the policies call read: {_unread(result)})"
                                   if result.unread_functions else "")
                                + "; the check on the target itself still runs at the switch, and still refuses "
                                "there"
                                if result.rls_not_proven else "")
                             if failed is None else f"failed at {failed.step or 'the start'}"), failed is None)
        # The whole rollback runs in any case: from a failed step too, as a real rollback would.
        t0 = time.monotonic()
        tracker.step = None
        result.rollback_to = PHASES[0]
        try:
            with connect(copy) as conn:
                rcats = baseline.load(conn, spec)
            rplan = planner.rollback(spec, rcats, PHASES[0])
            with Runner(copy, spec, rplan, progress=tracker, command=f"rollback {PHASES[0]}",
                        catalogs=rcats) as runner:
                runner.run_rollback(rplan, to=PHASES[0])
            with connect(copy) as conn:
                after = schema_state(conn, spec)
            if fresh:
                result.schema_differences = _diff(before, after)
                result.schema_restored = not result.schema_differences
        except RollbackBlocked as exc:
            if failed is None:
                result.rollback_deferred = exc.problem
            else:
                result.schema_differences = [f"the rollback after the failure refused: {exc.problem}"]
        except Exception as exc:  # noqa: BLE001
            if failed is None:
                failed = _failure("rollback", exc, tracker.step)
            else:
                result.schema_differences = [f"the rollback after the failure failed too: {exc}"]
        if failed is None and result.schema_restored is False:
            failed = Failure("rollback", None, "after the whole rollback the copy's schema differs from its start: "
                             + "; ".join(result.schema_differences[:5]), None, None,
                             "the rollback would leave these objects changed on the target: report it with "
                             "`pgconverge plan --rollback-to align` and the lines above")
        detail = (f"not tried to the end: it would wait for objects the team made ({result.rollback_deferred})"
                  if result.rollback_deferred else f"back to the start of {PHASES[0]}, "
                  + ("schema as at the start" if result.schema_restored else
                     "schema not compared (the copy started mid-migration)" if result.schema_restored is None
                     else f"{len(result.schema_differences)} schema differences"))
        stage("rollback", t0, detail if failed is None or failed.stage != "rollback"
              else f"failed at {failed.step or 'the schema comparison'}",
              failed is None or failed.stage != "rollback")
        result.failure = failed
    finally:
        result.kept = keep and made
        if made and not keep:
            rh.drop_database(admin, database)
        elif made:
            _mark(admin, database, "kept")
    return result


def _copy_fix(database: str, kept: bool) -> str:
    """The fix of a refusal about the preflight's own copy: nothing of it is to be done on the target."""
    return (f"this is about the preflight's own copy of the target ({database}, "
            + ("kept" if kept else "dropped since") + "), not about the target: do nothing the error says on the "
            "target itself; `pgconverge status` shows where the target stands, --keep-preflight-copy keeps the copy "
            "to look at, and --skip-preflight runs without the preflight (report the error with the lines above)")


def _unread(result: Result) -> str:
    return "; ".join(result.unread_functions[:5]) + (f" and {len(result.unread_functions) - 5} more"
                                                     if len(result.unread_functions) > 5 else "")


# Each copy is marked with the process that made it; a copy whose process is gone (killed before it could drop
# it) is dropped by the next preflight on the same server from the same machine. Kept copies stay.
_MARK = "pgconverge preflight copy"


def _mark(admin: str, database: str, state: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("comment on database {} is {}").format(
            sql.Identifier(database), sql.Literal(f"{_MARK}; {state}; host={socket.gethostname()}; pid={os.getpid()}")))


def sweep_orphans(admin: str) -> list[str]:
    """Drop preflight copies left by a process of this machine that no longer runs; returns their names."""
    dropped = []
    with psycopg.connect(admin, autocommit=True) as conn:
        rows = conn.execute("select d.datname, pg_catalog.shobj_description(d.oid, 'pg_database') from "
                            "pg_catalog.pg_database d where d.datname like 'pgconverge\\_preflight\\_%'").fetchall()
    for name, note in rows:
        m = re.fullmatch(rf"{_MARK}; running; host=(.*); pid=(\d+)", note or "")
        if m is None or m.group(1) != socket.gethostname() or _alive(int(m.group(2))):
            continue
        rh.drop_database(admin, name)
        dropped.append(name)
    return dropped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def started_mid_migration(conn: psycopg.Connection, spec: Spec) -> bool:
    """Whether the copy's ledger records any forward step done (the copy started mid-migration)."""
    from pgconverge.ledger.store import Ledger

    ledger = Ledger(conn, spec)
    if not ledger.exists():
        return False
    return any(st.state == "done" and sid.split(".", 1)[0] in PHASES for sid, st in ledger.step_states().items())


def refusal(result: Result) -> PreflightFailed:
    """The error `run` stops with: the step, what Postgres said, the object, the fix; the target untouched."""
    f = result.failure
    assert f is not None
    where = f"step {f.step}" if f.step else f"the {f.stage} stage"
    obj = f"; object: {f.object}" if f.object else ""
    state = f" (SQLSTATE {f.sqlstate})" if f.sqlstate else ""
    return PreflightFailed(
        f"the preflight on a copy of the target failed at {where} ({f.stage}): {f.error}{state}{obj}. "
        "The target was not changed",
        fix=f"{f.fix}. `pgconverge plan --check` runs the preflight alone; --skip-preflight runs without it "
            "(at your own risk)", result=result)
