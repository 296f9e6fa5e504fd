"""A backfill split into key ranges (or page ranges) that several workers update at once.

The key space up to the step's upper bound is cut into ranges (a few per worker, so a worker
that finishes early takes another); a walk by pages (key "ctid": a table without a key) is cut
into page ranges the same way. Each worker has its own connection; each batch is its own short
transaction, exactly as with one worker, and commits its checkpoint with it:
{"plan": P, "range": i, "after": last key}. The ranges themselves are written to the ledger
(a "note" event with detail {"ranges": [...], "plan": P}) before any batch runs, so a resumed
run continues every range from its own last checkpoint, whatever the worker count is now.

A walk by pages ends with its sweep (sweep below): rows an application update moved, unfilled, from a page not
yet walked to one already walked (or past the last page) are found in one snapshot and filled.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pgconverge.connection import connect
from pgconverge.execution import batch, killpoint, retry, session
from pgconverge.execution.throttle import Throttle
from pgconverge.operations.base import Step
from pgconverge.operations.batched import INTEGER_TYPES, Batched

if TYPE_CHECKING:
    from pgconverge.execution.runner import Runner, StepResult

RANGES_PER_WORKER = 4
# Passes of the sweep after a walk by pages before giving up (the invariants gate names what is left); each reads
# the table once, and the second normally finds nothing.
SWEEP_PASSES = 10


def wanted(runner: Runner, step: Step, resuming: bool) -> bool:
    """True when STEP runs here: more than one worker is set, or a resumed step was started with ranges."""
    op: Batched = step.op  # type: ignore[assignment]
    if not op.parallel:
        return False
    return runner.spec.migration.backfill_workers > 1 or (resuming and _plan(runner, step) is not None)


def _since_fresh_start(runner: Runner) -> sql.Composable:
    return sql.SQL("coalesce((select max(e.at) from {e} e where e.step = %(s)s and e.event = 'start' "
                   "and (e.detail ->> 'fresh')::boolean), '-infinity')").format(e=runner.ledger.t("events"))


def _plan(runner: Runner, step: Step) -> dict | None:
    """The ranges recorded for STEP since it last started from scratch, if any (and of the walk STEP makes)."""
    row = runner.control.execute(sql.SQL(
        "select detail from {e} where step = %(s)s and event = 'note' and detail ? 'ranges' "
        "and at >= {since} order by id desc limit 1").format(
        e=runner.ledger.t("events"), since=_since_fresh_start(runner)), {"s": step.id}).fetchone()
    if row and all(position_fits(step.op, b) for r in row[0]["ranges"] for b in r):  # type: ignore[arg-type]
        return row[0]
    return None


def _progress_so_far(runner: Runner, step: Step, plan: str) -> dict[int, tuple[Any, int]]:
    """Per range of PLAN: (last key done, rows scanned) from its latest checkpoint."""
    rows = runner.control.execute(sql.SQL(
        "select distinct on ((position ->> 'range')::int) (position ->> 'range')::int, position -> 'after', "
        "rows_done from {c} where step = %(s)s and position ->> 'plan' = %(p)s and at >= {since} "
        "order by (position ->> 'range')::int, id desc").format(
        c=runner.ledger.t("checkpoints"), since=_since_fresh_start(runner)), {"s": step.id, "p": plan}).fetchall()
    return {r: (after, done) for r, after, done in rows}


def _single_worker_position(runner: Runner, step: Step) -> tuple[Any, int] | None:
    """Where an earlier single-worker attempt of this step got to (its position is a plain key)."""
    cp = runner.ledger.last_checkpoint_since_fresh_start(step.id)
    if cp and not isinstance(cp[0], dict) and position_fits(step.op, cp[0]):  # type: ignore[arg-type]
        return cp
    return None


def position_fits(op: Batched, position: Any) -> bool:
    """False for a position a walk of another kind left (a page number where OP walks a key that is not an integer,
    or a key where OP walks pages: an earlier version walked that table the other way): the walk then starts over,
    which only re-reads rows (filled ones are skipped)."""
    if position is None:
        return True
    page = isinstance(position, int) and not isinstance(position, bool)
    return page if op.key == "ctid" else (not page or op.key_type in INTEGER_TYPES)


def split(conn: psycopg.Connection, op: Batched, after: Any, upper: Any, n: int) -> list[list[Any]]:
    """N consecutive ranges [after_exclusive, last_inclusive] covering (AFTER, UPPER] of OP's key."""
    if upper is None or n <= 1:
        return [[after, upper]]
    if op.key == "ctid":  # page numbers: equal page counts
        lo = -1 if after is None else int(after)
        if lo >= upper:
            return [[after, upper]]
        width = max(1, -(-(upper - lo) // n))
        bounds = [min(upper, lo + width * (i + 1)) for i in range(n)]
    elif op.key_type in INTEGER_TYPES:
        lo = conn.execute(sql.SQL("select min({k}) from {t} where ({a}::bigint is null or {k} > {a}::bigint)").format(
            k=sql.Identifier(op.key), t=_table(op), a=sql.Literal(after))).fetchone()[0]
        if lo is None or lo > upper:
            return [[after, upper]]
        width = max(1, -(-(upper - lo + 1) // n))
        bounds = [min(upper, lo - 1 + width * (i + 1)) for i in range(n)]
    else:
        # Any other orderable key (uuid, text, timestamp): equal-count ranges from one index-only pass.
        rows = conn.execute(sql.SQL(
            "select distinct on (g) k::text from (select {k} as k, ntile({n}) over (order by {k}) as g from {t} "
            "where ({a}::{ty} is null or {k} > {a}::{ty}) and {k} <= {u}::{ty}) x order by g, k desc").format(
            k=sql.Identifier(op.key), n=sql.Literal(n), t=_table(op), ty=sql.SQL(op.key_type),
            a=sql.Literal(None if after is None else str(after)), u=sql.Literal(str(upper)))).fetchall()
        bounds = [r[0] for r in rows] or [str(upper)]
        bounds[-1] = str(upper)
    out, prev = [], after
    for b in bounds:
        if out and b == out[-1][1]:
            continue
        out.append([prev, b])
        prev = b
    return out


def _table(op: Batched) -> sql.Composable:
    return sql.Identifier(op.table.schema, op.table.name)


def run(runner: Runner, step: Step, resuming: bool) -> StepResult:
    from pgconverge.execution.runner import EMPTY, StepResult, upper_bound

    op: Batched = step.op  # type: ignore[assignment]
    spec = runner.spec.migration
    workers = max(1, spec.backfill_workers)
    plan = _plan(runner, step) if resuming else None
    if plan is None:
        start, resumed_rows = (_single_worker_position(runner, step) or (None, 0)) if resuming else (None, 0)
        upper = upper_bound(runner.work, op)
        # A table without rows has no key range to cut, and nothing to visit.
        ranges = [] if upper is EMPTY else split(runner.work, op, start, batch.key_value(upper),
                                                 workers * RANGES_PER_WORKER)
        plan = {"plan": uuid.uuid4().hex[:12], "ranges": ranges, "workers": workers, "rows_before": resumed_rows}
        runner.ledger.event(runner.run_id, step.phase, step.id, "note", detail=plan,
                            message=f"{len(ranges)} key ranges for {workers} workers")
    done = _progress_so_far(runner, step, plan["plan"])
    resumed_from = plan.get("rows_before", 0) + sum(d for _, d in done.values())
    total = max(runner.work.execute(op.total_estimate()).fetchone()[0], resumed_from)

    todo: queue.Queue = queue.Queue()
    for i, (lo, hi) in enumerate(plan["ranges"]):
        after, rows = done.get(i, (lo, 0))
        todo.put((i, after, hi, rows))
    state = {"rows": resumed_from, "batches": 0, "throttled": 0.0}
    lock, stop = threading.Lock(), runner.interrupts.event()  # also set by SIGINT/SIGTERM (execution/interrupt.py)
    errors: list[BaseException] = []
    started = time.monotonic()

    def worker(w: int) -> None:
        try:
            with connect(runner.target, application_name=f"pgconverge:{step.id}#{w + 1}") as conn:
                session.configure(conn, f"pgconverge:{step.id}#{w + 1}")
                throttle = Throttle(max_replica_lag_ms=spec.max_replica_lag_ms)
                while not stop.is_set():
                    try:
                        i, after, hi, rows = todo.get_nowait()
                    except queue.Empty:
                        return
                    _one_range(runner, step, op, conn, throttle, plan["plan"], i, after, hi, rows,
                               state, lock, stop, started, resumed_from, total)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            with lock:
                errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=worker, args=(w,), name=f"{step.id}#{w + 1}")
               for w in range(min(workers, todo.qsize()))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    runner.interrupts.after_batch(step, state["rows"], total)  # a signal stopped the workers: the step is not done
    swept = sweep(runner, step, op, runner.work)
    runner._done(step, 1, op.sql_text(), rows=state["rows"], batches=state["batches"], resumed_from=resumed_from,
                 throttled_s=round(state["throttled"], 2), workers=len(threads), ranges=len(plan["ranges"]),
                 **({"swept": swept} if op.sweep is not None else {}))
    return StepResult(step.id, "done", 0.0, rows=state["rows"], detail={"resumed_from": resumed_from})


def _one_range(runner: Runner, step: Step, op: Batched, conn: psycopg.Connection, throttle: Throttle, plan: str,
               i: int, after: Any, hi: Any, rows: int, state: dict, lock: threading.Lock,
               stop: threading.Event, started: float, resumed_from: int, total: int) -> None:
    pause = runner.spec.migration.batch_pause_ms / 1000

    def note(why: list[str]) -> None:
        runner.ledger.event(runner.run_id, step.phase, step.id, "note", conn=conn,
                            message="backing off: " + "; ".join(why))

    def on_retry(attempt: int, exc: psycopg.Error, wait: float) -> None:
        runner.ledger.event(runner.run_id, step.phase, step.id, "retry", conn=conn, attempt=attempt,
                            sqlstate=exc.sqlstate, message=str(exc).strip(), detail={"pause_s": round(wait, 3)})

    stmt = batch.statement(op, runner.ledger.t("checkpoints"), ranged=True)
    settings = batch.settings(op, runner.lock_timeout_ms)
    while not stop.is_set():
        params = {"after": after, "upper": hi, "n": op.batch_size, "pgc_run": runner.run_id, "pgc_step": step.id,
                  "pgc_rows": rows, "pgc_plan": plan, "pgc_range": i}
        scanned, last, _ = retry.run(lambda n: batch.run(conn, stmt, params, settings=settings),
                                     runner.policy, on_retry)
        if not scanned:
            return
        after, rows = last, rows + scanned
        with lock:
            state["rows"] += scanned
            state["batches"] += 1
            killpoint.reached(step.id, f"batch:{state['batches']}")  # the other workers die mid-batch
            elapsed = time.monotonic() - started
            runner.progress.batch(step, state["rows"], max(total, state["rows"]),
                                  (state["rows"] - resumed_from) / elapsed if elapsed else 0.0)
        if pause:
            time.sleep(pause)
        slept = throttle.wait(conn, op.lock_target, note)
        if slept:
            with lock:
                state["throttled"] += slept


def sweep(runner: Runner, step: Step, op: Batched, conn: psycopg.Connection) -> int:
    """After a walk by pages: fill the rows it missed, until one pass finds none; the rows filled.

    A page walk misses a row an application update moved (without touching the ids, so the sync trigger did not
    fire) from a page not yet walked to one already walked or past the last page. A pass reads the table once, in
    one snapshot, for the ctid of every such row (held on the server: a WITH HOLD cursor, so no snapshot stays open
    and this process holds one batch of them at a time), then fills them a batch per transaction. Rows written after
    the pass's snapshot are the sync trigger's; a row moved again in between is found by the next pass, so the
    second normally finds none. No checkpoint: a resumed step sweeps again, which is idempotent. Nothing to do for
    a keyset walk.
    """
    if op.sweep_find is None or op.sweep_fill is None:
        return 0
    filled = 0
    for passes in range(1, SWEEP_PASSES + 1):
        found = 0
        with conn.cursor(name=f"pgconverge_sweep_{os.getpid()}", withhold=True) as cur:
            cur.execute(op.sweep_find)
            while keys := cur.fetchmany(op.batch_size):
                found += len(keys)

                def attempt(n: int, keys=[k for (k,) in keys]) -> int:
                    with session.transaction(conn, lock_timeout_ms=runner.lock_timeout_ms,
                                             statement_timeout_ms=session.BATCH_STATEMENT_TIMEOUT_MS):
                        for name, value in op.settings:
                            conn.execute("select set_config(%s, %s, true)", (name, value))
                        return conn.execute(op.sweep_fill, {"keys": keys}).fetchone()[0]

                filled += retry.run(attempt, runner.policy, runner._on_retry(step))
                runner.interrupts.after_batch(step, filled)
        if not found:
            break
    else:
        runner.ledger.event(runner.run_id, step.phase, step.id, "note",
                            message=f"sweep stopped after {SWEEP_PASSES} passes; the invariants name what is left")
    if filled:
        runner.ledger.event(runner.run_id, step.phase, step.id, "note", detail={"swept": filled, "passes": passes},
                            message=f"{filled:,} rows moved during the walk by pages filled by the sweep "
                                    f"({passes} reads of the table)")
    return filled
