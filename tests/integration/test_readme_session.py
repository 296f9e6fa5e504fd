"""The README's "A session, step by step", run as written: each command of its ```sh block, in order, on an empty
database, adding only --dsn and --config (the walk-through's pgconverge.toml, also taken from the README)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import psycopg
import typer

from pgconverge.cli import app

from pgconverge.execution import preflight_copy
from _support import cli, schema_dump, write_config

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text()
    found = re.search(r"^## A session, step by step\n(.*?)(?=^## )", text, re.S | re.M)
    assert found, "the README's walk-through section is missing"
    return found.group(1)


def _commands(section: str) -> list[list[str]]:
    block = re.search(r"^### The commands\n\n```sh\n(.*?)^```", section, re.S | re.M)
    assert block, "the walk-through's ```sh block (right after '### The commands') is missing"
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    assert all(line.startswith("pgconverge ") for line in lines), lines
    return [shlex.split(line)[1:] for line in lines]


def _takes_config(args: list[str]) -> bool:
    """Whether the command ARGS names has a --config option (`fixture load` has none)."""
    cmd = typer.main.get_command(app)
    for word in args:
        if word not in (getattr(cmd, "commands", None) or {}):
            break
        cmd = cmd.commands[word]
    return any("--config" in p.opts for p in cmd.params)


def test_readme_session_runs_as_written(make_db, tmp_path, monkeypatch, admin_dsn):
    section = _section()
    toml = re.search(r"```toml\n(.*?)```", section, re.S)
    assert toml and re.search(r"^observation_window = 0$", toml.group(1), re.M) \
        and re.search(r"^rls_sample = 5$", toml.group(1), re.M), "the walk-through's pgconverge.toml"
    cfg = write_config(tmp_path, toml.group(1))
    commands = _commands(section)
    assert [c[:2] for c in commands] == [
        ["fixture", "load"], ["inventory"], ["plan", "expand"], ["plan", "--check"], ["run", "align"],
        ["run", "expand"], ["status"], ["run", "switch"], ["verify", "--rls"], ["audit", "runtime"],
        ["run", "contract"], ["report", "--html"], ["rollback", "align"]]
    # Every command the walk-through shows output for is one of those it runs, and the other way round.
    described = re.findall(r"^`pgconverge ([^`]+)`", section, re.M)
    assert described == [shlex.join(c) for c in commands], described

    assert not _takes_config(["fixture", "load"]) and _takes_config(["run", "contract"])
    dsn = make_db()
    monkeypatch.chdir(tmp_path)  # `report --html report.html` writes into the working directory
    # `plan --check` copies into the test server, not into an embedded server it would start in tmp_path
    monkeypatch.setenv(preflight_copy.SERVER_ENV, admin_dsn)
    start = None
    outputs = {}
    for args in commands:
        extra = ["--dsn", dsn] + (["--config", cfg] if _takes_config(args) else [])
        outputs[shlex.join(args)] = cli(*args, *extra)
        if args[:2] == ["fixture", "load"]:
            with psycopg.connect(dsn) as conn:
                start = schema_dump(conn, ("public", "auth"))
    assert "customers                         2,000" in outputs["fixture load"]
    assert "expand finished on " in outputs["run expand"] and "next: pgconverge run switch" in outputs["run expand"]
    assert "expand done; switch not started" in outputs["status"]
    assert "verify passed on " in outputs["verify --rls"]
    assert "no use of the legacy side since the baseline" in outputs["audit runtime"]
    assert "the legacy side is archived" in outputs[
        "run contract --accept-code-references --accept-runtime-use --yes"]
    page = (tmp_path / "report.html").read_text()
    assert "Verdict: COMPLETE" in page and "policies rewritten" in page
    assert "the database is as it was before align began" in outputs["rollback align --yes"]
    with psycopg.connect(dsn) as conn:
        assert schema_dump(conn, ("public", "auth")) == start
        assert conn.execute("select count(*) from public.customers").fetchone()[0] == 2000
