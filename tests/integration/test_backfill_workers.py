"""Backfill by several workers over key ranges: the same rows as one worker, and a killed run resumes per range."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg
import pytest

from _support import DEPENDENTS, cli, cli_json, linkage_problems, mapping_problems, wait_disconnected, write_config
from test_align_kill import _wait_for

from pgconverge.config import from_dict
from pgconverge.errors import PgConvergeError


def _signature(conn: psycopg.Connection) -> list[tuple]:
    """Every dependent row's new id, named by the smallest customer mapped to it (created ids are random)."""
    out = []
    for t in DEPENDENTS:
        out += conn.execute(f"""select '{t}', d.id, d.customer_id,
            (select min(m.customer_id) from pgconverge.legacy_customer_profile m where m.profile_id = d.profile_id)
            from public.{t} d order by d.id""").fetchall()
    return out


def _truth_problems(conn: psycopg.Connection) -> int:
    return sum(conn.execute(f"""select count(*) from public.{t} d join fixture_truth.expected_mapping x
        on x.customer_id = d.customer_id where x.expected_profile_id is not null
        and d.profile_id is distinct from x.expected_profile_id""").fetchone()[0] for t in DEPENDENTS)


def test_three_workers_fill_the_same_rows_as_one(make_db, fixture_template, tmp_path):
    one, three = make_db(template=fixture_template), make_db(template=fixture_template)
    (tmp_path / "one").mkdir()
    (tmp_path / "three").mkdir()
    cfg1 = write_config(tmp_path / "one", "[migration]\nbatch_size = 100\n")
    cfg3 = write_config(tmp_path / "three", "[migration]\nbatch_size = 100\nbackfill_workers = 3\n")
    for dsn, cfg in ((one, cfg1), (three, cfg3)):
        cli("run", "align", "--dsn", dsn, "--config", cfg)
        cli("run", "expand", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(one, autocommit=True) as c1, psycopg.connect(three, autocommit=True) as c3:
        for c in (c1, c3):
            assert mapping_problems(c) == [] and linkage_problems(c) == [] and _truth_problems(c) == 0
            assert c.execute("select count(*) from public.carts where profile_id is null").fetchone()[0] == 0
        assert _signature(c1) == _signature(c3)
        # The three-worker run really split the work: 12 ranges, each checkpointed on its own, by 3 connections.
        done = c3.execute("""select detail from pgconverge.events
            where step = 'expand.carts.backfill' and event = 'done'""").fetchone()[0]
        assert done["workers"] == 3 and done["ranges"] == 12
        ranges = c3.execute("""select count(distinct position ->> 'range') from pgconverge.checkpoints
            where step = 'expand.carts.backfill'""").fetchone()[0]
        assert ranges == 12
        scanned = c3.execute("""select sum(batch_rows) from pgconverge.checkpoints
            where step = 'expand.carts.backfill'""").fetchone()[0]
        assert scanned == c3.execute("select count(*) from public.carts").fetchone()[0]  # every row once
        single = c1.execute("""select count(*) from pgconverge.checkpoints
            where step = 'expand.carts.backfill' and jsonb_typeof(position) = 'object'""").fetchone()[0]
        assert single == 0  # one worker keeps the plain key position


@pytest.mark.parametrize("resume_workers", [2, 1])
def test_killed_parallel_backfill_resumes_every_range_from_its_checkpoint(fixture_db, tmp_path, resume_workers):
    slow = write_config(tmp_path, "[migration]\nbatch_size = 25\nbatch_pause_ms = 20\nbackfill_workers = 3\n")
    cli("run", "align", "--dsn", fixture_db, "--config", slow)
    with psycopg.connect(fixture_db, autocommit=True) as conn:
        proc = subprocess.Popen([sys.executable, "-m", "pgconverge", "run", "expand", "--dsn", fixture_db,
                                 "--config", slow], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(conn, "select count(distinct position ->> 'range') >= 3 and sum(batch_rows) >= 600 "
                        "from pgconverge.checkpoints where step = 'expand.carts.backfill'")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # A batch is one message: the server commits the ones in flight, checkpoints with them, after the kill.
        wait_disconnected(fixture_db, "pgconverge", prefix=True)
        at_kill = dict(conn.execute("""select distinct on (position ->> 'range') position ->> 'range', rows_done
            from pgconverge.checkpoints where step = 'expand.carts.backfill'
            order by position ->> 'range', id desc""").fetchall())
        half = conn.execute("select count(*) filter (where profile_id is null), count(*) from public.carts").fetchone()
        assert 0 < half[0] < half[1]  # really stopped half-way

        (tmp_path / "resume").mkdir()
        fast = write_config(tmp_path / "resume", f"[migration]\nbatch_size = 25\nbackfill_workers = {resume_workers}\n")
        out = cli_json("run", "expand", "--dsn", fixture_db, "--config", fast)
        by = {s["step"]: s for s in out["steps"]}
        assert by["expand.carts.add_column"]["status"] == "skipped"
        assert by["expand.carts.backfill"]["resumed_from"] == sum(at_kill.values())
        # No range started over: each one's first batch in the new run begins where its last checkpoint was.
        first = dict(conn.execute("""select distinct on (position ->> 'range') position ->> 'range',
                rows_done - batch_rows from pgconverge.checkpoints
            where step = 'expand.carts.backfill' and run_id = (select max(id) from pgconverge.runs)
            order by position ->> 'range', id""").fetchall())
        assert first and all(first[r] == at_kill.get(r, 0) for r in first)
        plans = conn.execute("""select count(distinct position ->> 'plan') from pgconverge.checkpoints
            where step = 'expand.carts.backfill'""").fetchone()[0]
        assert plans == 1  # the ranges recorded before the kill were kept
        assert linkage_problems(conn) == [] and _truth_problems(conn) == 0
        for t in DEPENDENTS:
            assert conn.execute(f"select count(*) from public.{t} where customer_id is not null "
                                "and profile_id is null").fetchone()[0] == 0


def test_backfill_workers_is_validated():
    assert from_dict({"migration": {"backfill_workers": 4}}).migration.backfill_workers == 4
    for bad in (0, 65, "2", True):
        with pytest.raises(PgConvergeError, match="backfill_workers"):
            from_dict({"migration": {"backfill_workers": bad}})


def test_single_worker_run_killed_then_resumed_by_three_workers_starts_after_its_position(fixture_db, tmp_path):
    slow = write_config(tmp_path, "[migration]\nbatch_size = 25\nbatch_pause_ms = 20\n")
    cli("run", "align", "--dsn", fixture_db, "--config", slow)
    with psycopg.connect(fixture_db, autocommit=True) as conn:
        proc = subprocess.Popen([sys.executable, "-m", "pgconverge", "run", "expand", "--dsn", fixture_db,
                                 "--config", slow], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(conn, "select max(rows_done) >= 300 from pgconverge.checkpoints where step = 'expand.carts.backfill'")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # A batch is one message: the server commits the ones in flight, checkpoints with them, after the kill.
        wait_disconnected(fixture_db, "pgconverge", prefix=True)
        position, at_kill = conn.execute("""select position, rows_done from pgconverge.checkpoints
            where step = 'expand.carts.backfill' order by id desc limit 1""").fetchone()
        assert isinstance(position, int)  # one worker: a plain key

        (tmp_path / "resume").mkdir()
        three = write_config(tmp_path / "resume", "[migration]\nbatch_size = 25\nbackfill_workers = 3\n")
        out = cli_json("run", "expand", "--dsn", fixture_db, "--config", three)
        assert {s["step"]: s for s in out["steps"]}["expand.carts.backfill"]["resumed_from"] == at_kill
        plan = conn.execute("""select detail from pgconverge.events where step = 'expand.carts.backfill'
            and event = 'note' and detail ? 'ranges'""").fetchone()[0]
        assert plan["ranges"][0][0] == position and plan["rows_before"] == at_kill
        # Nothing at or below the old position was scanned again; everything above it exactly once.
        below = conn.execute("""select count(*) from pgconverge.checkpoints where step = 'expand.carts.backfill'
            and jsonb_typeof(position) = 'object' and (position ->> 'after')::bigint <= %s""", (position,)).fetchone()[0]
        assert below == 0
        scanned = conn.execute("""select sum(batch_rows) from pgconverge.checkpoints
            where step = 'expand.carts.backfill' and jsonb_typeof(position) = 'object'""").fetchone()[0]
        assert scanned == conn.execute("select count(*) from public.carts where id > %s", (position,)).fetchone()[0]
        assert linkage_problems(conn) == [] and _truth_problems(conn) == 0
