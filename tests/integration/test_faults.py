"""Fault injection: the runner killed (SIGKILL) at many points, connections dropped, locks held.

Every case must end, after the same command is run again, in the same verified state as a run
that was never interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from _support import ReaderAfter, cli, cli_json, row_owners, schema_dump, write_config

SMALL = 0.1
SLOW = "[migration]\nbatch_size = 20\nbatch_pause_ms = 15\nrls_sample = 10\n"
ALL = ("run", "--all", "--accept-code-references", "--accept-runtime-use")

# (name, ledger condition that must hold when the runner is killed)
KILL_POINTS = [
    ("align: mapping half done", "select exists (select 1 from pgconverge.checkpoints where step = 'align.match')"),
    ("align: trigger being created", "select exists (select 1 from pgconverge.events where step = "
                                     "'align.legacy_trigger' and event = 'start')"),
    ("expand: catalog changes", "select exists (select 1 from pgconverge.events where step = "
                                "'expand.orders.sync_trigger' and event = 'start')"),
    ("expand: mid-backfill", "select exists (select 1 from pgconverge.checkpoints where step = "
                             "'expand.sessions.backfill')"),
    ("expand: concurrent index build", "select exists (select 1 from pgconverge.events where step = "
                                       "'expand.carts.index_1' and event = 'start')"),
    ("expand: NOT NULL sequence", "select exists (select 1 from pgconverge.events where step = "
                                  "'expand.carts.validate_not_null_check' and event = 'start')"),
    ("switch: equivalence capture", "select exists (select 1 from pgconverge.events where step = "
                                    "'switch.policies' and event = 'start')"),
    ("contract: gates", "select exists (select 1 from pgconverge.events where step = 'contract.gates' "
                        "and event = 'start')"),
    ("contract: dropping legacy columns", "select exists (select 1 from pgconverge.events where step = "
                                          "'contract.orders.drop_legacy_column' and event = 'start')"),
]


def _start(dsn: str, cfg: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pgconverge", *args, "--dsn", dsn, "--config", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_when(conn, proc: subprocess.Popen, condition: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the kill point: {proc.stderr.read()[-2000:]}")
        try:
            if conn.execute(condition).fetchone()[0]:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return
        except psycopg.errors.UndefinedTable:
            pass
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"kill point never reached: {condition}")


@pytest.fixture(scope="module")
def reference(template_factory, admin_dsn, tmp_path_factory):
    """The end state of an uninterrupted run: owners of every row, as canonical ids."""
    from conftest import _create_database, _drop_database

    name = f"faults_reference_{os.getpid()}"
    dsn = _create_database(admin_dsn, name, template_factory(SMALL))
    cfg = write_config(tmp_path_factory.mktemp("ref"), SLOW)
    cli(*ALL, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        owners = row_owners(conn)
    yield owners
    _drop_database(admin_dsn, name)


@pytest.mark.parametrize("point", [p for p, _ in KILL_POINTS])
def test_killed_run_resumes_to_the_same_verified_state(make_db, template_factory, tmp_path, reference, point):
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, SLOW)
    condition = dict(KILL_POINTS)[point]
    with psycopg.connect(dsn, autocommit=True) as conn:
        _kill_when(conn, _start(dsn, cfg, *ALL), condition)
        status = cli_json("status", "--dsn", dsn, "--config", cfg)
        assert status["phases"].get("contract") != "done"
        cli(*ALL, "--dsn", dsn, "--config", cfg)  # the same command, again
        assert cli_json("status", "--dsn", dsn, "--config", cfg)["phases"] == {
            "align": "done", "expand": "done", "switch": "done", "contract": "done"}
        assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]
        mine = row_owners(conn)
    # Created canonical rows get fresh ids in every run: compare who shares an owner, and the rest as is.
    assert {t: len(r) for t, r in mine.items()} == {t: len(r) for t, r in reference.items()}
    for t in mine:
        assert _partition(mine[t]) == _partition(reference[t]), t


def _partition(owners: dict) -> set:
    groups: dict = {}
    for row, owner in owners.items():
        groups.setdefault(owner, set()).add(row)
    return {frozenset(g) for g in groups.values()}


def test_killed_rollback_resumes(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, SLOW)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before, owners = schema_dump(conn), row_owners(conn)
        cli(*ALL, "--dsn", dsn, "--config", cfg)
        _kill_when(conn, _start(dsn, cfg, "rollback", "align"),
                   "select exists (select 1 from pgconverge.checkpoints where step like 'rollback.contract.%legacy_ids')")
        cli("rollback", "align", "--dsn", dsn, "--config", cfg)
        assert schema_dump(conn) == before and row_owners(conn) == owners


def test_dropped_connection_fails_the_step_cleanly_and_resumes(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, SLOW)
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        proc = _start(dsn, cfg, "run", "expand")
        deadline = time.monotonic() + 60
        killed = 0
        while not killed and time.monotonic() < deadline:
            killed = conn.execute("select count(pg_terminate_backend(pid)) from pg_stat_activity where "
                                  "application_name = 'pgconverge:expand.carts.backfill'").fetchone()[0]
            time.sleep(0.01)
        assert killed
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and "expand.carts.backfill" in err and "fix:" in err, err
        cli("run", "expand", "--dsn", dsn, "--config", cfg)
        assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]


def test_lock_held_through_the_policy_rewrite_then_resumed(make_db, template_factory, tmp_path):
    """Killed while the rewrite waits for its locks: nothing is half applied, and the next run finishes."""
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, SLOW)
    for ph in ("align", "expand"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = {r[0]: r[1] for r in conn.execute("select policyname, qual from pg_policies")}
        # holds ACCESS SHARE until it ends, from before the policy rewrite on
        blocker = ReaderAfter(dsn, "switch.settle_helpers", "select count(*) from public.sessions")
        try:
            _kill_when(conn, _start(dsn, cfg, "run", "switch"),
                       "select exists (select 1 from pgconverge.events where step = 'switch.policies' "
                       "and event = 'retry')")
            assert blocker.holding.is_set()
            assert {r[0]: r[1] for r in conn.execute("select policyname, qual from pg_policies")} == before
        finally:
            blocker.close()
        cli("run", "switch", "--dsn", dsn, "--config", cfg)
        assert "auth_profile_id" in conn.execute("select qual from pg_policies where policyname = 'carts_owner'"
                                                 ).fetchone()[0]


def test_rollback_killed_then_contract_run_again_then_rolled_back(make_db, template_factory):
    """A forward run between a killed rollback and its resumption undoes what the rollback had redone:
    the resumed rollback must redo those steps, not skip them as its own."""
    import os
    import subprocess
    import sys

    dsn = make_db(template_factory(0.1))
    with psycopg.connect(dsn, autocommit=True) as conn:
        before, owners = schema_dump(conn), row_owners(conn)
    cli("run", "--all", "--dsn", dsn, "--accept-code-references", "--accept-runtime-use")  # no observation window
    env = {**os.environ, "PGCONVERGE_KILL_AT": "rollback.contract.carts.legacy_foreign_key:after"}
    killed = subprocess.run([sys.executable, "-m", "pgconverge", "rollback", "align", "--dsn", dsn],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    cli("run", "contract", "--dsn", dsn, "--accept-code-references", "--accept-runtime-use")
    cli("rollback", "align", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema_dump(conn) == before and row_owners(conn) == owners
