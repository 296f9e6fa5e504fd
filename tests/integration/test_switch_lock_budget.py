"""The switch's policy rewrite locks every policy table in one transaction, sharing one budget out among them (each
table waits budget / n, so that writers queued behind the first locks are held no longer than the budget in all).
That budget used to be a fixed 120 ms: an application whose transactions each last longer than its share could never
be switched, and the failure told the user to raise migration.lock_timeout_ms, which changed nothing. The budget is
now migration.lock_timeout_ms where that is longer, and the failure names the share and the budget."""

from __future__ import annotations

import signal
import time

import psycopg

from _small import OWNED_ORDERS
from _support import cli, schema_db

SCHEMA = OWNED_ORDERS
CONFIG = "[migration]\nobservation_window = 0\ntoken_claims = {}\nlock_retries = 0\nlock_timeout_ms = %d\n"


def _switch_behind_a_reader(dsn: str, cfg: str, hold_s: float) -> tuple[int, str]:
    """`run switch`, paused before its policy rewrite while an application transaction opens a read of orders; that
    transaction ends HOLD_S after the rewrite's lock request queues behind it. The run's exit code and output."""
    from test_frozen_runner import _start, _wait_stopped

    runner = _start(dsn, cfg, "run", "switch", stop_at="switch.policies:before")
    with psycopg.connect(dsn) as app, psycopg.connect(dsn, autocommit=True) as watch:
        _wait_stopped(runner)
        app.execute("select count(*) from public.orders")
        runner.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 60
        while not watch.execute("select exists (select 1 from pg_stat_activity where application_name like "
                                "'pgconverge%' and wait_event_type = 'Lock')").fetchone()[0]:
            assert time.monotonic() < deadline and runner.poll() is None, "the rewrite never waited for its lock"
            time.sleep(0.005)
        time.sleep(hold_s)
        app.commit()
    out, _ = runner.communicate(timeout=300)
    return runner.returncode, " ".join(out.split())


def test_the_policy_rewrite_waits_as_long_as_lock_timeout_ms_allows(make_db, tmp_path):
    dsn, args = schema_db(make_db, tmp_path, SCHEMA, CONFIG % 450)
    cli("run", "align", *args)
    cli("run", "expand", *args)
    rc, out = _switch_behind_a_reader(dsn, args[-1], 0.25)  # longer than the former 120 ms, shorter than 450
    assert rc == 0, out[-3000:]


def test_a_lock_failure_of_the_policy_rewrite_names_its_share_and_budget(make_db, tmp_path):
    dsn, args = schema_db(make_db, tmp_path, SCHEMA, CONFIG % 150)
    cli("run", "align", *args)
    cli("run", "expand", *args)
    rc, out = _switch_behind_a_reader(dsn, args[-1], 0.6)
    assert rc == 2 and "step switch.policies could not get its" in out, out[-3000:]
    assert "within 150 ms a table (150 ms for all 1: migration.lock_timeout_ms, or 120 ms where that is less)" in out, \
        out[-3000:]
