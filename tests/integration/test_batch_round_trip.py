"""A batch holds its row locks only while the server works on it, never while pgconverge's process waits.

Each batch (BEGIN, its settings, its statement with its checkpoint, COMMIT) goes to the server in one round trip
(execution/batch.py). So a pgconverge process frozen at any moment of a batched step (SIGSTOP: what a busy host's
scheduler does to it for a few milliseconds) leaves none of its batch sessions inside a transaction once the server
has run what it was sent, and no application write to those rows waits for it.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import psycopg

from _support import cli, linkage_problems, write_config

FREEZES = 15


def _batch_sessions(conn: psycopg.Connection, step: str) -> list[tuple[str, str]]:
    """(application_name, state) of STEP's batch sessions: the run's work connection (one worker, named after the
    step) or the backfill workers' connections (the step's name, '#', a number)."""
    return conn.execute("select application_name, state from pg_stat_activity where datname = current_database() "
                        "and (application_name = %(a)s or application_name like %(a)s || '#%%')",
                        {"a": f"pgconverge:{step}"}).fetchall()


def _step_running(conn: psycopg.Connection) -> str | None:
    if conn.execute("select to_regclass('pgconverge.events')").fetchone()[0] is None:
        return None  # the run has not made its ledger yet
    row = conn.execute("select step, event from pgconverge.events where event in ('start', 'done') "
                       "order by id desc limit 1").fetchone()
    return row[0] if row and row[1] == "start" else None


def _freeze_while_batched(proc: subprocess.Popen, dsn: str, steps: tuple[str, ...]) -> list[str]:
    """SIGSTOP PROC at random moments while one of STEPS (id suffixes) runs; each time, once none of its batch
    sessions is still running a statement, note any that sits in a transaction. Returns the steps frozen in,
    and fails on the first session found in a transaction."""
    frozen: list[str] = []
    rng = random.Random(7)
    with psycopg.connect(dsn, autocommit=True) as conn:
        while proc.poll() is None and len(frozen) < FREEZES:
            time.sleep(rng.uniform(0.005, 0.05))
            step = _step_running(conn)
            if step is None or not step.endswith(steps):
                continue
            proc.send_signal(signal.SIGSTOP)
            try:
                deadline = time.monotonic() + 10
                sessions = _batch_sessions(conn, step)
                while any(state == "active" for _, state in sessions) and time.monotonic() < deadline:
                    time.sleep(0.01)
                    sessions = _batch_sessions(conn, step)
                if _step_running(conn) != step or not sessions:
                    continue  # the step ended in between, or its workers were not connected yet
                waiting = [s for s in sessions if s[1] != "idle"]
                assert not waiting, f"frozen during {step}: {waiting} (row locks held while pgconverge waits)"
                frozen.append(step)
            finally:
                proc.send_signal(signal.SIGCONT)
    return frozen


def test_a_frozen_run_leaves_no_batch_transaction_open(fixture_db, tmp_path):
    """The match (one worker, the work connection) and the backfills (two workers), frozen 15 times each at
    random moments: no batch session is ever left inside its transaction, and the run ends as usual."""
    cfg = write_config(tmp_path, "[migration]\nbatch_size = 2\nbackfill_workers = 2\n")
    for phase, steps in (("align", ("align.match",)), ("expand", (".backfill",))):
        proc = subprocess.Popen([sys.executable, "-m", "pgconverge", "run", phase, "--dsn", fixture_db,
                                 "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            frozen = _freeze_while_batched(proc, fixture_db, steps)
        finally:
            proc.send_signal(signal.SIGCONT)
            _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert len(frozen) == FREEZES, f"{phase}: frozen only {len(frozen)} times inside its batched steps"
    with psycopg.connect(fixture_db, autocommit=True) as conn:
        assert linkage_problems(conn) == []
    cli("verify", "--dsn", fixture_db, "--config", cfg)
