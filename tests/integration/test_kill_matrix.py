"""Kill matrix: the runner SIGKILLed before, inside and after every step of every phase and of the rollback.

Kill points are chosen exactly, not by timing: the PGCONVERGE_KILL_AT hook (execution/killpoint.py) makes
the runner SIGKILL itself at a named point. Points are enumerated from `pgconverge plan --json`:

- forward (`run --all`): every step ``before`` and ``after``, ``commit`` (inside the step's transaction,
  just before COMMIT) for every step that runs in one, and ``batch:k`` in every batched step;
- rollback (`rollback align` from a contracted database): every step ``before``, ``commit`` for every
  transactional step, ``batch:1`` for every batched step, ``after``; and each phase's own rollback from a
  phase finished or killed half-way.

In a chain, each run is killed at the next point and the next run is the same command again, so every run
resumes from the state the previous kill left. At the phase boundaries and at the end the database must be
in the state of an uninterrupted run: verify passes, the mapping is the fixture's truth, the schema is the
same, no row is lost, every row has the same owner. Further cases, each from its own copy: a concurrent
writer (old and new code) while runs are killed, a kill while CREATE INDEX CONCURRENTLY waits (an invalid
index is left and rebuilt), the work connection terminated mid-backfill and mid-policy switch, a lock held
past the retry budget, two runners started at once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from psycopg import errors, sql

from pgconverge.connection import STATEMENT_MARK

from _killer import kill, module_killer, wait_runner_gone
from _support import ReaderAfter, cli, cli_json, linkage_problems, mapping_problems, row_owners, schema_dump, write_config

SMALL = 0.1
CONFIG = "[migration]\nbatch_size = 100\nrls_sample = 5\n"
ACCEPT = ("--accept-code-references", "--accept-runtime-use")
TABLES = ("customers", "profiles", "carts", "cart_items", "orders", "order_items", "order_events", "sessions")
NOT_IN_A_TRANSACTION = {"Check", "Snapshot", "PhoneAudit", "Gates"}  # own executors, no _run_sql commit

EXERCISED: dict[str, int] = {}  # kill points exercised, by test (printed at the end of the module)


def _count(test: str, n: int = 1) -> None:
    EXERCISED[test] = EXERCISED.get(test, 0) + n


@pytest.fixture(scope="module", autouse=True)
def _report_points():
    yield
    total = sum(EXERCISED.values())
    lines = [f"kill matrix: {total} kill points exercised"] + [f"  {k}: {v}" for k, v in EXERCISED.items()]
    print("\n" + "\n".join(lines))
    out = os.environ.get("PGCONVERGE_KILL_MATRIX_REPORT")
    if out:
        with open(out, "w") as f:
            json.dump({"total": total, "by_test": EXERCISED}, f, indent=2)


def _copy(admin_dsn: str, template: str, name: str) -> str:
    from conftest import _create_database

    return _create_database(admin_dsn, name, template)


def _counts(conn) -> dict:
    return {t: conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier("public", t))).fetchone()[0]
            for t in TABLES if conn.execute("select to_regclass(%s)", (f"public.{t}",)).fetchone()[0]}


def _partition(owners: dict) -> dict:
    """Rows grouped by owner (created canonical rows get fresh ids in every run)."""
    out = {}
    for t, rows in owners.items():
        groups: dict = {}
        for row, owner in rows.items():
            groups.setdefault(owner, set()).add(row)
        out[t] = {frozenset(g) for g in groups.values()}
    return out


def _state(dsn: str) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {"schema": schema_dump(conn), "private": _private(conn), "counts": _counts(conn),
                "owners": _partition(row_owners(conn))}


def _private(conn) -> list[str]:
    """The private schema's objects (ledger, mapping, functions): a killed step must leave no stray one.

    Archived tables are named by the time of the run (customers_20260101T000000Z): that part is masked, and so
    is the hash of a definition that names one.
    """
    out = []
    for line in schema_dump(conn, ("pgconverge",)):
        masked = re.sub(r"_\d{8}T\d{6}Z", "_<archived>", line)
        out.append(re.sub(r" [0-9a-f]{32}$", " <md5>", masked) if masked != line else line)
    return sorted(out)


@pytest.fixture(scope="module")
def stages(admin_dsn, template_factory, tmp_path_factory):
    """One template database per phase boundary of an uninterrupted run, and that run's state at each."""
    from conftest import _drop_database

    cfg = write_config(tmp_path_factory.mktemp("stages"), CONFIG)
    start = template_factory(SMALL)
    made, names, states = [], {"start": start}, {}
    work = f"km_work_{os.getpid()}"
    dsn = _copy(admin_dsn, start, work)
    made.append(work)
    states["start"] = _state(dsn)
    for ph in ("align", "expand", "switch", "contract"):
        cli("run", ph, "--dsn", dsn, "--config", cfg, *(ACCEPT if ph == "contract" else ()))
        names[ph] = f"km_{ph}_{os.getpid()}"
        _copy(admin_dsn, work, names[ph])
        made.append(names[ph])
        states[ph] = _state(dsn)
    yield {"names": names, "states": states, "config": cfg}
    for n in made:
        _drop_database(admin_dsn, n)


killer = module_killer()


def _plan(dsn: str, cfg: str, rollback_to: str | None = None) -> list[dict]:
    args = ["plan", "--dsn", dsn, "--config", cfg] + (["--rollback-to", rollback_to] if rollback_to else [])
    return cli_json(*args)["steps"]


def _points(steps: list[dict], *, batches: int, after_every: int = 1) -> list[str]:
    out = []
    for i, s in enumerate(steps):
        out.append(f"{s['id']}:before")
        if s["operation"] == "Batched":
            out += [f"{s['id']}:batch:{k}" for k in range(1, batches + 1)]
        elif s["transactional"] and s["operation"] not in NOT_IN_A_TRANSACTION:
            out.append(f"{s['id']}:commit")
        if i % after_every == 0:
            out.append(f"{s['id']}:after")
    return out


def _last_event(conn, step: str) -> str | None:
    row = conn.execute("select event from pgconverge.events where step = %s and event in ('start', 'done', "
                       "'reverted') order by id desc limit 1", (step,)).fetchone()
    return row[0] if row else None


def _assert_point_state(conn, point: str) -> None:
    step, where = point.split(":", 1)
    event = _last_event(conn, step)
    if where == "after":
        assert event == "done", (point, event)
    else:  # before, inside the transaction, mid-way: never recorded as done
        assert event != "done", (point, event)


def _assert_like(dsn: str, want: dict, *, verify_config: str) -> None:
    got = _state(dsn)
    assert got["schema"] == want["schema"]
    assert got["private"] == want["private"]
    assert got["counts"] == want["counts"]
    assert got["owners"] == want["owners"]
    v = cli_json("verify", "--dsn", dsn, "--config", verify_config)
    assert v["passed"], v


def test_forward_kill_at_every_step_of_every_phase(admin_dsn, stages, killer):
    cfg = stages["config"]
    dsn = _copy(admin_dsn, stages["names"]["start"], f"km_fwd_{os.getpid()}")
    try:
        args = ["run", "--all", *ACCEPT, "--dsn", dsn, "--config", cfg]
        steps = _plan(dsn, cfg)
        assert {s["phase"] for s in steps} == {"align", "expand", "switch", "contract"}
        last_of = {s["phase"]: s["id"] for s in steps}
        points = _points(steps, batches=1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for point in points:
                kill(killer, dsn, args, point)
                _count("forward run --all", 1)
                _assert_point_state(conn, point)
                step, where = point.split(":", 1)
                if step == last_of["align"] and where == "after":
                    assert mapping_problems(conn) == []
                if step == last_of["expand"] and where == "after":
                    assert linkage_problems(conn) == []
                    assert _state(dsn) == stages["states"]["expand"]
                if step == last_of["switch"] and where == "after":
                    assert _state(dsn) == stages["states"]["switch"]
        answer, log = killer.run(args, None)  # the same command, once more, to the end
        assert answer["code"] == 0, log[-3000:]
        _assert_like(dsn, stages["states"]["contract"], verify_config=cfg)
        assert len(points) >= 2 * len(steps)
    finally:
        from conftest import _drop_database
        _drop_database(admin_dsn, f"km_fwd_{os.getpid()}")


def test_rollback_killed_at_every_step_resumes_to_the_original(admin_dsn, stages, killer):
    cfg = stages["config"]
    name = f"km_rb_{os.getpid()}"
    dsn = _copy(admin_dsn, stages["names"]["contract"], name)
    try:
        args = ["rollback", "align", "--dsn", dsn, "--config", cfg]
        steps = _plan(dsn, cfg, rollback_to="align")
        phases = {s["id"].split(".")[1] for s in steps}
        assert phases == {"align", "expand", "switch", "contract"}  # each phase's rollback is in the chain
        points = _points(steps, batches=1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for point in points:
                kill(killer, dsn, args, point)
                _count("rollback align", 1)
                _assert_point_state(conn, point)
        answer, log = killer.run(args, None)
        assert answer["code"] == 0, log[-3000:]
        got = _state(dsn)
        want = stages["states"]["start"]
        assert got["schema"] == want["schema"] and got["counts"] == want["counts"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            original = _copy(admin_dsn, stages["names"]["start"], name + "_orig")
            try:
                with psycopg.connect(original, autocommit=True) as oc:
                    assert row_owners(conn) == row_owners(oc)  # every row back with its own customer, exactly
            finally:
                from conftest import _drop_database
                _drop_database(admin_dsn, name + "_orig")
        # And forward again from there: the rolled-back database migrates like a fresh one.
        cli("run", "--all", *ACCEPT, "--dsn", dsn, "--config", cfg)
        _assert_like(dsn, stages["states"]["contract"], verify_config=cfg)
    finally:
        from conftest import _drop_database
        _drop_database(admin_dsn, name)


@pytest.mark.parametrize("phase, to", [("expand", "expand"), ("switch", "switch"), ("contract", "contract")])
def test_partial_rollback_killed_mid_way(admin_dsn, stages, killer, phase, to, make_db):
    """Each phase's own rollback, killed before one of its steps and inside another's transaction."""
    cfg = stages["config"]
    dsn = make_db(stages["names"][phase])
    args = ["rollback", to, "--dsn", dsn, "--config", cfg]
    steps = [s for s in _plan(dsn, cfg, rollback_to=to) if s["id"].startswith(f"rollback.{phase}.")]
    tx = [s for s in steps if s["transactional"] and s["operation"] not in NOT_IN_A_TRANSACTION]
    points = [f"{steps[len(steps) // 2]['id']}:before", f"{tx[-1]['id']}:commit"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for point in points:
            kill(killer, dsn, args, point)
            _count(f"rollback {to}", 1)
            _assert_point_state(conn, point)
    cli(*args)
    before = {"expand": "align", "switch": "expand", "contract": "switch"}[phase]
    got, want = _state(dsn), stages["states"][before]
    assert got["schema"] == want["schema"] and got["counts"] == want["counts"] and got["owners"] == want["owners"]


def _live_rollback_steps(dsn: str, cfg: str, to: str) -> list[dict]:
    """The rollback steps that will run from the database's state (a step whose forward steps never ran, or never
    committed, is skipped, so none of its kill points is ever reached)."""
    from pathlib import Path

    from pgconverge.cli.migrate import _plan_for
    from pgconverge.execution import prechecks
    from pgconverge.ledger.store import Ledger

    spec, _, plan, _, _ = _plan_for(dsn, Path(cfg), to)
    with psycopg.connect(dsn, autocommit=True) as conn:
        states = Ledger(conn, spec).step_states()
    live = {s.id for s in prechecks.rollback_steps(plan, states)}
    return [s for s in _plan(dsn, cfg, rollback_to=to) if s["id"] in live]


@pytest.mark.parametrize("phase, half", [("expand", "expand.orders.backfill:batch:1"),
                                         ("contract", None)])  # None: after the middle step of its plan
def test_rollback_of_a_half_done_phase_killed_at_every_step(stages, killer, make_db, phase, half):
    """A phase killed half-way, then its rollback killed before and inside every step it runs: the database
    is back where the phase started, and the phase then runs to the state of an uninterrupted run."""
    cfg = stages["config"]
    before = STAGES_BEFORE[phase]
    dsn = make_db(stages["names"][before])
    forward = ["run", phase, *(ACCEPT if phase == "contract" else ()), "--dsn", dsn, "--config", cfg]
    if half is None:
        plan = cli_json("plan", phase, "--dsn", dsn, "--config", cfg)["steps"]
        half = f"{plan[len(plan) // 2]['id']}:after"
    kill(killer, dsn, forward, half)
    _count(f"{phase} half done, then rolled back")
    steps = _live_rollback_steps(dsn, cfg, phase)
    assert steps, "nothing to roll back"
    back = ["rollback", phase, "--dsn", dsn, "--config", cfg]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for point in _points(steps, batches=1):
            kill(killer, dsn, back, point)
            _count(f"{phase} half done, then rolled back")
            _assert_point_state(conn, point)
    answer, log = killer.run(back, None)
    assert answer["code"] == 0, log[-3000:]
    got, want = _state(dsn), stages["states"][before]
    for k in ("schema", "counts", "owners"):
        assert got[k] == want[k], k
    answer, log = killer.run(forward, None)
    assert answer["code"] == 0, log[-3000:]
    _assert_like(dsn, stages["states"][phase], verify_config=cfg)


STAGES_BEFORE = {"expand": "align", "switch": "expand", "contract": "switch"}


def test_backfill_with_several_workers_killed_mid_way(stages, killer, make_db, tmp_path):
    """Three workers on key or page ranges: killed after the k-th batch of any of them (the others die inside theirs),
    again and again, then resumed with one worker: every row filled once, the state of an uninterrupted run."""
    dsn = make_db(stages["names"]["align"])
    three = write_config(tmp_path, "[migration]\nbatch_size = 20\nbackfill_workers = 3\nrls_sample = 5\n")
    args = ["run", "expand", "--dsn", dsn, "--config", three]
    # carts and orders are walked by key, 20 rows a batch: dozens of batches. sessions (uuid key) is walked by
    # pages, a page a batch; a kill may come after two more workers committed theirs, so the resumed run is sure
    # to reach its k-th batch only while pages - k_before - 2 >= k.
    points = [f"expand.{t}.backfill:batch:{k}" for t in ("carts", "orders") for k in (2, 5)]
    points += [f"expand.sessions.backfill:batch:{k}" for k in (1, 3)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        pages = conn.execute("select pg_relation_size('public.sessions') / current_setting('block_size')::int"
                             ).fetchone()[0]
        assert pages >= 1 + 2 + 3, f"sessions has {pages} pages: too few for the kill points below"
        for point in points:
            kill(killer, dsn, args, point)
            _count("backfill with three workers")
            _assert_point_state(conn, point)
        ranges = conn.execute("select count(*) from pgconverge.events where step = 'expand.carts.backfill' "
                              "and event = 'note' and detail ? 'ranges'").fetchone()[0]
        assert ranges >= 1  # the workers really split the table
    answer, log = killer.run(["run", "expand", "--dsn", dsn, "--config", stages["config"]], None)
    assert answer["code"] == 0, log[-3000:]
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert linkage_problems(conn) == []
    _assert_like(dsn, stages["states"]["expand"], verify_config=stages["config"])


# -- a concurrent writer while runs are killed -----------------------------------------------------------------


class Writer:
    """Old code (writes customer_id) and new code (writes profile_id, once that column exists), in turns."""

    def __init__(self, dsn: str, old_code: bool = True):
        self.dsn, self.old_code, self.stop, self.written, self.failures = dsn, old_code, threading.Event(), [], []
        with psycopg.connect(dsn, autocommit=True) as c:
            self.people = [r[0] for r in c.execute("select id from public.customers order by id limit 40")]
            # What new code knows: the profile each customer became (align is done before any writer starts).
            self.profile_of = dict(c.execute("select customer_id, profile_id from pgconverge.legacy_customer_profile"))
        self.thread = threading.Thread(target=self._loop)

    def _loop(self):
        with psycopg.connect(self.dsn, autocommit=True, application_name="app-writer") as c:
            i = 0
            while not self.stop.is_set():
                i += 1
                customer = self.people[i % len(self.people)]
                table = ("carts", "orders", "sessions")[i % 3]
                try:
                    cols = {r[0] for r in c.execute(
                        "select column_name from information_schema.columns where table_schema = 'public' "
                        "and table_name = %s", (table,))}
                    # New code is deployed once expand has put the column and its sync trigger in place.
                    synced = "customer_id" not in cols or c.execute(
                        "select exists (select 1 from pg_trigger where tgrelid = %s::regclass "
                        "and tgname = '!pgconverge_sync')", (f"public.{table}",)).fetchone()[0]
                    profile = self.profile_of[customer] if "profile_id" in cols and synced else None
                    extra = ", total" if table == "orders" else ""
                    value = ", 1" if table == "orders" else ""
                    if profile is not None and (i % 2 or "customer_id" not in cols or not self.old_code):  # new code
                        rid = c.execute(f"insert into public.{table} (profile_id{extra}) values (%s{value}) "
                                        "returning id", (profile,)).fetchone()[0]
                    elif "customer_id" in cols and self.old_code:  # old code
                        rid = c.execute(f"insert into public.{table} (customer_id{extra}) values (%s{value}) "
                                        "returning id", (customer,)).fetchone()[0]
                    else:
                        continue
                    self.written.append((table, str(rid), customer))
                except (errors.UndefinedColumn, errors.UndefinedTable, errors.NotNullViolation):
                    pass  # the column moved under the client: a deployment changes code here, not a data error
                except psycopg.Error as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.stop.wait(0.005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _writes_kept(conn, writer: Writer) -> None:
    """Every write is there, owned by the customer it was written for (through the mapping where needed)."""
    assert writer.failures == []
    assert len(writer.written) > 20
    mapping = writer.profile_of
    for table in ("carts", "orders", "sessions"):
        mine = [(rid, cust) for t, rid, cust in writer.written if t == table]
        cols = {r[0] for r in conn.execute("select column_name from information_schema.columns where "
                                           "table_schema = 'public' and table_name = %s", (table,))}
        got = dict(conn.execute(f"select id::text, profile_id from public.{table} where id::text = any(%s)",
                                ([r for r, _ in mine],)).fetchall())
        assert len(got) == len(mine), f"{table}: {len(mine) - len(got)} writes lost"
        assert all(got[r] == mapping[c] for r, c in mine), f"{table}: a write linked to the wrong profile"
        if "customer_id" in cols:
            legacy = dict(conn.execute(f"select id::text, customer_id from public.{table} where id::text = any(%s)",
                                       ([r for r, _ in mine],)).fetchall())
            # New code's rows get a legacy id back: one of the customers merged into that profile.
            assert all(mapping[legacy[r]] == mapping[c] for r, c in mine), f"{table}: a write lost its legacy owner"


def _spread(steps: list[dict], n: int) -> list[str]:
    """N points spread over STEPS, in plan order: inside the commit where there is one, else before or after."""
    out = []
    for k, i in enumerate(sorted({round(j * (len(steps) - 1) / max(1, n - 1)) for j in range(n)})):
        s = steps[i]
        committed = s["transactional"] and s["operation"] not in NOT_IN_A_TRANSACTION
        out.append(f"{s['id']}:" + ("commit" if committed and k % 2 == 0 else ("after" if k % 2 else "before")))
    return out


@pytest.mark.parametrize("phase", ["expand", "switch", "contract"])
def test_kills_with_old_and_new_code_writing(admin_dsn, stages, killer, make_db, phase):
    cfg = stages["config"]
    before = {"expand": "align", "switch": "expand", "contract": "switch"}[phase]
    dsn = make_db(stages["names"][before])
    args = ["run", phase, *(ACCEPT if phase == "contract" else ()), "--dsn", dsn, "--config", cfg]
    steps = cli_json("plan", phase, "--dsn", dsn, "--config", cfg)["steps"]
    points = _spread(steps, 6)
    points += {"expand": ["expand.carts.backfill:batch:2"],  # mid-backfill, the writer adding rows behind it
               "switch": ["switch.policies:commit"], "contract": []}[phase]
    order = {s["id"]: i for i, s in enumerate(steps)}
    kinds = {"before": 0, "batch": 1, "commit": 2, "after": 3}
    points = sorted(set(points), key=lambda p: (order[p.split(":")[0]], kinds[p.split(":")[1]]))
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Contract comes once old code is gone (its gates look for legacy use): there only new code writes.
        with Writer(dsn, old_code=phase != "contract") as writer:
            for point in points:
                kill(killer, dsn, args, point)
                _count(f"{phase} with a writer", 1)
                _assert_point_state(conn, point)
                time.sleep(0.05)  # let the writer write between runs too
            answer, log = killer.run(args, None)
            assert answer["code"] == 0, log[-3000:]
            time.sleep(0.1)
        assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]
        if phase != "contract":  # (contract archives the mapping; the writer's copy of it is checked below)
            assert linkage_problems(conn) == []
            assert mapping_problems(conn) == []
        _writes_kept(conn, writer)
        want = stages["states"][phase]
        assert schema_dump(conn) == want["schema"]
        grown = _counts(conn)
        for t, n in want["counts"].items():
            extra = sum(1 for w in writer.written if w[0] == t)
            assert grown[t] == n + extra, t


# -- a kill while CREATE INDEX CONCURRENTLY runs --------------------------------------------------------------


def test_killed_while_the_concurrent_index_builds_leaves_an_invalid_index_that_is_rebuilt(
        admin_dsn, stages, killer, make_db):
    cfg = stages["config"]
    dsn = make_db(stages["names"]["align"])
    args = ["run", "expand", "--dsn", dsn, "--config", cfg]
    kill(killer, dsn, args, "expand.carts.index_1:before")
    index = cli_json("plan", "expand", "--dsn", dsn, "--config", cfg)["steps"]
    index = next(s for s in index if s["id"] == "expand.carts.index_1")
    name = re.match(r"create index concurrently (\S+) on ", index["sql"][0], re.I).group(1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # An application transaction that wrote to carts and has not committed: the build waits for it.
        blocker = psycopg.connect(dsn, application_name="app-open-transaction")
        blocker.execute("update public.carts set id = id where false")
        proc = subprocess.Popen([sys.executable, "-m", "pgconverge", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline, backend = time.monotonic() + 60, None
            while backend is None and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stderr.read()
                backend = conn.execute("select pid from pg_stat_activity where state = 'active' and query ilike %s "
                                       "and application_name = 'pgconverge:expand.carts.index_1'",
                                       (STATEMENT_MARK + "create index concurrently%",)).fetchone()
                time.sleep(0.002)
            assert backend, "the index build never showed up"
            os.kill(proc.pid, signal.SIGKILL)  # the runner dies while its build is under way
            proc.wait()
            _count("mid CREATE INDEX CONCURRENTLY")
            # The server ends the orphaned build at its next lock wait timeout; the index it made stays invalid.
            while conn.execute("select count(*) from pg_stat_activity where pid = %s", backend).fetchone()[0]:
                time.sleep(0.01)
        finally:
            blocker.rollback()
            blocker.close()
            if proc.poll() is None:
                proc.kill()
        valid = conn.execute("select indisvalid from pg_index where indexrelid = to_regclass(%s)",
                             (f"public.{name}",)).fetchone()
        assert valid == (False,), valid
        wait_runner_gone(dsn)
        cli(*args)
        assert conn.execute("select indisvalid from pg_index where indexrelid = to_regclass(%s)",
                            (f"public.{name}",)).fetchone() == (True,)
        notes = [m for (m,) in conn.execute("select message from pgconverge.events where event = 'note' "
                                            "and step = 'expand.carts.index_1'")]
        assert any("dropping invalid index" in m for m in notes), notes
        assert schema_dump(conn) == stages["states"]["expand"]["schema"]


def test_index_build_outwaited_by_a_writer_retries_instead_of_failing(admin_dsn, stages, killer, make_db):
    """A build that times out waiting for an open writer leaves an invalid index: the retry drops it first."""
    cfg = stages["config"]
    dsn = make_db(stages["names"]["align"])
    args = ["run", "expand", "--dsn", dsn, "--config", cfg]
    kill(killer, dsn, args, "expand.carts.index_1:before")
    blocker = psycopg.connect(dsn, application_name="app-open-transaction")
    blocker.execute("update public.carts set id = id where false")
    release = threading.Timer(1.0, blocker.rollback)
    release.start()
    try:
        cli(*args)
    finally:
        release.join()
        blocker.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        retries = conn.execute("select count(*) from pgconverge.events where step = 'expand.carts.index_1' "
                               "and event = 'retry'").fetchone()[0]
        assert retries >= 1
        assert schema_dump(conn) == stages["states"]["expand"]["schema"]
        assert conn.execute("select count(*) from pg_index where not indisvalid").fetchone()[0] == 0


# -- the connection dropped, a lock held too long, two runners at once --------------------------------------------


def _terminate_when(conn, application_name: str, proc: subprocess.Popen, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended first: {proc.stderr.read()[-2000:]}"
        n = conn.execute("select count(pg_terminate_backend(pid)) from pg_stat_activity where "
                         "application_name = %s", (application_name,)).fetchone()[0]
        if n:
            return n
        time.sleep(0.005)
    raise AssertionError(f"no backend named {application_name}")


def test_connection_dropped_mid_backfill_fails_clearly_and_resumes(stages, make_db):
    dsn = make_db(stages["names"]["align"])
    slow = os.path.join(os.path.dirname(stages["config"]), "slow.toml")
    with open(slow, "w") as f:
        f.write("[migration]\nbatch_size = 20\nbatch_pause_ms = 10\nrls_sample = 5\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        proc = subprocess.Popen([sys.executable, "-m", "pgconverge", "run", "expand", "--dsn", dsn, "--config", slow],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # Wait for a few batches, then cut the work connection in the middle of the step.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not conn.execute(
                "select count(*) >= 3 from pgconverge.checkpoints where step = 'expand.orders.backfill'").fetchone()[0]:
            time.sleep(0.005)
        _terminate_when(conn, "pgconverge:expand.orders.backfill", proc)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        assert "step expand.orders.backfill failed" in err and "fix:" in err and "Traceback" not in err, err
        assert _last_event(conn, "expand.orders.backfill") == "start"
        half = conn.execute("select count(*) filter (where profile_id is null) from public.orders").fetchone()[0]
        assert half > 0  # really cut mid-way
        out = cli_json("run", "expand", "--dsn", dsn, "--config", slow)
        by = {s["step"]: s for s in out["steps"]}
        assert by["expand.orders.backfill"]["resumed_from"] >= 60  # from its checkpoint, not from scratch
        assert linkage_problems(conn) == []
        assert schema_dump(conn) == stages["states"]["expand"]["schema"]
        assert _counts(conn) == stages["states"]["expand"]["counts"]


def test_connection_dropped_mid_policy_switch_fails_clearly_and_resumes(stages, make_db):
    cfg = stages["config"]
    dsn = make_db(stages["names"]["expand"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        policies = dict(conn.execute("select policyname, qual from pg_policies"))
        # A reader holds sessions: the rewrite's transaction waits and retries for its lock, and is cut then.
        blocker = ReaderAfter(dsn, "switch.settle_helpers", "select count(*) from public.sessions")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "pgconverge", "run", "switch", "--dsn", dsn,
                                     "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not conn.execute(
                    "select exists (select 1 from pgconverge.events where step = 'switch.policies' "
                    "and event = 'retry')").fetchone()[0]:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.005)
            _terminate_when(conn, "pgconverge:switch.policies", proc)
            _, err = proc.communicate(timeout=60)
        finally:
            blocker.close()
        assert proc.returncode == 2, err
        assert "switch.policies" in err and "fix:" in err and "Traceback" not in err, err
        assert dict(conn.execute("select policyname, qual from pg_policies")) == policies  # nothing half-done
        cli("run", "switch", "--dsn", dsn, "--config", cfg)
        assert schema_dump(conn) == stages["states"]["switch"]["schema"]
        assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]


def test_lock_held_past_the_retry_budget_in_the_policy_rewrite(stages, make_db, tmp_path):
    dsn = make_db(stages["names"]["expand"])
    cfg = write_config(tmp_path, "[migration]\nrls_sample = 5\nlock_retries = 3\nlock_timeout_ms = 30\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = schema_dump(conn)
        blocker = ReaderAfter(dsn, "switch.settle_helpers", "select count(*) from public.orders")
        holder = blocker.pid
        try:
            out = cli("run", "switch", "--dsn", dsn, "--config", cfg, expect=2)
        finally:
            blocker.close()
        flat = " ".join(out.split())
        assert "switch.policies could not get its" in flat and f"pid {holder} (app-report" in flat, out
        assert "fix:" in flat and "Traceback" not in out
        # Helpers created before the rewrite stay (they are steps of their own); the policies are untouched.
        assert [d for d in schema_dump(conn) if d.startswith("policy")] == [d for d in before if
                                                                             d.startswith("policy")]
        assert _last_event(conn, "switch.policies") != "done"
    cli("run", "switch", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema_dump(conn) == stages["states"]["switch"]["schema"]


def test_two_runners_started_at_once(stages, make_db):
    dsn = make_db(stages["names"]["align"])
    cfg = os.path.join(os.path.dirname(stages["config"]), "slow2.toml")
    with open(cfg, "w") as f:
        f.write("[migration]\nbatch_size = 20\nbatch_pause_ms = 50\nrls_sample = 5\n")  # about 5 s of backfill
    cmd = [sys.executable, "-m", "pgconverge", "run", "expand", "--dsn", dsn, "--config", cfg]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "another pgconverge runner is working on this database" in loser and "pgconverge:control" in loser
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert linkage_problems(conn) == []
        assert schema_dump(conn) == stages["states"]["expand"]["schema"]
        runs = conn.execute("select count(*) from pgconverge.runs").fetchone()[0]
        assert runs == 2  # align's and the winner's: the loser wrote nothing


def test_killed_during_the_rls_check_the_rewrite_is_checked_again_from_the_original_policies(stages, killer,
                                                                                               make_db):
    """The policy rewrite commits before its equivalence check runs. A run killed in between leaves the rewrite
    recorded as done but not proven: contract refuses it, and the next `run switch` puts the original policies
    back and checks the rewrite against them again (not the new policies against themselves)."""
    cfg = stages["config"]
    dsn = make_db(stages["names"]["expand"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        original = dict(conn.execute("select policyname, qual from pg_policies"))
        kill(killer, dsn, ["run", "switch", "--dsn", dsn, "--config", cfg], "switch.policies:rls_check")
        rewritten = dict(conn.execute("select policyname, qual from pg_policies"))
        assert rewritten != original and _last_event(conn, "switch.policies") == "done"
        assert conn.execute("select detail ->> 'proven' from pgconverge.events where step = 'switch.policies' "
                            "and event = 'done' order by id desc limit 1").fetchone()[0] == "false"
        status = cli_json("status", "--dsn", dsn, "--config", cfg)
        assert next(s for s in status["steps"] if s["step"] == "switch.policies")["state"] == "unproven", status
        out = " ".join(cli("run", "contract", *ACCEPT, "--dsn", dsn, "--config", cfg, "--yes", expect=2).split())
        assert "needs switch finished first" in out and "switch.policies (rewritten, its equivalence check did not " \
            "finish)" in out and "pgconverge run switch" in out, out
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is not None
        cli("run", "switch", "--dsn", dsn, "--config", cfg)
        events = [r[0] for r in conn.execute(
            "select event || coalesce(' ' || (detail ->> 'proven'), '') from pgconverge.events "
            "where step = 'switch.policies' and event in ('done', 'reverted') order by id")]
        assert events == ["done false", "reverted", "done false", "done true"], events
        assert dict(conn.execute("select policyname, qual from pg_policies")) == rewritten
        eq = conn.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                          "order by id desc limit 1").fetchone()[0]
        assert eq["problems"] == [] and eq["rows_seen"] > 0
    assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]
