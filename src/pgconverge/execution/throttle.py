"""Back off between batches while the server is busy: sessions queue for locks on the table, or a replica lags."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

BUSY_QUERY = """
select (select count(*) from pg_catalog.pg_locks where relation = to_regclass(%(t)s) and not granted),
       coalesce((select max(extract(epoch from replay_lag) * 1000) from pg_catalog.pg_stat_replication), 0)
"""


@dataclass
class Throttle:
    max_replica_lag_ms: int = 0  # 0: replicas are not watched
    base_s: float = 0.05
    cap_s: float = 2.0
    max_wait_s: float = 30.0  # then proceed anyway: a table that is always contended must still finish

    def reasons(self, conn: psycopg.Connection, table: str) -> list[str]:
        waiters, lag_ms = conn.execute(BUSY_QUERY, {"t": table}).fetchone()
        out = []
        if waiters:
            out.append(f"{waiters} sessions wait for a lock on {table}")
        if self.max_replica_lag_ms and lag_ms > self.max_replica_lag_ms:
            out.append(f"a replica lags {lag_ms:.0f} ms (limit {self.max_replica_lag_ms} ms)")
        return out

    def wait(self, conn: psycopg.Connection, table: str, note=None, stop=None) -> float:
        """Sleep while the server is busy; return the seconds slept. NOTE(reasons) is told once per wait;
        the wait ends early once STOP() is true (a signal asked the run to stop)."""
        slept, pause, told = 0.0, self.base_s, False
        while slept < self.max_wait_s and not (stop and stop()):
            why = self.reasons(conn, table)
            if not why:
                break
            if note and not told:
                note(why)
                told = True
            time.sleep(pause)
            slept += pause
            pause = min(self.cap_s, pause * 2)
        return slept
