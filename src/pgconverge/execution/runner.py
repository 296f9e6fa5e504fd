"""The runner: one at a time, step by step, every attempt written to the ledger, resumable."""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import psycopg
from psycopg import sql

from pgconverge.catalog import baseline
from pgconverge.catalog.introspect import load_catalog
from pgconverge import __version__
from pgconverge.config import Spec
from pgconverge.connection import Target, connect
from pgconverge.errors import CatalogError, PgConvergeError
from pgconverge.execution import (background, batch, gates, interrupt, killpoint, policy_switch, prechecks,
                                  privileges, retry, session)
from pgconverge.execution.locks import describe_blockers, describe_old_snapshots
from pgconverge.execution.throttle import Throttle
from pgconverge.ledger.store import Ledger
from pgconverge.operations.base import PHASES, Cost, Plan, Step, committed
from pgconverge.operations.batched import Batched
from pgconverge.operations.check import Check
from pgconverge.operations.create_index import CreateIndexConcurrently
from pgconverge.operations.replace_policies import LOCK_BUDGET_MS, ReplacePolicies
from pgconverge.operations.snapshot import Snapshot
from pgconverge.planning import contract as contract_plan
from pgconverge.report.checks import table_counts
from pgconverge.verify import installed, invariants

LOCK_NAMESPACE = "pgconverge:"
CONTROL_APP = "pgconverge:control"


# In Runner.accept: roll back although functions of the application reach what the rollback drops.
ACCEPT_FUNCTIONS = "function-references"


class RunnerBusy(PgConvergeError):
    """Another runner holds the migration lock."""


class StepFailed(PgConvergeError):
    """A step failed; the ledger has the details."""


class GateFailed(PgConvergeError):
    """A gate found problems; nothing after it ran."""


class PlanMismatch(PgConvergeError):
    """The ledger says a step ran with different SQL than the plan now has."""


EMPTY = object()  # upper_bound() of a table without rows
API_SCHEMA_CHANNEL = "pgrst"  # PostgREST's default channel (db-channel), Supabase's too


def lock_key(spec: Spec) -> sql.Composable:
    """The advisory lock one runner at a time holds, on its control connection, for its whole life."""
    return sql.SQL("pg_catalog.hashtextextended({}, 0)").format(
        sql.Literal(LOCK_NAMESPACE + spec.migration.private_schema))


def lock_holder(conn: psycopg.Connection, spec: Spec) -> tuple | None:
    """(pid, application_name, client address, backend start) of the session holding the runner's lock, if any."""
    return conn.execute(sql.SQL(
        "select a.pid, a.application_name, coalesce(a.client_addr::text, 'local'), a.backend_start "
        "from pg_locks l join pg_stat_activity a on a.pid = l.pid "
        "where l.locktype = 'advisory' and l.granted and l.objsubid = 1 "
        "and l.database = (select d.oid from pg_catalog.pg_database d "
        "where d.datname = pg_catalog.current_database()) "
        "and ((l.classid::bigint << 32) | l.objid::bigint) = {}").format(lock_key(spec))).fetchone()


def control_application_name() -> str:
    """The control connection's application_name: names the runner's own process, for a second runner's message
    and for pg_stat_activity (the host goes last: Postgres keeps 63 bytes)."""
    return f"{CONTROL_APP} pid={os.getpid()} host={socket.gethostname()}"[:63]


def describe_holder(conn: psycopg.Connection, spec: Spec, holder: tuple) -> str:
    """"pgconverge runner (process 1234 on host X, run #7: `run expand`) holds the migration lock from backend pid
    5678 (…) since …": the runner's process from its ledger run (recorded by the control connection holding the
    lock, so only a run begun since that connection started is its own), else from its application_name."""
    pid, app, client, since = holder
    backend = (f"backend pid {pid} ({app or 'no application_name'}, from {client}) "
               + (f"since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip() if since
                  else "(its start is not visible to this role)"))
    run = None
    ledger = Ledger(conn, spec)
    try:
        if ledger.exists():
            run = conn.execute(sql.SQL("select id, command, client from {} where pid = %s "
                                       "and started_at >= coalesce(%s::timestamptz, '-infinity') "
                                       "order by id desc limit 1").format(ledger.t("runs")), (pid, since)).fetchone()
    except psycopg.Error:
        run = None  # the ledger cannot be read by this role: the session's own description is enough
    named = dict(part.split("=", 1) for part in (app or "").split()[1:] if "=" in part)
    os_pid, host = named.get("pid"), named.get("host")
    if run and run[2] and ":" in run[2]:
        where = run[2].split(" ", 1)[0]  # "host:pid", then (since it is recorded) "pgconverge 0.1.0"
        host, os_pid = where.rsplit(":", 1)
    if not (app or "").startswith(CONTROL_APP) and run is None:
        return f"a session not started by pgconverge holds the migration lock: {backend}"
    said = ([f"process {os_pid}" + (f" on host {host}" if host else "")] if os_pid else []) + \
        ([f"run #{run[0]}: `{run[1]}`"] if run else [])
    return "pgconverge runner " + (f"({', '.join(said)}) " if said else "") + f"holds the migration lock from {backend}"


def take_lock(conn: psycopg.Connection, spec: Spec) -> None:
    """Take the migration lock on CONN for its session, or raise RunnerBusy naming the session that holds it."""
    got = conn.execute(sql.SQL("select pg_try_advisory_lock({})").format(lock_key(spec))).fetchone()[0]
    if got:
        return
    holder = lock_holder(conn, spec)
    raise RunnerBusy(
        "another pgconverge runner is working on this database: "
        + (describe_holder(conn, spec, holder) if holder else "another session holds the migration lock"),
        fix="wait for it to finish (`pgconverge status` shows its progress); if that process is gone, "
            "its lock went with its connection, so simply run again")


@contextmanager
def claimed(target: Target, spec: Spec) -> Iterator[psycopg.Connection]:
    """A control connection holding the migration lock, for a command that changes the database to take before it
    reads anything else (for Runner(control=…)). Reading the catalog waits for the locks on the tables it describes
    (a policy's or a constraint's expression): taken first, the lock refuses a second runner at once, naming the
    first, whatever the first holds or waits for."""
    conn = connect(target, application_name=control_application_name())
    try:
        take_lock(conn, spec)
        yield conn
    finally:
        conn.close()


def upper_bound(conn: psycopg.Connection, op: Batched):
    """OP's last key to visit, read once (None: no bound); EMPTY when the table had no rows to visit.

    Rows written after this are the triggers' job, on an empty table as on any other.
    """
    if op.upper_bound is None:
        return None
    row = conn.execute(op.upper_bound).fetchone()
    return EMPTY if row is None or row[0] is None else row[0]


class Progress(Protocol):
    def step_started(self, step: Step) -> None: ...
    # STATUS: "done"; "proves nothing" (done, but its check compared nothing); "skipped" (already done); "interrupted".
    def step_finished(self, step: Step, status: str, seconds: float) -> None: ...
    def batch(self, step: Step, rows_done: int, total: int, rows_per_s: float) -> None: ...


class NullProgress:
    def step_started(self, step: Step) -> None:
        pass

    def note(self, text: str) -> None:  # optional on a Progress: a line such as "resuming expand: …"
        pass

    def step_finished(self, step: Step, status: str, seconds: float) -> None:
        pass

    def batch(self, step: Step, rows_done: int, total: int, rows_per_s: float) -> None:
        pass


@dataclass
class StepResult:
    step: str
    status: str  # done, skipped
    seconds: float
    attempts: int = 1
    rows: int | None = None
    detail: dict = field(default_factory=dict)


class Runner:
    """Executes plan steps against one database. Use as a context manager."""

    def __init__(self, target: Target, spec: Spec, plan: Plan, *, progress: Progress | None = None,
                 command: str = "run", catalogs: baseline.Catalogs | None = None,
                 accept: frozenset[str] = frozenset(), code_dirs: tuple[str, ...] = (), resume: str | None = None,
                 control: psycopg.Connection | None = None):
        self.target, self.spec, self.plan = target, spec, plan
        self.claimed = control  # a control connection holding the migration lock already (see claimed)
        # SIGINT/SIGTERM stop the run at its next safe point (execution/interrupt.py); RESUME ("resume with:
        # pgconverge run expand …") ends the one line the command then prints.
        self.interrupts = interrupt.Interrupts(hint=resume)
        self.resumed: list[str] = []  # "resuming expand: …" lines, for --json
        # Each phase's catalog is saved before the phase's first change (see catalog/baseline.py).
        self.catalogs = catalogs or baseline.Catalogs()
        self.accept, self.code_dirs = accept, code_dirs  # for the contract gates
        self.progress = progress or NullProgress()
        self.command = command
        self.policy = retry.RetryPolicy(attempts=max(1, spec.migration.lock_retries))
        self.lock_timeout_ms = spec.migration.lock_timeout_ms
        self.undone: list[str] = []  # during a step: what its failure path already put back (see _undo_unsafe)
        self.rls_not_proven: list[str] = []  # RLS checks that proved nothing and went on (gates.COPY_UNREAD)
        # step id → its job, started ahead (see _start_ahead)
        self.jobs: dict[str, background.PhoneAuditJob | background.SnapshotJob] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Runner:
        # The control connection holds the advisory lock for the runner's whole life and writes
        # ledger events outside the work transactions, so failures are recorded even when rolled back.
        self.interrupts.install()
        interrupt.activate(self.interrupts)
        try:
            self.control = self.claimed if self.claimed is not None else connect(
                self.target, application_name=control_application_name())
        except BaseException:
            self.interrupts.uninstall()
            raise
        try:
            if self.claimed is None:
                self._lock()
            # Before anything changes (the ledger included): a role that row level security filters would
            # migrate and check only the rows the policies show it. Refuse, naming the tables and the fix.
            self.preflight()
            roles = {r for (r,) in self.control.execute("select rolname from pg_roles").fetchall()}
            self.ledger = Ledger(self.control, self.spec)
            self.ledger.ensure(roles)
            self.run_id = self.ledger.start_run(self.command)
            self.work = connect(self.target, application_name="pgconverge")
            session.configure(self.work, "pgconverge")
        except BaseException:
            self.control.close()
            self.interrupts.uninstall()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            for job in self.jobs.values():  # a run that stopped before their steps: their work is dropped
                job.stop()
            self.jobs = {}
            for c in (getattr(self, "work", None), self.control):
                if c is not None and not c.closed:
                    c.close()
        finally:
            self.interrupts.uninstall()

    def preflight(self) -> privileges.Verdict:
        """Raise RowSecurityBlocks unless the connected role sees every row of every table the plan touches."""
        cats = [self.catalogs.live, *self.catalogs.saved.values()]
        if not any(cats):  # a runner made without catalogs: read the live one
            try:
                cats = [load_catalog(self.control, self.spec)]
            except CatalogError:
                cats = []  # the configuration does not match the database: planning says so
        return privileges.check_catalogs(self.control, *cats)

    def _lock_key(self) -> sql.Composable:
        return lock_key(self.spec)

    def _lock(self) -> None:
        take_lock(self.control, self.spec)

    # -- plan vs ledger -----------------------------------------------------------------------

    def check_ledger(self, phase: str) -> None:
        states = self.ledger.step_states()
        for step in self.plan.steps:
            st = states.get(step.id)
            if st and st.state == "done" and st.fingerprint and st.fingerprint != step.op.fingerprint():
                raise PlanMismatch(
                    f"step {step.id} already ran with different SQL than the plan now has "
                    f"(ledger {st.fingerprint}, plan {step.op.fingerprint()}): the configuration, the schema or "
                    f"pgconverge itself changed since that run (this is pgconverge {__version__}; the ledger's runs "
                    "name the version of each)",
                    fix="restore the pgconverge.toml used for that run (`pgconverge status --json` shows it), or go on "
                        "with the pgconverge version that ran it, or roll back before "
                        f"{step.phase} with `pgconverge rollback {step.phase}` and run again")
        idx = PHASES.index(phase)
        for earlier in PHASES[:idx]:
            pending = [s.id for s in self.plan.phase(earlier) if states.get(s.id) is None
                       or states[s.id].state != "done"]
            pending += [f"{s.id} (rewritten, its equivalence check did not finish)" for s in self.plan.phase(earlier)
                        if s.op.executor == "policies" and s.id not in pending and self.ledger.unproven(s.id)]
            if pending:
                raise PgConvergeError(f"phase {phase} needs {earlier} finished first; not done: {', '.join(pending)}",
                                      fix=f"run `pgconverge run {earlier}` first")

    # -- execution ----------------------------------------------------------------------------

    def run_phase(self, phase: str) -> list[StepResult]:
        self._take_in()
        self._new_checks_first(phase)
        self.check_ledger(phase)
        states = self.ledger.step_states()
        self._announce_resume(phase, self.plan.phase(phase), lambda s: states[s.id].state if s.id in states else None)
        results = []
        steps = self.plan.phase(phase)
        ran = False  # a step began: the schema may have changed, whatever became of the step
        current = None
        try:
            def finished(step: Step) -> bool:
                st = states.get(step.id)
                return bool(st and st.state == "done" and not (step.op.executor == "policies"
                                                               and self.ledger.unproven(step.id)))

            # Before a step of expand or switch runs (contract's gates do the same before its first drop): not for a
            # phase with nothing left to do, nor once contract began taking the earlier phases' objects away.
            contracting = any(sid.startswith("contract.") and st.state == "done" for sid, st in states.items())
            if phase in ("expand", "switch") and not contracting and not all(map(finished, steps)):
                self._installed_hold(phase)
            for i, step in enumerate(steps):
                st = states.get(step.id)
                if finished(step):
                    results.append(StepResult(step.id, "skipped", 0.0))
                    self.progress.step_finished(step, "skipped", 0.0)
                    continue
                current = step
                self._start_ahead(steps, i, states)
                ran = True
                results.append(self.run_step(step, resuming=bool(st and st.state == "pending")))
        except PgConvergeError as exc:
            # Where the phase stands, for scripts (`--json`): a refusal before the first step leaves it where it was;
            # a step that failed part way leaves the steps before it done, and the same command resumes there.
            if getattr(exc, "progress", None) is None:
                try:
                    now = self.ledger.step_states()
                    done = sum(1 for s in steps if s.id in now and now[s.id].state == "done")
                except psycopg.Error:  # the connection the error came through may be gone: the error comes first
                    done = None
                exc.progress = {"phase": phase, "steps": len(steps), "failed_step": current.id if current else None,
                                "steps_done": done}
            raise
        finally:
            if ran:
                self._reload_api_schema()
        return results

    def _new_checks_first(self, phase: str) -> None:
        """An earlier phase a former pgconverge finished, but for checks this one adds to it (expand.references, say,
        in a ledger written before it existed): checks only read, so they run now, before PHASE, instead of PHASE
        refusing with 'needs expand finished first'. A check that fails stops here, as under `run expand`."""
        states = self.ledger.step_states()
        for earlier in PHASES[:PHASES.index(phase)]:
            steps = self.plan.phase(earlier)
            missing = [s for s in steps if states.get(s.id) is None or states[s.id].state != "done"]
            ran = any(states.get(s.id) is not None and states[s.id].state == "done" for s in steps)
            # Checks alone: a snapshot is of its moment (align's linkage), and taken late it would be of another.
            if missing and ran and all(states.get(s.id) is None and isinstance(s.op, Check) for s in missing):
                note = getattr(self.progress, "note", None)
                if note is not None:
                    note(f"{earlier} was finished without {', '.join(s.id for s in missing)}, which this pgconverge "
                         f"adds to it and which only read: running them first")
                self.run_phase(earlier)
                states = self.ledger.step_states()

    def _take_in(self) -> None:
        """Where expand takes in references the application made since it was planned (planning/expand.py take_in):
        expand's catalog that holds them saved over the ledger's, before any step runs, and expand's done checks
        whose query reads them now sent back, so this run does them again."""
        cats = self.catalogs
        if not cats.taken_in:
            return
        baseline.save(self.ledger, self.run_id, "expand", cats.saved["expand"])
        for sid in cats.send_back:
            self.ledger.event(self.run_id, "expand", sid, "reverted",
                              message=f"to be done again: expand takes in {', '.join(cats.taken_in)}")
        note = getattr(self.progress, "note", None)
        if note is not None:
            note(f"expand takes in {', '.join(cats.taken_in)}, made since it was planned: their steps run now, and "
                 "its checks over every table again")
        cats.taken_in, cats.send_back = (), ()

    def _installed_hold(self, phase: str) -> None:
        """Before PHASE changes anything: what the earlier phases installed (their triggers, expand's NOT NULL,
        keys and indexes) is there and enabled as their plans made it, or the phase refuses."""
        earlier = list(PHASES[:PHASES.index(phase)])
        failed = []
        with self.work.transaction():
            for sid, check in installed.checks(self.plan, earlier):
                rows = self.work.execute(check.query).fetchall()
                if rows:
                    failed.append((sid, check, rows))
        if failed:
            shown = "".join(f"\n  {sid}: {check.failure}" + "".join(
                "\n    " + " — ".join(str(x) for x in r if x) for r in rows) for sid, check, rows in failed)
            raise GateFailed(f"{phase} is blocked, nothing was changed —{shown}",
                             fix=" / ".join(dict.fromkeys(check.fix for _, check, _ in failed)))

    def _reload_api_schema(self) -> None:
        """Tell PostgREST (Supabase's data API) to read the schema again, after a phase or a rollback that ran a
        step: its cache of columns and functions is what new code's requests are checked against (a row with
        profile_id after expand, auth_profile_id() after the switch), and what old code's inserts still name
        after contract. Supabase projects also do this from an event trigger; a server without a listener on
        the channel ignores it. Never fails the run."""
        try:
            self.control.execute("select pg_catalog.pg_notify(%s, %s)", (API_SCHEMA_CHANNEL, "reload schema"))
        except psycopg.Error:
            pass

    def _start_ahead(self, steps: list[Step], i: int, states: dict) -> None:
        """Before STEPS[i]: start the later read-only steps that may run beside it (an op with `after`, once that
        step is behind), so that their own turn only collects the result (execution/background.py)."""
        names = [s.id for s in steps]
        ready = []
        for later in steps[i + 1:]:
            after = getattr(later.op, "after", "")
            if (later.op.executor not in ("phone_audit", "sql") or later.id in self.jobs or not after
                    or after not in names or names.index(after) >= i):
                continue
            st = states.get(later.id)
            if not (st and st.state == "done"):
                ready.append(later)
        note = getattr(self.progress, "note", None)
        # The audit first: its worker processes are forked before any other job's thread exists.
        for later in sorted(ready, key=lambda s: s.op.executor != "phone_audit"):
            if later.op.executor == "phone_audit":
                estimate = self.work.execute("select greatest(reltuples, 0)::bigint from pg_class "
                                             "where oid = %s::regclass", (str(later.op.table),)).fetchone()[0]
                job = background.PhoneAuditJob(self.target, later, self.interrupts.event(), estimate=estimate)
                said = (f"it compares the distinct {later.op.table}.{later.op.column} values with phonenumbers "
                        "in Python")
            else:
                job = background.SnapshotJob(self.target, later, lock_timeout_ms=self.lock_timeout_ms)
                said = f"{self._reading(later) or later.op.description}, committed at its own turn"
            job.start()
            self.jobs[later.id] = job
            if note is not None:
                note(f"  {later.id} starts now, beside the steps before it: {said}")

    def run_rollback(self, rollback: Plan, *, to: str) -> list[StepResult]:
        """Undo forward steps that are done (or half done), latest first; skip what was never done."""
        try:
            results = self._rollback_steps(rollback)
        finally:
            self._reload_api_schema()
        baseline.discard(self.ledger, self.run_id, list(PHASES[PHASES.index(to):]))
        return results

    def _rollback_steps(self, rollback: Plan) -> list[StepResult]:
        at_start = self.ledger.step_states()

        def state(step: Step) -> str | None:  # "done" only when done since the forward steps it undoes last started
            own = at_start.get(step.id)
            if own is None or own.state != "done":
                return own.state if own else None
            latest_forward = self.ledger.latest_start({r.split(".", 1)[0] for r in step.needs})
            return "done" if latest_forward is not None and own.at > latest_forward else None
        undoing = [s for s in rollback.steps if state(s) in ("done", "pending") or s.live(at_start)
                   or s.never_committed(at_start)]
        # Before the first change: nothing the rollback did not make may depend on what it drops.
        prechecks.rollback_blockers(self.control, prechecks.rollback_steps(rollback, at_start), self.spec,
                                    accept_functions=ACCEPT_FUNCTIONS in self.accept)
        self._announce_resume("rollback", undoing, state)
        results = []
        for step in rollback.steps:
            states = self.ledger.step_states()
            # What it undoes may be in place: a forward step done, or begun and not all or nothing (a batched fill,
            # a concurrent index build). One of one transaction that never committed left nothing to undo.
            live = step.live(states)
            if not live and not step.never_committed(states):
                results.append(StepResult(step.id, "skipped", 0.0))
                self.progress.step_finished(step, "skipped", 0.0)
                continue
            own = states.get(step.id)
            # A forward step of the same phase started since: a forward run came between (and may have undone
            # what this rollback step did, dropping a column with the key it restored), so it runs again.
            latest_forward = self.ledger.latest_start({r.split(".", 1)[0] for r in step.needs})
            if own and own.state == "done" and latest_forward is not None and own.at > latest_forward:
                # Done by this rollback, which was killed before a later step marked the forward steps undone
                # (several rollback steps can follow one forward step): repeating it would fail or double it.
                results.append(StepResult(step.id, "skipped", 0.0))
                self.progress.step_finished(step, "skipped", 0.0)
                continue
            if step.nothing_to_undo(states):
                # The forward steps it undoes failed or were stopped before they committed: recorded (the gates and
                # snapshots it reverts run again on the next run) without undoing what never happened.
                never = step.never_committed(states)
                with self.control.transaction():
                    self._done(step, 1, [], conn=self.control,
                               note=f"nothing to undo: {', '.join(never) or 'its forward step'} never committed")
                results.append(StepResult(step.id, "skipped", 0.0))
                self.progress.step_finished(step, "skipped", 0.0)
                continue
            results.append(self.run_step(step, resuming=bool(own and own.state == "pending")))
        # Forward steps still started and never done that left nothing behind (stopped before their COMMIT, or only
        # reading): nothing was there to undo, and they are recorded undone, so the phases read as rolled back.
        states = self.ledger.step_states()
        never = [r for r in dict.fromkeys(r for s in rollback.steps for r in s.leave_nothing)
                 if states.get(r) is not None and states[r].state == "pending" and not committed(states[r])]
        if never:
            with self.control.transaction():
                for r in never:
                    self.ledger.event(self.run_id, r.split(".", 1)[0], r, "reverted",
                                      message="nothing to undo: it was stopped before it committed")
        return results

    def _say_reading(self, step: Step) -> None:
        """Before a step that reads whole tables in one statement (a linkage snapshot, the phone audit), one line
        saying what it reads, from the planner's row estimates: such a step shows no bar, and may take a while."""
        note = getattr(self.progress, "note", None)
        if note is None or step.id in self.jobs:  # started ahead: its note came then
            return
        reading = self._reading(step)
        if reading:
            note(f"  {reading}…")

    def _reading(self, step: Step) -> str | None:
        """What STEP reads ("reading about 600,000 rows of public.carts, …") when it reads whole tables, else None."""
        op = step.op
        if getattr(op, "reads_tables", False):
            try:  # the dependents: what every snapshot of row owners reads
                cat = self.catalogs.for_phase(step.phase) if step.phase in PHASES else self.catalogs.current
            except (CatalogError, ValueError):
                return None
            tables = list(dict.fromkeys(str(d.table.name) for d in cat.dependents))
            what = ""
        elif op.executor == "phone_audit":
            tables, what = [str(op.table)], f" (the distinct {op.column} values, each compared with phonenumbers)"
        else:
            return None
        if not tables:
            return None
        try:  # pg_class's estimates, partitions summed: no scan
            rows = dict(self.control.execute(
                "select t, (select coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint from pg_class c where c.oid in "
                "(select t::regclass union select relid from pg_partition_tree(t::regclass)) and c.relkind <> 'p') "
                "from unnest(%s::text[]) t", (tables,)).fetchall())
        except psycopg.Error:
            rows = {}
        about = {t: round(n, 2 - len(str(n))) if n >= 100 else n for t, n in rows.items()}  # two digits: estimates
        parts = [(f"about {about[t]:,} rows of " if about.get(t) else "") + t for t in tables]
        return f"reading {', '.join(parts)}{what}"

    def _announce_resume(self, name: str, steps: list[Step], state) -> None:
        """Say so when a command picks up where an earlier one stopped: "resuming expand: 5 of 12 steps done,
        expand.carts.backfill from row 12,000" (STATE(step): "done", "pending" — started, never finished — or else)."""
        done = sum(state(s) == "done" for s in steps)
        pending = next((s for s in steps if state(s) == "pending"), None)
        if pending is None and not 0 < done < len(steps):
            return
        text = f"resuming {name}: {done} of {len(steps)} steps done"
        if pending is not None:
            text += (f", {pending.id} from row {self.ledger.rows_done(pending.id):,}"
                     if pending.op.executor == "batched" else f", {pending.id} again")
        else:
            text += f", next: {next(s for s in steps if state(s) != 'done').id}"
        self.resumed.append(text)
        note = getattr(self.progress, "note", None)
        if note is not None:
            note(text)

    def run_step(self, step: Step, *, resuming: bool = False) -> StepResult:
        if self.interrupts.requested:  # between two steps: the safest point there is
            raise self._interrupted(step, self.interrupts.stop(f"before {step.id} started", step=step,
                                                               stopped="before"), None)
        killpoint.reached(step.id, "before")
        if step.phase in PHASES and step.phase not in self.catalogs.saved and self.catalogs.live is not None:
            baseline.save(self.ledger, self.run_id, step.phase, self.catalogs.live)
            self.catalogs.saved[step.phase] = self.catalogs.live
        self.progress.step_started(step)
        self._say_reading(step)
        self.undone = []
        started = time.monotonic()
        self.ledger.event(self.run_id, step.phase, step.id, "start", fingerprint=step.op.fingerprint(),
                          detail={"fresh": not resuming, "lock": str(step.op.lock), "cost": str(step.op.cost)})
        session.configure(self.work, f"pgconverge:{step.id}")
        executor = {"sql": self._run_sql, "index": self._run_index, "batched": self._run_batched,
                    "check": self._run_check, "snapshot": self._run_snapshot,
                    "policies": lambda st, res: policy_switch.run(self, st, res),
                    "phone_audit": self._run_phone_audit,
                    "gates": lambda st, res: gates.run(self, st, res)}[step.op.executor]
        try:
            killpoint.fail(step.id, "before", self.work)
            result = executor(step, resuming)
        except interrupt.Interrupted as exc:  # stopped at a safe point inside the step
            raise self._interrupted(step, exc, started) from None
        except interrupt.Abort:  # a second signal: the statement in flight was cancelled, its transaction rolled back
            raise self._interrupted(step, self.interrupts.stop(f"during {step.id}", step=step, stopped="abort"),
                                    started) from None
        except (retry.RetriesExhausted, psycopg.Error) as exc:
            last = exc.last if isinstance(exc, retry.RetriesExhausted) else exc
            state = getattr(last, "sqlstate", None)
            self.ledger.event(self.run_id, step.phase, step.id, "error", sqlstate=state, message=str(last).strip(),
                              duration_ms=(time.monotonic() - started) * 1000)
            failure = self._failure(step, exc, last)
            self._undo_unsafe(step, failure)
            raise failure from exc
        except PgConvergeError as exc:  # a gate or a check: recorded (status shows it failed) unless the executor did
            try:
                if self.ledger.last_outcome(step.id) != "error":
                    self.ledger.event(self.run_id, step.phase, step.id, "error", message=exc.problem,
                                      duration_ms=(time.monotonic() - started) * 1000)
            except psycopg.Error:
                pass  # the ledger is out of reach: the error is printed all the same
            self._undo_unsafe(step, exc)
            raise
        result.seconds = time.monotonic() - started
        killpoint.reached(step.id, "after")
        # A check that compared nothing (its tables empty, say) finished, but proves nothing: not shown as a plain pass.
        self.progress.step_finished(step, "proves nothing" if result.detail.get("proves_nothing") else "done",
                                    result.seconds)
        return result

    def _interrupted(self, step: Step, exc: interrupt.Interrupted, started: float | None) -> interrupt.Interrupted:
        """Record where a signal stopped STEP (an `interrupted` event) and return EXC, ready to print."""
        exc.step, exc.phase, exc.hint = step.id, step.phase, self.interrupts.hint
        try:
            with self.interrupts.shielded():
                if exc.detail.get("stopped") == "abort":
                    if step.op.executor == "batched":  # the batch in flight rolled back; the checkpoints say how far
                        exc.detail["rows_done"] = self.ledger.rows_done(step.id)
                        exc.where += f" after {interrupt.rows(exc.detail['rows_done'])}"
                    exc.where += " (at once: the statement in flight was cancelled and rolled back)"
                    exc.problem = f"interrupted {exc.where}"
                self.ledger.event(self.run_id, step.phase, step.id, "interrupted", message=exc.problem,
                                  duration_ms=None if started is None else (time.monotonic() - started) * 1000,
                                  detail={"signal": interrupt.signal_name(exc.signum), **exc.detail})
        except psycopg.Error:
            pass  # the ledger could not take it (the connection went with the abort): the line is printed all the same
        self.progress.step_finished(step, "interrupted", 0.0 if started is None else time.monotonic() - started)
        return exc

    def _undo_unsafe(self, step: Step, failure: PgConvergeError) -> None:
        """STEP failed: undo, latest first, the phase's done steps before it that are not safe alone.

        The state "these steps done, the next not done" is one the application may not work in (see
        Operation.safe_alone). Each is undone by its reverse, recorded as `reverted`, and FAILURE says which,
        so a resumed run does them again. The walk stops at the first step that is safe alone.
        """
        undone = list(self.undone)
        try:
            states = self.ledger.step_states() if step.phase in PHASES else {}
        except psycopg.Error:  # the ledger is out of reach (the connection went): the error is printed as it is
            states = {}
        if states:
            steps = self.plan.phase(step.phase)
            for prev in reversed(steps[:steps.index(step)]):
                st = states.get(prev.id)
                back = prev.op.reverse()
                if st is None or st.state != "done" or prev.op.safe_alone or back is None or back.executor != "sql":
                    break
                try:
                    with self.interrupts.shielded():
                        if back.executor == "sql" and back.transactional:
                            def attempt(n: int) -> None:
                                out = session.Collected()
                                for s in back.statements():
                                    out.execute(s)
                                session.at_once(self.work, out, lock_timeout_ms=self.lock_timeout_ms)
                            retry.run(attempt, self.policy)
                        else:
                            self._plain(back.statements())
                except (retry.RetriesExhausted, psycopg.Error) as exc:
                    last = exc.last if isinstance(exc, retry.RetriesExhausted) else exc
                    failure.problem += (f"; {prev.id}, which is not safe without {step.id}, could not be undone "
                                        f"({str(last).strip()}): resume or roll back the phase soon")
                    return
                self.ledger.event(self.run_id, prev.phase, prev.id, "reverted",
                                  message=f"undone because {step.id} failed and {prev.id} is not safe without "
                                          "the steps after it", sql=";\n".join(back.sql_text()))
                undone.append(prev.id)
        if undone:
            failure.problem += (f"; undone automatically so the application keeps working: {', '.join(undone)}; "
                                f"run the same command again to resume {step.phase}")

    def _failure(self, step: Step, exc: Exception, last: psycopg.Error) -> StepFailed:
        if isinstance(exc, retry.RetriesExhausted):
            # A step over several tables (the policy rewrite) names each; lock_target joins them for display.
            batched = step.op.executor == "batched"
            # A concurrent index build waits for every transaction older than it, whatever lock that holds.
            mode = None if step.op.executor == "index" else str(step.op.lock)
            blockers = describe_blockers(self.control, tuple(getattr(step.op, "tables", ())) or step.op.lock_target,
                                         mode, rows=batched)
            if batched:  # a batch waits for rows an application transaction holds, not for the table
                return StepFailed(
                    f"step {step.id} could not lock the rows of its next batch on {step.op.lock_target} within "
                    f"{self.lock_timeout_ms} ms in {exc.attempts} attempts; the batches before it are kept, and the "
                    f"same command goes on from there. {blockers}",
                    fix="let the transaction holding those rows finish (or end it), then run the same command again"
                        + self._wait_longer())
            if step.op.executor == "index":
                return self._index_failure(step, exc, blockers)
            # The policy rewrite shares one budget out among its tables (operations/replace_policies.py).
            within = (f"{step.op.per_table_ms} ms a table ({step.op.lock_budget_ms} ms for all "
                      f"{len(step.op.tables)}: migration.lock_timeout_ms, or {LOCK_BUDGET_MS} ms where that is less)"
                      if isinstance(step.op, ReplacePolicies) else f"{self.lock_timeout_ms} ms")
            return StepFailed(
                f"step {step.id} could not get its {step.op.lock} lock on {step.op.lock_target or 'its objects'} "
                f"within {within} in {exc.attempts} attempts; nothing was changed by this step. "
                f"{blockers}",
                fix="let the blocking transaction finish (or end it), then run the same command again"
                    + self._wait_longer())
        if privileges.refusal(last):
            # row_security is off in every pgconverge session: a policy that would have hidden rows from this
            # role made Postgres refuse the statement (its transaction rolled back) instead of filtering it.
            why = privileges.explain(self.control, privileges.tables_of(
                self.catalogs.live, *self.catalogs.saved.values()), last, f"step {step.id}")
            return StepFailed(why.problem, fix=f"{why.fix}; then run the same command again — finished steps "
                                               "are not repeated")
        if step.op.executor == "policies" and "invalid snapshot identifier" in str(last):
            return StepFailed(
                f"step {step.id} failed: the session holding the snapshot the RLS equivalence check reads "
                "(application_name pgconverge:rls-snapshot) ended before the check could read from it: it was "
                f"terminated, or its connection was lost ({str(last).strip()}); the policies were not left "
                "rewritten (a rewrite its check did not prove is undone)",
                fix="run the same command again; if something ends sessions that look idle (a script calling "
                    "pg_terminate_backend, a pooler's or the server's idle timeout), keep it off pgconverge's "
                    "sessions (application_name pgconverge:…) while the switch runs")
        if last.sqlstate == "25P03":  # idle_in_transaction_session_timeout: the server ended the work session
            return StepFailed(
                f"step {step.id} failed: the server ended its session ({str(last).strip()}): this process stood still "
                "inside the step's open transaction for longer than the transaction allows (a paused machine, a "
                "stopped or starved process), so its locks stopped holding up the application; nothing of the step "
                "was committed",
                fix="run the same command again — finished steps are not repeated")
        hint = (getattr(last.diag, "message_hint", None) or "").strip()
        hint = "" if hint in str(last) else hint  # said once: the message may carry it already
        if last.sqlstate == "53200":  # out of shared memory: the lock table is full
            return StepFailed(
                f"step {step.id} failed: {str(last).strip()} (SQLSTATE 53200)"
                + (f"; HINT: {hint}" if hint else "") + ": the server's lock table is full (a step locks every "
                "partition and index of the tables it changes, and its transaction holds them to its end)",
                fix="raise max_locks_per_transaction (a restart), or run when fewer sessions hold locks; then run "
                    "the same command again — finished steps are not repeated")
        return StepFailed(f"step {step.id} failed: {str(last).strip()} (SQLSTATE {last.sqlstate})"
                          + (f"; HINT: {hint}" if hint else ""),
                          fix="see `pgconverge status` for the ledger entry; fix the cause and run again — "
                              "finished steps are not repeated")

    def _wait_longer(self) -> str:
        """The end of a lock failure's fix: more attempts, or longer ones. Each attempt waits lock_timeout_ms; where
        the application's own transactions each last longer than that (policies that call functions per row, say),
        no number of attempts outwaits one of them."""
        return ("; raise migration.lock_retries to wait longer, or migration.lock_timeout_ms (now "
                f"{self.lock_timeout_ms} ms) where the application's transactions each last longer than that: "
                "more attempts of the same length never outwait one of them")

    def _index_failure(self, step: Step, exc: Exception, blockers: str) -> StepFailed:
        """A concurrent build outwaited: by a lock on the table, or by an older transaction's snapshot (a wait
        on its virtualxid, which holds no lock on the table). Name both kinds, and the invalid index left behind."""
        op: CreateIndexConcurrently = step.op  # type: ignore[assignment]
        snapshots = describe_old_snapshots(self.control, self.lock_timeout_ms)
        try:
            invalid = bool(self.control.execute(op.invalid_probe()).fetchone()[0])
        except psycopg.Error:
            invalid = False
        if snapshots and blockers.startswith("No session holds"):
            blockers = "No session holds a lock on the table now."
        left = (f"; it left the index {op.name} INVALID (unused by queries, it only costs writes): the next run drops "
                "it and builds it again" if invalid else "; nothing was changed by this step")
        return StepFailed(
            f"step {step.id} could not build its index on {step.op.lock_target or 'its table'} within "
            f"{self.lock_timeout_ms} ms in {exc.attempts} attempts{left}. {blockers}"
            + (f" {snapshots}" if snapshots else ""),
            fix=("end those transactions (pg_terminate_backend(pid)) or let them finish, then run the same command "
                 "again" if snapshots else "let the blocking transaction finish (or end it), then run the same "
                 "command again") + self._wait_longer())

    def _on_retry(self, step: Step):
        def note(attempt: int, exc: psycopg.Error, pause: float) -> None:
            self.ledger.event(self.run_id, step.phase, step.id, "retry", attempt=attempt, sqlstate=exc.sqlstate,
                              message=str(exc).strip(), detail={"pause_s": round(pause, 3)})
            # Between two attempts nothing of the step is held or applied: a safe point.
            self.interrupts.check(f"during {step.id} while waiting to retry its lock", step=step, stopped="retry")
        return note

    def _run_sql(self, step: Step, resuming: bool, **done_detail) -> StepResult:
        statements = step.op.statements()
        texts = step.op.sql_text()
        job = self.jobs.pop(step.id, None)
        if job is not None:  # started ahead (a snapshot): commit it with the done record
            t0 = time.monotonic()

            def record(conn: psycopg.Connection) -> None:
                for kind, name, text in step.op.saved():
                    self.ledger.save_definition(self.run_id, step.id, kind, name, text, conn=conn)
                self._done(step, 1, texts, conn=conn, **done_detail, seconds=round(job.seconds or 0.0, 2),
                           waited_s=round(time.monotonic() - t0, 2))
                killpoint.reached(step.id, "commit")
                killpoint.fail(step.id, "commit", conn)

            try:
                why = job.commit(record, lambda: self.interrupts.check(
                    f"during {step.id} (nothing of it is committed; it runs again on resume)", step=step,
                    stopped="snapshot"))
            finally:
                job.stop()
            if why is None:
                return StepResult(step.id, "done", 0.0, attempts=1)
            self.ledger.event(self.run_id, step.phase, step.id, "note", message=f"run in place: {why}")
            note = getattr(self.progress, "note", None)
            if note is not None:
                note(f"  {step.id} runs in place: {why}")

        def attempt(n: int) -> int:
            if not step.op.transactional:
                self._plain(statements)
                self._done(step, n, texts)
                return n
            # A scan (VALIDATE) may take long; its lock is weak, so only the lock wait is bounded.
            timeout = 0 if step.op.cost == Cost.SCANS else session.DDL_STATEMENT_TIMEOUT_MS
            # One transaction, sent in one message with its COMMIT: the locks it takes (ACCESS EXCLUSIVE on a
            # table the application writes) are never held while this process waits, is stopped or dies.
            out = session.Collected()
            for s in statements:
                out.execute(s)
            for kind, name, text in step.op.saved():
                self.ledger.save_definition(self.run_id, step.id, kind, name, text, conn=out)
            # Same transaction: the step and its "done" record commit together or not at all.
            self._done(step, n, texts, conn=out, **done_detail)
            session.at_once(self.work, out, lock_timeout_ms=self.lock_timeout_ms, statement_timeout_ms=timeout,
                            point=f"{step.id}:commit")
            return n

        n = retry.run(attempt, self.policy, self._on_retry(step))
        return StepResult(step.id, "done", 0.0, attempts=n)

    def _done(self, step: Step, attempt: int, texts: list[str], conn=None, **detail) -> None:
        self.ledger.event(self.run_id, step.phase, step.id, "done", conn=conn, attempt=attempt,
                          sql=";\n".join(texts), fingerprint=step.op.fingerprint(), detail=detail or None)
        emitted = [r for r in step.reverts if r in contract_plan.EMITTED_GATES]
        recorded = self.ledger.step_states() if emitted else {}
        for original in step.reverts:
            if original in emitted and original not in recorded:
                continue  # a step only emitted files record, and none did here: nothing to mark undone
            self.ledger.event(self.run_id, original.split(".")[0], original, "reverted", conn=conn,
                              message=f"undone by {step.id}")

    def _run_index(self, step: Step, resuming: bool) -> StepResult:
        op: CreateIndexConcurrently = step.op  # type: ignore[assignment]
        if self.work.execute(op.probe()).fetchone()[0]:
            self._done(step, 1, op.sql_text(), note="index already present and valid")
            return StepResult(step.id, "done", 0.0)
        texts = op.sql_text()

        def attempt(n: int) -> int:
            # An interrupted CONCURRENTLY build leaves an invalid index behind: a killed run, and also our own
            # previous attempt when it timed out waiting for a writer's transaction to end. Drop it first.
            if self.work.execute(op.invalid_probe()).fetchone()[0]:
                self.ledger.event(self.run_id, step.phase, step.id, "note",
                                  message=f"dropping invalid index {op.name} left by an interrupted build")
                self._plain(op.reverse().statements())
            self._plain(op.statements())
            self._done(step, n, texts)
            return n

        n = retry.run(attempt, self.policy, self._on_retry(step))
        return StepResult(step.id, "done", 0.0, attempts=n)

    def _plain(self, statements) -> None:
        session.set_outside_transaction(self.work, lock_timeout_ms=self.lock_timeout_ms, statement_timeout_ms=0)
        for s in statements:
            self.work.execute(s)

    def _run_check(self, step: Step, resuming: bool) -> StepResult:
        op: Check = step.op  # type: ignore[assignment]
        with session.transaction(self.work, lock_timeout_ms=self.lock_timeout_ms,
                                 statement_timeout_ms=session.BATCH_STATEMENT_TIMEOUT_MS):
            for name, value in op.settings:
                self.work.execute("select set_config(%s, %s, true)", (name, value))
            rows = self.work.execute(op.query).fetchall()
            cov = invariants.coverage(self.work, op.covers or invariants.walked(self.plan, step.phase))
            tally = self.work.execute(op.tally).fetchone()[0] if op.tally is not None and not rows else None
        if rows:
            listed = "; ".join(f"{a} ({b})" if b is not None else str(a) for a, b in rows[:20])
            more = f" and more" if len(rows) > 20 else ""
            # What it looked at, as a pass records it: the rows per table it judged.
            if cov["rows_examined"]:
                more += f" (looked at: {table_counts(cov['rows_examined'], cov.get('judged_only'))})"
            self.ledger.event(self.run_id, step.phase, step.id, "error", message=f"{op.failure}: {listed}{more}",
                              detail={"problems": [list(map(str, r)) for r in rows],
                                      "examined": cov["rows_examined"],
                                      **({"judged_only": cov["judged_only"]} if "judged_only" in cov else {})})
            for sid in op.redo:  # sent back: the next run of the phase does them again (a backfill fills the rows)
                self.ledger.event(self.run_id, sid.split(".")[0], sid, "reverted",
                                  message=f"to be done again: {step.id} failed")
            if op.replan:  # nothing changed yet: the next run plans the phase again, from the database as it is then
                states = self.ledger.step_states()
                for s in self.plan.phase(step.phase):
                    if s.id == step.id:
                        break
                    if states.get(s.id) is not None and states[s.id].state == "done":
                        self.ledger.event(self.run_id, step.phase, s.id, "reverted",
                                          message=f"to be planned again: {step.id} failed before any change")
                baseline.discard(self.ledger, self.run_id, [step.phase])
                self.catalogs.saved.pop(step.phase, None)
            raise GateFailed(f"gate {op.name} failed in {step.id}: {op.failure}: {listed}{more}", fix=op.fix)
        # Rows per table it judged (its coverage; for a table it judges only some rows of, which and of how many),
        # what it compared where it says so, and where it judged no row, that it proves nothing there.
        blind = invariants.proves_nothing(cov)
        self._done(step, 1, op.sql_text(), examined=cov["rows_examined"],
                   **({"judged_only": cov["judged_only"]} if "judged_only" in cov else {}),
                   **({"proves_nothing": blind} if blind else {}),
                   **({"compared": tally} if tally is not None else {}))
        # Where it judged no row of any table, it compared nothing: shown so (see run_step), not as a pass.
        nothing = bool(blind) and all(v == 0 for v in cov["rows_examined"].values())
        return StepResult(step.id, "done", 0.0, detail={"proves_nothing": blind} if nothing else {})

    def _run_snapshot(self, step: Step, resuming: bool) -> StepResult:
        op: Snapshot = step.op  # type: ignore[assignment]
        data = {}
        with session.transaction(self.work, lock_timeout_ms=self.lock_timeout_ms,
                                 statement_timeout_ms=session.BATCH_STATEMENT_TIMEOUT_MS, repeatable_read=True):
            for label, query in op.queries:
                data[label] = self.work.execute(query).fetchone()[0]
            self.ledger.snapshot(self.run_id, op.name, data, conn=self.work)
            self._done(step, 1, op.sql_text(), conn=self.work)
        return StepResult(step.id, "done", 0.0, detail={"snapshot": op.name})

    def _run_phone_audit(self, step: Step, resuming: bool) -> StepResult:
        op = step.op
        t0 = time.monotonic()

        def between(checked: int) -> None:
            self.interrupts.check(f"during {step.id} after {checked:,} numbers (it reads only; it starts again "
                                  "on resume)", step=step, stopped="phone_audit")

        job = self.jobs.get(step.id)
        if job is not None:  # started ahead: collect it
            try:
                found = job.wait(between)
            finally:
                self.jobs.pop(step.id, None)
                job.stop()
            read_s, total_s, ahead = job.read_s or 0.0, job.seconds or 0.0, time.monotonic() - t0
        else:
            found, read_s = background.read_and_audit(self.work, op, between=between)
            total_s, ahead = time.monotonic() - t0, None
        note = getattr(self.progress, "note", None)
        if note is not None:
            note(f"  read {found.checked:,} distinct numbers in {read_s:.1f} s, compared them with phonenumbers in "
                 f"{total_s - read_s:.1f} s: {found.disagreements:,} disagree"
                 + (f" (beside the steps before it; waited {ahead:.1f} s for it here)" if ahead is not None else ""))
        data = {"checked": found.checked, "disagreements": found.disagreements, "by_reason": found.by_reason or {},
                "unexplained": found.unexplained,
                "sample": [{"raw": d.raw, "sql": d.sql_key, "phonenumbers": d.reference_key, "reason": d.reason}
                           for d in found.sample or []]}
        self.ledger.snapshot(self.run_id, "phone_audit", data)
        self._done(step, 1, op.sql_text(), checked=found.checked, disagreements=found.disagreements,
                   seconds=round(total_s, 2), **({} if ahead is None else {"waited_s": round(ahead, 2)}))
        return StepResult(step.id, "done", 0.0, rows=found.checked, detail={"disagreements": found.disagreements})

    def _run_batched(self, step: Step, resuming: bool) -> StepResult:
        op: Batched = step.op  # type: ignore[assignment]
        from pgconverge.execution import backfill_workers  # key ranges, several connections

        if backfill_workers.wanted(self, step, resuming):
            return backfill_workers.run(self, step, resuming)
        after, rows_done = None, 0
        if resuming:
            cp = self.ledger.last_checkpoint_since_fresh_start(step.id)
            if cp and backfill_workers.position_fits(op, cp[0]):
                after, rows_done = cp
        total = self.work.execute(op.total_estimate()).fetchone()[0]
        upper = upper_bound(self.work, op)
        if upper is EMPTY:
            self._done(step, 1, op.sql_text(), rows=rows_done, batches=0, resumed_from=rows_done, empty=True)
            return StepResult(step.id, "done", 0.0, rows=rows_done, detail={"resumed_from": rows_done})
        started, resumed_from = time.monotonic(), rows_done
        batches, throttled = 0, 0.0
        throttle = Throttle(max_replica_lag_ms=self.spec.migration.max_replica_lag_ms)

        def note(why: list[str]) -> None:
            self.ledger.event(self.run_id, step.phase, step.id, "note", message="backing off: " + "; ".join(why))
        stmt = batch.statement(op, self.ledger.t("checkpoints"), ranged=False)
        settings = batch.settings(op, self.lock_timeout_ms)
        while True:
            params = {"after": after, "upper": upper, "n": op.batch_size, "pgc_run": self.run_id,
                      "pgc_step": step.id, "pgc_rows": rows_done}

            def attempt(n: int):
                return batch.run(self.work, stmt, params, settings=settings,
                                 fail_point=(step.id, f"batch:{batches + 1}"))

            scanned, last, changed = retry.run(attempt, self.policy, self._on_retry(step))
            if not scanned:
                break
            batches += 1
            killpoint.reached(step.id, f"batch:{batches}")
            after, rows_done = last, rows_done + scanned
            elapsed = time.monotonic() - started
            self.progress.batch(step, rows_done, max(total, rows_done),
                                (rows_done - resumed_from) / elapsed if elapsed else 0.0)
            # Each batch committed with its checkpoint: a signal stops here, or in the pause after it.
            self.interrupts.after_batch(step, rows_done, max(total, rows_done))
            if self.spec.migration.batch_pause_ms:
                self.interrupts.sleep(self.spec.migration.batch_pause_ms / 1000)
            throttled += throttle.wait(self.control, op.lock_target, note, stop=lambda: self.interrupts.requested)
            self.interrupts.after_batch(step, rows_done, max(total, rows_done))
        swept = backfill_workers.sweep(self, step, op, self.work)  # a walk by pages: the rows it missed
        self._done(step, 1, op.sql_text(), rows=rows_done, batches=batches, resumed_from=resumed_from,
                   throttled_s=round(throttled, 2), **({"swept": swept} if op.sweep is not None else {}))
        return StepResult(step.id, "done", 0.0, rows=rows_done, detail={"resumed_from": resumed_from})
