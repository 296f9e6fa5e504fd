"""Who still uses the legacy table and helper at run time, from the database's own statistics.

Counters are compared with the baseline the switch recorded. Writes to the legacy table and
calls of the legacy helper after the switch mean old code still runs. Reads (sequential and
index scans) are reported but are not proof of use: until contract drops them, the legacy
foreign keys check every row new code writes (the sync trigger fills the legacy id), and on a
small table Postgres reads the table rather than its index for that check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from pgconverge.catalog.model import Catalog
from pgconverge.config import Spec
from pgconverge.ledger.store import Ledger

TABLE_COUNTERS = ("seq_scan", "idx_scan", "n_tup_ins", "n_tup_upd", "n_tup_del")
USE = ("n_tup_ins", "n_tup_upd", "n_tup_del")
READS = ("seq_scan", "idx_scan")


@dataclass
class RuntimeAudit:
    baseline_at: str | None
    table: dict = field(default_factory=dict)  # counter → delta
    helper_calls: int | None = None
    statements: list[dict] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)

    @property
    def in_use(self) -> list[str]:
        out = [f"{k} +{v}" for k, v in self.table.items() if k in USE and v]
        if self.helper_calls:
            out.append(f"legacy helper calls +{self.helper_calls}")
        out += [f"statement called {s['calls']}×: {s['query'][:80]}" for s in self.statements if s["calls"]]
        return out

    @property
    def reads(self) -> list[str]:
        return [f"{k} +{v}" for k, v in self.table.items() if k in READS and v]

    def as_dict(self) -> dict:
        return {"baseline_at": self.baseline_at, "legacy_table": self.table, "legacy_helper_calls": self.helper_calls,
                "statements": self.statements, "unavailable": self.unavailable, "in_use": self.in_use,
                "reads": self.reads}


def measure(conn: psycopg.Connection, spec: Spec, cat: Catalog, table_name: str | None = None) -> RuntimeAudit:
    """Deltas of the legacy table's and helper's counters since the switch's baseline."""
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
    else:
        audit.unavailable.append(f"{table} has no statistics row (not a table any more?)")
    track = conn.execute("select current_setting('track_functions')").fetchone()[0]
    fn = conn.execute("select s.calls from pg_catalog.pg_stat_user_functions s "
                      "where s.funcid = to_regprocedure(%s)", (cat.legacy_helper.signature,)).fetchone()
    if track == "none" and fn is None:
        audit.unavailable.append("helper calls: track_functions is 'none' in this session (a superuser can set it "
                                 "for the database; the switch does so where it may)")
    else:
        audit.helper_calls = int(fn[0] if fn else 0) - int((base.get("legacy_helper") or {}).get("calls") or 0)
    has_pss = conn.execute("select exists (select 1 from pg_extension where extname = 'pg_stat_statements')"
                           ).fetchone()[0]
    if not has_pss:
        audit.unavailable.append("statements: the pg_stat_statements extension is not installed")
    else:
        try:
            rows = conn.execute(
                "select query, calls from pg_stat_statements where query ~* %s and query !~* 'pgconverge' "
                "order by calls desc limit 50",
                (rf"\m({cat.legacy.name.name}|{cat.legacy_helper.name.name})\M",)).fetchall()
            audit.statements = [{"query": q, "calls": c} for q, c in rows]
            audit.unavailable.append("statements: pg_stat_statements counts since its last reset, not since the "
                                     "baseline")
        except psycopg.Error as exc:
            audit.unavailable.append(f"statements: pg_stat_statements cannot be read ({str(exc).strip()})")
            conn.rollback()
    return audit


def _emitted_baseline(conn: psycopg.Connection, spec: Spec) -> dict | None:
    """The latest baseline the emitted migration files recorded (`pgconverge emit`), in the ledger's shape."""
    from psycopg import sql

    from pgconverge.emit.contract import baseline_table
    from pgconverge.execution.sql import qn, text

    table = baseline_table(spec)
    if conn.execute("select to_regclass(%s)", (text(qn(table)),)).fetchone()[0] is None:
        return None
    row = conn.execute(sql.SQL("select to_jsonb(b) from {} b order by taken_at desc limit 1").format(qn(table))
                       ).fetchone()
    if row is None:
        return None
    b = row[0]
    return {"taken_at": b["taken_at"], "legacy_table": {k: b.get(k) for k in TABLE_COUNTERS},
            "legacy_helper": {"calls": b.get("helper_calls")}}


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
