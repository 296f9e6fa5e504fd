"""Write the migration plan as Supabase migration files, their reverse files and pgTAP tests.

Layout under DIR:

- ``supabase/migrations/<YYYYMMDDHHMMSS>_<name>.sql``: the plan's steps in order, one step per file,
  timestamps one second apart so the order of the names is the order of the plan. A file that can
  run in a transaction is wrapped in BEGIN/COMMIT with the configured ``lock_timeout`` (a DDL waiting
  for its lock blocks every write queued behind it, so a file that cannot get its lock fails fast and
  changes nothing; apply it again). A statement that cannot run in a transaction (``CREATE INDEX
  CONCURRENTLY``, ``DROP INDEX CONCURRENTLY``, a batched backfill) is alone in its file, with no
  BEGIN/COMMIT. One step per file, as the runner gives each step its own transaction: joining steps
  would hold one step's ACCESS EXCLUSIVE lock through the next step's table scan.
- ``supabase/rollback/<same timestamp>_<name>.down.sql``: what undoes each forward file, from the
  rollback plan (the same steps `pgconverge rollback` runs), applied latest first. A reverse file may
  hold several transactions (each BEGIN/COMMIT block is one) and statements outside any.
- ``supabase/tests/database/pgconverge_*.test.sql``: pgTAP tests of the state the migrations leave,
  and only those (``supabase test db`` runs everything under supabase/tests; pgconverge's tests of
  another state are removed from there). When align through contract are written at once, the tests
  of the state before contract (mapping, legacy and new columns, the bridging helper, RLS with old
  and new tokens) go to ``pgconverge-tests/before_contract/``, to be run after the switch files and
  before the contract files.

Every file writes pgconverge's ledger as `pgconverge run` does (ledger/emitted.py): its steps'
`start` and `done` events with the fingerprints `run` plans them with, the snapshots they take, and,
in the first file of each phase, the catalog that phase is planned from. So `status`, `plan`,
`verify` and `run` read a database migrated by files like one migrated by `run`, and `emit --phase
PHASE` plans each phase from the ledger as `run` does, writing what is not done yet, dated after the
migrations already in the directory and never in the future. `emit --rollback-to PHASE` writes the
rollback plan as new forward migrations (recording `reverted` events), so the Supabase CLI's history
stays true. A ``CREATE INDEX CONCURRENTLY`` file can be applied again after an interruption: it drops
the invalid index an interrupted build leaves (a plain DROP INDEX in a DO block: DROP INDEX
CONCURRENTLY cannot run in one) and builds with IF NOT EXISTS.

Batched work (the identity matching, the backfill of the new column, and in reverse the legacy ids)
is not one giant UPDATE, which would lock every row it touches until it commits and bloat the
table in one go. It is a CALL of one procedure, ``<private schema>.run_batches``, which every file
that calls it creates (CREATE OR REPLACE) just before the CALL, so each file and each undo file runs
whatever was applied or undone before it; the procedure goes with the private schema. The procedure
runs the same keyset batch statement the runner uses and COMMITs after every batch. A procedure rather than a DO block: the batch logic is
written once and reviewed once, each CALL names only its statement and sizes, and re-running a
CALL is safe because every batch changes only the rows that still need it. A PROCEDURE (or DO block)
may COMMIT only when called outside a transaction block, which is why each CALL has a file of its
own without BEGIN/COMMIT and must be applied in autocommit mode (psql does this for a file that does
not open a transaction itself). What only the runner can do is left as a comment in the file it
concerns: the phone-number audit, the RLS equivalence check made in one data snapshot during the
policy rewrite (the pgTAP tests check its outcome instead), the throttling and checkpoints of
batches (the ledger snapshots of counts are taken in SQL by the file before them). Gates that
are plain queries become assertions (a DO block that raises with the problems found and the fix,
both in the error message: the Supabase CLI prints no HINT), so a migration stops where `pgconverge
run` would.

Contract (drop and archive the legacy side) is emitted too, after the switch files, with its
gates made into what SQL can check (see emit/contract.py): the last switch file records a runtime
baseline (the legacy table's write counters and the legacy helper's call count) in the private
schema, and the first two contract files refuse, changing nothing, unless the switch is in place
and nothing wrote to the legacy table or called the legacy helper since that baseline (skippable
on purpose with ``set pgconverge.accept_runtime_use = on``). The code audit cannot be read in SQL:
the gate file's header says to run `pgconverge audit code DIR --fail-on-findings` in CI first.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg import sql

from pgconverge.catalog.baseline import Catalogs
from pgconverge.config import QualifiedName, Spec
from pgconverge.emit import contract as emitted_contract, pgtap
from pgconverge.emit.files import RUNTIME_ONLY, MigrationFile, Part, attach_reverse, forward, snake
from pgconverge.errors import PgConvergeError
from pgconverge.execution import prechecks
from pgconverge.execution.sql import qn, text
from pgconverge.ledger.emitted import Block, Record, render as render_ledger, snapshot_expression
from pgconverge.ledger.store import Ledger
from pgconverge.operations.archive import ArchiveTable, RestoreTable
from pgconverge.operations.base import PHASES, Plan, Step
from pgconverge.operations.private_schema import CreatePrivateSchema
from pgconverge.outputs import cannot_make_dir, first_unwritable
from pgconverge.planning import align, plan as planner

EMITTABLE = ("align", "expand", "switch", "contract")
BEFORE_CONTRACT = "pgconverge-tests/before_contract"


class EmitError(PgConvergeError):
    """The output directory or the options do not allow writing the files."""


@dataclass
class Emitted:
    migrations: list[Path]
    rollback: list[Path]
    tests: list[tuple[Path, int]]  # (file, number of assertions)
    samples: list[pgtap.Sample]
    skipped: list[str]  # runtime-only steps, with why
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"migrations": [str(p) for p in self.migrations], "rollback": [str(p) for p in self.rollback],
                "tests": [{"file": str(p), "assertions": n} for p, n in self.tests],
                "sample_identities": [{"label": s.label, "legacy_id": s.legacy, "subject": s.subject}
                                      for s in self.samples],
                "not_emitted": self.skipped, "warnings": self.warnings}


def check_dir(out: Path, force: bool, adding: bool = False) -> None:
    """Refuse a file, or a non-empty directory unless FORCE or ADDING (new files after those already there)."""
    if out.exists() and not out.is_dir():
        raise EmitError(f"{out} exists and is not a directory", fix="name a new or empty directory")
    why = cannot_make_dir(out)
    if why is not None:
        raise EmitError(f"cannot write under {out}: {why}; nothing was written",
                        fix="name a directory you may write to (emit makes it where it does not exist)")
    if out.exists() and any(out.iterdir()) and not (force or adding):
        raise EmitError(f"{out} exists and is not empty; emit writes a fresh set of files there",
                        fix="name a new or empty directory, pass --phase PHASE to add one phase's files after the "
                            "migrations already there, or pass --force to write into it anyway (files of the same "
                            "names are replaced, others are left alone)")


def _check_writable(out: Path, paths: list[Path]) -> None:
    """Refuse, before a first file is written, where one of PATHS (files under OUT) cannot be: a directory half
    written (migrations without their tests, say) is worse than none."""
    bad = first_unwritable(paths, make_parents=True)
    if bad is not None:
        path, why = bad
        raise EmitError(f"cannot write {path}: {why}; nothing was written",
                        fix=f"name a directory you may write to, or move what is in the way under {out} (emit makes "
                            "supabase/migrations, supabase/rollback, supabase/tests/database and "
                            f"{BEFORE_CONTRACT} there)")


@contextmanager
def _writing(out: Path):
    """A write that fails after the checks (a full disk, say) as an error naming OUT, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise EmitError(f"writing the files under {out} failed part way: {exc}",
                        fix="free the space or fix what the error names, then emit again with --force (files of "
                            "the same names are replaced)") from None


def _planned_paths(out: Path, files: list[MigrationFile], tests: list, earlier: list, reverse: bool = True
                   ) -> list[Path]:
    """Every file _write and _write_tests would write."""
    mig_dir, rb_dir = out / "supabase" / "migrations", out / "supabase" / "rollback"
    return [*(mig_dir / f.filename for f in files), *(rb_dir / f.down_filename for f in files if reverse),
            *(out / "supabase" / "tests" / "database" / t.name for t in tests),
            *(out / BEFORE_CONTRACT / t.name for t in earlier)]


def latest_migration(out: Path) -> datetime | None:
    """The time of the latest migration already in OUT/supabase/migrations (by its 14-digit version)."""
    d = out / "supabase" / "migrations"
    stamps = [m.group(1) for p in (d.iterdir() if d.is_dir() else ())
              if (m := re.match(r"(\d{14})_", p.name))]
    if not stamps:
        return None
    return datetime.strptime(max(stamps), "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)


def versions_start(out: Path, n: int, start: datetime | None, now: datetime | None = None) -> datetime:
    """The first of N versions one second apart: the latest at most NOW, and all after the latest existing one.

    A version in the future would sort after a `supabase migration new` made right after emitting; one at
    or before an existing migration would be skipped by `supabase db push` (or applied out of order).
    """
    latest = latest_migration(out)
    if start is not None:
        if latest is not None and start <= latest:
            raise EmitError(f"--timestamp {start:%Y%m%d%H%M%S} is not after the latest migration in "
                            f"{out / 'supabase' / 'migrations'} ({latest:%Y%m%d%H%M%S})",
                            fix="leave --timestamp out (emit then starts right after that migration) or give a later "
                                "time")
        return start
    now = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    first = now - timedelta(seconds=max(n - 1, 0))
    if latest is not None and first <= latest:
        first = latest + timedelta(seconds=1)  # the order matters more than the clock: a later file waits
    return first


def _adapted(spec: Spec, cats: Catalogs, steps, out: Path, start_at: datetime | None, now: datetime | None):
    """(the plan of STEPS with the contract gates made SQL, its files with their versions)."""
    plan = emitted_contract.adapt(spec, cats, Plan(tuple(steps)), "")
    n = len(forward(spec, plan, datetime(2000, 1, 1, tzinfo=timezone.utc)))
    start = versions_start(out, n, start_at, now)
    # The baseline file's name is known only once the files are laid out; the layout does not depend on it.
    # Emitted phase by phase, contract's gate names the switch file written before (the latest such file in OUT).
    baseline_file = next((f.filename for f in forward(spec, plan, start)
                          if emitted_contract.BASELINE_STEP in f.steps), "") or _written_baseline_file(out)
    plan = emitted_contract.adapt(spec, cats, Plan(tuple(steps)), baseline_file)
    return plan, forward(spec, plan, start)


def _written_baseline_file(out: Path) -> str:
    """The name of the latest file in OUT/supabase/migrations that records the runtime baseline, or ""."""
    d = out / "supabase" / "migrations"
    suffix = "_" + snake(f"pgconverge_{emitted_contract.BASELINE_STEP}") + ".sql"
    names = sorted(p.name for p in d.glob(f"*{suffix}")) if d.is_dir() else []
    return names[-1] if names else ""


def _state_tests(spec: Spec, cats: Catalogs, plan: Plan, picked: list, after: str | None,
                 uncovered: list[str] = ()) -> list[pgtap.TestFile]:
    """pgTAP files of the state after phase AFTER (None: before align, no tests). PLAN: every phase, adapted.
    UNCOVERED: the policy tables no sample owns rows in (pgtap.unowned_tables)."""
    if after is None:
        return []
    if after == "contract":
        return [pgtap.contract_tests(spec, cats, plan, picked),
                *([pgtap.rls_tests(spec, cats.for_phase("switch"), plan, picked, after_contract=True,
                                   uncovered=uncovered)]
                  if spec.has_helper else [])]  # no RLS identity helper (legacy.helper = ""): no token to test
    cat = cats.for_phase("expand")
    done = PHASES[:PHASES.index(after) + 1]
    tests = [pgtap.align_tests(spec, cat, plan)]
    if "expand" in done:
        tests.append(pgtap.expand_tests(spec, cat, plan))
    if "switch" in done and spec.has_helper:
        tests += [pgtap.helper_tests(spec, cat, picked), pgtap.rls_tests(spec, cats.for_phase("switch"), plan, picked,
                                                                           uncovered=uncovered)]
    return tests


def emit(conn: psycopg.Connection, spec: Spec, cats: Catalogs, out: Path, *, through: str = "contract",
         phase: str | None = None, start: datetime | None = None, force: bool = False, samples: int = 2,
         now: datetime | None = None) -> Emitted:
    """Write the files of the phases from align through THROUGH, or of PHASE alone; read-only on the database.

    Each phase is planned as `pgconverge run` plans it: from the catalog saved in the ledger when that
    phase started (by `run` or by the first emitted file of the phase), else from the database now. With
    PHASE, the files go after the migrations already in OUT.
    """
    if through not in EMITTABLE:
        raise EmitError(f"cannot emit through {through!r}: emit writes {', '.join(EMITTABLE)}",
                        fix=f"name one of {', '.join(EMITTABLE)}")
    if phase is not None and phase not in EMITTABLE:
        raise EmitError(f"cannot emit phase {phase!r}: emit writes {', '.join(EMITTABLE)}",
                        fix=f"name one of {', '.join(EMITTABLE)}")
    check_dir(out, force, adding=phase is not None)
    # The files set lock_timeout as `run` does: a deadlock with the application must cancel theirs, not its statement
    prechecks.lock_timeout(conn, spec)
    full = planner.build(spec, cats)
    phases = (phase,) if phase else PHASES[:PHASES.index(through) + 1]
    # What the ledger records as done (by `run` or by files applied before) is not written again, as `run`
    # skips it: applying it twice would fail (the table exists) or, worse, do it twice.
    ledger = Ledger(conn, spec)
    states = ledger.step_states() if ledger.exists() else {}
    steps = [s for s in full.steps if s.phase in phases
             and not (s.id in states and states[s.id].state == "done")]
    if not steps:
        raise EmitError(f"nothing to write: the ledger records every step of {', '.join(phases)} as done",
                        fix="`pgconverge status` shows where the migration stands; emit the next phase with "
                            "--phase, or the undo with --rollback-to")
    if any(s.id == "align.match" for s in steps) and cats.live is not None:
        # What `plan` and `run` check of the rows align will create (their values against the canonical table's
        # rules, what its insert triggers fill), before a file stops on it part way.
        from pgconverge.identity import check as match_check

        match_check.run(conn, spec, cats.live)
    if any(s.phase == "expand" for s in steps) and cats.live is not None:
        # Expand's sync trigger makes a legacy row for a person new code writes for who has none: one the legacy
        # table takes, as `plan` and `run` check, or a file would install a trigger that fails the application's writes.
        prechecks.newcomer_rows(conn, spec, full, cats)
    plan, files = _adapted(spec, cats, steps, out, start, now)
    rollback = planner.rollback(spec, cats, "align")
    _private_schema_reverse(spec, plan, files)
    skipped = [n for f in files for n in f.notes]
    skipped += attach_reverse(plan, rollback, files, spec)
    _contract_reverse(spec, cats, plan, files)
    attach_ledger(spec, cats, plan, full, rollback, files)
    last = phases[-1]
    every = emitted_contract.adapt(spec, cats, full, "")
    policy = _policy_tables(spec, every)
    picked = pgtap.pick_samples(conn, spec, cats.for_phase("expand"), samples, tables=policy) \
        if last in ("switch", "contract") else []
    uncovered = pgtap.unowned_tables(conn, spec, cats.for_phase("expand"), picked, policy)
    tests = _state_tests(spec, cats, every, picked, last, uncovered)
    # Tests of the state the files leave go to supabase/tests, which `supabase test db` runs whole. With contract,
    # the tests of the state before it (they read the mapping, the legacy columns and old tokens) go elsewhere.
    earlier = _state_tests(spec, cats, every, picked, "switch", uncovered) \
        if last == "contract" and phase is None else []
    result = Emitted([], [], [], picked, skipped, _no_sample_warning(picked, last in ("switch", "contract"))
                     + _unowned_warning(uncovered))
    _check_writable(out, _planned_paths(out, files, tests, earlier))
    with _writing(out):
        _write(spec, out, files, result)
        _write_tests(out, tests, earlier, picked, result)
    return result


def emit_rollback(conn: psycopg.Connection, spec: Spec, cats: Catalogs, out: Path, to: str, *,
                  start: datetime | None = None, now: datetime | None = None) -> Emitted:
    """The rollback back to the start of phase TO as new forward migrations, after those already in OUT.

    Like `pgconverge rollback TO`: the rollback plan, less the steps that undo nothing (the ledger says
    which forward steps are done or half done). Each file records its steps as done and the forward steps
    they undo as reverted; the last one discards the saved catalogs of the phases undone.
    """
    if to not in EMITTABLE:
        raise EmitError(f"cannot roll back to {to!r}: name one of {', '.join(EMITTABLE)}",
                        fix=f"name one of {', '.join(EMITTABLE)}")
    check_dir(out, False, adding=True)
    prechecks.lock_timeout(conn, spec)
    ledger = Ledger(conn, spec)
    states = ledger.step_states() if ledger.exists() else {}
    rollback = planner.rollback(spec, cats, to)
    live = [s for s in rollback.steps
            if any(states.get(r) and states[r].state in ("done", "pending") for r in s.needs)]
    if not live:
        raise EmitError(f"nothing to roll back to the start of {to}: the ledger records no step of {to} or a "
                        "later phase as done", fix="check `pgconverge status`; apply the migrations first")
    # Files that would stop half way at a DROP are not written: objects of the user's on what they drop are named.
    prechecks.rollback_blockers(conn, live, spec)
    plan, files = _adapted(spec, cats, live, out, start, now)
    command = f"rollback {to}"
    for f in files:
        f.name = f.name.replace("pgconverge_rollback_", f"pgconverge_rollback_to_{to}_", 1) \
            if f.name.startswith("pgconverge_rollback_") else f.name
    attach_ledger(spec, cats, plan, None, None, files, command=command)
    discard = list(PHASES[PHASES.index(to):])
    files[-1].parts[-1].discard.extend(discard)
    skipped = [n for f in files for n in f.notes]
    earlier = PHASES[PHASES.index(to) - 1] if PHASES.index(to) > 0 else None
    every = emitted_contract.adapt(spec, cats, planner.build(spec, cats), "")
    policy = _policy_tables(spec, every)
    archived = _archived(conn, spec, rollback, cats)
    picked = pgtap.pick_samples(conn, spec, cats.for_phase("expand"), 2, archived, tables=policy) \
        if earlier == "switch" else []
    uncovered = pgtap.unowned_tables(conn, spec, cats.for_phase("expand"), picked, policy, archived)
    tests = _state_tests(spec, cats, every, picked, earlier, uncovered)
    result = Emitted([], [], [], picked, skipped, _no_sample_warning(picked, earlier == "switch")
                     + _unowned_warning(uncovered))
    _check_writable(out, _planned_paths(out, files, tests, [], reverse=False))
    with _writing(out):
        _write(spec, out, files, result, reverse=False, command=command)
        _write_tests(out, tests, [], picked, result)
    return result


def _policy_tables(spec: Spec, plan: Plan) -> list[QualifiedName]:
    """The tables the RLS tests read (switch.policy_tables); none where the database has no RLS identity helper."""
    from pgconverge.planning import switch

    if not spec.has_helper or not any(s.id == f"{switch.PHASE}.policies" for s in plan.steps):
        return []
    return switch.policy_tables(plan)


def _unowned_warning(tables: list[str]) -> list[str]:
    """Where a policy table has no row a sample identity owns (no row there has an owner: an empty table, say)."""
    return [f"the RLS tests prove nothing for {t}: no row there has an owner, so no sample identity covers it; its "
            "assertion is skipped as proving nothing while that holds, and fails once rows there have owners none of "
            "the samples is one of: emit the tests again then" for t in tables]


def _no_sample_warning(picked: list[pgtap.Sample], wanted: bool) -> list[str]:
    """Where the tests of row level security and the helpers were written with no identity to test them with."""
    if not wanted or picked:
        return []
    return ["the RLS and helper tests have no sample identity (the legacy table has no rows): each such file holds "
            "one failing assertion that says so; emit again from a database with rows to test identities"]


def _archived(conn: psycopg.Connection, spec: Spec, rollback: Plan, cats: Catalogs
              ) -> tuple[QualifiedName, QualifiedName] | None:
    """Where contract moved the legacy table and the mapping, when both are there now and ROLLBACK puts them
    back; else None (they are where they were)."""
    restores = {str(s.op.table): s.op.archived for s in rollback.steps if isinstance(s.op, RestoreTable)}
    legacy = restores.get(str(cats.for_phase("expand").legacy.name))
    mapping = restores.get(str(align.names(spec)["mapping"]))
    if legacy is None or mapping is None:
        return None
    there = conn.execute(sql.SQL("select pg_catalog.to_regclass({}) is not null and pg_catalog.to_regclass({}) "
                                 "is not null").format(sql.Literal(text(qn(legacy))), sql.Literal(text(qn(mapping))))
                         ).fetchone()[0]
    return (legacy, mapping) if there else None


def attach_ledger(spec: Spec, cats: Catalogs, plan: Plan, full: Plan | None, rollback: Plan | None,
                  files: list[MigrationFile], command: str | None = None) -> None:
    """Give every part of FILES (and of their reverse) the ledger records `pgconverge run` would write.

    A step's fingerprint is the one `run` plans it with (FULL), so `run` accepts what the files did; the
    emitted contract gates stand for the runner's gates step. The first file of each phase saves the
    catalog that phase is planned from; the reverse of that file discards it (the phase is undone).
    Runtime-only steps are recorded by the file they are noted in: a snapshot is taken there in SQL,
    the phone-number audit is recorded as not performed. COMMAND: the files are a rollback (runs.command).
    """
    from pgconverge.catalog.serialize import to_json
    from pgconverge.planning import contract as contract_planner

    steps = {s.id: s for s in plan.steps}
    fps = {s.id: s.op.fingerprint() for s in plan.steps}
    fps.update({s.id: s.op.fingerprint() for s in (full.steps if full else ())})
    gates = next((s for s in (full.steps if full else ()) if isinstance(s.op, contract_planner.Gates)), None)
    where: dict[str, list[tuple[int, int]]] = {}
    for fi, f in enumerate(files):
        for pi, p in enumerate(f.parts):
            if p.step:
                where.setdefault(p.step, []).append((fi, pi))
    seen: set[str] = set()
    for fi, f in enumerate(files):
        if command is None and f.phase in PHASES and f.phase not in seen:
            seen.add(f.phase)
            f.parts[0].catalogs.append((f.phase, to_json(cats.for_phase(f.phase))))
            if f.reverse:
                f.reverse[0].discard.append(f.phase)
        for pi, p in enumerate(f.parts):
            if not p.step:
                continue
            spots = where[p.step]
            st = steps.get(p.step)
            p.records.append(Record(st.phase if st else f.phase, p.step, fps.get(p.step),
                                    start=spots[0] == (fi, pi), done=spots[-1] == (fi, pi),
                                    reverts=tuple(st.reverts) if st else ()))
            if p.step == emitted_contract.RUNTIME_GATE_STEP and gates is not None:
                # The runner's gates step is done once both emitted gates passed (the other file may have been
                # skipped: then `run contract` decides the gates itself).
                p.records.append(Record(gates.phase, gates.id, fps[gates.id], start=False,
                                        requires=(emitted_contract.SWITCH_GATE_STEP,),
                                        detail={"gates": "emitted: switch in place and runtime use, checked in SQL"}))
        for st in f.runtime:
            f.parts[-1].records.append(_runtime_record(st, fps.get(st.id, st.op.fingerprint())))
    by_id = {s.id: s for s in (rollback.steps if rollback else ())}
    for f in files:
        for p in f.reverse:
            rs = by_id.get(p.step)
            if rs is not None:
                p.records.append(Record(rs.phase, rs.id, rs.op.fingerprint(), reverts=tuple(rs.reverts)))


def _runtime_record(step: Step, fingerprint: str) -> Record:
    from pgconverge.operations.snapshot import Snapshot

    op = step.op
    if isinstance(op, Snapshot):
        return Record(step.phase, step.id, fingerprint, detail={"snapshot": op.name},
                      snapshot=(op.name, snapshot_expression([(label, text(q)) for label, q in op.queries])))
    return Record(step.phase, step.id, fingerprint,
                  detail={"not_performed": RUNTIME_ONLY.get(op.executor, "runs only under pgconverge run")})


def _write(spec: Spec, out: Path, files: list[MigrationFile], result: Emitted, *, reverse: bool = True,
           command: str | None = None) -> None:
    mig_dir, rb_dir = out / "supabase" / "migrations", out / "supabase" / "rollback"
    mig_dir.mkdir(parents=True, exist_ok=True)
    if reverse:
        rb_dir.mkdir(parents=True, exist_ok=True)
    lock = spec.migration.lock_timeout_ms
    for i, f in enumerate(files):
        p = mig_dir / f.filename
        p.write_text(render_forward(f, i, len(files), lock, spec, reverse=reverse,
                                    command=command or f"emitted {f.filename}"))
        result.migrations.append(p)
        if reverse:
            r = rb_dir / f.down_filename
            r.write_text(render_reverse(f, lock, spec))
            result.rollback.append(r)


def _write_tests(out: Path, tests: list, earlier: list, picked: list, result: Emitted) -> None:
    """The tests of the state the files leave replace pgconverge's in supabase/tests/database; others go apart."""
    test_dir = out / "supabase" / "tests" / "database"
    test_dir.mkdir(parents=True, exist_ok=True)
    for old in test_dir.glob("pgconverge_*.test.sql"):
        if old.name not in {t.name for t in tests}:
            old.unlink()  # of another state: `supabase test db` would run it and fail
    for d, group in ((test_dir, tests), (out / BEFORE_CONTRACT, earlier)):
        if group:
            d.mkdir(parents=True, exist_ok=True)
        for t in group:
            p = d / t.name
            p.write_text(t.render(_test_header(t.name, picked, d.relative_to(out))))
            result.tests.append((p, t.count))


def _private_schema_reverse(spec: Spec, plan: Plan, files: list[MigrationFile]) -> None:
    step = next((s for s in plan.steps if isinstance(s.op, CreatePrivateSchema)), None)
    if step is None:
        return
    f = next(f for f in files if step.id in f.steps)
    schema = spec.migration.private_schema
    runs = sql.Identifier(schema, "runs")
    stmt = sql.SQL(
        "do $pgc$ begin\n"
        "  if to_regclass({runs_name}) is not null and exists (select 1 from {runs} where client !~ '[.]sql$') then\n"
        "    raise notice 'schema % kept: its ledger records runs of pgconverge', {s};\n"
        "  else\n"
        "    execute pg_catalog.format('drop schema if exists %I cascade', {s});\n"
        "  end if;\nend $pgc$").format(runs_name=sql.Literal(f"{text(sql.Identifier(schema))}.runs"),
                                      runs=runs, s=sql.Literal(schema))
    f.reverse.append(Part("", f"drop schema {schema} and its ledger, unless `pgconverge run` or `rollback` recorded "
                              "runs there (rows the emitted files wrote do not count)",
                          [text(stmt)], True))


def _contract_reverse(spec: Spec, cats: Catalogs, plan: Plan, files: list[MigrationFile]) -> None:
    """Undo what only the files add: the runtime baseline, and the archive schema when they created it."""
    for f in files:
        for sid in f.steps:
            step = next(s for s in plan.steps if s.id == sid)
            if sid == emitted_contract.BASELINE_STEP:
                f.reverse.append(Part("", "drop the runtime baseline and the function that takes it",
                                      [text(s) for s in step.op.undo], True))
    archive = spec.migration.archive_schema
    if archive in cats.for_phase("contract").schemas:
        return  # it was there before: the rollback leaves it
    first = next((f for f in files for sid in f.steps if sid in {s.id for s in plan.steps
                  if isinstance(s.op, ArchiveTable)}), None)
    if first is None:
        return
    stmt = sql.SQL(
        "do $pgc$ begin\n"
        "  execute pg_catalog.format('drop schema if exists %I', {s});\n"
        "exception when dependent_objects_still_exist then\n"
        "  raise notice 'schema % kept: something else is in it', {s};\n"
        "end $pgc$").format(s=sql.Literal(archive))
    first.reverse.append(Part("", f"drop schema {archive}, created by contract, when nothing is left in it",
                              [text(stmt)], True))


def _comment(text_: str, width: int = 100) -> str:
    import textwrap

    return "\n".join("-- " + line for para in text_.split("\n")
                     for line in (textwrap.wrap(para, width) or [""]))


def _statement(s: str) -> str:
    s = s.strip()
    return s if s.endswith(";") else s + ";"


def _ledger(spec: Spec, p: Part, source: str, command: str, events: str) -> str | None:
    if not (p.records or p.catalogs or p.discard):
        return None
    block = Block(source, command, list(p.records), list(p.catalogs) if events != "done" else [],
                  list(p.discard) if events != "start" else [], events)
    return render_ledger(spec, block)


def _parts(parts: list[Part], lock_ms: int, spec: Spec, source: str, command: str) -> str:
    out = []
    for p in parts:
        head = f"-- {p.step}: {p.what}" if p.step else f"-- {p.what}"
        notes = "".join("\n" + _comment(n) for n in p.notes)
        body = "\n".join(_statement(s) for s in p.statements)
        if p.transactional:
            record = _ledger(spec, p, source, command, "both")
            record = f"\n-- pgconverge's ledger: what `pgconverge run` records for this step\n{_statement(record)}" \
                if record else ""
            out.append(f"{head}{notes}\nbegin;\nset local lock_timeout = '{lock_ms}ms';\n{body}{record}\ncommit;")
        else:
            started = _ledger(spec, p, source, command, "start")
            done = _ledger(spec, p, source, command, "done")
            out.append(f"{head}{notes}\n-- Runs outside a transaction: no BEGIN/COMMIT around it."
                       + (f"\n-- pgconverge's ledger: the step starts\n{_statement(started)}" if started else "")
                       + f"\n{body}"
                       + (f"\n-- pgconverge's ledger: the step is done\n{_statement(done)}" if done else ""))
    return "\n\n".join(out)


def render_forward(f: MigrationFile, i: int, n: int, lock_ms: int, spec: Spec, *, reverse: bool = True,
                   command: str = "") -> str:
    head = [f"-- pgconverge migration {i + 1} of {n}, phase {f.phase}: {f.filename}"]
    if reverse:
        head.append(f"-- Undone by supabase/rollback/{f.down_filename}.")
    if not f.transactional:
        head.append("-- Apply on its own, outside a transaction block (psql in autocommit mode).")
    head += [_comment(h) for h in f.header]
    notes = "".join("\n" + _comment("Not in these files: " + n) for n in f.notes)
    return "\n".join(head) + notes + "\n\n" + _parts(f.parts, lock_ms, spec, f.filename,
                                                      command or f"emitted {f.filename}") + "\n"


def render_reverse(f: MigrationFile, lock_ms: int, spec: Spec) -> str:
    head = (f"-- Undoes supabase/migrations/{f.filename}. Apply the rollback files latest first, each with\n"
            "-- psql in autocommit mode: every BEGIN/COMMIT block below is one transaction, and statements\n"
            "-- outside them cannot run in one. `pgconverge emit DIR --rollback-to PHASE` writes the same undo\n"
            "-- as new migrations instead, which `supabase db push` applies and its history keeps.")
    moved = "".join("\n" + _comment(f"{sid} undoes part of this file; it is in supabase/rollback/{where}, applied "
                                    "before this one, so the rollback runs in its own order.")
                    for sid, where in f.reverse_moved)
    if not f.reverse:
        return head + moved + "\n\n-- Nothing (else) to undo in this file.\n"
    return head + moved + "\n\n" + _reverse_guard(f, spec) + "\n\n" + _parts(
        f.reverse, lock_ms, spec, f.down_filename, f"emitted {f.down_filename}") + "\n"


def _reverse_guard(f: MigrationFile, spec: Spec) -> str:
    """A reverse file undoes its migration file only where the reverse files after it have undone theirs: from a
    database where the files were applied up to the middle of a phase, some of what this file's migration did is
    undone by a later reverse file whose own migration never ran, and applying the reverse files from the last one
    applied would leave it in place (or stop on it half way). The guard reads pgconverge's ledger and refuses,
    changing nothing, when this file's migration was not applied, or when a step a later reverse file undoes is
    still in place; `emit --rollback-to` then writes the undo from where the database stands."""
    events = text(sql.Identifier(spec.migration.private_schema, "events"))
    later = sql.SQL("array[{}]::text[]").format(sql.SQL(", ").join(sql.Literal(s) for s, _ in f.undone_later)) \
        if f.undone_later else sql.SQL("array[]::text[]")
    files = sql.Literal(json.dumps(dict(f.undone_later)))
    # The steps this file's migration records (not one recorded only where others are: a gate's stand-in)
    here = list(dict.fromkeys(r.step for p in f.parts for r in p.records if not r.requires))
    stmt = sql.SQL("""do $pgc$
declare
  here text[] := {here};
  later text[] := {later};
  placed text;
begin
  if pg_catalog.to_regclass({events_name}) is null then
    return;  -- no ledger: nothing was recorded, so nothing can be checked
  end if;
  if pg_catalog.cardinality(here) > 0
     and not exists (select 1 from {events} where step = any(here) and event in ('start', 'done')) then
    raise exception using message = pg_catalog.format('pgconverge: supabase/migrations/%s was never applied: '
      'nothing here to undo; apply the rollback files from the latest migration applied, latest first (from a '
      'database part way through a phase, write the undo with `pgconverge emit DIR --rollback-to PHASE` '
      'instead); nothing was changed', {name});
  end if;
  select s.step into placed from (select distinct on (step) step, event from {events}
                                   where step = any(later) and event in ('start', 'done', 'reverted')
                                   order by step, id desc) s where s.event <> 'reverted' limit 1;
  if placed is not null then
    raise exception using message = pg_catalog.format('pgconverge: step %s is still in place, and %s, which undoes '
      'it, runs before this file: apply it first, or, from a database part way through a phase (where it was '
      'never applied), write the undo with `pgconverge emit DIR --rollback-to PHASE`; nothing was changed',
      placed, ({files}::jsonb) ->> placed);
  end if;
end $pgc$;""").format(here=sql.SQL("array[{}]::text[]").format(sql.SQL(", ").join(map(sql.Literal, here))),
                      later=later, events_name=sql.Literal(events), events=sql.SQL(events),
                      name=sql.Literal(f.filename), files=files)
    return ("-- Refuses, changing nothing, unless this file's migration was applied and every later rollback file "
            "that undoes\n-- part of it has been applied\n" + text(stmt))


def _test_header(name: str, samples: list[pgtap.Sample], where: Path) -> str:
    lines = [f"-- pgTAP tests written by pgconverge emit: {name}"]
    if str(where) == BEFORE_CONTRACT:
        lines.append("-- Tests of the state after the switch files, before contract: run them then, with "
                     f"`pg_prove -d <database> {where}/*.test.sql` (after contract they fail: the mapping is archived "
                     "and the legacy columns are gone).")
    else:
        lines.append(f"-- Run with `supabase test db`, or `pg_prove -d <database> {where}/*.test.sql`.")
    if samples:
        lines.append("-- Sample identities (legacy ids picked when the files were written; their canonical ids are "
                     "read from the mapping): " + ", ".join(f"{s.label} = {s.legacy}" for s in samples) + ".")
    return "\n".join(lines)


__all__ = ["EMITTABLE", "EmitError", "Emitted", "check_dir", "emit"]
