"""A fixed application write load, in its own process, and the statistics of what it saw.

Old-code clients know only the legacy id (customer_id); new-code clients, once profile_id
exists on carts, orders and sessions, write only the canonical id (profile_id) and let the
database find the rest. Every transaction is one checkout, as service_role:

    insert cart → insert item → insert order → insert session
    → touch one of the customer's existing sessions and carts (UPDATE by key)
    → mark the new cart checked out → read the cart, its items and the order back

The UPDATEs of existing rows are what a table-wide UPDATE's row locks block. Each client
works through its own 500 customers (ones the fixture maps to a known profile), with 2 ms
between transactions. Start and end of every transaction (CLOCK_MONOTONIC, shared by all
processes on the machine) and every failure are sent back when the load stops.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import threading
import time

import psycopg

THINK_S = 0.002
POOL = 500

_POOL_SQL = """
select x.customer_id, x.expected_profile_id::text,
       (select c.id from public.carts c where c.customer_id = x.customer_id order by c.id limit 1),
       (select s.id::text from public.sessions s where s.customer_id = x.customer_id limit 1)
from fixture_truth.expected_mapping x where x.expected_profile_id is not null
order by x.customer_id offset %s limit %s"""

_READY_SQL = """
select count(*) = 3 from pg_catalog.pg_attribute
where attrelid in ('public.carts'::regclass, 'public.orders'::regclass, 'public.sessions'::regclass)
  and attname = 'profile_id' and not attisdropped"""


def _client(dsn: str, k: int, new_code: bool, stop, out: list, lock: threading.Lock) -> None:
    samples, failures = [], []
    app = f"bench-{'new' if new_code else 'old'}-{k}"
    parent = os.getppid()
    with psycopg.connect(dsn, autocommit=True, application_name=app) as c:
        pool = [r for r in c.execute(_POOL_SQL, (k * POOL, POOL)).fetchall() if r[2] is not None and r[3] is not None]
        i, ready, checked = 0, False, 0.0
        while not stop.is_set():
            if new_code and not ready and time.monotonic() - checked > 0.5:
                ready, checked = c.execute(_READY_SQL).fetchone()[0], time.monotonic()
            cid, pid, old_cart, old_session = pool[i % len(pool)]
            i += 1
            col, val = ("profile_id", pid) if ready else ("customer_id", cid)
            flow = "new" if ready else "old"
            t0 = time.monotonic()
            try:
                with c.transaction():
                    c.execute("set local role service_role")
                    cart = c.execute(f"insert into public.carts ({col}) values (%s) returning id", (val,)).fetchone()[0]
                    c.execute("insert into public.cart_items (cart_id, product_id, quantity, unit_price) "
                              "values (%s, 1, 1, 9.5)", (cart,))
                    order = c.execute(f"insert into public.orders ({col}, cart_id, total) values (%s, %s, 9.5) "
                                      "returning id", (val, cart)).fetchone()[0]
                    c.execute(f"insert into public.sessions ({col}) values (%s)", (val,))
                    c.execute("update public.sessions set last_seen_at = now() where id = %s", (old_session,))
                    c.execute("update public.carts set updated_at = now() where id = %s", (old_cart,))
                    c.execute("update public.carts set status = 'checked_out' where id = %s", (cart,))
                    c.execute("select c.status, count(i.id), max(o.total) from public.carts c "
                              "join public.cart_items i on i.cart_id = c.id join public.orders o on o.cart_id = c.id "
                              "where c.id = %s and o.id = %s group by c.status", (cart, order)).fetchone()
                samples.append((t0, time.monotonic(), flow, app))
            except psycopg.Error as exc:
                failures.append((t0, time.monotonic(), flow, f"{type(exc).__name__}: {str(exc).strip()[:160]}"))
                if c.closed or c.broken:
                    break  # the database went away: counting the same failure forever measures nothing
            if os.getppid() != parent:
                break  # the bench that started this load is gone
            stop.wait(THINK_S)
    with lock:
        out.append((samples, failures))


def _pool_main(dsn: str, n_old: int, n_new: int, stop, started, q) -> None:
    out: list = []
    lock = threading.Lock()
    threads = [threading.Thread(target=_client, args=(dsn, k, k >= n_old, stop, out, lock))
               for k in range(n_old + n_new)]
    for t in threads:
        t.start()
    started.set()
    for t in threads:
        t.join()
    samples = [s for part, _ in out for s in part]
    failures = [f for _, part in out for f in part]
    q.put((samples, failures))


class Load:
    """with Load(dsn, old, new) as load: … ; afterwards load.samples, load.failures."""

    def __init__(self, dsn: str, n_old: int = 4, n_new: int = 2):
        self.dsn, self.n_old, self.n_new = dsn, n_old, n_new
        ctx = mp.get_context("spawn")
        self.stop, self.started, self.q = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_pool_main, args=(dsn, n_old, n_new, self.stop, self.started, self.q))

    def __enter__(self) -> Load:
        self.proc.start()
        self.started.wait(120)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.samples, self.failures = self.q.get(timeout=600)
        self.proc.join()


def window(samples: list, failures: list, start: float, end: float) -> dict:
    """Client statistics for transactions that ended in [START, END]."""
    inside = [s for s in samples if start <= s[1] <= end]
    lat = sorted(s[1] - s[0] for s in inside)
    ends = sorted(s[1] for s in inside)
    gaps = [b - a for a, b in zip([start, *ends], [*ends, end])]
    failed = [f for f in failures if start <= f[1] <= end]
    out = {"seconds": round(end - start, 2), "transactions": len(lat), "failed": len(failed),
           "failed_old": sum(f[2] == "old" for f in failed), "failed_new": sum(f[2] == "new" for f in failed),
           "new_code_tx": sum(s[2] == "new" for s in inside),
           "longest_stall_ms": round(max(gaps) * 1000, 1) if gaps else None}
    if not lat:
        return {**out, "tps": 0, "p50_ms": None, "p99_ms": None, "max_ms": None, "over_100ms": 0}
    return {**out, "tps": round(len(lat) / (end - start), 1) if end > start else None,
            "p50_ms": round(statistics.median(lat) * 1000, 1),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1),
            "max_ms": round(lat[-1] * 1000, 1), "over_100ms": sum(x > 0.1 for x in lat)}


def slowest(samples: list, steps: list[dict], n: int = 5, monitor: Monitor | None = None) -> list[dict]:
    """The N slowest transactions, the steps that ran while each was open and (with a MONITOR) what its
    backend waited on meanwhile."""
    out = []
    for t0, t1, flow, app in sorted(samples, key=lambda s: s[0] - s[1])[:n]:
        during = [s["step"] for s in steps if s["t0"] < t1 and s["t1"] > t0]
        out.append({"ms": round((t1 - t0) * 1000, 1), "flow": flow, "steps": during,
                    **({"waits": monitor.during(t0, t1, app)} if monitor else {})})
    return out


def longest_gaps(samples: list, steps: list[dict], start: float, end: float, n: int = 5,
                 monitor: Monitor | None = None) -> list[dict]:
    """The N longest intervals in [START, END] in which no client transaction finished, with the steps then
    and (with a MONITOR) what the backends waited on meanwhile."""
    ends = sorted(s[1] for s in samples if start <= s[1] <= end)
    gaps = sorted(zip([start, *ends], [*ends, end]), key=lambda g: g[0] - g[1])[:n]
    return [{"ms": round((b - a) * 1000, 1), "at_s": round(a - start, 2),
             "steps": [s["step"] for s in steps if s["t0"] < b and s["t1"] > a],
             **({"waits": monitor.during(a, b)} if monitor else {})} for a, b in gaps]


class Monitor:
    """Samples what every backend of the database waits on, every 50 ms, to explain the longest stalls.

    A client backend waiting on Lock:* is blocked by another transaction; one in ClientRead inside a
    transaction is waiting for the client program itself (the client process got no CPU, say); one
    with no wait event is running.
    """

    def __init__(self, dsn: str, every_s: float = 0.05):
        self.dsn, self.every_s = dsn, every_s
        self.samples: list[tuple[float, list[tuple[str, str, str]]]] = []
        self.stop = threading.Event()

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self.stop.is_set():
                rows = c.execute("""select coalesce(nullif(application_name, ''), backend_type),
                        coalesce(wait_event_type || ':' || wait_event, 'running'), state
                    from pg_catalog.pg_stat_activity where datname = current_database()
                    and pid <> pg_backend_pid() and state is distinct from 'idle'""").fetchall()
                self.samples.append((time.monotonic(), rows))
                self.stop.wait(self.every_s)

    def __enter__(self) -> Monitor:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def during(self, a: float, b: float, only: str | None = None) -> dict:
        """Per kind of backend (bench clients, pgconverge, other), how often each wait was seen in [A, B]
        (with ONLY, for that application name alone)."""
        out: dict[str, dict[str, int]] = {}
        for t, rows in self.samples:
            if a <= t <= b:
                for app, wait, state in rows:
                    if only and app != only:
                        continue
                    kind = "clients" if app.startswith("bench-") else ("pgconverge" if app.startswith("pgconverge")
                                                                      else app)
                    label = wait if state != "idle in transaction" else f"{wait} (idle in transaction)"
                    out.setdefault(kind, {}).setdefault(label, 0)
                    out[kind][label] += 1
        return out
