"""Batches back off while sessions queue for a lock on the table they work on."""

import threading
import time

import psycopg

from pgconverge.execution.throttle import Throttle


def test_throttle_waits_while_a_session_queues_for_the_table(fixture_db):
    holder = psycopg.connect(fixture_db, application_name="app-tx")
    waiter = psycopg.connect(fixture_db, application_name="app-ddl")  # LOCK needs a transaction
    probe = psycopg.connect(fixture_db, autocommit=True)
    try:
        holder.execute("update public.carts set status = status where id = (select min(id) from public.carts)")
        t = threading.Thread(target=lambda: waiter.execute("lock table public.carts in access exclusive mode"))
        t.start()
        deadline = time.monotonic() + 5
        throttle = Throttle(max_wait_s=0.3)
        while not throttle.reasons(probe, "public.carts") and time.monotonic() < deadline:
            time.sleep(0.02)
        told = []
        slept = throttle.wait(probe, "public.carts", told.append)
        assert slept >= 0.3 and "1 sessions wait for a lock on public.carts" in told[0]
        holder.rollback()
        t.join()
        waiter.rollback()
        assert throttle.wait(probe, "public.carts") == 0.0
        assert Throttle().reasons(probe, "public.orders") == []
    finally:
        for c in (holder, waiter, probe):
            c.close()
