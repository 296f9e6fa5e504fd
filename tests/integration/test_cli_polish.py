"""The command line as a Postgres engineer expects it: contract asks first on a terminal, help says what is true,
a second runner names the first one's process, the code gate counts what it found, the demo's closing commands
reach its database, long reads say what they read, and run, rollback and verify end with one line saying how it
went and what comes next."""

from __future__ import annotations

import os
import re
import shlex
import socket
from pathlib import Path

import psycopg
from typer.testing import CliRunner

from _support import cli, cli_json, has_private_schema, on_terminal, schema_dump, write_config

SMALL = 0.1
NO_WINDOW = "[migration]\nobservation_window = 0\nrls_sample = 5\n"


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_contract_asks_on_a_terminal_and_every_run_ends_with_a_verdict(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, NO_WINDOW)
    common = ["--dsn", dsn, "--config", cfg]
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = schema_dump(conn)
        # --all asks before its first phase, saying contract will run and what it drops; "n" changes nothing.
        code, seen = on_terminal(["run", "--all", "--accept-code-references", *common], b"n\n")
        flat = _flat(seen)
        assert code == 1 and "nothing was changed" in flat, seen
        assert "run --all runs align, expand, switch, then contract" in flat, seen
        assert re.search(r'archives public\.customers as archive\."?customers_\d{8}T\d{6}Z"?, '
                         r'pgconverge\.legacy_customer_profile as archive\."?legacy_customer_profile_', flat), seen
        assert "drops columns public.carts.customer_id, public.orders.customer_id" in flat, seen
        assert "Run align, expand, switch and contract on" in flat, seen
        assert not has_private_schema(conn) and schema_dump(conn) == before

        # Without a terminal (a script), no question; each phase ends with one line: time, steps, rows, next.
        out = _flat(cli("run", "align", *common))
        assert re.search(r"align finished on .+? in [\d.]+ s: \d+ steps, [\d,]+ legacy rows mapped; next: pgconverge run "
                         r"expand --dsn ", out), out
        # The long reads say what they read: the linkage snapshot and the phone audit.
        assert re.search(r"reading (about [\d,]+ rows of )?public\.carts, (about [\d,]+ rows of )?public\.orders",
                         out), out
        assert re.search(r"read [\d,]+ distinct numbers in [\d.]+ s, compared them with phonenumbers in [\d.]+ s",
                         out), out
        out = _flat(cli("run", "expand", *common))
        assert re.search(r"expand finished on .+? in [\d.]+ s: \d+ steps, [\d,]+ rows backfilled; next: pgconverge "
                         r"run switch", out), out
        out = _flat(cli("verify", *common))
        assert re.search(r"verify passed on .+? in [\d.]+ s: \d+ checks of align, expand; rows judged: align [\d,]+ in 1 "
                         r"table, expand [\d,]+ in \d+ tables; nothing changed", out), out
        out = _flat(cli("run", "switch", *common))
        assert re.search(r"next: pgconverge run contract --dsn .* once the observation window", out), out

        # audit runtime's --fail-on-use exists and does what its help says.
        cli("audit", "runtime", "--fail-on-use", *common)
        with psycopg.connect(dsn, autocommit=True) as app:  # old code writes to the legacy table
            app.execute("insert into public.customers (wa_id) values ('+250788000111')")
            app.execute("select pg_stat_force_next_flush()")
        cli("audit", "runtime", "--fail-on-use", *common, expect=1)

        # The code gate: 75 references in 12 files are counted, the first 20 listed; the fix names --code.
        app_dir = tmp_path / "app"
        app_dir.mkdir()
        for i in range(12):
            n = 7 if i < 3 else 6  # 3 × 7 + 9 × 6 = 75
            (app_dir / f"q{i:02}.sql").write_text("".join(f"select customer_id from public.orders where id = {j};\n"
                                                          for j in range(n)))
        switched = schema_dump(conn, ("public", "archive"))
        out = cli("run", "contract", "--code", str(app_dir), "--accept-runtime-use", *common, expect=2)
        flat = _flat(out)
        assert f"75 references to legacy names in 12 files of {app_dir}; first 20:" in flat, out
        assert len(re.findall(r"q\d\d\.sql:\d+:\d+ ", out)) == 20, out
        assert f"pgconverge audit code {app_dir}` lists them all" in flat, out
        out = _flat(cli("run", "contract", "--accept-runtime-use", *common, expect=2))
        assert "no application code was audited: pass its directory with --code DIR" in out, out
        assert "fix: run contract again with --code DIR" in out, out
        assert schema_dump(conn, ("public", "archive")) == switched

        # `run contract` on a terminal: the summary, then the question; "n" changes nothing.
        code, seen = on_terminal(["run", "contract", "--accept-code-references", "--accept-runtime-use",
                                   *common], b"n\n")
        flat = _flat(seen)
        assert code == 1 and "nothing was changed" in flat and "Run contract on" in flat, seen
        assert "run contract on" in flat and "drops and archives the legacy side" in flat, seen
        assert re.search(r'archive\."?legacy_customer_profile_\d{8}T', flat), seen
        assert "rollback contract" in flat, seen
        assert schema_dump(conn, ("public", "archive")) == switched

        out = _flat(cli("run", "contract", "--accept-code-references", "--accept-runtime-use", *common))
        assert re.search(r"contract finished on .+? in [\d.]+ s: \d+ steps; the legacy side is archived", out), out
        assert "pgconverge rollback contract --dsn" in out, out
        out = _flat(cli("rollback", "contract", *common))
        assert re.search(r"rolled back contract on .+? in [\d.]+ s: \d+ steps undone \(\d+ skipped: never ran\); "
                         r"the database is as it was before contract began \(the legacy columns back at the end "
                         r"of their tables: name the columns in INSERT and COPY\); forward again: pgconverge run "
                         r"contract --dsn", out), out
        assert schema_dump(conn, ("public", "archive")) == switched


def test_a_second_runner_names_the_first_runners_process(make_db, template_factory):
    from pgconverge import config
    from pgconverge.catalog import baseline
    from pgconverge.connection import Target
    from pgconverge.execution.runner import Runner
    from pgconverge.planning import plan as planner

    dsn = make_db(template_factory(SMALL))
    spec = config.Spec()
    with psycopg.connect(dsn, autocommit=True) as conn:
        cats = baseline.load(conn, spec)
    with Runner(Target(dsn, "--dsn"), spec, planner.build(spec, cats), command="run expand", catalogs=cats) as first:
        out = _flat(cli("run", "align", "--dsn", dsn, expect=2))
        backend = first.control.info.backend_pid
    assert "another pgconverge runner is working on this database" in out, out
    assert (f"pgconverge runner (process {os.getpid()} on host {socket.gethostname()}, run #{first.run_id}: "
            f"`run expand`) holds the migration lock from backend pid {backend} (pgconverge:control pid="
            f"{os.getpid()}") in out, out
    assert re.search(r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", out), out

    # A session that is no runner of ours holding the lock is told apart.
    with psycopg.connect(dsn, autocommit=True, application_name="psql") as other:
        other.execute("select pg_advisory_lock(hashtextextended('pgconverge:pgconverge', 0))")
        out = _flat(cli("run", "align", "--dsn", dsn, expect=2))
        assert (f"a session not started by pgconverge holds the migration lock: backend pid "
                f"{other.info.backend_pid} (psql, from ") in out, out

    # The demo's closing commands reach the database they name (not the embedded server's default one).
    from pgconverge.cli.demo import look_further

    lines = look_further(Target(dsn, "embedded"), Path("/nowhere/pgdata"))
    status = shlex.split(next(x for x in lines if " status " in x).split("    #")[0])
    assert status[0] == "pgconverge" and "--dsn" in status and "..." not in lines[0]
    assert cli_json(*status[1:])["target"] == cli_json("status", "--dsn", dsn)["target"]
    assert any("`pgconverge embedded stop`" in x and "keeps running" in x for x in lines)
    cli("embedded", "stop", "--help")


EXTERNAL = {"--status"}  # other tools' options quoted in help: `supabase migration repair --status applied`


def _own_options(command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)}


def test_help_claims_only_options_that_exist():
    from pgconverge.cli import app, cli_command

    root = cli_command()
    commands: dict = {}

    def walk(cmd, path):
        if getattr(cmd, "commands", None):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            commands[path] = cmd
    walk(root, "")
    runner = CliRunner()
    for name, cmd in commands.items():
        text = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"}).output
        # An option the help names is the command's own, or one of a command the help names next to it.
        allowed = _own_options(cmd) | {"--help"} | EXTERNAL
        for other, oc in commands.items():
            if f"pgconverge {other}" in text or f"`{other}`" in text:
                allowed |= _own_options(oc)
        claimed = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))
        assert claimed <= allowed, (name, claimed - allowed)
    run_help = _flat(runner.invoke(app, ["run", "--help"], env={"COLUMNS": "400"}).output)
    assert "Default: every phase" not in run_help and "Required unless --all" in run_help
    bare = runner.invoke(app, ["run"])
    assert bare.exit_code == 2 and "or pass --all" in _flat(bare.output)


def test_a_run_stopped_part_way_says_where_the_phase_stands_in_json(fixture_db, tmp_path):
    """Exit 2 both for a refusal and for a step failing part way: `--json` tells them apart by `progress`."""
    from pgconverge.execution import killpoint

    from _support import cli_json, write_config

    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")
    refused = cli_json("run", "switch", "--dsn", fixture_db, "--config", cfg, expect=2)
    assert "progress" not in refused, refused
    killpoint.fail_at("align.match:before")
    try:
        err = cli_json("run", "align", "--skip-preflight", "--dsn", fixture_db, "--config", cfg, expect=2)
    finally:
        killpoint.fail_at(None)
    p = err["progress"]
    assert p["phase"] == "align" and p["failed_step"] == "align.match" and 0 < p["steps_done"] < p["steps"], err
