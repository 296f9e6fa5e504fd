"""Emitted files in a team's workflow: phase by phase, mixed with `pgconverge run`, read by status/plan/verify,
re-applied after an interrupted index build, rolled back by new forward migrations, and pushed by the Supabase CLI
while old and new application code write."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import test_emit
from _support import wait_disconnected, cli, cli_json, row_owners, schema_dump, write_config
from pgconverge.verify.tokens import act_as

PSQL = "/usr/lib/postgresql/15/bin/psql"
# The PostgreSQL 15 server (conftest.py), which has pgTAP, for the Supabase CLI test.
_dsn15 = test_emit._dsn


def _psql(dsn: str, *args: str, app: str | None = None, wait: bool = True):
    env = {**os.environ, **({"PGAPPNAME": app} if app else {})}
    cmd = [PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _apply(dsn: str, files: list[str]) -> None:
    for f in files:
        r = _psql(dsn, "-f", f)
        assert r.returncode == 0, f"{f}:\n{r.stderr}"


def _versions(out: Path) -> list[str]:
    return sorted(p.name[:14] for p in (out / "supabase" / "migrations").glob("*.sql"))


def _tests(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "supabase" / "tests").rglob("*.sql"))


def _emit(out: Path, dsn: str, cfg: str, *args: str) -> dict:
    before = _versions(out) if out.exists() else []
    data = cli_json("emit", str(out), "--dsn", dsn, "--config", cfg, *args)
    names = [Path(p).name for p in data["migrations"]]
    stamps = [n[:14] for n in names]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    # After every migration already there, and none in the future (unless the latest one there is).
    assert not before or stamps[0] > before[-1], (before[-1:], stamps[:1])
    now = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    assert stamps[-1] <= now or (before and stamps[0] == _plus(before[-1], 1)), (stamps, now)
    return data


def _plus(stamp: str, seconds: int) -> str:
    t = datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(t.timestamp() + seconds, timezone.utc).strftime("%Y%m%d%H%M%S")


def _status(dsn: str, cfg: str) -> dict:
    return cli_json("status", "--dsn", dsn, "--config", cfg)


def test_phase_by_phase_mixed_with_run_then_rolled_back_by_migrations(fixture_db, tmp_path):
    dsn, out = fixture_db, tmp_path / "project"
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        original = schema_dump(conn)

    # align as files: the ledger has every step, so status, plan, verify and `run expand` go on from there.
    data = _emit(out, dsn, cfg, "--phase", "align")
    assert all("_pgconverge_align_" in p or "_batch_procedure" in p for p in data["migrations"])
    _apply(dsn, data["migrations"])
    st = _status(dsn, cfg)
    assert st["phases"] == {"align": "done", "expand": "not started", "switch": "not started",
                            "contract": "not started"}, st["phases"]
    assert st["summary"]["command"].split()[:3] == ["pgconverge", "run", "expand"], st["summary"]
    assert _tests(out) == ["pgconverge_align.test.sql"]
    assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]
    msg = cli("emit", str(out), "--dsn", dsn, "--config", cfg, "--phase", "align", expect=2)
    assert "every step of align as done" in msg
    plan = cli_json("plan", "expand", "--dsn", dsn, "--config", cfg)
    assert plan["steps"] and all(s["phase"] == "expand" for s in plan["steps"])
    ran = cli_json("run", "expand", "--dsn", dsn, "--config", cfg, "--skip-preflight")
    assert {s["step"].split(".")[0] for s in ran["steps"]} == {"expand"}

    # switch as files, planned from the catalogs the files and the runner saved; the file record also says
    # the contract gate's counters were taken.
    data = _emit(out, dsn, cfg, "--phase", "switch")
    assert data["migrations"] and all("_switch_" in p or "_batch_procedure" in p for p in data["migrations"])
    _apply(dsn, data["migrations"])
    st = _status(dsn, cfg)
    assert [st["phases"][p] for p in ("align", "expand", "switch")] == ["done"] * 3, st["phases"]
    assert _tests(out) == ["pgconverge_align.test.sql", "pgconverge_expand.test.sql",
                           "pgconverge_switch_helper.test.sql", "pgconverge_switch_rls.test.sql"]
    assert cli_json("verify", "--rls", "--dsn", dsn, "--config", cfg)["passed"]

    # contract as files: its gates pass in SQL and stand for the runner's gates step.
    data = _emit(out, dsn, cfg, "--phase", "contract")
    _apply(dsn, data["migrations"])
    st = _status(dsn, cfg)
    assert st["summary"]["state"] == "done" and set(st["phases"].values()) == {"done"}, st
    steps = {s["step"]: s["state"] for s in cli_json("status", "--steps", "--dsn", dsn, "--config", cfg)["steps"]}
    assert steps["contract.gates"] == "done" and steps["align.phone_audit"] == "done"
    assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]
    # supabase/tests holds only what holds now (`supabase test db` runs all of it).
    assert _tests(out) == ["pgconverge_contract.test.sql", "pgconverge_contract_rls.test.sql"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is None
        snaps = {n for (n,) in conn.execute("select distinct name from pgconverge.snapshots")}
    assert {"catalog_before_align", "catalog_before_switch", "catalog_before_contract", "counts_after"} <= snaps

    # The rollback as new migrations, after the others: the CLI's history stays true, the ledger says reverted.
    data = _emit(out, dsn, cfg, "--rollback-to", "align")
    assert all("_pgconverge_rollback_to_align_" in p or "_batch_procedure" in p for p in data["migrations"])
    assert not data["rollback"]
    _apply(dsn, data["migrations"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema_dump(conn) == original
    st = _status(dsn, cfg)
    assert st["summary"]["state"] == "rolled back", st["summary"]
    assert _tests(out) == []
    steps = cli_json("status", "--steps", "--dsn", dsn, "--config", cfg)["steps"]
    assert {s["state"] for s in steps if s["step"] in ("align.mapping_table", "expand.carts.add_column",
                                                       "contract.gates")} == {"reverted"}
    # Nothing is left to undo, and `plan` reads the state as before align.
    msg = cli("emit", str(out), "--dsn", dsn, "--config", cfg, "--rollback-to", "align", expect=2)
    assert "nothing to roll back" in msg
    assert cli_json("plan", "align", "--dsn", dsn, "--config", cfg)["steps"][0]["id"] == "align.private_schema"


def _index_file(files: list[str]) -> tuple[int, str]:
    return next((i, f) for i, f in enumerate(files) if "_align_match_index" in f)


def test_interrupted_index_build_is_reapplied_and_gates_say_the_fix(fixture_db, tmp_path):
    """A CREATE INDEX CONCURRENTLY file cancelled mid-build leaves an invalid index; applying it again repairs it."""
    dsn, out = fixture_db, tmp_path / "project"
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")
    files = _emit(out, dsn, cfg, "--phase", "align")["migrations"]
    i, index_file = _index_file(files)
    _apply(dsn, files[:i])
    name = re.search(r"create (?:unique )?index concurrently if not exists (\S+) on (\S+)",
                     Path(index_file).read_text(), re.I)
    index, table = name.group(1), name.group(2)
    with psycopg.connect(dsn, autocommit=True) as writer, psycopg.connect(dsn, autocommit=True) as admin:
        # A writer's open transaction: the build creates its (invalid) index, then waits for the writer.
        writer.execute("begin")
        writer.execute(f"lock table {table} in row exclusive mode")
        build = _psql(dsn, "-f", index_file, app="pgc-build", wait=False)
        for _ in range(200):
            pid = admin.execute("select pid from pg_stat_activity where application_name = 'pgc-build' "
                                "and query ilike 'create%index concurrently%' and wait_event_type = 'Lock'"
                                ).fetchone()
            if pid:
                break
            time.sleep(0.05)
        assert pid, "the index build never waited for the writer"
        admin.execute("select pg_cancel_backend(%s)", pid)
        _, err = build.communicate(timeout=30)
        writer.execute("rollback")
        assert build.returncode != 0 and "canceling statement" in err, err
        assert admin.execute("select not indisvalid from pg_index where indexrelid = to_regclass(%s)",
                             (index,)).fetchone() == (True,)
        steps = {s["step"]: s["state"] for s in cli_json("status", "--steps", "--dsn", dsn, "--config", cfg)["steps"]}
        assert steps["align.match_index"] == "stopped"
        # Applied again, as `supabase db push` would after the failure: the invalid index goes, the build runs.
        r = _psql(dsn, "-f", index_file)
        assert r.returncode == 0 and "dropping the invalid index" in r.stderr, r.stderr
        assert admin.execute("select indisvalid from pg_index where indexrelid = to_regclass(%s)",
                             (index,)).fetchone() == (True,)
        # And once more: a finished build is kept (IF NOT EXISTS), the ledger only gains rows.
        r = _psql(dsn, "-f", index_file)
        assert r.returncode == 0 and "dropping" not in r.stderr, r.stderr
    steps = {s["step"]: s["state"] for s in cli_json("status", "--steps", "--dsn", dsn, "--config", cfg)["steps"]}
    assert steps["align.match_index"] == "done"

    # A gate's failure carries its reason and its fix in the message itself (the Supabase CLI prints no HINT).
    match = next(k for k, f in enumerate(files) if f.endswith("_align_match.sql"))
    _apply(dsn, files[i + 1:match])
    gate = next(f for f in files if "_align_coverage_gate" in f)
    r = _psql(dsn, "-f", gate)  # before the matching ran: legacy rows without a mapping row
    assert r.returncode != 0
    message = next(line for line in r.stderr.splitlines() if "ERROR:" in line)
    assert "gate " in message and ". Fix: " in message, r.stderr


def test_emit_refuses_a_timestamp_before_existing_migrations(fixture_db, tmp_path):
    out = tmp_path / "project"
    (out / "supabase" / "migrations").mkdir(parents=True)
    (out / "supabase" / "migrations" / "20991231235959_later.sql").write_text("select 1;\n")
    msg = cli("emit", str(out), "--dsn", fixture_db, "--phase", "align", "--timestamp", "20250101000000", expect=2)
    assert "is not after the latest migration" in msg and "20991231235959" in msg
    # Without --timestamp the files follow it, even when it is in the future.
    data = cli_json("emit", str(out), "--dsn", fixture_db, "--phase", "align")
    assert Path(data["migrations"][0]).name.startswith("21000101000000_")


SUPABASE_CLI = "2.117.0"  # the version these files are checked with; a registry package, no postinstall download


def _supabase_cli() -> Path:
    """The pinned Supabase CLI, installed once from the npm registry into a cache directory."""
    import shutil

    npm = shutil.which("npm")
    assert npm is not None, "npm is missing: scripts/system-deps.sh installs it (the Supabase CLI comes from npm)"
    cache = Path(os.environ.get("PGCONVERGE_CACHE", Path.home() / ".cache" / "pgconverge")) / f"supabase-{SUPABASE_CLI}"
    binary = cache / "node_modules" / ".bin" / "supabase"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--save-exact",
                            f"supabase@{SUPABASE_CLI}"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0 and binary.exists(), r.stdout + r.stderr
    return binary


def _db_url(dsn: str) -> str:
    """DSN as the URL the Supabase CLI takes (a Unix socket directory goes in ?host=)."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(dsn)
    host = d.get("host", "localhost")
    where = f"localhost:{d.get('port', 5432)}/{d['dbname']}?sslmode=disable"
    if host.startswith("/"):
        where += f"&host={quote(host)}"
    auth = quote(d.get("user", "postgres")) + (f":{quote(d['password'])}" if d.get("password") else "")
    return f"postgres://{auth}@{where}"


def _push(cli_bin: Path, out: Path, dsn: str, expect_failure: bool = False) -> str:
    r = subprocess.run([str(cli_bin), "db", "push", "--db-url", _db_url(dsn), "--yes"], cwd=out, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "DO_NOT_TRACK": "1"})
    assert (r.returncode != 0) == expect_failure, r.stdout + r.stderr
    return r.stdout + r.stderr


CLAIMS = ("customer_id", "profile_id", "app_role")


class _App(threading.Thread):
    """One application client, connected as role authenticated with a token's claims (as PostgREST publishes
    them): opens a cart for its customer in one short transaction after another and reads it back."""

    def __init__(self, dsn: str, code: str, claims: dict, column: str, value):
        super().__init__(daemon=True, name=f"app-{code}")
        self.dsn, self.code = dsn, code
        self.claims, self.column, self.value = claims, column, value
        self.stage = "start"
        self.lock = threading.Lock()  # held during each write: a check holds it to see a still database
        self.stopping = threading.Event()
        self.writes: dict[str, int] = {}  # stage -> carts written and read back
        self.carts: list[str] = []
        self.failures: list[str] = []

    def write(self, conn) -> str:
        with conn.transaction():
            act_as(conn, self.claims, clear=CLAIMS)
            cart = conn.execute(f"insert into public.carts ({self.column}) values (%s) returning id::text",
                                (self.value,)).fetchone()[0]
            seen = conn.execute("select count(*) from public.carts where id = %s::bigint", (cart,)).fetchone()[0]
        assert seen == 1, f"cart {cart} is not visible to its writer"
        return cart

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name=f"app-{self.code}") as conn:
            while not self.stopping.is_set():
                with self.lock:
                    try:
                        self.carts.append(self.write(conn))
                        self.writes[self.stage] = self.writes.get(self.stage, 0) + 1
                    except (psycopg.Error, AssertionError) as exc:
                        self.failures.append(f"{self.code} code during {self.stage}: {exc}")
                self.stopping.wait(0.05)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
        assert not self.is_alive()


def _checks(dsn: str, cfg: str, out: Path, apps: list[_App], done: str) -> None:
    """With the application paused: status and the RLS check pass, and so do the pgTAP tests under supabase/tests."""
    with contextlib.ExitStack() as paused:
        for a in apps:
            paused.enter_context(a.lock)
        st = _status(dsn, cfg)
        assert st["phases"][done] == "done" and st["last_error"] is None, st
        # Ten sampled identities (the default, 50, takes ten seconds a state here; pgTAP checks its own samples).
        verdict = cli_json("verify", "--rls", "--sample", "10", "--dsn", dsn, "--config", cfg)
        assert verdict["passed"], verdict
        tests = _tests(out)
        assert tests, "no pgTAP tests of this state"
        d = conninfo_to_dict(dsn)  # pg_prove takes a database name, not a connection string
        r = subprocess.run(["/usr/bin/pg_prove", "-h", d["host"], "-p", str(d["port"]), "-U", d["user"], "-d",
                            d["dbname"], "-r", "--ext", ".sql", "supabase/tests"], cwd=out, capture_output=True,
                           text=True)
        assert r.returncode == 0 and "All tests successful." in r.stdout, f"after {done}:\n{r.stdout}{r.stderr}"


def test_supabase_db_push_phase_by_phase_with_the_app_running_and_back(pg15, tmp_path, request):
    """The pinned Supabase CLI pushes each phase while old and new application code write, the checks pass after
    every push, contract goes through its gates once old code is gone, and the undo restores every owner."""
    supabase = _supabase_cli()
    # The PostgreSQL 15 server: it has pgTAP (created before the schema is dumped: the emitted
    # tests call its functions unqualified, as `supabase test db` does).
    with psycopg.connect(_dsn15(pg15, "postgres"), autocommit=True) as conn:
        conn.execute("drop database if exists workflow_app")
        conn.execute("create database workflow_app")
    dsn, out = _dsn15(pg15, "workflow_app"), tmp_path / "project"
    cli("fixture", "load", "--dsn", dsn, "--scale", "0.1")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create extension pgtap")
    window = 2.0
    cfg = write_config(tmp_path, f"[migration]\nobservation_window = {window}\nbatch_size = 50\n")  # several batches
    with psycopg.connect(dsn, autocommit=True) as conn:
        original, owners = schema_dump(conn), row_owners(conn)
        # Two customers each alone on their future profile: one with old code's token, one with new code's.
        c_old, c_new = (r[0] for r in conn.execute(
            "select customer_id from fixture_truth.expected_mapping e where expected_profile_id is not null and "
            "(select count(*) from fixture_truth.expected_mapping x where x.expected_profile_id = "
            "e.expected_profile_id) = 1 order by customer_id limit 2"))
    old = _App(dsn, "old", {"app_role": "customer", "customer_id": c_old}, "customer_id", c_old)
    apps = [old]
    request.addfinalizer(lambda: [a.stopping.set() for a in apps])  # should an assertion fail on the way
    old.start()
    new = None
    for phase in ("align", "expand", "switch"):
        data = _emit(out, dsn, cfg, "--phase", phase)
        for a in apps:
            a.stage = phase
        said = _push(supabase, out, dsn)
        assert f"Applying migration {Path(data['migrations'][-1]).name}" in said, said
        for a in apps:
            a.stage = f"after {phase}"
        if phase == "expand":
            # New code is deployed once its column exists: it writes profile_id only, with a token carrying both
            # claims until the switch is pushed (the policies still read the legacy one).
            with psycopg.connect(dsn, autocommit=True) as conn:
                p_new = conn.execute("select profile_id from pgconverge.legacy_customer_profile "
                                     "where customer_id = %s", (c_new,)).fetchone()[0]
            new = _App(dsn, "new", {"app_role": "customer", "customer_id": c_new, "profile_id": str(p_new)},
                       "profile_id", p_new)
            new.stage = "after expand"
            apps.append(new)
            new.start()
        if phase == "switch":
            baseline = Path(data["migrations"][-1]).name
            assert "_switch_runtime_baseline" in baseline, baseline
            new.claims = {"app_role": "customer", "profile_id": str(p_new)}
        _checks(dsn, cfg, out, apps, phase)
    assert _tests(out) == ["pgconverge_align.test.sql", "pgconverge_expand.test.sql",
                           "pgconverge_switch_helper.test.sql", "pgconverge_switch_rls.test.sql"]

    # Contract pushed while old code still writes: its runtime gate refuses, and the CLI's output says why and
    # what to do (it prints the error's message only: no HINT, NOTICE or WARNING).
    data = _emit(out, dsn, cfg, "--phase", "contract")
    gate = next(f for f in data["migrations"] if "_contract_gate_runtime_use" in f)
    assert f"supabase/migrations/{baseline}" in Path(gate).read_text()  # the switch file it needs, named
    said = _push(supabase, out, dsn, expect_failure=True)
    assert "gate runtime use: old code still uses the legacy side" in said and "written with customer_id only" \
           in said and ". Fix: find the callers" in said, said
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is not None

    # Old code is retired: its last deployment stops and the runtime baseline is taken again. Right away the gate
    # waits for the observation window, saying so; once it has passed, contract is pushed, new code still writing.
    old.stop()
    wait_disconnected(dsn, "app-old")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pgconverge.take_runtime_baseline()")
    since = time.monotonic()
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as early:
        conn.execute(Path(gate).read_text())
    message = early.value.diag.message_primary
    assert "under the observation window of 2 s" in message and ". Fix: apply this file again once the window has " \
           "passed" in message, message
    time.sleep(max(0.0, window + 0.3 - (time.monotonic() - since)))
    new.stage = "contract"
    said = _push(supabase, out, dsn)
    assert f"Applying migration {Path(data['migrations'][-1]).name}" in said, said
    new.stage = "after contract"
    _checks(dsn, cfg, out, apps, "contract")
    assert _tests(out) == ["pgconverge_contract.test.sql", "pgconverge_contract_rls.test.sql"]
    assert _status(dsn, cfg)["summary"]["state"] == "done"
    # Old code, were it still deployed, fails now (its column is gone): the reason to stop it first.
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.errors.UndefinedColumn):
        old.write(conn)
    new.stop()
    for a in (old, new):
        assert a.failures == [], a.failures
    assert all(old.writes.get(s, 0) > 0 for s in ("align", "expand", "switch")), old.writes
    assert all(new.writes.get(s, 0) > 0 for s in ("switch", "contract")), new.writes

    # The undo as new migrations, pushed by the CLI: the original linkage and policies are back.
    _emit(out, dsn, cfg, "--rollback-to", "align")
    _push(supabase, out, dsn)
    assert _tests(out) == []
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema_dump(conn) == original
        now = row_owners(conn)
        for t, rows in owners.items():
            assert {k: now[t][k] for k in rows} == rows, t
        # What new code wrote by profile_id only has its customer back.
        assert {now["carts"][k] for k in new.carts} == {str(c_new)}
        # The CLI's history holds every file, the undo included: nothing is pending.
        applied = conn.execute("select count(*) from supabase_migrations.schema_migrations").fetchone()[0]
    assert applied == len(list((out / "supabase" / "migrations").glob("*.sql")))
    assert "up to date" in _push(supabase, out, dsn)
    assert _status(dsn, cfg)["summary"]["state"] == "rolled back"
    assert cli_json("verify", "--rls", "--sample", "10", "--dsn", dsn, "--config", cfg)["passed"]


def test_reverse_files_from_part_way_through_a_phase_refuse_and_rollback_to_finishes(fixture_db, tmp_path):
    """Files applied up to the middle of expand: some of what they did is undone by reverse files of later
    migrations, never applied. Applying the reverse files latest first then stops, at the first one whose
    undo needs such a file, naming it and `--rollback-to`, with that file changing nothing (before, every reverse
    file went through and left the new column, its foreign key and align's created profiles in place, while the
    private schema with the mapping was dropped). `emit --rollback-to align` then finishes the undo. A reverse file
    of a migration never applied refuses too. From the end of a phase the reverse files undo it."""
    dsn, out = fixture_db, tmp_path / "project"
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        original = schema_dump(conn)
        profiles = conn.execute("select count(*) from public.profiles").fetchone()[0]
    migs = sorted(_emit(out, dsn, cfg)["migrations"])  # every phase at once
    downs = {Path(p).name[:14]: str(p) for p in (out / "supabase" / "rollback").glob("*.down.sql")}
    backfill = next(i for i, m in enumerate(migs) if "_expand_" in m and "backfill" in m)
    _apply(dsn, migs[:backfill + 1])
    never = next(d for m in migs[backfill + 1:] if "was never applied" in Path(d := downs[Path(m).name[:14]]).read_text())
    r = _psql(dsn, "-f", never)
    assert r.returncode != 0 and "was never applied: nothing here to undo" in r.stderr, r.stderr
    stopped = None
    for m in reversed(migs[:backfill + 1]):
        r = _psql(dsn, "-f", downs[Path(m).name[:14]])
        if r.returncode != 0:
            stopped = r.stderr
            break
    assert stopped is not None and "is still in place, and " in stopped and "--rollback-to PHASE" in stopped, stopped
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select to_regclass('pgconverge.legacy_customer_profile')").fetchone()[0] is not None
    back = tmp_path / "back"
    import shutil
    shutil.copytree(out, back)
    for p in sorted((back / "supabase" / "migrations").glob("*.sql"))[backfill + 1:]:
        p.unlink()
    _apply(dsn, cli_json("emit", str(back), "--dsn", dsn, "--config", cfg, "--rollback-to", "align")["migrations"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema_dump(conn) == original
        assert conn.execute("select count(*) from public.profiles").fetchone()[0] == profiles
