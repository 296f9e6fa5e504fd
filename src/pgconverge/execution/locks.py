"""Who holds or waits for a lock: named in errors so the user knows what to end."""

from __future__ import annotations

import psycopg


def describe_blockers(conn: psycopg.Connection, relation: str | tuple[str, ...]) -> str:
    """Name the sessions holding locks on RELATION (a qualified table name, or several), other than ours."""
    relations = [relation] if isinstance(relation, str) else list(relation)
    if not any(relations):
        return ""
    rows = conn.execute(
        "select a.pid, a.application_name, a.state, l.mode, "
        "       extract(epoch from clock_timestamp() - a.xact_start)::int, left(a.query, 120) "
        "from pg_locks l join pg_stat_activity a on a.pid = l.pid "
        "where l.locktype = 'relation' and l.granted "
        "  and l.relation = any (select to_regclass(r) from unnest(%s::text[]) r) "
        "  and a.pid <> pg_backend_pid() and a.application_name not like 'pgconverge%%' "
        "order by a.xact_start limit 5", (relations,)).fetchall()
    if not rows:
        return "No session holds a lock on it now; the blocker has finished."
    parts = [f"pid {pid} ({app or 'no application_name'}, {state}, {mode}, transaction open {age}s: {query!r})"
             for pid, app, state, mode, age, query in rows]
    return "Held by: " + "; ".join(parts) + "."
