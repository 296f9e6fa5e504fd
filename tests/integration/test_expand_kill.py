"""The backfill killed mid-way (SIGKILL) continues from its checkpoint and ends in the same state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg

from _support import cli, cli_json, linkage_problems, write_config
from test_align_kill import _wait_for


def test_backfill_killed_mid_way_resumes_from_its_checkpoint(fixture_db, tmp_path):
    cfg = write_config(tmp_path, "[migration]\nbatch_size = 25\nbatch_pause_ms = 20\n")
    cli("run", "align", "--dsn", fixture_db)
    with psycopg.connect(fixture_db, autocommit=True) as conn:
        proc = subprocess.Popen([sys.executable, "-m", "pgconverge", "run", "expand", "--dsn", fixture_db,
                                 "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        at_kill = _wait_for(conn, "select max(rows_done) from pgconverge.checkpoints "
                                  "where step = 'expand.carts.backfill' having max(rows_done) >= 300")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        half = conn.execute("select count(*) filter (where profile_id is null), count(*) from public.carts"
                            ).fetchone()
        assert 0 < half[0] < half[1]  # really stopped half-way

        out = cli_json("run", "expand", "--dsn", fixture_db, "--config", cfg)
        by = {s["step"]: s for s in out["steps"]}
        assert by["expand.carts.add_column"]["status"] == "skipped"
        assert by["expand.carts.backfill"]["resumed_from"] >= at_kill
        first = conn.execute("""select min(rows_done - batch_rows) from pgconverge.checkpoints
            where step = 'expand.carts.backfill' and run_id = (select max(id) from pgconverge.runs)""").fetchone()[0]
        assert first >= at_kill
        assert linkage_problems(conn) == []
        assert conn.execute("select count(*) from public.carts where profile_id is null").fetchone()[0] == 0
