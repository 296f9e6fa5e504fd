"""A canonical helper whose name Postgres prints quoted (`public."authProfileId"`): the emitted contract gate finds
the switch's rewrite calling it, and lets contract's files through (before, it looked for the bare name followed by
a parenthesis, never found `"authProfileId"(`, and refused every correctly switched database)."""

from __future__ import annotations

from _support import cli, cli_json
from test_emit import SCALE, _dsn, _psql


def test_the_emitted_contract_gate_finds_a_quoted_helper(pg15, tmp_path):
    _psql(pg15, "postgres", "-c", "drop database if exists quoted_helper", "-c", "create database quoted_helper")
    dsn = _dsn(pg15, "quoted_helper")
    cli("fixture", "load", "--dsn", dsn, "--scale", SCALE)
    cfg = tmp_path / "pgconverge.toml"
    cfg.write_text("[canonical]\nhelper = 'public.\"authProfileId\"'\n[migration]\nobservation_window = 0\n")
    files = cli_json("emit", str(tmp_path / "project"), "--dsn", dsn, "--config", str(cfg))["migrations"]
    for f in files:  # through contract: its gate files read the switched database the files before them made
        r = _psql(pg15, "quoted_helper", "-c", "set pgconverge.accept_runtime_use = on", "-f", f)
        assert r.returncode == 0, f"{f}:\n{r.stderr}"
    r = _psql(pg15, "quoted_helper", "-Atc", "select to_regclass('public.customers') is null")
    assert r.stdout.strip() == "t", r.stdout + r.stderr  # contracted: the legacy table is archived
