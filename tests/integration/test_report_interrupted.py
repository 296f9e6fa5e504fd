"""`pgconverge report` on a phase that stopped part way: it agrees with `status` (the plan's steps against the
ledger), never calls such a phase done, and names the command that resumes it."""

from __future__ import annotations

import psycopg

from _killer import kill, module_killer
from _support import cli, cli_json, write_config

CONFIG = "[migration]\nobservation_window = 0\nrls_sample = 5\n"
ACCEPT = ("--accept-code-references", "--accept-runtime-use")


killer = module_killer()


def _phase(report: dict, name: str) -> dict:
    return next(p for p in report["phases"] if p["phase"] == name)


def test_report_of_a_contract_killed_after_a_step_is_not_complete(make_db, template_factory, tmp_path, killer):
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, CONFIG)
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    kill(killer, dsn, ["run", "contract", *ACCEPT, "--yes", "--dsn", dsn, "--config", cfg],
          "contract.carts.drop_legacy_column:after")
    status = cli_json("status", "--dsn", dsn, "--config", cfg)
    contract = [s for s in status["steps"] if s["phase"] == "contract"]
    done = sum(s["state"] == "done" for s in contract)
    assert 0 < done < len(contract), status

    report = cli_json("report", "--dsn", dsn, "--config", cfg)
    v = report["verdict"]
    assert v["status"] == "INTERRUPTED", v
    assert "contract stopped after contract.carts.drop_legacy_column" in v["verdict"], v
    assert f"{done} of {len(contract)} steps done" in v["verdict"], v
    assert any("`pgconverge run contract`" in n for n in v["next"]), v
    assert not any("undo contract" in n for n in v["next"]), v
    phase = _phase(report, "contract")
    assert phase["state"] == "stopped"
    # every step of the plan is there, the ones never started too, in the state status gives them
    by_status = {s["step"]: s["state"] for s in contract}
    by_report = {s["id"]: s["state"] for s in phase["steps"]}
    assert set(by_report) == set(by_status)
    assert {k for k, x in by_report.items() if x == "done"} == {k for k, x in by_status.items() if x == "done"}
    assert {k for k, x in by_report.items() if x == "not started"} == \
        {k for k, x in by_status.items() if x == "not started"}

    md = tmp_path / "r.md"
    html = tmp_path / "r.html"
    cli("report", "--md", str(md), "--html", str(html), "--dsn", dsn, "--config", cfg)
    for text in (md.read_text(), html.read_text()):
        assert "COMPLETE" not in text and "INTERRUPTED" in text
    assert "Phase contract: stopped" in md.read_text()

    # resumed, it is complete
    cli("run", "contract", *ACCEPT, "--yes", "--dsn", dsn, "--config", cfg)
    assert cli_json("report", "--dsn", dsn, "--config", cfg)["verdict"]["status"] == "COMPLETE"


def test_report_of_a_switch_killed_during_its_rls_check_says_unproven(make_db, template_factory, tmp_path, killer):
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, CONFIG)
    for ph in ("align", "expand"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    kill(killer, dsn, ["run", "switch", "--dsn", dsn, "--config", cfg], "switch.policies:rls_check")
    status = cli_json("status", "--dsn", dsn, "--config", cfg)
    assert next(s for s in status["steps"] if s["step"] == "switch.policies")["state"] == "unproven"

    report = cli_json("report", "--dsn", dsn, "--config", cfg)
    v = report["verdict"]
    assert v["status"] == "INTERRUPTED", v
    assert "switch stopped in switch.policies" in v["verdict"] and "unproven" in v["verdict"], v
    assert any("`pgconverge run switch`" in n for n in v["next"]), v
    assert not any("run contract" in n for n in v["next"]), v
    phase = _phase(report, "switch")
    assert phase["state"] == "unproven"
    assert next(s for s in phase["steps"] if s["id"] == "switch.policies")["state"] == "unproven"
    rls = next(c for c in report["checks"] if c["step"] == "switch.policies")
    assert rls["status"] != "passed", rls

    cli("run", "switch", "--dsn", dsn, "--config", cfg)
    v = cli_json("report", "--dsn", dsn, "--config", cfg)["verdict"]
    assert v["status"] == "IN PROGRESS" and "next: `pgconverge run contract`" in v["next"], v


def test_a_step_the_lock_holder_runs_is_running_and_stopped_once_it_is_gone(make_db, template_factory, tmp_path):
    """A step started by the runner that holds the migration lock now is running; the same step with no runner on
    it (killed, its connection lost) stopped."""
    from pgconverge.execution.runner import LOCK_NAMESPACE

    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, CONFIG)
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    first = next(s["id"] for s in cli_json("plan", "expand", "--dsn", dsn, "--config", cfg)["steps"])
    with psycopg.connect(dsn, autocommit=True) as runner:  # stands in for a runner at work
        runner.execute("select pg_advisory_lock(hashtextextended(%s, 0))", (LOCK_NAMESPACE + "pgconverge",))
        run = runner.execute("insert into pgconverge.runs (command, spec) values ('run expand', '{}') "
                             "returning id").fetchone()[0]
        runner.execute("insert into pgconverge.events (run_id, phase, step, event) values (%s, 'expand', %s, "
                       "'start')", (run, first))
        v = cli_json("report", "--dsn", dsn, "--config", cfg)["verdict"]
        assert v["status"] == "RUNNING" and f"expand is running {first}" in v["verdict"], v
    v = cli_json("report", "--dsn", dsn, "--config", cfg)["verdict"]
    assert v["status"] == "INTERRUPTED" and f"expand stopped in {first}" in v["verdict"], v
    assert any("`pgconverge run expand`" in n for n in v["next"]), v


def test_report_reads_the_phases_with_the_configuration_the_run_recorded(make_db, template_factory, tmp_path):
    """`report` given another configuration (here the default phone match, whose align has a phone audit step the
    run's exact match did not) still reads the phases against the plan of the configuration the run recorded: a
    finished align and expand are done, not stopped."""
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, CONFIG + '[legacy]\nmatch = "exact"\n')
    for ph in ("align", "expand"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    (tmp_path / "other").mkdir()
    other = write_config(tmp_path / "other", CONFIG)
    report = cli_json("report", "--dsn", dsn, "--config", other)
    assert [p["state"] for p in report["phases"] if p["phase"] in ("align", "expand")] == ["done", "done"], \
        [(p["phase"], p["state"]) for p in report["phases"]]
    assert report["verdict"]["status"] != "INTERRUPTED", report["verdict"]
