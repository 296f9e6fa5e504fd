"""Every forward step made to fail, one after the other: the application never notices.

For each phase and each of its steps k, the runner is made to fail at k with a real SQL error (a division by
zero sent in the step's own transaction: the PGCONVERGE_FAIL_AT hook of execution/killpoint.py, set in-process
with killpoint.fail_at): at "commit" for a step that runs in one transaction (its statements ran, its
transaction rolls back), "rls_check" for the policy rewrite (the new policies committed, the equivalence check
failing: the runner puts the old ones back and says so), "batch:2" for a backfill with more than one batch of
rows (the first batch stays committed), "before" otherwise. The phase is then run again, resuming, and fails at
k + 1. The runs go through the Runner that `pgconverge run PHASE` uses, with the plan that command builds at the
phase's start (one CLI process per step would cost several times the walk). After each failure, as
`authenticated` with a real token, one statement per check:

- old code (until the switch is done; it is retired before contract) writes a row with the legacy column only
  and calls the legacy helper;
- new code (deployed once expand is done; its token carries both claims until the switch is done, the canonical
  claim alone after) writes a row with the new column only and calls the canonical helper once the switch
  installed it;
- each reads the dependent table through RLS and sees all of its identity's rows and no other's;
- `status` (its data, and the command itself once a walk) shows step k failed with the error.

Once switch is done, verify passes and every row is linked to its owner as the ground truth says. The fixture
then finishes contract and rolls back to align; each zoo case rolls back to align from the contract left failed
at its last step; either way the application schema is exactly the original.

The fixture, every zoo case that migrates and SHAPES (every dependent-object shape in one schema) are walked.
PGCONVERGE_FAILURE_WALK=fast walks only the zoo cases in FAST (with SHAPES they cover each distinct shape of the
zoo), for a quicker round while working on the runner.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import psycopg
import pytest
from psycopg import sql

from _support import cli, cli_json, linkage_problems, mapping_problems, schema_dump, write_config
from _zoo import Write, ZooRun, build, load, set_token
from pgconverge.cli import standing
from pgconverge.cli.common import target
from pgconverge.cli.migrate import _plan_for
from pgconverge.config import load as load_spec
from pgconverge.execution import killpoint
from pgconverge.execution.runner import Runner, StepFailed
from pgconverge.fixtures.claims import set_claims
from pgconverge.ledger.store import Ledger
from pgconverge.operations.base import Plan, Step
from pgconverge.operations.batched import Batched
from pgconverge.operations.run_sql import RunSql
from test_zoo import CASES, Case

PHASES = ("align", "expand", "switch", "contract")
WINDOW = "observation_window = 0\n"  # contract right after the switch (the runtime audit is accepted)
# One zoo case per distinct shape the fixture does not have (key types, match kinds, helper styles, empty tables,
# partitions, two references in one table, accepted views); the dependent-object shapes are walked together in
# SHAPES below.
FAST = ("keys_text_integer", "partitioned_hash_uuid", "partitioned_range_subpartitioned", "readme_accounts_users",
        "match_multi", "helper_lookup", "helper_other_owner", "helper_wrapper_nested", "empty_legacy",
        "two_references_one_table", "shape_views_accepted")
WALK_ALL = os.environ.get("PGCONVERGE_FAILURE_WALK") != "fast"


@dataclass
class App:
    """One identity of the application and what its old and new code do, as single statements."""

    dsn: str
    table: str  # qualified dependent table
    legacy_col: str
    new_col: str
    legacy_type: str
    canonical_type: str
    legacy_helper: str
    canonical_helper: str
    lk: str  # the identity's legacy key
    mapping: str  # qualified mapping table, its legacy and canonical columns
    mapping_cols: tuple[str, str]
    act: Callable[[psycopg.Connection, dict], None]  # act as `authenticated` with these claims
    old_claims: Callable[["App"], dict]
    new_claims: Callable[["App", bool], dict]  # (app, switched)
    pk: str = "id"
    ck: str | None = None
    record: Callable[[str, str], None] | None = None  # (code, key of the row written)
    truth: Callable[[], list[str]] | None = None  # linkage against the ground truth once switch is done
    extra: dict = field(default_factory=dict)
    conn: psycopg.Connection | None = None  # the application's connection (superuser: it acts as a role)
    checked: set = field(default_factory=set)  # (phase, code, what) checked at least once

    def canonical_key(self, c: psycopg.Connection) -> str | None:
        if c.execute("select to_regclass(%s)", (self.mapping,)).fetchone()[0] is None:
            return None
        row = c.execute(sql.SQL("select {}::text from {} where {}::text = %s").format(
            sql.Identifier(self.mapping_cols[1]), sql.SQL(self.mapping), sql.Identifier(self.mapping_cols[0])),
            (self.lk,)).fetchone()
        return row[0] if row else None

    def owned(self) -> sql.Composable:
        # to_jsonb of the row: the predicate holds whichever of the two columns exists at this point.
        return sql.SQL("(to_jsonb(o) ->> {l} = {lk} or to_jsonb(o) ->> {n} = {ck})").format(
            l=sql.Literal(self.legacy_col), lk=sql.Literal(self.lk), n=sql.Literal(self.new_col),
            ck=sql.Literal(self.ck))


def _columns(c, table: str) -> set[str]:
    schema, name = table.split(".")
    return {r[0] for r in c.execute("select column_name from information_schema.columns "
                                    "where table_schema = %s and table_name = %s", (schema, name))}


def _fn_exists(c, name: str) -> bool:
    return c.execute("select to_regprocedure(%s) is not null", (f"{name}()",)).fetchone()[0]


def _done(c, step: str) -> bool:
    return c.execute("select to_regclass('pgconverge.events') is not null").fetchone()[0] and c.execute(
        "select exists (select 1 from pgconverge.events where step = %s and event = 'done')", (step,)).fetchone()[0]


def app_problems(app: App, phase: str, *, deployed: bool, switched: bool) -> list[str]:
    """What the application cannot do in the current state (empty: everything it does works)."""
    problems: list[str] = []
    if app.conn is None or app.conn.closed:
        app.conn = psycopg.connect(app.dsn, autocommit=True)
    c = app.conn
    if app.ck is None:
        app.ck = app.canonical_key(c)
    cols = _columns(c, app.table)
    old_code = phase in ("align", "expand", "switch") and app.legacy_col in cols
    new_code = deployed and app.new_col in cols and app.ck is not None
    tokens = []
    if old_code:
        tokens.append(("old", app.old_claims(app)))
    if new_code:
        tokens.append(("new", app.new_claims(app, switched)))
    for code, claims in tokens:
        col, key, typ = ((app.legacy_col, app.lk, app.legacy_type) if code == "old"
                         else (app.new_col, app.ck, app.canonical_type))
        helper = app.legacy_helper if code == "old" else app.canonical_helper
        # The canonical helper counts once the switch made it (before, a function of that name may be the
        # application's own); the legacy helper until contract retires it.
        want_helper = _fn_exists(c, helper) and (
            phase != "contract" if code == "old" else switched or _done(c, "switch.canonical_helper"))
        try:
            with c.transaction():
                app.act(c, claims)
                rid = c.execute(sql.SQL("insert into {} ({}) values (%s::{}) returning {}::text").format(
                    sql.SQL(app.table), sql.Identifier(col), sql.SQL(typ), sql.Identifier(app.pk)),
                    (key,)).fetchone()[0]
            if app.record:
                app.record(code, rid)
        except psycopg.Error as exc:
            problems.append(f"{phase}: {code}-code write of {col} = {key}: {exc.sqlstate} {str(exc).strip()}")
        try:
            with c.transaction():
                app.act(c, claims)
                seen, foreign = c.execute(sql.SQL(
                    "select count(*), count(*) filter (where not coalesce({}, false)) from {} o").format(
                    app.owned(), sql.SQL(app.table))).fetchone()
            own = c.execute(sql.SQL("select count(*) from {} o where {}").format(
                sql.SQL(app.table), app.owned())).fetchone()[0]
            if foreign or seen != own or not own:
                problems.append(f"{phase}: {code} token sees {seen} rows of {app.table}, {foreign} of them "
                                f"another identity's; it owns {own}")
        except psycopg.Error as exc:
            problems.append(f"{phase}: {code}-code read of {app.table}: {exc.sqlstate} {str(exc).strip()}")
        app.checked.add((phase, code, "write"))
        app.checked.add((phase, code, "read"))
        if want_helper:
            app.checked.add((phase, code, "helper"))
            try:
                with c.transaction():
                    app.act(c, claims)
                    got = c.execute(sql.SQL("select {}()::text").format(sql.SQL(helper))).fetchone()[0]
                if got != key:
                    problems.append(f"{phase}: {helper}() gives {got} to {code} code, expected {key}")
            except psycopg.Error as exc:
                problems.append(f"{phase}: {code}-code call of {helper}(): {exc.sqlstate} {str(exc).strip()}")
    return problems


def _point(step: Step, conn: psycopg.Connection) -> str:
    """Where to make STEP fail (see the module docstring)."""
    op = step.op
    if op.executor == "policies":
        return "rls_check"
    if isinstance(op, Batched):
        if op.key == "ctid":
            return "before"  # a batch is some pages: a small table is one batch
        rows = conn.execute(sql.SQL("select count(*) from {}").format(sql.SQL(str(op.table)))).fetchone()[0]
        return "batch:2" if rows > op.batch_size else "before"
    return "commit" if op.executor == "sql" and op.transactional else "before"


def _run_failing(runner: Runner, phase: str) -> str:
    """Run PHASE again (resuming, as `pgconverge run PHASE` does) and return the text of its failure."""
    with pytest.raises(StepFailed) as failed:
        runner.run_phase(phase)
    return f"{failed.value.problem} fix: {failed.value.fix}"


def _status(dsn: str, plan_bits) -> dict:
    """What `pgconverge status --json` shows, for the plan already built."""
    spec, t, p, _ = plan_bits
    with psycopg.connect(dsn, autocommit=True) as c:
        return standing.collect(c, spec, p, t, None)


def walk(app: App, args: tuple, *, finish_contract: bool) -> dict:
    """Fail every forward step in turn, checking the application after each; return the points by kind.

    With FINISH_CONTRACT false, contract is left failed at its last step.
    """
    points: dict[str, int] = {}
    problems: list[str] = []
    app.conn = psycopg.connect(app.dsn, autocommit=True)
    cfg = Path(args[args.index("--config") + 1])
    stack = ExitStack()
    try:
        for phase in PHASES:
            if phase == "contract":
                # Everything up to here is done: the database is in the state the switch promises.
                cli("verify", *args)
                if app.truth:
                    assert app.truth() == [], app.truth()
                if app.extra.get("before_contract_sql"):
                    with psycopg.connect(app.dsn, autocommit=True) as c:
                        c.execute(app.extra["before_contract_sql"])
            spec, t, p, cats, _ = _plan_for(app.dsn, cfg)  # as `run PHASE` builds it at the phase's start
            bits = (spec, t, p, cats)
            # One runner for the phase's runs (opening one costs as much as a step): each run_phase resumes from
            # the ledger, as a new command would.
            runner = stack.enter_context(Runner(t, spec, p, command=f"run {phase}", catalogs=cats,
                                                accept=frozenset({"code-references", "runtime-use"})))
            for n, step in enumerate(steps := p.phase(phase)):
                st = step.as_dict()
                point = _point(step, app.conn)
                killpoint.fail_at(f"{st['id']}:{point}")
                out = _run_failing(runner, phase)
                assert f"step {st['id']} failed" in out and "division by zero" in out, out
                if point == "rls_check":  # the rewrite had committed: the failure says it was undone
                    assert f"undone automatically so the application keeps working: {st['id']}" in out, out
                points[point] = points.get(point, 0) + 1
                if phase == "contract" and n == len(steps) - 1:  # the command itself, once (it plans: slow)
                    state = next(s for s in cli_json("status", *args)["steps"] if s["step"] == st["id"])
                else:
                    state = next(s for s in _status(app.dsn, bits)["steps"] if s["step"] == st["id"])
                assert state["state"] == "failed" and "division by zero" in state["error"]["message"], state
                problems += [f"after {st['id']} failed at {point}: {x}"
                             for x in app_problems(app, phase, deployed=phase in ("switch", "contract"),
                                                   switched=phase == "contract")]
            killpoint.fail_at(None)
            if phase == "contract" and not finish_contract:
                break  # left failed at its last step: the caller rolls back from there
            runner.run_phase(phase)
            stack.close()
            # New code is deployed once expand is done; its tokens carry the canonical claim alone after the switch.
            problems += [f"after {phase}: {x}" for x in app_problems(app, phase, deployed=phase != "align",
                                                                     switched=phase in ("switch", "contract"))]
    finally:
        killpoint.fail_at(None)
        stack.close()
        if app.conn is not None:
            app.conn.close()
    assert problems == [], "\n".join(problems)
    # Nothing above proves anything unless it ran: old code in the first three phases, new code from the switch
    # on (its write, its read through RLS and the canonical helper), the legacy helper until contract.
    wanted = {(ph, "old", w) for ph in ("align", "expand", "switch") for w in ("write", "read", "helper")}
    wanted |= {(ph, "new", w) for ph in ("switch", "contract") for w in ("write", "read", "helper")}
    assert wanted <= app.checked, sorted(wanted - app.checked)
    return points


# -- the fixture ---------------------------------------------------------------------------------------------------


# The legacy helper is dropped at contract (not stubbed): the legacy table's own policy, which calls it, goes in
# the same step.
FIXTURE_CONFIG = ('[migration]\nbatch_size = 200\nrls_sample = 2\nlegacy_helper_after_contract = "drop"\n'
                  + WINDOW)


def _fixture_app(dsn: str) -> App:
    with psycopg.connect(dsn, autocommit=True) as c:
        lk = c.execute("""
            select t.customer_id::text from fixture_truth.expected_mapping t
            where exists (select 1 from public.carts x where x.customer_id = t.customer_id)
              and t.expected_profile_id is not null
              and (select count(*) from fixture_truth.expected_mapping t2
                   where t2.expected_group = t.expected_group) = 1
            order by t.customer_id limit 1""").fetchone()[0]

    def truth() -> list[str]:
        with psycopg.connect(dsn, autocommit=True) as c:
            return linkage_problems(c) + mapping_problems(c)

    return App(dsn, "public.carts", "customer_id", "profile_id", "bigint", "uuid", "public.auth_customer_id",
               "public.auth_profile_id", lk, "pgconverge.legacy_customer_profile", ("customer_id", "profile_id"),
               act=lambda conn, claims: set_claims(conn, claims),
               old_claims=lambda a: {"app_role": "customer", "customer_id": int(a.lk)},
               new_claims=lambda a, switched: {"app_role": "customer", "profile_id": a.ck,
                                               **({} if switched else {"customer_id": int(a.lk)})},
               truth=truth)


def test_fixture_every_step_fails_harmlessly(fixture_db, tmp_path):
    """The bundled fixture (three dependents, the claims-JSON helper): every step fails once, harmlessly."""
    args = ("--dsn", fixture_db, "--config", write_config(tmp_path, FIXTURE_CONFIG))
    app = _fixture_app(fixture_db)
    with psycopg.connect(fixture_db, autocommit=True) as c:
        before = schema_dump(c)
    points = walk(app, args, finish_contract=True)
    assert points.get("commit") and points.get("rls_check") == 1 and points.get("batch:2"), points
    cli("verify", *args)
    cli("rollback", "align", *args)
    with psycopg.connect(fixture_db, autocommit=True) as c:
        assert schema_dump(c) == before


# -- the zoo -------------------------------------------------------------------------------------------------------


def _zoo_app(dsn: str, zoo) -> App:
    dep = zoo.dependents[0]
    ltype, ctype = zoo.legacy_key_type, zoo.canonical_key_type
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(sql.SQL("""
            select l.legacy_key from zoo_truth.legacy_person l
            where (select count(*) from zoo_truth.legacy_person l2 where l2.person = l.person) = 1
              and (select count(*) from zoo_truth.canonical_person c2 where c2.person = l.person) <= 1
              and exists (select 1 from {t} o where o.{f}::text = l.legacy_key)
            order by l.legacy_key limit 1""").format(t=sql.SQL(dep.table), f=sql.Identifier(dep.fk))).fetchone()
        if row is None:  # an empty table: old code makes its first row (a new person) and one dependent row
            values = tuple(v.isoformat() if hasattr(v, "isoformat") else v for v in zoo.new_legacy_values(900))
            cols = [*zoo.legacy_match_columns, zoo.name_column, "auth_user_id"]
            lk = c.execute(sql.SQL("insert into {} ({}) values ({}) returning id::text").format(
                sql.SQL(zoo.legacy_table), sql.SQL(", ").join(map(sql.Identifier, cols)),
                sql.SQL(", ").join(sql.Placeholder() * len(cols))),
                (*values, "walker", "00000000-0000-4000-8000-000000000900")).fetchone()[0]
            c.execute("insert into zoo_truth.legacy_person values (%s, 'walker')", (lk,))
            c.execute(sql.SQL("insert into {} ({}) values (%s::{})").format(
                sql.SQL(dep.table), sql.Identifier(dep.fk), sql.SQL(ltype)), (lk,))
        else:
            lk = row[0]
        person = c.execute("select person from zoo_truth.legacy_person where legacy_key = %s", (lk,)).fetchone()[0]
        auth = c.execute(sql.SQL("select auth_user_id::text from {} where id::text = %s").format(
            sql.SQL(zoo.legacy_table)), (lk,)).fetchone()[0]

    def act(conn, claims):
        set_token(conn, zoo, claims)

    run = ZooRun(dsn, zoo)
    writes = _Recorded()
    run.writers.append(writes)

    def record(code: str, key: str) -> None:
        writes.written.append(Write(dep.table, key, person, lk if code == "old" else None, code))

    app = App(dsn, dep.table, dep.fk, zoo.new_of(dep), ltype, ctype, zoo.legacy_helper, zoo.canonical_helper, lk,
              zoo.mapping_table, (zoo.mapping_legacy_column, zoo.new_column), act=act,
              old_claims=lambda a: {"sub": auth, zoo.legacy_claim: a.lk},
              new_claims=lambda a, switched: {"sub": auth, zoo.canonical_claim: a.ck,
                                              **({} if switched else {zoo.legacy_claim: a.lk})},
              pk=dep.pk, record=record, truth=lambda: run.check("switch"))
    app.extra["run"] = run
    return app


class _Recorded:
    """The walk's own writes, as ZooRun's checks expect a writer's."""

    def __init__(self):
        self.written: list[Write] = []
        self.failures: list[str] = []

    def is_alive(self) -> bool:
        return False


# Every shape that migrates, in one schema: one walk covers the steps each of them adds.
SHAPES = Case("shapes_together", dict(shapes=("join_pk", "unique", "check", "partial_unique", "fk_deferrable",
                                              "user_trigger", "self_reference", "expression_index"),
                                      dependents=2))


def _zoo_params():
    cases = [c for c in CASES if c.expect == "migrates" and (WALK_ALL or c.name in FAST)]
    return [pytest.param(c, id=c.name) for c in [*cases, SHAPES]]


@pytest.mark.parametrize("case", _zoo_params())
def test_zoo_every_step_fails_harmlessly(case, make_db, tmp_path):
    """A zoo schema: every step fails once, harmlessly; the rollback from the failed contract restores it."""
    zoo = build(**case.params)
    dsn = make_db()
    load(dsn, zoo)
    config = zoo.config.replace("batch_pause_ms = 20", "batch_pause_ms = 0") + WINDOW  # no pause: the walk is long
    args = ("--dsn", dsn, "--config", write_config(tmp_path, config))
    app = _zoo_app(dsn, zoo)
    with psycopg.connect(dsn, autocommit=True) as c:
        before = schema_dump(c, zoo.app_schemas)
    if zoo.before_contract_sql:
        app.extra["before_contract_sql"] = zoo.before_contract_sql
    points = walk(app, args, finish_contract=False)
    assert points.get("commit") and points.get("before") and points.get("rls_check") == 1, points
    cli("rollback", "align", *args)
    with psycopg.connect(dsn, autocommit=True) as c:
        assert schema_dump(c, zoo.app_schemas) == before
    assert app.extra["run"].check("rollback") == []


# -- the runner's undo of a step that is not safe alone ------------------------------------------------------------


@dataclass(frozen=True)
class _NotSafeAlone(RunSql):
    """A step whose state is unsafe until the next one is done (here: a function nothing else replaces)."""

    safe_alone: ClassVar[bool] = False

    def reverse(self) -> RunSql:
        return RunSql(sql.SQL("drop function public.walk_probe()"), "drop the probe")


def test_failed_step_undoes_the_steps_before_it_that_are_not_safe_alone(empty_db):
    """Step 2 (safe alone) then 3 (not safe alone) done, 4 fails: 3 is undone by its reverse and recorded as
    reverted, 2 stays, the error names what was undone; the same run again does 3 and 4."""
    spec = load_spec(None)
    probe = sql.SQL("create function public.walk_probe() returns int language sql as 'select 1'")
    plan = Plan((
        Step("align.one", "align", RunSql(sql.SQL("create table public.walk_one (id int)"), "table")),
        Step("align.probe", "align", _NotSafeAlone(probe, "probe")),
        Step("align.next", "align", RunSql(sql.SQL("select 1"), "the step that fails")),
    ))
    killpoint.fail_at("align.next:commit")
    try:
        with Runner(target(empty_db), spec, plan) as runner, pytest.raises(StepFailed) as failed:
            runner.run_phase("align")
    finally:
        killpoint.fail_at(None)
    assert "undone automatically so the application keeps working: align.probe;" in failed.value.problem
    assert "align.one" not in failed.value.problem.split("undone automatically")[1]
    with psycopg.connect(empty_db, autocommit=True) as c:
        assert c.execute("select to_regprocedure('public.walk_probe()')").fetchone()[0] is None
        assert c.execute("select to_regclass('public.walk_one')").fetchone()[0] is not None
        states = Ledger(c, spec).step_states()
        assert (states["align.one"].state, states["align.probe"].state) == ("done", "reverted")
    with Runner(target(empty_db), spec, plan) as runner:
        assert [r.status for r in runner.run_phase("align")] == ["skipped", "done", "done"]
    with psycopg.connect(empty_db, autocommit=True) as c:
        assert c.execute("select to_regprocedure('public.walk_probe()')").fetchone()[0] is not None
