"""A dependent without a key is backfilled in page order by several workers: killed mid-way, with application
updates moving unfilled rows meanwhile, the resumed run (another worker count) ends with every row exactly right."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg

from _support import cli, cli_json, linkage_problems, write_config

STEP = "expand.visits.backfill"


def _wrong(conn: psycopg.Connection) -> int:
    """Visits rows whose new id is not the one the mapping gives (a missing one included)."""
    return conn.execute("""select count(*) from public.visits d
        left join pgconverge.legacy_customer_profile m on m.customer_id = d.customer_id
        where d.customer_id is not null and d.profile_id is distinct from m.profile_id""").fetchone()[0]


def test_table_without_a_key_walked_by_pages_killed_and_resumed(fixture_db, tmp_path):
    with psycopg.connect(fixture_db, autocommit=True) as conn:
        conn.execute("""create table public.visits (customer_id bigint references public.customers on delete cascade,
                                                    last_seen_at timestamptz);
                        insert into public.visits select id, null from public.customers, generate_series(1, 4);
                        insert into public.visits select null, now() from generate_series(1, 50);
                        analyze public.visits""")
    cfg = write_config(tmp_path, "[migration]\nbatch_size = 40\nbackfill_workers = 3\n")
    cli("run", "align", "--dsn", fixture_db, "--config", cfg)
    with psycopg.connect(fixture_db, autocommit=True) as conn:
        before = conn.execute("select count(*), count(customer_id) from public.visits").fetchone()
        env = {**os.environ, "PGCONVERGE_KILL_AT": f"{STEP}:batch:12"}
        proc = subprocess.run([sys.executable, "-m", "pgconverge", "run", "expand", "--dsn", fixture_db,
                               "--config", cfg], env=env, capture_output=True, text=True)
        assert proc.returncode == -9, proc.stdout + proc.stderr
        # Walked by pages: the ranges and every checkpoint are page numbers, several ranges at once.
        plan = conn.execute("select detail from pgconverge.events where step = %s and event = 'note' "
                            "and detail ? 'ranges'", (STEP,)).fetchone()[0]
        assert len(plan["ranges"]) >= 6 and all(isinstance(hi, int) for _, hi in plan["ranges"])
        positions = conn.execute("select position from pgconverge.checkpoints where step = %s", (STEP,)).fetchall()
        assert positions and all(isinstance(p["after"], int) for (p,) in positions)
        assert len({p["range"] for (p,) in positions}) >= 2
        unfilled = conn.execute("select count(*) from public.visits where customer_id is not null "
                                "and profile_id is null").fetchone()[0]
        assert 0 < unfilled < before[1]  # really stopped half-way
        # The application touches unfilled rows without their ids (the sync trigger does not fire): after a
        # vacuum, their new versions land on pages the walk has passed already, so only the sweep finds them.
        conn.execute("vacuum public.visits")
        moved = conn.execute("update public.visits set last_seen_at = now() where customer_id is not null "
                             "and profile_id is null").rowcount
        assert moved == unfilled

        (tmp_path / "resume").mkdir()
        two = write_config(tmp_path / "resume", "[migration]\nbatch_size = 40\nbackfill_workers = 2\n")
        out = cli_json("run", "expand", "--dsn", fixture_db, "--config", two)
        assert {s["step"]: s for s in out["steps"]}[STEP]["resumed_from"] > 0
        done = conn.execute("select detail from pgconverge.events where step = %s and event = 'done'",
                            (STEP,)).fetchone()[0]
        assert done["swept"] > 0  # rows moved behind the walk were found and filled
        swept = conn.execute("select detail from pgconverge.events where step = %s and event = 'note' "
                             "and detail ? 'passes'", (STEP,)).fetchone()[0]
        assert swept == {"swept": done["swept"], "passes": 2}  # one read found them all, the second none
        plans = conn.execute("select count(distinct position ->> 'plan') from pgconverge.checkpoints "
                             "where step = %s", (STEP,)).fetchone()[0]
        assert plans == 1  # the ranges recorded before the kill were kept
        assert conn.execute("select count(*), count(customer_id) from public.visits").fetchone() == before
        assert _wrong(conn) == 0 and linkage_problems(conn) == []
