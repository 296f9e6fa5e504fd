"""A runner killed where a rollback has to judge what there is to undo, and what status, verify and report say then.

- A forward step of one transaction killed inside it, before its COMMIT, changed nothing: the phase's rollback must
  not undo it (re-adding a foreign key contract never dropped failed on every retry). Each such step of each phase is
  killed at its ``commit`` point, then its phase is rolled back: the rollback finishes and the schema is the one the
  phase started from.
"""

from __future__ import annotations

import os
import signal

import psycopg
import pytest

from _killer import Killer, wait_runner_gone
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


@pytest.fixture(scope="module")
def killer(tmp_path_factory):
    k = Killer(tmp_path_factory.mktemp("killer"))
    yield k
    k.close()


def _kill(killer: Killer, dsn: str, args: list[str], point: str) -> None:
    answer, log = killer.run(args, point)
    assert answer["signal"] == signal.SIGKILL, f"not killed at {point}: exit {answer['code']}\n{log[-3000:]}"
    wait_runner_gone(dsn)


def _commit_points(dsn: str, cfg: str, phase: str) -> list[str]:
    """Every step of PHASE that runs in one transaction, killed inside it before its COMMIT."""
    steps = cli_json("plan", phase, "--dsn", dsn, "--config", cfg)["steps"]
    return [f"{s['id']}:commit" for s in steps
            if s["transactional"] and s["operation"] not in NOT_IN_A_TRANSACTION and s["operation"] != "Batched"]


@pytest.mark.parametrize("phase", ["contract", "switch", "expand", "align"])
def test_rollback_after_a_step_killed_before_its_commit_leaves_the_phase_start(stages, killer, make_db, phase):
    cfg = stages["config"]
    template = stages["names"][BEFORE[phase]]
    points = _commit_points(make_db(template), cfg, phase)
    assert points
    if phase == "contract":  # the steps whose undo re-added a foreign key that was never dropped
        assert "contract.carts.drop_legacy_foreign_key:commit" in points
    broken = []
    for point in points:
        dsn = make_db(template)
        forward = ["run", phase, *(ACCEPT if phase == "contract" else ()), "--dsn", dsn, "--config", cfg]
        _kill(killer, dsn, forward, point)
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
