"""Who holds or waits for a lock: named in errors so the user knows what to end."""

from __future__ import annotations

import psycopg

# The table lock modes each mode waits for (Postgres' conflict table), in pg_locks' spelling.
_ALL = ("AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
        "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")
CONFLICTS = {
    "ACCESS SHARE": _ALL[7:],
    "ROW SHARE": _ALL[6:],
    "ROW EXCLUSIVE": _ALL[4:],
    "SHARE UPDATE EXCLUSIVE": _ALL[3:],
    "SHARE": (_ALL[2], _ALL[3], *_ALL[5:]),
    "SHARE ROW EXCLUSIVE": _ALL[2:],
    "EXCLUSIVE": _ALL[1:],
    "ACCESS EXCLUSIVE": _ALL,
}


def describe_blockers(conn: psycopg.Connection, relation: str | tuple[str, ...], mode: str | None = None,
                      rows: bool = False) -> str:
    """Name the sessions other than ours holding locks on RELATION (a qualified table name, or several) that MODE
    (a table lock mode, as Operation.lock spells it) waits for; with ROWS, the transactions writing it, one of which
    holds the row a batch waits for."""
    relations = [relation] if isinstance(relation, str) else list(relation)
    if not any(relations):
        return ""
    modes = list(CONFLICTS.get(mode or "", _ALL))
    if rows:  # a row is held by a transaction that wrote it: one holding ROW EXCLUSIVE (or more) on the table
        modes = sorted(set(modes) | set(_ALL[2:]))
    found = conn.execute(
        "select a.pid, a.application_name, a.state, l.mode, "
        "       extract(epoch from clock_timestamp() - a.xact_start)::int, left(a.query, 120) "
        "from pg_locks l join pg_stat_activity a on a.pid = l.pid "
        "where l.locktype = 'relation' and l.granted and l.mode = any(%s::text[]) "
        "  and l.relation = any (select to_regclass(r) from unnest(%s::text[]) r) "
        "  and a.pid <> pg_backend_pid() and a.application_name not like 'pgconverge%%' "
        "order by a.xact_start nulls last limit 5", (modes, relations)).fetchall()
    if not found:
        return "No session holds a lock on it now; the blocker has finished."

    lead = "Transactions writing it now (the oldest first; one holds the row the batch waits for): " if rows else \
        "Held by: "
    return lead + "; ".join(_session(*r) for r in found) + "."


def _session(pid, app, state, held, age, query) -> str:
    """One session as the errors name it (HELD: the lock mode it holds, or None)."""
    app = app or "no application_name"
    if state is None:  # pg_stat_activity hides other roles' sessions from a role without pg_read_all_stats
        return f"pid {pid} ({', '.join(x for x in (app, held) if x)}; its details are hidden from this role)"
    return (f"pid {pid} ({', '.join(x for x in (app, state, held) if x)}, transaction open "
            f"{'?' if age is None else age}s: {query!r})")


def describe_old_snapshots(conn: psycopg.Connection, open_for_ms: int) -> str:
    """Name the sessions of this database whose transaction holds a snapshot (backend_xmin) and has been open for at
    least OPEN_FOR_MS: a CREATE INDEX CONCURRENTLY waits for every such older transaction to end (a virtualxid
    wait), whatever table it reads, and it holds no lock on the table being indexed."""
    found = conn.execute(
        "select a.pid, a.application_name, a.state, null, "
        "       extract(epoch from clock_timestamp() - a.xact_start)::int, left(a.query, 120) "
        "from pg_stat_activity a "
        "where a.datname = current_database() and a.pid <> pg_backend_pid() "
        "  and a.application_name not like 'pgconverge%%' and a.backend_type = 'client backend' "
        "  and a.backend_xmin is not null "
        "  and a.xact_start <= clock_timestamp() - make_interval(secs => %s / 1000.0) "
        "order by a.xact_start limit 5", (open_for_ms,)).fetchall()
    if not found:
        return ""
    return ("A concurrent index build also waits for every transaction whose snapshot is older than it, whatever "
            "table that transaction reads (a report at REPEATABLE READ, an export, a session left idle in "
            "transaction); these are open: " + "; ".join(_session(*r) for r in found) + ".")
