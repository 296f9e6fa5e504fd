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
- ``supabase/tests/database/pgconverge_*.test.sql``: pgTAP tests of the state the migrations leave.
  When contract is written, the tests of the state before it (mapping, legacy and new columns, the
  bridging helper, RLS with old and new tokens) go to ``supabase/tests/before_contract/``, to be run
  after the switch files and before the contract files.

Batched work (the identity matching, the backfill of the new column, and in reverse the legacy ids)
is not one giant UPDATE, which would lock every row it touches until it commits and bloat the
table in one go. It is a CALL of one procedure, ``<private schema>.run_batches``, created by its own
file just before the first batched step. The procedure runs the same keyset batch statement the
runner uses and COMMITs after every batch. A procedure rather than a DO block: the batch logic is
written once and reviewed once, each CALL names only its statement and sizes, and re-running a
CALL is safe because every batch changes only the rows that still need it. A PROCEDURE (or DO block)
may COMMIT only when called outside a transaction block, which is why each CALL has a file of its
own without BEGIN/COMMIT and must be applied in autocommit mode (psql does this for a file that does
not open a transaction itself). What only the runner can do is left as a comment in the file it
concerns: ledger snapshots, the phone-number audit, the RLS equivalence check made in one data
snapshot during the policy rewrite (the pgTAP tests check its outcome instead), the throttling and
checkpoints of batches. Gates that are plain queries become assertions (a DO block that raises
with the problems found), so a migration stops where `pgconverge run` would.

Contract (drop and archive the legacy side) is emitted too, after the switch files, with its
gates made into what SQL can check (see emit/contract.py): the last switch file records a runtime
baseline (the legacy table's write counters and the legacy helper's call count) in the private
schema, and the first two contract files refuse, changing nothing, unless the switch is in place
and nothing wrote to the legacy table or called the legacy helper since that baseline (skippable
on purpose with ``set pgconverge.accept_runtime_use = on``). The code audit cannot be read in SQL:
the gate file's header says to run `pgconverge audit code DIR --fail-on-findings` in CI first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg import sql

from pgconverge.catalog.baseline import Catalogs
from pgconverge.config import Spec
from pgconverge.emit import contract as emitted_contract, pgtap
from pgconverge.emit.files import MigrationFile, Part, attach_reverse, forward
from pgconverge.errors import PgConvergeError
from pgconverge.execution.sql import text
from pgconverge.operations.archive import ArchiveTable
from pgconverge.operations.base import PHASES, Plan
from pgconverge.operations.private_schema import CreatePrivateSchema
from pgconverge.planning import plan as planner

EMITTABLE = ("align", "expand", "switch", "contract")
BEFORE_CONTRACT = "supabase/tests/before_contract"


class EmitError(PgConvergeError):
    """The output directory or the options do not allow writing the files."""


@dataclass
class Emitted:
    migrations: list[Path]
    rollback: list[Path]
    tests: list[tuple[Path, int]]  # (file, number of assertions)
    samples: list[pgtap.Sample]
    skipped: list[str]  # runtime-only steps, with why

    def as_dict(self) -> dict:
        return {"migrations": [str(p) for p in self.migrations], "rollback": [str(p) for p in self.rollback],
                "tests": [{"file": str(p), "assertions": n} for p, n in self.tests],
                "sample_identities": [{"label": s.label, "legacy_id": s.legacy, "subject": s.subject}
                                      for s in self.samples],
                "not_emitted": self.skipped}


def check_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise EmitError(f"{out} exists and is not a directory", fix="name a new or empty directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise EmitError(f"{out} exists and is not empty; emit writes a fresh set of files there",
                        fix="name a new or empty directory, or pass --force to write into it anyway (files of "
                            "the same names are replaced, others are left alone)")


def emit(conn: psycopg.Connection, spec: Spec, cats: Catalogs, out: Path, *, through: str = "contract",
         start: datetime | None = None, force: bool = False, samples: int = 2) -> Emitted:
    """Write every file for the phases from align through THROUGH; read-only on the database."""
    if through not in EMITTABLE:
        raise EmitError(f"cannot emit through {through!r}: emit writes {', '.join(EMITTABLE)}",
                        fix=f"name one of {', '.join(EMITTABLE)}")
    check_dir(out, force)
    full = planner.build(spec, cats)
    phases = PHASES[:PHASES.index(through) + 1]
    start = start or datetime.now(timezone.utc).replace(microsecond=0)
    plan = Plan(tuple(s for s in full.steps if s.phase in phases))
    # The baseline file's name is known only once the files are laid out; the layout does not depend on it.
    plan = emitted_contract.adapt(spec, cats, plan, "")
    baseline_file = next((f.filename for f in forward(spec, plan, start)
                          if emitted_contract.BASELINE_STEP in f.steps), "")
    plan = emitted_contract.adapt(spec, cats, Plan(tuple(s for s in full.steps if s.phase in phases)), baseline_file)
    rollback = planner.rollback(spec, cats, "align")
    files = forward(spec, plan, start)
    _private_schema_reverse(spec, plan, files)
    skipped = [n for f in files for n in f.notes]
    skipped += attach_reverse(plan, rollback, files, spec)
    _contract_reverse(spec, cats, plan, files)
    cat = cats.for_phase("expand")
    picked = pgtap.pick_samples(conn, spec, cat, samples) if "switch" in phases else []
    tests = [pgtap.align_tests(spec, cat)]
    if "expand" in phases:
        tests.append(pgtap.expand_tests(spec, cat, plan))
    if "switch" in phases:
        tests += [pgtap.helper_tests(spec, cat, picked), pgtap.rls_tests(spec, cats.for_phase("switch"), plan, picked)]
    # Tests of the state the files leave go to tests/database. With contract, the earlier phases' tests (they
    # read the mapping, the legacy columns and old tokens) check the state before contract: a directory of their own.
    earlier: list[pgtap.TestFile] = []
    if "contract" in phases:
        earlier, tests = tests, [pgtap.contract_tests(spec, cats, plan, picked),
                                 pgtap.rls_tests(spec, cats.for_phase("switch"), plan, picked, after_contract=True)]

    mig_dir, rb_dir, test_dir = out / "supabase" / "migrations", out / "supabase" / "rollback", \
        out / "supabase" / "tests" / "database"
    for d in (mig_dir, rb_dir, test_dir) + ((out / BEFORE_CONTRACT,) if earlier else ()):
        d.mkdir(parents=True, exist_ok=True)
    lock = spec.migration.lock_timeout_ms
    result = Emitted([], [], [], picked, skipped)
    for i, f in enumerate(files):
        p = mig_dir / f.filename
        p.write_text(render_forward(f, i, len(files), lock))
        result.migrations.append(p)
        r = rb_dir / f.down_filename
        r.write_text(render_reverse(f, lock))
        result.rollback.append(r)
    for d, group in ((test_dir, tests), (out / BEFORE_CONTRACT, earlier)):
        for t in group:
            p = d / t.name
            p.write_text(t.render(_test_header(t.name, picked, d.relative_to(out))))
            result.tests.append((p, t.count))
    return result


def _private_schema_reverse(spec: Spec, plan: Plan, files: list[MigrationFile]) -> None:
    step = next((s for s in plan.steps if isinstance(s.op, CreatePrivateSchema)), None)
    if step is None:
        return
    f = next(f for f in files if step.id in f.steps)
    schema = spec.migration.private_schema
    runs = sql.Identifier(schema, "runs")
    stmt = sql.SQL(
        "do $pgc$ begin\n"
        "  if to_regclass({runs_name}) is not null and exists (select 1 from {runs}) then\n"
        "    raise notice 'schema % kept: its ledger records runs of pgconverge', {s};\n"
        "  else\n"
        "    execute pg_catalog.format('drop schema if exists %I cascade', {s});\n"
        "  end if;\nend $pgc$").format(runs_name=sql.Literal(f"{text(sql.Identifier(schema))}.runs"),
                                      runs=runs, s=sql.Literal(schema))
    f.reverse.append(Part("", f"drop schema {schema} and its (empty) ledger, unless pgconverge recorded runs there",
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


def _parts(parts: list[Part], lock_ms: int) -> str:
    out = []
    for p in parts:
        head = f"-- {p.step}: {p.what}" if p.step else f"-- {p.what}"
        notes = "".join("\n" + _comment(n) for n in p.notes)
        body = "\n".join(_statement(s) for s in p.statements)
        if p.transactional:
            out.append(f"{head}{notes}\nbegin;\nset local lock_timeout = '{lock_ms}ms';\n{body}\ncommit;")
        else:
            out.append(f"{head}{notes}\n-- Runs outside a transaction: no BEGIN/COMMIT around it.\n{body}")
    return "\n\n".join(out)


def render_forward(f: MigrationFile, i: int, n: int, lock_ms: int) -> str:
    head = [f"-- pgconverge migration {i + 1} of {n}, phase {f.phase}: {f.filename}",
            f"-- Undone by supabase/rollback/{f.down_filename}."]
    if not f.transactional:
        head.append("-- Apply on its own, outside a transaction block (psql in autocommit mode).")
    head += [_comment(h) for h in f.header]
    notes = "".join("\n" + _comment("Not in these files: " + n) for n in f.notes)
    return "\n".join(head) + notes + "\n\n" + _parts(f.parts, lock_ms) + "\n"


def render_reverse(f: MigrationFile, lock_ms: int) -> str:
    head = (f"-- Undoes supabase/migrations/{f.filename}. Apply the rollback files latest first, each with\n"
            "-- psql in autocommit mode: every BEGIN/COMMIT block below is one transaction, and statements\n"
            "-- outside them cannot run in one.")
    moved = "".join("\n" + _comment(f"{sid} undoes part of this file; it is in supabase/rollback/{where}, applied "
                                    "before this one, so the rollback runs in its own order.")
                    for sid, where in f.reverse_moved)
    if not f.reverse:
        return head + moved + "\n\n-- Nothing (else) to undo in this file.\n"
    return head + moved + "\n\n" + _parts(f.reverse, lock_ms) + "\n"


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
