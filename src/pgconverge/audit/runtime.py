"""Who still uses the legacy table and helper at run time, from the database's own statistics.

Counters are compared with the baseline the switch recorded. Writes to the legacy table, calls
of the legacy helper and rows written to a dependent table with only the legacy column set
(expand's sync trigger fills the new column and counts each such row in a sequence of the
private schema) after the switch mean old code still runs. Reads (sequential and index scans)
are reported but are not proof of use: until contract drops them, the legacy foreign keys check
every row new code writes (the sync trigger fills the legacy id), and on a small table Postgres
reads the table rather than its index for that check.

No use is shown only where something ran: the same statistics of the canonical table and every dependent table
say whether the application wrote at all in the window (`traffic`). A window above 0 that saw no write to any of
them and no use of the legacy side (the application down, or pointed at another database) proves nothing, and the
gate refuses it as not measured. Only writes count as traffic: pgconverge's own reads of those tables after the
switch (verify, the contract gate's invariant checks, the RLS check) scan the same tables and cannot be told apart
from the application's in the statistics, so scans are reported and not counted. pgconverge writes none of those
tables between the baseline and contract's gate: the legacy rows it makes for newcomers go to the legacy table (and
are taken off its inserts, see `made`), the rollback's refills run only once the switch is being undone (running
the switch again takes a new baseline), and contract's own changes come after the gate reads the counters. A
window of 0 observes nothing by choice (tests, the demo): the traffic is then reported, not required.

The baseline also starts the observation window (migration.observation_window): old code that
runs only now and then (a nightly job) needs time to show itself, so contract waits until the
window has passed since the latest baseline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from pgconverge.catalog.model import Catalog
from pgconverge.config import Spec, format_duration
from pgconverge.execution.sql import qn, text
from pgconverge.ledger.store import Ledger
from pgconverge.planning.switch import TRAFFIC_COUNTERS

TABLE_COUNTERS = TRAFFIC_COUNTERS  # the same counters, of the legacy table
USE = ("n_tup_ins", "n_tup_upd", "n_tup_del")
READS = ("seq_scan", "idx_scan")


NO_HELPER_CALLS = "legacy helper calls: not applicable: no RLS identity helper (legacy.helper = \"\")"


@dataclass
class RuntimeAudit:
    baseline_at: str | None
    table: dict = field(default_factory=dict)  # counter → delta
    helper_calls: int | None = None
    statements: list[dict] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    # Of those, the signals the gate cannot do without (the legacy table's counters, a dependent's old-code
    # counter): the gate refuses rather than pass on what it did not see.
    blind: list[str] = field(default_factory=list)
    # Per reference: {table, column, new_column, sequence, rows}: rows written with the legacy column alone
    old_writes: list[dict] = field(default_factory=list)
    observation_window: float = 0.0  # seconds, from the config
    observed_s: float | None = None  # seconds since the baseline (None: no baseline)
    # The server's statistics were reset after the baseline (pg_stat_reset(), a crash restart): the counters count
    # from then, and what happened between the baseline and the reset was not measured.
    reset: bool = False
    reset_at: str | None = None  # when, if the server says (None: counters below their baseline, time unknown)
    # Legacy rows pgconverge itself made over the same time (align's legacy_for_canonical, for people new code wrote
    # for who had none): inserts into the legacy table that are not old code's, taken off n_tup_ins.
    made: int = 0
    # Calls of the legacy helper the sync triggers made over the same time (the caller's own legacy row of a merged
    # person new code wrote for), taken off helper_calls.
    sync_calls: int = 0
    # Per table (the canonical table and each dependent): {"writes": n_tup_ins+upd+del, "scans": seq+idx} since the
    # baseline; None: the baseline holds no such counters (taken by an earlier version).
    traffic: dict | None = None
    # Why the legacy helper's calls are no signal at all ("" where they are one): the database has none.
    helper_not_applicable: str = ""

    @property
    def quiet(self) -> bool:
        """The window (above 0) saw no application traffic at all: it proves nothing."""
        return (self.traffic is not None and self.observation_window > 0 and not self.writes_seen
                and not self.in_use)

    @property
    def writes_seen(self) -> int:
        return sum(t["writes"] for t in (self.traffic or {}).values())

    def traffic_detail(self) -> str:
        """What application activity the window saw, in one line."""
        if self.traffic is None:
            return "application traffic in the window: not measured (the baseline holds no counters of the canonical " \
                   "and dependent tables)"
        busy = [f"{t} +{c['writes']} writes" for t, c in self.traffic.items() if c["writes"]]
        scans = sum(c["scans"] for c in self.traffic.values())
        seen = ", ".join(busy) if busy else "no writes to " + (", ".join(self.traffic) or "any of them")
        return (f"application traffic in the window: {seen}; scans +{scans} (not counted: pgconverge's own checks "
                "read these tables too)")

    @property
    def in_use(self) -> list[str]:
        out = [f"{k} +{v}" for k, v in self.table.items() if k in USE and v]
        if self.helper_calls:
            out.append(f"legacy helper calls +{self.helper_calls}")
        out += [old_write_detail(w) for w in self.old_writes if w["rows"]]
        out += [f"statement called {s['calls']}×: {s['query'][:80]}" for s in self.statements if s["calls"]]
        return out

    @property
    def reads(self) -> list[str]:
        return [f"{k} +{v}" for k, v in self.table.items() if k in READS and v]

    @property
    def window_left_s(self) -> float | None:
        """Seconds of the observation window still to go (0: over; None: no baseline to count from)."""
        if self.observed_s is None:
            return None if self.observation_window > 0 else 0.0
        return max(0.0, self.observation_window - self.observed_s)

    @property
    def window_open(self) -> bool:
        """True while contract must still wait (no baseline yet counts as waiting, for a window above 0)."""
        left = self.window_left_s
        return left is None or left > 0

    def window_detail(self) -> str:
        w = format_duration(self.observation_window)
        if self.reset:
            since = f"the statistics reset at {self.reset_at}" if self.reset_at else "the statistics reset"
            return (f"observation window: {format_duration(self.observed_s or 0)} of {w} observed since {since}, "
                    f"{format_duration(self.window_left_s or 0)} left (the counters count from the reset)")
        if self.observed_s is None:
            return (f"no runtime baseline to start the observation window of {w} from (the switch records one; "
                    "`pgconverge audit runtime --rebaseline` takes one now)")
        return (f"observation window: {format_duration(self.observed_s)} of {w} observed since the runtime baseline "
                f"of {self.baseline_at}, {format_duration(self.window_left_s or 0)} left "
                "(old code that runs now and then needs the time to show itself)")

    def as_dict(self) -> dict:
        return {"baseline_at": self.baseline_at, "legacy_table": self.table, "legacy_helper_calls": self.helper_calls,
                "old_code_rows": self.old_writes, "statements": self.statements, "unavailable": self.unavailable,
                "not_measured": self.blind, "reset": self.reset, "reset_at": self.reset_at,
                "in_use": self.in_use, "reads": self.reads, "legacy_rows_made": self.made,
                "helper_calls_by_sync": self.sync_calls,
                **({"legacy_helper": self.helper_not_applicable} if self.helper_not_applicable else {}),
                "traffic": self.traffic, "traffic_writes": self.writes_seen if self.traffic is not None else None,
                "observation_window": {"seconds": self.observation_window, "observed_s": self.observed_s,
                                       "left_s": self.window_left_s, "open": self.window_open}}


def old_write_detail(w: dict) -> str:
    return (f"{w['table']}: {w['rows']} row(s) written with {w['column']} only (old code; the sync trigger filled "
            f"{w['new_column']}) — update the writers to set {w['new_column']}")


def measure(conn: psycopg.Connection, spec: Spec, cat: Catalog, table_name: str | None = None,
            expanded: Catalog | None = None) -> RuntimeAudit:
    """Deltas of the legacy table's and helper's counters since the switch's baseline. EXPANDED: the catalog expand
    was planned from, which names the partitions detached since (see _old_writes)."""
    base = Ledger(conn, spec).latest_snapshot("runtime_baseline") if Ledger(conn, spec).exists() else None
    base = base or _emitted_baseline(conn, spec)
    audit = RuntimeAudit(base.get("taken_at") if base else None)
    if base is None:
        audit.unavailable.append("no baseline yet: it is recorded by the switch phase; counters below are totals")
        base = {}
    table = table_name or str(cat.legacy.name)
    now = conn.execute("select to_jsonb(s) from pg_catalog.pg_stat_user_tables s where s.relid = to_regclass(%s)",
                       (table,)).fetchone()
    before = base.get("legacy_table") or {}
    if now:
        audit.table = {k: int(now[0].get(k) or 0) - int(before.get(k) or 0) for k in TABLE_COUNTERS}
        if before and any(v < 0 for v in audit.table.values()):
            audit.reset = True
    else:
        audit.unavailable.append(f"{table} has no statistics row (not a table any more?)")
        audit.blind.append(f"writes to {table} (no statistics row)")
    _track_counts(conn, audit, table)
    track = conn.execute("select current_setting('track_functions')").fetchone()[0]
    fn = None if cat.legacy_helper is None else conn.execute(
        "select s.calls from pg_catalog.pg_stat_user_functions s where s.funcid = to_regprocedure(%s)",
        (cat.legacy_helper.signature,)).fetchone()
    if cat.legacy_helper is None:  # legacy.helper = "": no helper whose calls could show old code
        audit.helper_not_applicable = NO_HELPER_CALLS
    elif track == "none" and fn is None:
        audit.unavailable.append("helper calls: track_functions is 'none' in this session (a superuser can set it "
                                 "for the database; the switch does so where it may)")
    else:
        audit.helper_calls = int(fn[0] if fn else 0) - int((base.get("legacy_helper") or {}).get("calls") or 0)
        if base.get("legacy_helper") and audit.helper_calls < 0:
            audit.reset = True
        _sessions_before_tracking(conn, audit)
    _old_writes(conn, spec, cat, base, audit, expanded)
    audit.observation_window = spec.migration.observation_window
    if audit.baseline_at:
        audit.observed_s = float(conn.execute(
            "select extract(epoch from pg_catalog.clock_timestamp() - %s::timestamptz)", (audit.baseline_at,)
        ).fetchone()[0])
        _statistics_reset(conn, audit, now[0] if now else None, fn[0] if fn else None)
        _made_rows(conn, spec, audit)
        _sync_calls(conn, spec, base, audit)
        _traffic(conn, cat, base, audit)
    pss = conn.execute("select n.nspname from pg_catalog.pg_extension e join pg_catalog.pg_namespace n "
                       "on n.oid = e.extnamespace where e.extname = 'pg_stat_statements'").fetchone()
    if pss is None:
        audit.unavailable.append("statements: the pg_stat_statements extension is not installed")
    else:
        try:
            rows = conn.execute(sql.SQL(
                "select s.query, s.calls from {} s where s.query ~* %s and s.query !~* %s and s.query !~* %s "
                "and s.dbid = (select d.oid from pg_catalog.pg_database d "
                "where d.datname = pg_catalog.current_database()) order by s.calls desc limit 50").format(
                sql.Identifier(pss[0], "pg_stat_statements")),
                (statement_pattern(spec, cat), own_statements(spec), SCHEMA_CHANGE)).fetchall()
            audit.statements = [{"query": q, "calls": c} for q, c in rows]
            audit.unavailable.append("statements: pg_stat_statements counts since its last reset, not since the "
                                     "baseline")
        except psycopg.Error as exc:
            audit.unavailable.append(f"statements: pg_stat_statements cannot be read ({str(exc).strip()})")
            conn.rollback()
    return audit


# Every place the table statistics stop counting for the application's sessions: track_counts off for the server
# (this session's value, where it comes from the configuration), for this database, for every role or for a role
# that logs in (pg_db_role_setting: ALTER DATABASE/ROLE … SET; the most specific wins, but any of these leaves some
# sessions uncounted). One description a row. The emitted runtime gate runs the same query inside PL/pgSQL, so its
# aliases must not be the names of that block's variables.
_OFF = "^track_counts=(f|fa|fal|fals|false|n|no|of|off|0)$"
TRACK_COUNTS_OFF = (
    "select tc.w from (select 1 as o, pg_catalog.format('for the server (%s)', gs.source) as w "
    "from pg_catalog.pg_settings gs where gs.name = 'track_counts' and gs.setting = 'off' "
    "and gs.source not in ('database', 'user', 'database user', 'client', 'session') "
    "union all "
    "select 2, case when rs.setrole = 0 and rs.setdatabase = 0 then 'for every role (ALTER ROLE ALL SET)' "
    "when rs.setrole = 0 then pg_catalog.format('for database %s (ALTER DATABASE %s SET)', "
    "pg_catalog.current_database(), pg_catalog.quote_ident(pg_catalog.current_database())) "
    "when rs.setdatabase = 0 then pg_catalog.format('for role %s (ALTER ROLE %s SET)', ro.rolname, "
    "pg_catalog.quote_ident(ro.rolname)) "
    "else pg_catalog.format('for role %s in database %s (ALTER ROLE %s IN DATABASE %s SET)', ro.rolname, "
    "pg_catalog.current_database(), pg_catalog.quote_ident(ro.rolname), "
    "pg_catalog.quote_ident(pg_catalog.current_database())) end "
    "from pg_catalog.pg_db_role_setting rs left join pg_catalog.pg_roles ro on ro.oid = rs.setrole "
    "cross join lateral pg_catalog.unnest(rs.setconfig) as kv(item) "
    "where rs.setdatabase in (0, (select db.oid from pg_catalog.pg_database db "
    "where db.datname = pg_catalog.current_database())) "
    "and (rs.setrole = 0 or ro.rolcanlogin) "
    f"and pg_catalog.lower(pg_catalog.replace(kv.item, ' ', '')) ~ '{_OFF}') tc order by tc.o, tc.w")


def _track_counts(conn: psycopg.Connection, audit: RuntimeAudit, table: str) -> None:
    """track_counts off leaves the table statistics where they are: every delta reads +0 whatever old code writes.
    That is not "unused" but unmeasured, so the gate refuses, naming where it is off and the fix."""
    off = [r[0] for r in conn.execute(TRACK_COUNTS_OFF).fetchall()]
    if not off:
        return
    where = "; ".join(off)
    audit.blind.append(f"writes to {table}: track_counts is off {where}, so its statistics counters do not move "
                       "in the sessions it covers")
    audit.unavailable.append(
        f"writes to {table}: track_counts is off {where}. Turn it back on (ALTER DATABASE … RESET track_counts, "
        "ALTER ROLE … RESET track_counts, or track_counts = on in the server's configuration; a session keeps the "
        "value it started with, so reconnect the application), check that no old code runs, then take the "
        "baseline again: `pgconverge audit runtime --rebaseline`")


# A statement that changes the schema (the migration's own DDL, the application's migrations, applied emitted files)
# is not old code at work, nor is LOCK TABLE (pg_dump's, for the preflight's copy): those naming a legacy column are
# the schema's history and pgconverge's own.
SCHEMA_CHANGE = r"^\s*(/\*([^*]|\*+[^*/])*\*+/\s*|--[^\n]*\n\s*)*(create|alter|drop|comment|grant|revoke|do|lock)\M"


def statement_pattern(spec: Spec, cat: Catalog) -> str:
    """A regular expression (Postgres ARE) for a statement naming anything contract drops or archives: the legacy
    table, the legacy helper, the legacy column of every reference, and migration.code_columns."""
    names = {cat.legacy.name.name, *(d.fk.columns[0] for d in cat.dependents), *spec.migration.code_columns,
             *((cat.legacy_helper.name.name,) if cat.legacy_helper is not None else ())}
    alts = "|".join(re.escape(n) for n in sorted(n for n in names if n))
    # quoted or bare, as a whole word (an identifier may hold `$`, which \M does not count as part of a word)
    return rf"(^|[^\w$])({alts})($|[^\w$])"


def own_statements(spec: Spec) -> str:
    """A regular expression for pgconverge's own statements in pg_stat_statements: those its sessions mark
    (connection.STATEMENT_MARK), and any naming its private schema (its triggers' and backfills' statements)."""
    from pgconverge.connection import STATEMENT_MARK

    return "|".join(re.escape(x) for x in dict.fromkeys((STATEMENT_MARK.strip(), "pgconverge",
                                                        spec.migration.private_schema)))


def _statistics_reset(conn: psycopg.Connection, audit: RuntimeAudit, table: dict | None, calls: int | None) -> None:
    """The server's statistics reset since the baseline (pg_stat_reset() sets pg_stat_database.stats_reset; a crash
    restart discards them all; either leaves counters below their baseline): counters that went backwards mean a
    reset, not use. They count from the reset, the observation window restarts there, and what happened between
    the baseline and the reset is not measured: until `--rebaseline` (a window of 0), or until the window has
    passed since the reset, the gate refuses."""
    reset_db, start = conn.execute(
        "select d.stats_reset, pg_catalog.pg_postmaster_start_time() from pg_catalog.pg_stat_database d "
        "where d.datname = pg_catalog.current_database()").fetchone() or (None, None)
    baseline = conn.execute("select %s::timestamptz", (audit.baseline_at,)).fetchone()[0]
    backwards = audit.reset  # the legacy table's or helper's counters went below the baseline
    if reset_db is not None and reset_db > baseline:
        at = reset_db
        audit.reset = True
    elif backwards:  # a crash restart (stats discarded), or a reset of one table's
        at = start if start is not None and start > baseline else None
    else:
        return
    if backwards:  # counted from the reset; else (another object's counters reset) the deltas stand, as a lower bound
        audit.table = {k: int((table or {}).get(k) or 0) for k in TABLE_COUNTERS}
        if audit.helper_calls is not None:
            audit.helper_calls = int(calls or 0)
    audit.reset_at = at.isoformat() if at is not None else None
    audit.observed_s = float(conn.execute("select extract(epoch from pg_catalog.clock_timestamp() - %s)",
                                          (at,)).fetchone()[0]) if at is not None else 0.0
    when = f"at {audit.reset_at}" if at is not None else "at a time the server does not record"
    if at is None or audit.observation_window <= 0 or audit.window_open:
        audit.blind.append(
            f"use of the legacy side from the runtime baseline of {audit.baseline_at} to the server's statistics "
            f"reset {when} (pg_stat_reset(), or a restart after a crash): not measured; its counters count from the "
            "reset, and went below the baseline (a reset, not use)")
    audit.unavailable.append(
        f"the server's statistics were reset {when}, after the runtime baseline of {audit.baseline_at}: the legacy "
        "table's and helper's counts are since the reset. Check that no old code runs (`pgconverge audit runtime`, "
        "the application's deployments), then take the baseline again: `pgconverge audit runtime --rebaseline`"
        + (f"; or wait until the observation window ({format_duration(audit.observation_window)}) has passed since "
           "the reset"
           if at is not None and audit.observation_window > 0 else ""))


def _traffic(conn: psycopg.Connection, cat: Catalog, base: dict, audit: RuntimeAudit) -> None:
    """The application's writes (and scans) to the canonical and dependent tables since the baseline (see the
    module's docstring for why only writes count). A window above 0 with none of them and no use of the legacy side
    saw no application at all: not measured."""
    from pgconverge.planning import switch

    before = base.get("traffic")
    if before is None:
        if audit.observation_window > 0:
            audit.blind.append("application traffic in the window: the baseline holds no counters of the canonical "
                               "and dependent tables (taken by an earlier version); take it again with "
                               "`pgconverge audit runtime --rebaseline`")
        return
    now = conn.execute(switch.traffic_values(switch.traffic_tables(cat))).fetchone()[0] or {}
    audit.traffic = {}
    for table, c in now.items():
        b = before.get(table) or {}
        delta = {k: int(c.get(k) or 0) - int(b.get(k) or 0) for k in TABLE_COUNTERS}
        if any(v < 0 for v in delta.values()):  # reset since the baseline: counted from the reset
            delta = {k: int(c.get(k) or 0) for k in TABLE_COUNTERS}
        audit.traffic[table] = {"writes": sum(delta[k] for k in USE), "scans": sum(delta[k] for k in READS)}
    if audit.quiet:
        audit.blind.append(
            "the window saw no application traffic: proves nothing (no write to "
            + (", ".join(audit.traffic) or "the canonical and dependent tables")
            + " since the baseline: the application down, or pointed at another database?); check that the "
            "application runs against this database, or pass --accept-runtime-use to go ahead on purpose")


def made_since(spec: Spec, since: sql.Composable) -> tuple[str, sql.Composable]:
    """(the mapping's name, a count of the legacy rows pgconverge made since SINCE): the mapping's 'reverse' rows,
    written by align's legacy_for_canonical. The emitted runtime gate runs the same count."""
    from pgconverge.planning import align

    m = align.names(spec)["mapping"]
    return text(qn(m)), sql.SQL("select count(*) from {m} x where x.method = 'reverse' and x.decided_at >= {since}").format(
        m=qn(m), since=since)


def _sync_calls(conn: psycopg.Connection, spec: Spec, base: dict, audit: RuntimeAudit) -> None:
    """Take the legacy helper's calls the sync triggers made since the baseline off its calls: new code writing for
    a merged person asks the helper which of their legacy rows is the caller's, which is not old code at work. Not
    after a statistics reset (the calls count from a time the counter cannot be read at), nor without a baseline
    value (taken by an earlier version): the calls then stand, on the side of refusing."""
    from pgconverge.planning import switch

    then = base.get("sync_helper_calls")
    if audit.reset or then is None or not audit.helper_calls:
        return
    now = conn.execute(switch.sync_helper_calls_value(spec)).fetchone()[0]
    if now is None or int(now) < int(then):
        return
    audit.sync_calls = int(now) - int(then)
    audit.helper_calls = max(0, audit.helper_calls - audit.sync_calls)


def _made_rows(conn: psycopg.Connection, spec: Spec, audit: RuntimeAudit) -> None:
    """Take the legacy rows pgconverge made since the counters' start off their inserts: a person new code wrote for
    who had no legacy row gets one (a table whose key holds the legacy column, a rollback's refill), which is not old
    code writing. Made in a transaction that rolled back, a row is counted by the statistics and not by the mapping:
    such an insert still shows, on the side of refusing."""
    since = audit.reset_at if audit.reset else audit.baseline_at
    if since is None or not audit.table.get("n_tup_ins"):
        return
    mapping, count = made_since(spec, sql.SQL("%s::timestamptz"))
    if not conn.execute("select pg_catalog.to_regclass(%s) is not null", (mapping,)).fetchone()[0]:
        return
    audit.made = int(conn.execute(count, (since,)).fetchone()[0])
    audit.table["n_tup_ins"] = max(0, audit.table["n_tup_ins"] - audit.made)


def _sessions_before_tracking(conn: psycopg.Connection, audit: RuntimeAudit) -> None:
    """Where function calls are counted because the switch set track_functions for the database, a session keeps the
    setting it started with: sessions older than the baseline count none of their calls (a pool's connections live
    for hours), so the helper's count does not cover them, and the audit says so (the legacy table's counters and
    the rows old code writes are counted in every session)."""
    from pgconverge.connection import OWN_APPLICATION_NAMES

    if audit.baseline_at is None:
        return
    source = conn.execute("select source from pg_catalog.pg_settings where name = 'track_functions'").fetchone()[0]
    if source not in ("database", "database user", "user"):
        return  # the server's own setting: every session counts
    n, oldest, hidden = conn.execute(
        "select count(*) filter (where older), min(backend_start) filter (where older), "
        # another role's session shows none of this without pg_read_all_stats
        "count(*) filter (where backend_type is null and backend_start is null) "
        "from (select a.*, a.backend_type = 'client backend' and a.backend_start < %s::timestamptz "
        "and a.application_name not like all (%s) as older from pg_catalog.pg_stat_activity a "
        "where a.datname = current_database() and a.pid <> pg_catalog.pg_backend_pid()) s",
        (audit.baseline_at, list(OWN_APPLICATION_NAMES))).fetchone()
    if hidden:
        audit.unavailable.append(
            f"helper calls in {hidden} session(s) of other roles may not be counted: when they started is hidden from "
            "this role (grant it pg_read_all_stats to see), and a session older than the switch's function tracking "
            "counts none of its calls")
    if n:  # the table's counters and the sync triggers' count every session: this signal alone is partial
        audit.unavailable.append(
            f"helper calls in {n} session(s) started before the switch turned on function tracking for the database "
            f"(the oldest at {oldest}; a session keeps the setting it started with) are not counted: reconnect them "
            "(restart the application or its pool) for a full count")


def _old_writes(conn: psycopg.Connection, spec: Spec, cat: Catalog, base: dict, audit: RuntimeAudit,
                expanded: Catalog | None = None) -> None:
    """Rows written to each dependent table with only the legacy column since the baseline (expand's counters).

    A partition detached since expand (EXPANDED, the catalog it was planned from) keeps a copy of the legacy foreign
    key, and so reads as a reference of its own with no counter: said as such, not as an expand of an earlier
    version."""
    from pgconverge.planning import references, switch

    parents = {str(p.table.name): str(x.table.name) for x in (expanded.dependents if expanded else ())
               for p in x.partitions}

    counters = switch.old_writes_counters(spec, cat)
    if not counters:
        return
    now = conn.execute(switch.old_writes_values(counters)).fetchone()[0]
    before = base.get("old_writes")
    news = {(str(d.table.name), d.fk.columns[0]): references.new_column(spec, cat, d) for d in cat.dependents}
    for seq, table, column in counters:
        if now.get(seq) is None and table in parents:
            audit.unavailable.append(
                f"{table}.{column}: rows written with it alone are not counted: {table} was a partition of "
                f"{parents[table]} when expand was planned and was detached since, keeping a copy of the legacy "
                f"foreign key but no sync trigger or counter ({seq} does not exist); `pgconverge rollback expand` "
                f"takes off it what expand left there, and `pgconverge run expand` then carries it as a table of its "
                "own")
            audit.blind.append(f"rows old code writes to {table} with {column} alone (detached from "
                               f"{parents[table]} since expand: no counter)")
            continue
        if now.get(seq) is None:
            audit.unavailable.append(f"{table}.{column}: rows written with it alone are not counted (no counter "
                                     f"{seq}: expand made by an earlier version; `pgconverge rollback expand` "
                                     "and `pgconverge run expand` again create it)")
            audit.blind.append(f"rows old code writes to {table} with {column} alone (no counter {seq})")
            continue
        if before is None or before.get(seq) is None:
            if base:
                audit.unavailable.append(f"{table}.{column}: the baseline holds no value of {seq} (taken by an "
                                         "earlier version, or before expand made it): take it again with "
                                         "`pgconverge audit runtime --rebaseline` to count from now")
                audit.blind.append(f"rows old code writes to {table} with {column} alone (no baseline value of "
                                   f"{seq})")
                continue
            then = 0
        else:
            then = int(before[seq])
        value = int(now[seq])
        # A counter below its baseline was made afresh since (expand rolled back and run again): count from there.
        rows = value - then if value >= then else value
        audit.old_writes.append({"table": table, "column": column, "new_column": news.get((table, column)),
                                 "sequence": seq, "rows": rows})


def _emitted_baseline(conn: psycopg.Connection, spec: Spec) -> dict | None:
    """The latest baseline the emitted migration files recorded (`pgconverge emit`), in the ledger's shape."""
    from pgconverge.emit.contract import baseline_table

    table = baseline_table(spec)
    if conn.execute("select to_regclass(%s)", (text(qn(table)),)).fetchone()[0] is None:
        return None
    row = conn.execute(sql.SQL("select to_jsonb(b) from {} b order by taken_at desc limit 1").format(qn(table))
                       ).fetchone()
    if row is None:
        return None
    b = row[0]
    return {"taken_at": b["taken_at"], "legacy_table": {k: b.get(k) for k in TABLE_COUNTERS},
            "legacy_helper": {"calls": b.get("helper_calls")}, "old_writes": b.get("old_writes")}


def record_baseline(conn: psycopg.Connection, spec: Spec, cat: Catalog) -> dict:
    """Take the baseline again, now: for the moment the last old-code deployment was retired.

    The switch records one when it ends, but old code keeps running until the new code is deployed;
    use after that point is what the contract gate must see, not the use in between.
    """
    from pgconverge.planning.switch import runtime_baseline

    snap = runtime_baseline(spec, cat)
    data = {label: conn.execute(q).fetchone()[0] for label, q in snap.queries}
    Ledger(conn, spec).snapshot(None, snap.name, data)
    if not conn.autocommit:
        conn.commit()
    return data
