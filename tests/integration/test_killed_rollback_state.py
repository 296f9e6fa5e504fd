"""A runner killed where a rollback has to judge what there is to undo, and what status, verify and report say then.

- A forward step of one transaction killed inside it, before its COMMIT, changed nothing: the phase's rollback must
  not undo it (re-adding a foreign key contract never dropped failed on every retry). Such steps of each phase (those
  whose undo broke, and others spread over the phase, MOST in all) are killed at their ``commit`` point, then the
  phase is rolled back: the rollback finishes and the schema is the one the phase started from.
- A rollback killed between two of its steps (after one committed, before the next began) leaves no step started, yet
  the phases it undoes are half undone: status, status --json and report name the rollback to finish, and verify
  fails, until the rollback runs again; then status says rolled back and verify passes.
"""

from __future__ import annotations

import os

import psycopg
import pytest

from _killer import kill, module_killer
from _support import cli, cli_json, schema_dump, write_config

SCALE = 0.05
CONFIG = "[migration]\nbatch_size = 100\nrls_sample = 3\n"
ACCEPT = ("--accept-code-references", "--accept-runtime-use")
BEFORE = {"align": "start", "expand": "align", "switch": "expand", "contract": "switch"}
NOT_IN_A_TRANSACTION = {"Check", "Snapshot", "PhoneAudit", "Gates"}  # own executors, no _run_sql commit


@pytest.fixture(scope="module")
def stages(admin_dsn, template_factory, tmp_path_factory):
    """A template database at each phase boundary of an uninterrupted run, and its public schema there."""
    from conftest import _create_database, _drop_database

    cfg = write_config(tmp_path_factory.mktemp("killed_rollback"), CONFIG)
    start = template_factory(SCALE)
    work = f"krs_work_{os.getpid()}"
    dsn = _create_database(admin_dsn, work, start)
    names, schemas, made = {"start": start}, {}, [work]
    with psycopg.connect(dsn, autocommit=True) as conn:
        schemas["start"] = schema_dump(conn)
    for ph in ("align", "expand", "switch", "contract"):
        cli("run", ph, "--dsn", dsn, "--config", cfg, *(ACCEPT if ph == "contract" else ()))
        names[ph] = f"krs_{ph}_{os.getpid()}"
        _create_database(admin_dsn, names[ph], work)
        made.append(names[ph])
        with psycopg.connect(dsn, autocommit=True) as conn:
            schemas[ph] = schema_dump(conn)
    yield {"names": names, "schemas": schemas, "config": cfg}
    for n in made:
        _drop_database(admin_dsn, n)


killer = module_killer()


def _commit_points(dsn: str, cfg: str, phase: str) -> list[str]:
    """Every step of PHASE that runs in one transaction, killed inside it before its COMMIT."""
    steps = cli_json("plan", phase, "--dsn", dsn, "--config", cfg)["steps"]
    return [f"{s['id']}:commit" for s in steps
            if s["transactional"] and s["operation"] not in NOT_IN_A_TRANSACTION and s["operation"] != "Batched"]


@pytest.mark.parametrize("phase", ["contract", "switch", "expand", "align"])
def test_rollback_after_a_step_killed_before_its_commit_leaves_the_phase_start(stages, killer, make_db, phase):
    cfg = stages["config"]
    template = stages["names"][BEFORE[phase]]
    points = _sample(_commit_points(make_db(template), cfg, phase))
    assert points
    if phase == "contract":  # the steps whose undo re-added a foreign key that was never dropped
        assert "contract.carts.drop_legacy_foreign_key:commit" in points
    broken = []
    for point in points:
        dsn = make_db(template)
        forward = ["run", phase, *(ACCEPT if phase == "contract" else ()), "--dsn", dsn, "--config", cfg]
        kill(killer, dsn, forward, point)
        with psycopg.connect(dsn, autocommit=True) as conn:
            step = point.split(":")[0]
            assert conn.execute("select event from pgconverge.events where step = %s and event in ('start', 'done') "
                                "order by id desc limit 1", (step,)).fetchone() == ("start",), point
        answer, log = killer.run(["rollback", phase, "--yes", "--dsn", dsn, "--config", cfg], None)
        if answer["code"] != 0:
            broken.append(f"{point}: rollback {phase} exit {answer['code']}: {' '.join(log.split())[-400:]}")
            continue
        with psycopg.connect(dsn, autocommit=True) as conn:
            if schema_dump(conn) != stages["schemas"][BEFORE[phase]]:
                broken.append(f"{point}: rollback {phase} left a schema other than the one {phase} started from")
                continue
        status = cli_json("status", "--dsn", dsn, "--config", cfg)["summary"]
        if status["state"] != "rolled back":
            broken.append(f"{point}: status after the rollback: {status['line']}")
    assert broken == [], "\n".join(broken)


# Kill points a phase is tried at, at most: the steps whose undo broke (a foreign key never dropped re-added, kept ids
# never made, a column never added read), then others spread over the phase.
MOST = 8
BROKE = ("drop_legacy_foreign_key", "keep_legacy_ids", "add_column")


def _sample(points: list[str]) -> list[str]:
    must = [p for p in points if any(b in p for b in BROKE)]
    rest = [p for p in points if p not in must]
    room = max(0, MOST - len(must))
    return must + (rest[::max(1, -(-len(rest) // room))][:room] if room else [])


def _between(dsn: str, cfg: str, phase: str, from_phase: str) -> list[str]:
    """Kill points between two steps of `rollback PHASE` from a database at FROM_PHASE's end: before a step it runs
    that comes after one it ran (so at least one committed)."""
    from pathlib import Path

    from pgconverge.cli.migrate import _plan_for
    from pgconverge.execution import prechecks
    from pgconverge.ledger.store import Ledger

    if phase == "switch" and from_phase == "switch":  # after the restored policies, before the helpers' steps
        return ["rollback.switch.sync_function.carts:before", "rollback.switch.legacy_helper:before"]
    spec, _, plan, _, _ = _plan_for(dsn, Path(cfg), phase)
    with psycopg.connect(dsn, autocommit=True) as conn:
        runs = prechecks.rollback_steps(plan, Ledger(conn, spec).step_states())
    return [f"{runs[len(runs) // 2].id}:before"]


@pytest.mark.parametrize("phase, from_phase", [("switch", "switch"), ("contract", "contract"),
                                               ("expand", "expand"), ("align", "contract")])
def test_rollback_killed_between_two_steps_is_shown_as_stopped_until_it_finishes(stages, killer, make_db, phase,
                                                                                   from_phase):
    cfg = stages["config"]
    template = stages["names"][from_phase]
    for point in _between(make_db(template), cfg, phase, from_phase):
        dsn = make_db(template)
        back = ["rollback", phase, "--yes", "--dsn", dsn, "--config", cfg]
        if phase == "switch":
            with psycopg.connect(dsn, autocommit=True) as conn:
                switched = conn.execute("select pg_get_functiondef('public.auth_customer_id'::regproc)").fetchone()[0]
        kill(killer, dsn, back, point)
        with psycopg.connect(dsn, autocommit=True) as conn:
            step = point.split(":")[0]
            assert conn.execute("select count(*) from pgconverge.events where step = %s", (step,)).fetchone()[0] == 0
            assert conn.execute("select count(*) from pgconverge.events e join pgconverge.runs r on r.id = e.run_id "
                                "where r.command = %s and e.event = 'done'", (f"rollback {phase}",)).fetchone()[0]
            if phase == "switch":  # half undone: the switch's helpers are still in place
                assert conn.execute("select to_regproc('public.auth_profile_id') is not null").fetchone()[0]
                assert conn.execute("select pg_get_functiondef('public.auth_customer_id'::regproc)"
                                    ).fetchone()[0] == switched
        status = cli_json("status", "--dsn", dsn, "--config", cfg)["summary"]
        assert status["state"] == "stopped", (point, status)
        assert status["command"].startswith(f"pgconverge rollback {phase}"), (point, status)
        assert f"rollback {phase}" in status["line"] and "rolled back to" not in status["line"], (point, status)
        text = " ".join(cli("status", "--dsn", dsn, "--config", cfg).split())
        assert f"resume with pgconverge rollback {phase}" in text, (point, text)
        v = cli_json("verify", "--dsn", dsn, "--config", cfg, expect=1)
        assert not v["passed"], (point, v)
        failed = [c for c in v["checks"] if not c["passed"]]
        assert [c["step"] for c in failed] == [f"rollback.{phase}"], (point, v)
        assert f"pgconverge rollback {phase}" in failed[0]["fix"], (point, v)
        verdict = cli_json("report", "--dsn", dsn, "--config", cfg)["verdict"]
        assert verdict["status"] == "INTERRUPTED" and f"rollback {phase}" in verdict["verdict"], (point, verdict)
        assert any(f"pgconverge rollback {phase}" in n for n in verdict["next"]), (point, verdict)
        # Finished: rolled back, and verify passes.
        answer, log = killer.run(back, None)
        assert answer["code"] == 0, log[-3000:]
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert schema_dump(conn) == stages["schemas"][BEFORE[phase]], point
        status = cli_json("status", "--dsn", dsn, "--config", cfg)["summary"]
        assert status["state"] == "rolled back", (point, status)
        assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"], point
        assert cli_json("report", "--dsn", dsn, "--config", cfg)["verdict"]["status"] != "INTERRUPTED", point
