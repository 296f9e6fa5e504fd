"""The plan as migration files: one transaction per file, statements outside a transaction alone in theirs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from pgconverge.config import Spec
from pgconverge.execution.sql import qn, text
from pgconverge.operations.base import Operation, Plan, Step
from pgconverge.operations.batched import Batched
from pgconverge.operations.check import Check
from pgconverge.operations.columns import SetNotNull
from pgconverge.operations.constraints import AddCheckNotValid, ValidateConstraint
from pgconverge.operations.create_index import CreateIndexConcurrently
from pgconverge.operations.private_schema import CreatePrivateSchema
from pgconverge.operations.replace_policies import ReplacePolicies
from pgconverge.emit import batches
from pgconverge.ledger.emitted import Record

# Executors whose work exists only inside the runner: what they record goes to the ledger.
RUNTIME_ONLY = {
    "snapshot": "records counts in the ledger for the run report and the final validation; nothing to apply "
                "(this file takes the snapshot in SQL with its ledger records)",
    "phone_audit": "compares the SQL phone key with the phonenumbers library and stores the differences in the "
                   "ledger (see `pgconverge report`); nothing to apply",
    "gates": "checks the code and runtime audits and the ledger; decided when the phase runs",
}


@dataclass
class Part:
    """One unit of work in a file: a transaction's statements, or one statement that runs outside one."""

    step: str
    what: str
    statements: list[str]
    transactional: bool
    notes: list[str] = field(default_factory=list)
    # What the part writes to pgconverge's ledger (see ledger/emitted.py): filled in by emit.
    records: list[Record] = field(default_factory=list)
    catalogs: list[tuple[str, Any]] = field(default_factory=list)
    discard: list[str] = field(default_factory=list)


@dataclass
class MigrationFile:
    version: str  # 14-digit timestamp
    name: str  # snake_case
    steps: list[str]  # forward step ids
    phase: str
    parts: list[Part]
    notes: list[str] = field(default_factory=list)  # runtime-only steps skipped before/after this file
    header: list[str] = field(default_factory=list)  # what the file's header says about it, beyond the plan
    reverse: list[Part] = field(default_factory=list)
    reverse_steps: list[str] = field(default_factory=list)
    reverse_moved: list[tuple[str, str]] = field(default_factory=list)  # (rollback step, later file undoing it)
    # (forward step, the later reverse file that undoes it): those reverse files run before this one
    undone_later: list[tuple[str, str]] = field(default_factory=list)
    runtime: list[Step] = field(default_factory=list)  # runtime-only steps noted in this file (recorded by it)

    @property
    def filename(self) -> str:
        return f"{self.version}_{self.name}.sql"

    @property
    def down_filename(self) -> str:
        return f"{self.version}_{self.name}.down.sql"

    @property
    def transactional(self) -> bool:
        return all(p.transactional for p in self.parts)


def snake(s: str) -> str:
    out = re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_")
    return out or "step"


def _check_sql(op: Check) -> str:
    """A gate as an assertion: the migration stops, naming the first problems, when the query returns rows."""
    sets = "".join(f"  perform pg_catalog.set_config({text(sql.Literal(n))}, {text(sql.Literal(v))}, true);\n"
                   for n, v in op.settings)
    code = (f"declare\n  problems text;\nbegin\n{sets}"
            f"  select pg_catalog.string_agg(concat_ws(' ', q.a::text, '(' || q.b::text || ')'), '; ') into problems\n"
            f"  from (select * from ({text(op.query)}) as g(a, b) limit 20) as q;\n"
            f"  if problems is not null then\n"
            f"    raise exception using errcode = 'check_violation', message =\n"
            f"      {text(sql.Literal(f'gate {op.name}: {op.failure}: '))} || problems\n"
            f"      || {text(sql.Literal(f'. Fix: {op.fix}' if op.fix else ''))};\n"
            f"  end if;\nend")
    tag, n = "$gate$", 0
    while tag in code:
        n += 1
        tag = f"$gate{n}$"
    return f"do {tag}\n{code}\n{tag}"


def _drop_invalid_index(spec: Spec, op: CreateIndexConcurrently) -> str:
    """A DO block dropping OP's index when an interrupted build left it invalid (nothing otherwise)."""
    # The name as SQL writes it (every part quoted): read back by to_regclass and spliced into DROP INDEX as is.
    name = text(sql.Literal(text(qn(op.name))))
    code = (f"begin\n"
            f"  if coalesce((select not i.indisvalid from pg_catalog.pg_index i\n"
            f"               where i.indexrelid = pg_catalog.to_regclass({name})), false) then\n"
            f"    perform pg_catalog.set_config('lock_timeout', "
            f"{text(sql.Literal(f'{spec.migration.lock_timeout_ms}ms'))}, true);\n"
            f"    raise notice 'dropping the invalid index % left by an interrupted build', {name};\n"
            f"    execute pg_catalog.format('drop index %s', {name});\n"
            f"  end if;\nend")
    return f"do $invalid$\n{code}\n$invalid$"


def _if_not_exists(stmt: str) -> str:
    """CREATE [UNIQUE] INDEX CONCURRENTLY … with IF NOT EXISTS, so that applying the file again is a no-op."""
    if re.search(r"\bif\s+not\s+exists\b", stmt, re.I):
        return stmt
    return re.sub(r"^(\s*create\s+(?:unique\s+)?index\s+concurrently)\s", r"\1 if not exists ", stmt, count=1,
                  flags=re.I)


def parts_for(spec: Spec, step: Step) -> tuple[list[Part], str | None]:
    """(the parts to write for STEP, or [] with a note when it is runtime-only)."""
    op = step.op
    ex = op.executor
    if ex in RUNTIME_ONLY:
        return [], f"{step.id} ({op.description}) is not emitted: {RUNTIME_ONLY[ex]}"
    if ex == "check":
        return [Part(step.id, op.description, [_check_sql(op)], True)], None
    if ex == "batched":
        note = ("Runs batch by batch with a COMMIT after each (a procedure with transaction control), so no "
                "transaction locks more than one batch of rows. It must be called outside a transaction block: "
                "apply this file on its own with psql (autocommit), not inside BEGIN/COMMIT. Calling it again is "
                "safe: each batch only changes the rows that still need it. `pgconverge run` does the same work "
                "with checkpoints in its ledger, throttling while the server is busy, and progress. "
                "`supabase db push` (checked with CLI 2.117.0) sends the file's statements in one pipeline, "
                "outside a transaction block, where the procedure can commit. A tool that wraps every file in "
                "BEGIN/COMMIT stops here instead: apply this file with psql, mark it applied in that tool's "
                "history (`supabase migration repair --status applied <version>` for the Supabase CLI), and go "
                "on; or run the phase with `pgconverge run`, which goes on from what the files recorded.")
        # Each CALL is preceded by the procedure's CREATE OR REPLACE: a file then runs whichever files were
        # applied or undone before it, and no file's undo removes what another file calls.
        procedure = [text(s) for s in batches.create_procedure(spec)]
        parts = [Part(step.id, op.description, [*procedure, text(batches.call(spec, op))], False, [note])]
        if getattr(op, "sweep", None) is not None:  # a walk by pages: then the rows it missed, until none is left
            parts.append(Part(step.id, f"{op.what}: the sweep after the walk by pages",
                              [*procedure, text(batches.sweep_call(spec, op))], False, [
                note + " This file is the sweep that ends a walk by pages: it fills the rows an application update "
                       "moved, unfilled, behind the walk, reading the whole table for each batch, until a batch "
                       "finds none."]))
        return parts, None
    notes = []
    if isinstance(op, CreateIndexConcurrently):
        notes.append("Safe to apply again after an interruption: an interrupted build leaves an invalid index "
                     "behind, which the DO block before the build drops (a plain DROP INDEX: DROP INDEX "
                     "CONCURRENTLY cannot run in a DO block, and the invalid index is no use to anyone, so the "
                     "table's lock is held only for the catalog change, and at most lock_timeout is waited for "
                     "it); IF NOT EXISTS then skips an index a finished build left.")
        # What the operation runs after the build (a leaf partition's index is attached to the partitioned
        # table's index: a no-op when it already is).
        after = [text(s) for s in op.statements()[1:]]
        return [Part(step.id, op.description, [_drop_invalid_index(spec, op), _if_not_exists(text(op.statement)),
                                               *after], False, notes)], None
    if isinstance(op, ReplacePolicies) and op.verify:
        notes.append("`pgconverge run switch` also compares, in one data snapshot, the rows every sampled identity "
                     "sees before and after this rewrite and restores the old policies on any difference; here the "
                     "pgTAP tests in supabase/tests/database check the result after the fact.")
    if isinstance(op, CreatePrivateSchema):
        notes.append("Also creates pgconverge's ledger tables: every file records its steps there as "
                     "`pgconverge run` does, so `pgconverge status`, `plan`, `verify` and `run` see them.")
    stmts = op.sql_text()
    if op.transactional:
        return [Part(step.id, op.description, stmts, True, notes)], None
    # Outside a transaction: each statement alone.
    return [Part(step.id, op.description, [s], False, notes) for s in stmts], None


def forward(spec: Spec, plan: Plan, start: datetime) -> list[MigrationFile]:
    """One file per step (a transaction each, as the runner does), and one per statement that cannot run in one."""
    files: list[MigrationFile] = []
    pending_notes: list[str] = []
    pending_steps: list[Step] = []
    for step in plan.steps:
        parts, note = parts_for(spec, step)
        if note:
            if files:
                files[-1].notes.append(note)
                files[-1].runtime.append(step)
            else:
                pending_notes.append(note)
                pending_steps.append(step)
            continue
        split = len(parts) > 1
        for i, part in enumerate(parts):
            name = snake(f"pgconverge_{step.id}" + (f"_{i + 1}" if split else ""))
            files.append(MigrationFile("", name, [step.id], step.phase, [part], pending_notes,
                                       list(getattr(step.op, "header", ())), runtime=pending_steps))
            pending_notes, pending_steps = [], []
    for i, f in enumerate(files):
        f.version = (start + timedelta(seconds=i)).strftime("%Y%m%d%H%M%S")
    return files


def attach_reverse(plan: Plan, rollback: Plan, files: list[MigrationFile], spec: Spec) -> list[str]:
    """Give every forward file the rollback steps that undo it; returns rollback steps left out (and why).

    A rollback step goes to the file of the forward step it is the exact reverse of, else to the
    earliest file among the forward steps it depends on: reverse files applied latest first then undo
    the migration in the opposite order it was made. One exception: a batched data fix (giving rows
    their legacy id back) must run before the later steps on the same table that need that data
    (NOT NULL restored), so it moves to the latest of those steps' files. Then no step is left in an
    earlier file than the step after it, so the reverse files replay the rollback plan in its own order.
    """
    index: dict[str, int] = {}
    for i, f in enumerate(files):
        for sid in f.steps:
            index.setdefault(sid, i)
    order = [s.id for s in plan.steps]
    # Runtime-only steps have no file: they belong with the file before them (or the first one).
    last = 0
    for sid in order:
        if sid in index:
            last = index[sid]
        else:
            index[sid] = last
    fwd = {s.id: s for s in plan.steps}
    placed: list[tuple[int, Step]] = []
    left_out = []
    for rs in rollback.steps:
        needs = [n for n in rs.needs if n in fwd]
        if not needs:
            continue  # undoes a phase that was not emitted
        exact = [n for n in needs if _same(fwd[n].op.reverse(), rs.op)]
        target = index[exact[0]] if exact else min(index[n] for n in needs)
        placed.append((target, rs))
    for k, (target, rs) in enumerate(placed):
        if isinstance(rs.op, Batched):
            later = [t for t, s in placed[k + 1:] if s.op.lock_target == rs.op.lock_target
                     and isinstance(s.op, (AddCheckNotValid, ValidateConstraint, SetNotNull))]
            if later:
                placed[k] = (max([target, *later]), rs)
    # Reverse files run latest first, so a rollback step may never sit in an earlier file than the step
    # after it: that keeps the rollback plan's own order (a trigger dropped with its column, before the
    # function it calls, say). A step moves to a later file, never to an earlier one.
    first = [t for t, _ in placed]
    for k in range(len(placed) - 2, -1, -1):
        placed[k] = (max(placed[k][0], placed[k + 1][0]), placed[k][1])
    kept: list[tuple[int, Step]] = []
    for (target, rs), was in zip(placed, first):
        parts, note = parts_for(spec, rs)
        if note:
            left_out.append(note)
            continue
        kept.append((target, rs))
        files[target].reverse.extend(parts)
        files[target].reverse_steps.append(rs.id)
        if target != was:
            files[was].reverse_moved.append((rs.id, files[target].down_filename))
    # What each reverse file needs undone before it: the forward steps reverse files after it undo.
    for k, f in enumerate(files):
        f.undone_later = [(s, files[t].down_filename) for t, rs in kept if t > k for s in rs.reverts if s in fwd]
    return left_out


def _same(a: Operation | None, b: Operation) -> bool:
    try:
        return a is not None and type(a) is type(b) and a == b
    except Exception:  # noqa: BLE001 - composables do not always compare
        return False
