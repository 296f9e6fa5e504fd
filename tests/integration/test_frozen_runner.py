"""A runner that stops (SIGSTOP: a paused VM, a stalled client) in the middle of a step, with its connections open.

A step's transaction takes locks the application's statements wait for (ACCESS EXCLUSIVE on the table whose legacy
column contract drops). It goes out in one message with its COMMIT, so the server finishes it whatever the process
does; a transaction left open all the same (here by the test's pause point inside it) ends, with its locks, within
session.LOCKS_IDLE_TIMEOUT_MS, well inside an application's statement_timeout. A second runner started meanwhile is
refused at once, naming the first, before it reads the catalog (which would wait for the first one's table lock).

The runner runs as a real process, stopped at a pause point (PGCONVERGE_STOP_AT, execution/killpoint.py) or by
the test's own SIGSTOP; the outcomes are checked, not durations: no application statement failed, the lock went
while the runner was still stopped, the second runner was refused while the table lock it would wait for was held.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
from psycopg import sql
import pytest

from _support import cli, cli_json, write_config
from pgconverge.verify.tokens import act_as

CONFIG = "[migration]\nobservation_window = 0\nrls_sample = 3\n"
ACCEPT = ("--yes", "--accept-code-references", "--accept-runtime-use")
STEP = "contract.orders.drop_legacy_column"
BUSY = "another pgconverge runner is working on this database"


@pytest.fixture(scope="module")
def switched(admin_dsn, template_factory, tmp_path_factory):
    """A template database of the fixture with align, expand and switch done."""
    from conftest import _create_database, _drop_database

    cfg = write_config(tmp_path_factory.mktemp("frozen"), CONFIG)
    name = f"frozen_switched_{os.getpid()}"
    dsn = _create_database(admin_dsn, name, template_factory(0.1))
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    yield name
    _drop_database(admin_dsn, name)


def _start(dsn: str, cfg: str, *args: str, stop_at: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, **({"PGCONVERGE_STOP_AT": stop_at} if stop_at else {}))
    return subprocess.Popen([sys.executable, "-m", "pgconverge", *args, "--dsn", dsn, "--config", cfg], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stopped(proc: subprocess.Popen) -> bool:
    with open(f"/proc/{proc.pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def _wait_stopped(proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the runner ended before its pause point: {proc.stdout.read()[-3000:]}")
        if _stopped(proc):
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the runner never reached its pause point")


def _pgconverge_locks(conn: psycopg.Connection) -> int:
    """Locks pgconverge's sessions hold on public.orders, granted or waited for."""
    return conn.execute("select count(*) from pg_locks l join pg_stat_activity a on a.pid = l.pid "
                        "where a.application_name like 'pgconverge%%' and l.locktype = 'relation' "
                        "and l.relation = 'public.orders'::regclass").fetchone()[0]


def _done(conn: psycopg.Connection, step: str) -> bool:
    return conn.execute("select exists (select 1 from pgconverge.events where step = %s and event = 'done')",
                        (step,)).fetchone()[0]


def _until(what, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.1)
    return False


class Writers:
    """New code writing orders as a signed-in person, each statement under Supabase's statement_timeout for
    `authenticated` (8 s)."""

    def __init__(self, dsn: str, n: int = 2):
        with psycopg.connect(dsn, autocommit=True) as c:
            self.profile = c.execute("select profile_id from pgconverge.legacy_customer_profile "
                                     "order by profile_id limit 1").fetchone()[0]
        self.dsn, self.failures, self.writes = dsn, [], 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _write(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self.stop.is_set():
                try:
                    with c.transaction():
                        c.execute("set local statement_timeout = '8s'")
                        act_as(c, {"profile_id": str(self.profile), "app_role": "customer"})
                        c.execute("insert into public.orders (profile_id, total) values (%s, 1)", (self.profile,))
                    self.writes += 1
                except psycopg.Error as exc:
                    self.failures.append(f"{type(exc).__name__}: {str(exc).strip()[:120]}")
                time.sleep(0.05)

    def end(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def test_a_runner_stopped_inside_a_steps_transaction_holds_its_lock_seconds_not_a_minute(make_db, switched,
                                                                                         tmp_path):
    dsn, cfg = make_db(switched), write_config(tmp_path, CONFIG)
    writers = Writers(dsn)
    runner = _start(dsn, cfg, "run", "contract", *ACCEPT, stop_at=f"{STEP}:commit")
    try:
        _wait_stopped(runner)  # its statements ran, the table's ACCESS EXCLUSIVE taken, COMMIT not sent
        with psycopg.connect(dsn, autocommit=True) as conn:
            # The server ends the stopped runner's transaction (not a minute later: the session's own limit) and
            # its lock goes with it, while the runner is still stopped.
            assert _until(lambda: _pgconverge_locks(conn) == 0, 40), "the stopped runner still holds its lock"
            assert _stopped(runner)
            assert not _done(conn, STEP)
        # A second runner meanwhile: refused, naming the first one's process, not left waiting.
        second = _start(dsn, cfg, "rollback", "contract", "--yes")
        out, _ = second.communicate(timeout=120)
        flat = " ".join(out.split())
        assert second.returncode == 2 and BUSY in flat and f"process {runner.pid} " in flat, out
        time.sleep(1)  # the writers go on a little after the lock went
    finally:
        writers.end()
        runner.send_signal(signal.SIGCONT)
    out, _ = runner.communicate(timeout=120)
    # No statement of the application failed while the runner was stopped with the lock.
    assert writers.failures == [] and writers.writes > 0, writers.failures[:3]
    # Woken up, the runner finds its session ended: it stops, saying so, with nothing of the step committed.
    assert runner.returncode == 2 and "Traceback" not in out, out
    assert f"step {STEP} failed: the server ended its session" in " ".join(out.split()), out
    # The same command resumes and finishes contract.
    cli("run", "contract", *ACCEPT, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _done(conn, STEP)
        assert conn.execute("select count(*) from information_schema.columns where table_schema = 'public' "
                            "and table_name = 'orders' and column_name = 'customer_id'").fetchone()[0] == 0
    assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]


def test_a_runner_stopped_once_its_step_is_sent_holds_nothing_and_a_second_runner_is_refused_at_once(
        make_db, switched, tmp_path):
    # A long lock wait, so that the step can be caught waiting for its lock behind an application's transaction.
    dsn, cfg = make_db(switched), write_config(tmp_path, CONFIG + "lock_timeout_ms = 60000\nlock_retries = 0\n")
    with psycopg.connect(dsn, autocommit=True) as conn:  # pgconverge waits that long only below deadlock_timeout
        conn.execute(sql.SQL("alter database {} set deadlock_timeout = '300s'").format(
            sql.Identifier(conn.info.dbname)))
    runner = _start(dsn, cfg, "run", "contract", *ACCEPT, stop_at=f"{STEP}:before")
    blocker = psycopg.connect(dsn, application_name="app-report")
    try:
        _wait_stopped(runner)
        blocker.execute("select count(*) from public.orders")  # a report's transaction, open: ACCESS SHARE
        runner.send_signal(signal.SIGCONT)
        with psycopg.connect(dsn, autocommit=True) as conn:
            def waiting() -> bool:  # the step's message at the server, its ACCESS EXCLUSIVE queued behind the report
                return conn.execute("select exists (select 1 from pg_stat_activity where application_name = %s "
                                    "and wait_event_type = 'Lock')", (f"pgconverge:{STEP}",)).fetchone()[0]

            assert _until(waiting, 120), runner.stdout.read()[-3000:]
            runner.send_signal(signal.SIGSTOP)  # stopped with the step's message at the server, waiting
            _wait_stopped(runner)
            # A second runner: refused while the step's lock request still queues behind the report, which its
            # reading of the catalog would wait behind.
            second = _start(dsn, cfg, "rollback", "contract", "--yes")
            out, _ = second.communicate(timeout=180)
            flat = " ".join(out.split())
            assert second.returncode == 2 and BUSY in flat and f"process {runner.pid} " in flat, out
            # Refused while the step still waited: not once the step's lock wait ran out (lock_timeout_ms).
            assert waiting(), "the second runner waited behind the first one's table lock"
            assert blocker.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            blocker.commit()
            # The server runs the step to its COMMIT while the runner is stopped: done, its lock gone.
            assert _until(lambda: _done(conn, STEP) and _pgconverge_locks(conn) == 0, 40), \
                "the stopped runner's step did not commit without it"
            assert _stopped(runner)
    finally:
        blocker.close()
        runner.send_signal(signal.SIGCONT)
    out, _ = runner.communicate(timeout=180)
    assert runner.returncode == 0, out[-3000:]
    assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]
