"""Clean interrupts: SIGINT/SIGTERM stop `pgconverge run` at a safe point and the same command resumes.

The runner runs as a real process (`python -m pgconverge`) and gets a real signal while it works: mid-backfill
(one worker, and several), and during the switch's RLS equivalence check. It must exit 130 (SIGINT) or 143
(SIGTERM) with one line naming where it stopped and the command that resumes, leave an `interrupted` event in
the ledger, leave the database as a failure there would (every batch committed with its checkpoint, or not at
all; the old policies in place), and the rerun must say it resumes and go on from where it stopped.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from _support import cli, cli_json, linkage_problems, mapping_problems, schema_dump, write_config

SLOW = "[migration]\nbatch_size = 100\nbatch_pause_ms = 100\n"  # about 3 s per dependent table at the test scale


def _start(dsn: str, cfg: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pgconverge", *args, "--dsn", dsn, "--config", cfg],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _signal_when(conn: psycopg.Connection, proc: subprocess.Popen, condition: str, sig: int,
                 timeout: float = 120) -> str:
    """Send SIG once CONDITION holds on the database; return the process' whole output after it ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the signal point: {proc.stdout.read()[-3000:]}")
        try:
            if conn.execute(condition).fetchone()[0]:
                proc.send_signal(sig)
                out, _ = proc.communicate(timeout=120)
                return out
        except psycopg.errors.UndefinedTable:
            pass  # the ledger is not there yet
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"signal point never reached: {condition}")


def _the_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1, out[-3000:]
    assert "Traceback" not in out and "error:" not in out, out[-3000:]
    return lines[0]


def _resume(dsn: str, cfg: str, *args: str) -> str:
    return "resume with: " + shlex.join(["pgconverge", *args, "--dsn", dsn, "--config", cfg])


def _interrupted_events(conn) -> list[tuple]:
    return conn.execute("select run_id, step, message, detail from pgconverge.events where event = 'interrupted' "
                        "order by id").fetchall()


def _no_runner_left(conn) -> None:
    assert conn.execute("select count(*) from pg_stat_activity where application_name like 'pgconverge%%' "
                        "and pid <> pg_backend_pid()").fetchone()[0] == 0


def test_sigint_mid_backfill_stops_after_a_batch_and_the_rerun_resumes_from_it(fixture_db, tmp_path):
    dsn, cfg = fixture_db, write_config(tmp_path, SLOW)
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        out = _signal_when(conn, _start(dsn, cfg, "run", "expand"), "select count(*) >= 2 from "
                           "pgconverge.checkpoints where step = 'expand.carts.backfill'", signal.SIGINT)
        line = _the_line(out)
        m = re.fullmatch(r"interrupted during expand\.carts\.backfill after ([\d,]+) rows; (.*)", line)
        assert m, line
        assert m.group(2) == _resume(dsn, cfg, "run", "expand"), line
        rows = int(m.group(1).replace(",", ""))
        _no_runner_left(conn)

        # The ledger: where it stopped, and it is the last checkpoint (the batch in flight committed with it).
        (run_id, step, message, detail), = _interrupted_events(conn)
        assert step == "expand.carts.backfill" and message == line.split(";")[0]
        assert detail["signal"] == "SIGINT" and detail["stopped"] == "batch" and detail["rows_done"] == rows
        last_key, last_rows = conn.execute("select position, rows_done from pgconverge.checkpoints where step = "
                                           "'expand.carts.backfill' order by id desc limit 1").fetchone()
        assert last_rows == rows
        # Every row up to the checkpoint has its new id, none after it: no half batch.
        assert conn.execute("select count(*) from public.carts where (id <= %s) <> (profile_id is not null)",
                            (last_key,)).fetchone()[0] == 0
        assert conn.execute("select count(*) from public.carts where id <= %s", (last_key,)).fetchone()[0] == rows
        st = conn.execute("select event from pgconverge.events where step = 'expand.carts.backfill' "
                          "order by id").fetchall()
        assert [e for (e,) in st] == ["start", "interrupted"]

        status = cli_json("status", "--dsn", dsn, "--config", cfg)
        assert status["summary"]["state"] == "interrupted" and status["summary"]["step"] == "expand.carts.backfill"
        assert status["summary"]["rows_done"] == rows
        assert f"{rows:,} of" in status["summary"]["line"] and "resume with pgconverge run expand" in \
            status["summary"]["line"]
        carts = next(s for s in status["steps"] if s["step"] == "expand.carts.backfill")
        assert carts["state"] == "interrupted" and carts["rows_done"] == rows and carts["attempts"] == 1
        assert carts["interrupted"]["rows_done"] == rows

        # The same command resumes from the checkpoint, not from row zero.
        again = cli("run", "expand", "--dsn", dsn, "--config", cfg)
        assert re.search(rf"resuming expand: \d+ of \d+ steps done, expand\.carts\.backfill from row {rows:,}",
                         again), again
        first = conn.execute("select position, rows_done, batch_rows from pgconverge.checkpoints where step = "
                             "'expand.carts.backfill' and run_id > %s order by id limit 1", (run_id,)).fetchone()
        assert first[0] > last_key and first[1] == rows + first[2]
        assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]
        assert linkage_problems(conn) == [] and mapping_problems(conn) == []
        assert cli_json("status", "--dsn", dsn, "--config", cfg)["phases"]["expand"] == "done"

    # The report counts the interrupted attempt and shows it with where it stopped.
    report = cli_json("report", "--dsn", dsn, "--config", cfg)
    step = next(s for p in report["phases"] for s in p["steps"] if s["id"] == "expand.carts.backfill")
    assert step["state"] == "done" and step["attempts"] == 2 and step["executions"] == 2
    assert [h["outcome"] for h in step["history"]] == ["interrupted", "done"]
    assert step["history"][0]["message"] == line.split(";")[0] and step["history"][0]["duration_ms"] > 0
    md = cli("report", "--dsn", dsn, "--config", cfg)
    assert re.search(r"\| expand\.carts\.backfill \| 1 \| interrupted \| [^|]+ \| [\d,.]+ \| interrupted during "
                     r"expand\.carts\.backfill after", md), md


def test_sigterm_stops_every_backfill_worker_and_the_rerun_resumes_each_range(fixture_db, tmp_path):
    dsn, cfg = fixture_db, write_config(tmp_path, SLOW + "backfill_workers = 2\n")
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        out = _signal_when(conn, _start(dsn, cfg, "run", "expand"), "select count(*) >= 4 from "
                           "pgconverge.checkpoints where step = 'expand.orders.backfill'", signal.SIGTERM)
        line = _the_line(out)
        m = re.fullmatch(r"interrupted during expand\.orders\.backfill after ([\d,]+) rows; (.*)", line)
        assert m and m.group(2) == _resume(dsn, cfg, "run", "expand"), line
        rows = int(m.group(1).replace(",", ""))
        _no_runner_left(conn)
        (run_id, step, _, detail), = _interrupted_events(conn)
        assert step == "expand.orders.backfill" and detail["signal"] == "SIGTERM" and detail["rows_done"] == rows
        # Both workers stopped at a batch boundary: the rows counted are the rows the range checkpoints hold.
        before = dict(conn.execute("""select distinct on (position ->> 'range') (position ->> 'range')::int, rows_done
            from pgconverge.checkpoints where step = 'expand.orders.backfill' order by position ->> 'range', id desc
            """).fetchall())
        assert sum(before.values()) == rows and len(before) >= 2
        # Exactly the rows of each range up to its checkpoint have their new id: no half batch anywhere.
        ranges = conn.execute("select detail -> 'ranges' from pgconverge.events where step = 'expand.orders.backfill' "
                              "and event = 'note' and detail ? 'ranges'").fetchone()[0]
        done = dict(conn.execute("""select distinct on (position ->> 'range') (position ->> 'range')::int,
            (position ->> 'after')::bigint from pgconverge.checkpoints where step = 'expand.orders.backfill'
            order by position ->> 'range', id desc""").fetchall())
        within = " or ".join(f"(id > {lo if lo is not None else -1} and id <= {done[i]})"
                             for i, (lo, _) in enumerate(ranges) if i in done)
        assert conn.execute(f"select count(*) from public.orders where (({within}) and customer_id is not null) "
                            "<> (profile_id is not null)").fetchone()[0] == 0
        assert conn.execute(f"select count(*) from public.orders where {within}").fetchone()[0] == rows
        assert cli_json("status", "--dsn", dsn, "--config", cfg)["summary"]["state"] == "interrupted"

        again = cli("run", "expand", "--dsn", dsn, "--config", cfg)
        assert f"expand.orders.backfill from row {rows:,}" in again, again
        # Every range the workers had started goes on from its own checkpoint.
        after = dict(conn.execute("""select distinct on (position ->> 'range') (position ->> 'range')::int, rows_done
            from pgconverge.checkpoints where step = 'expand.orders.backfill' and run_id > %s
            order by position ->> 'range', id""", (run_id,)).fetchall())
        for r, done in before.items():
            assert after.get(r, done + 1) > done, (r, done, after.get(r))
        assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]
        assert linkage_problems(conn) == []
        assert conn.execute("select count(*) from public.orders where profile_id is null "
                            "and customer_id is not null").fetchone()[0] == 0


def test_sigterm_mid_rollback_stops_after_a_batch_and_the_same_rollback_resumes(fixture_db, tmp_path):
    dsn, cfg = fixture_db, write_config(tmp_path, SLOW)
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        after_align = schema_dump(conn)
        cli("run", "expand", "--dsn", dsn, "--config", cfg)
        step = "rollback.expand.sessions.legacy_ids"  # gives rows new code wrote their legacy id back, in batches
        out = _signal_when(conn, _start(dsn, cfg, "rollback", "expand"), "select count(*) >= 2 from "
                           f"pgconverge.checkpoints where step = '{step}'", signal.SIGTERM)
        line = _the_line(out)
        m = re.fullmatch(rf"interrupted during {re.escape(step)} after ([\d,]+) rows; (.*)", line)
        assert m and m.group(2) == _resume(dsn, cfg, "rollback", "expand"), line
        rows = int(m.group(1).replace(",", ""))
        _no_runner_left(conn)
        summary = cli_json("status", "--dsn", dsn, "--config", cfg)["summary"]
        assert summary["state"] == "interrupted" and summary["step"] == step and summary["rows_done"] == rows
        assert "resume with pgconverge rollback expand" in summary["line"]

        again = cli("rollback", "expand", "--dsn", dsn, "--config", cfg)
        assert re.search(rf"resuming rollback: 0 of \d+ steps done, {re.escape(step)} from row {rows:,}", again), again
        assert schema_dump(conn) == after_align
        assert cli_json("status", "--dsn", dsn, "--config", cfg)["summary"]["state"] == "rolled back"
        assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]


@pytest.mark.parametrize("side", ["before", "after"])
def test_sigint_during_the_rls_check_leaves_the_old_policies_and_the_rerun_switches(fixture_db, tmp_path, side):
    dsn, cfg = fixture_db, write_config(tmp_path, "[migration]\nrls_sample = 30\n")
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    cli("run", "expand", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        policies = conn.execute("select tablename, policyname, qual, with_check from pg_policies "
                                "order by 1, 2").fetchall()
        # Each side of the check reads as identities on a connection of its own, named after it.
        out = _signal_when(conn, _start(dsn, cfg, "run", "switch"), "select exists (select 1 from pg_stat_activity "
                           f"where application_name = 'pgconverge:rls-{side}')", signal.SIGINT)
        line = _the_line(out)
        assert line.startswith("interrupted during the RLS equivalence check of switch.policies "), line
        assert f"{side} the rewrite);" in line and line.endswith("; " + _resume(dsn, cfg, "run", "switch")), line
        assert ("the old policies were restored" if side == "after" else "the policies were not changed") in line
        _no_runner_left(conn)
        assert conn.execute("select tablename, policyname, qual, with_check from pg_policies "
                            "order by 1, 2").fetchall() == policies
        events = [e for (e,) in conn.execute("select event from pgconverge.events where step = 'switch.policies' "
                                             "order by id")]
        # After the rewrite it is undone as a failed check undoes it; before it, nothing was changed.
        assert events == (["start", "done", "reverted", "interrupted"] if side == "after"
                          else ["start", "interrupted"])
        (_, step, _, detail), = _interrupted_events(conn)
        assert step == "switch.policies" and detail["stopped"] == "rls_check" and detail["side"] == side
        status = cli_json("status", "--dsn", dsn, "--config", cfg)
        assert status["summary"]["state"] == "interrupted" and status["summary"]["step"] == "switch.policies"
        assert next(s for s in status["steps"] if s["step"] == "switch.policies")["state"] == "interrupted"
        assert status["phases"]["switch"] != "done"

        again = cli("run", "switch", "--dsn", dsn, "--config", cfg)
        assert "resuming switch: 7 of 10 steps done" in again and "switch.policies" in again, again
        assert cli_json("status", "--dsn", dsn, "--config", cfg)["phases"]["switch"] == "done"
        assert conn.execute("select tablename, policyname, qual, with_check from pg_policies "
                            "order by 1, 2").fetchall() != policies
        result = cli_json("verify", "--rls", "--dsn", dsn, "--config", cfg)
        assert result["passed"], result
        eq = conn.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                          "order by id desc limit 1").fetchone()[0]
        assert eq["problems"] == [] and eq["identities"] == 30


# -- status: the summary line, --steps, and states read from the ledger and the runner's lock ------------------

def _lock(conn) -> None:
    conn.execute("select pg_advisory_lock(hashtextextended('pgconverge:pgconverge', 0))")


def test_status_opens_with_a_summary_and_lists_steps_only_with_steps(make_db, fixture_template, fixture_db):
    untouched = make_db(template=fixture_template)
    out = cli("status", "--dsn", untouched)
    assert out.splitlines()[0].startswith("nothing has run yet — start with pgconverge run align --dsn "), out

    dsn = fixture_db
    cli("run", "align", "--dsn", dsn)
    out = cli("status", "--dsn", dsn)
    first = out.splitlines()[0]
    assert first == "align done; expand not started — next: " + shlex.join(
        ["pgconverge", "run", "expand", "--dsn", dsn]), out
    assert "align.match" not in out and "pgconverge status --steps" in out
    out = cli("status", "--steps", "--dsn", dsn)
    assert out.splitlines()[0] == first
    for step in ("align.match", "expand.carts.backfill", "contract.gates"):
        assert step in out, step
    data = cli_json("status", "--dsn", dsn)
    assert data["summary"]["state"] == "not started" and data["summary"]["phase"] == "expand"
    assert data["runner"] is None and {s["state"] for s in data["steps"] if s["phase"] == "align"} == {"done"}

    # A runner at work (it holds the migration lock) on a step it started: running.
    with psycopg.connect(dsn, autocommit=True) as holder:
        _lock(holder)
        run_id = holder.execute("insert into pgconverge.runs (command, client, spec) values ('run expand', 'test', "
                                "'{}') returning id").fetchone()[0]
        holder.execute("insert into pgconverge.events (run_id, phase, step, event, detail) values "
                       "(%s, 'expand', 'expand.carts.add_column', 'start', '{\"fresh\": true}')", (run_id,))
        data = cli_json("status", "--dsn", dsn)
        assert data["runner"]["pid"] == holder.info.backend_pid and data["runner"]["run_id"] == run_id
        assert data["summary"]["state"] == "running"
        assert next(s for s in data["steps"] if s["step"] == "expand.carts.add_column")["state"] == "running"
        out = cli("status", "--dsn", dsn)
        assert out.startswith(f"expand: running expand.carts.add_column (0 of ") and \
            f"pid {holder.info.backend_pid} holds the migration lock" in out.splitlines()[0], out
    # The runner is gone without a word (killed): pending, and the summary says how to go on.
    data = cli_json("status", "--dsn", dsn)
    assert next(s for s in data["steps"] if s["step"] == "expand.carts.add_column")["state"] == "stopped"
    assert data["summary"]["state"] == "stopped" and data["summary"]["command"].startswith("pgconverge run expand")
    # A failure: failed, with its error, in the summary too.
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("insert into pgconverge.events (run_id, phase, step, event, sqlstate, message) values "
                  "(%s, 'expand', 'expand.carts.add_column', 'error', '55P03', 'canceling statement due to lock "
                  "timeout')", (run_id,))
    data = cli_json("status", "--dsn", dsn)
    failed = next(s for s in data["steps"] if s["step"] == "expand.carts.add_column")
    assert failed["state"] == "failed" and failed["error"]["message"] == "canceling statement due to lock timeout"
    out = cli("status", "--dsn", dsn)
    assert out.splitlines()[0].startswith("expand: failed at expand.carts.add_column (0 of ") and \
        "canceling statement due to lock timeout — fix the cause, then pgconverge run expand" in out, out
    out = cli("status", "--steps", "--dsn", dsn)
    assert "failed: canceling statement due to lock timeout" in " ".join(out.split()), out


def test_a_ledger_from_before_interrupts_takes_the_new_event_kind(fixture_db):
    """A ledger made by an earlier version (its check lists fewer kinds) is widened when a runner opens it;
    align.private_schema keeps its SQL, so a migration under way is not refused for a changed plan."""
    dsn = fixture_db
    cli("run", "align", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("alter table pgconverge.events drop constraint events_event_check")
        conn.execute("alter table pgconverge.events add constraint events_event_check check (event in "
                     "('start', 'done', 'skip', 'retry', 'error', 'reverted', 'note'))")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("insert into pgconverge.events (run_id, phase, step, event) select max(id), 'expand', "
                         "'expand.carts.backfill', 'interrupted' from pgconverge.runs")
        again = cli("run", "align", "--dsn", dsn)  # a runner opened the ledger; every step already done
        assert "resuming" not in again
        conn.execute("insert into pgconverge.events (run_id, phase, step, event) select max(id), 'expand', "
                     "'expand.carts.backfill', 'interrupted' from pgconverge.runs")
        assert cli_json("status", "--dsn", dsn)["summary"]["state"] == "interrupted"
