"""The policy rewrite with its equivalence check on one data snapshot (see verify/rls.py)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

import psycopg

from psycopg import sql

from pgconverge.config import parse_qualified
from pgconverge.connection import connect
from pgconverge.execution import killpoint, retry, session
from pgconverge.execution.interrupt import Abort, Interrupted
from pgconverge.operations.base import Step
from pgconverge.verify import rls

if TYPE_CHECKING:
    from pgconverge.execution.runner import Runner, StepResult


def run(runner: Runner, step: Step, resuming: bool) -> StepResult:
    from pgconverge.execution.runner import GateFailed, StepResult

    op = step.op
    spec, cat = runner.spec, runner.catalogs.for_phase(step.phase)
    if not spec.has_helper:
        return _without_helper(runner, step, resuming)
    if runner.ledger.unproven(step.id):
        # An earlier run committed the rewrite and stopped before its check finished: the "before" side must be
        # read from the original policies again, or the check would compare the new policies with themselves.
        _restore(runner, step, "policies restored: an earlier run rewrote them and stopped before the equivalence "
                               "check finished; checking again from the original policies")
    targets = rls.targets(spec, cat, [parse_qualified(t) for t in op.tables])
    # The exporting transaction only holds the snapshot; it touches no table, so it holds no lock the
    # rewrite would wait for. Both captures import the snapshot; the first ends before the rewrite.
    with connect(runner.target, application_name="pgconverge:rls-snapshot") as exporter:
        exporter.autocommit = False
        exporter.execute("set transaction isolation level repeatable read")
        snapshot = exporter.execute("select pg_export_snapshot()").fetchone()[0]
        # A signal during the check stops it between two identities (or tokens). Before the rewrite nothing has
        # changed: the step is left unfinished, as a failure there leaves it, and runs again from the start.
        with _at(runner, snapshot, "pgconverge:rls-before") as conn:
            # The sample, with an owner added for each table it would miss (a table few identities own rows of).
            identities = rls.sample_covering(conn, spec, cat, targets, spec.migration.rls_sample)
            before = rls.capture(conn, spec, targets, identities, legacy=True, canonical=False, stop=_stop(
                runner, step, "before", "the policies were not changed", len(identities)),
                progress=_ticks(runner, step, "RLS check, before the rewrite"))
            _say_scan_bound(runner, before)
            covered = rls.coverage(conn, spec, cat, identities, before)
            read = rls.claims_read(conn, cat)
            # No sampled identity owns a row although rows have owners: nothing of anyone's would be compared.
            unowned = not covered["owning"] and rls.owned_rows_exist(conn, spec, cat, targets, False)
            by_table = rls.table_coverage(before, identities)
            # A table with owned rows none of whose owners the check could look at (left after the sample's cover).
            bare = [] if unowned else rls.unsampled(conn, spec, cat, targets, before, identities, False)
            # Nothing anyone owns in any of the tables (an empty database): nothing will be compared.
            empty = not covered["owning"] and not unowned and not rls.owned_tables(conn, spec, cat, targets, False)
            disabled = rls.rls_disabled(conn, list(op.tables))
        hidden, not_proven = rls.hidden_from_owners(spec, by_table, "an old")
        if covered["owning"] and covered["share"] < rls.MIN_COVERAGE:  # nothing has changed yet: refuse rather than prove nothing
            runner.ledger.snapshot(runner.run_id, "rls_equivalence", {"identities": len(identities),
                                                                      "coverage": covered, "proves_nothing": True,
                                                                      "coverage_by_table": by_table})
            carried = sorted({spec.legacy.claim, *dict(spec.migration.token_claims)})
            missing = [c for c in read if c not in carried and c not in (spec.canonical.claim, "sub")]
            _sees_nothing(runner, GateFailed(
                f"the RLS equivalence check proves nothing: of {covered['owning']} sampled identities that own rows, "
                f"{covered['seeing_own']} see any of them with an old token before the switch "
                f"({100 * covered['share']:.0f}%, below {100 * rls.MIN_COVERAGE:.0f}%); the policies and helpers read "
                f"the claims {', '.join(read) or '(none found)'}, the test tokens carry {', '.join(carried)}; "
                "no policy was rewritten",
                fix=("add the claims the policies need to migration.token_claims, e.g. token_claims = { "
                     + ", ".join(f'{c} = "…"' for c in missing) + " }") if missing else
                    "give migration.token_claims the claims and values the application's tokens carry"))
        if unowned:
            runner.ledger.snapshot(runner.run_id, "rls_equivalence", {"identities": len(identities),
                                                                      "coverage": covered, "proves_nothing": True,
                                                                      "coverage_by_table": by_table})
            raise GateFailed(
                f"the RLS equivalence check proves nothing: none of the {len(identities)} sampled identities owns a "
                "row of the tables whose policies are rewritten, although rows there have owners; no policy was "
                "rewritten", fix="raise migration.rls_sample (0 = every identity), so that the sample meets owners")
        if bare:
            runner.ledger.snapshot(runner.run_id, "rls_equivalence", {"identities": len(identities),
                                                                      "coverage": covered, "proves_nothing": True,
                                                                      "coverage_by_table": by_table, "problems": bare})
            raise GateFailed("the RLS equivalence check proves nothing about some tables: " + "; ".join(bare)
                             + "; no policy was rewritten",
                             fix="raise migration.rls_sample (0 = every identity), so that the sample meets the owners "
                                 "of every table")
        if hidden:  # one table blind while the others look: its comparison would prove nothing; nothing changed yet
            runner.ledger.snapshot(runner.run_id, "rls_equivalence", {
                "identities": len(identities), "coverage": covered, "proves_nothing": True,
                "coverage_by_table": by_table, "problems": hidden})
            _sees_nothing(runner, GateFailed(
                "the RLS equivalence check proves nothing about some tables, before the switch (under the original "
                "policies): " + "; ".join(hidden) + "; no policy was rewritten",
                fix="make the test tokens carry what the application's do (migration.token_claims), or list a table "
                    "meant to be unreadable to its owners in migration.rls_hidden_from_owners"))
        held = time.monotonic()  # ACCESS EXCLUSIVE on the tables lasts this transaction only, not the check
        # The rewrite itself: one transaction, with retries; recorded done but not proven until the check passes.
        result = runner._run_sql(step, resuming, proven=False)
        held = round((time.monotonic() - held) * 1000, 1)
        # After it, the rewrite is undone as a failed check undoes it, so the policies are the old ones again.
        try:
            runner.interrupts.check(f"during {step.id}, after the rewrite and before the RLS equivalence check on it; "
                                    "the old policies were restored", step=step, stopped="rls_check", side="after")
            with _at(runner, snapshot, "pgconverge:rls-after") as conn:
                killpoint.reached(step.id, "rls_check")
                killpoint.fail(step.id, "rls_check", conn)
                after = rls.capture(conn, spec, targets, identities, legacy=True, canonical=True,
                                    others=before.others, stop=_stop(
                                        runner, step, "after", "the old policies were restored", len(identities)),
                                    progress=_ticks(runner, step, "RLS check, after the rewrite"))
        except Interrupted:
            _restore(runner, step, "policies restored: the run was interrupted during the equivalence check")
            raise
        except psycopg.Error as exc:  # the check itself failed: the rewrite it did not prove is undone
            _restore(runner, step, f"policies restored: the equivalence check failed ({str(exc).strip()})")
            raise
        except Abort:
            _restore(runner, step, "policies restored: the run was aborted during the equivalence check")
            raise runner.interrupts.stop(f"during the RLS equivalence check of {step.id} (at once); the old "
                                         "policies were restored", step=step, stopped="rls_check", side="after",
                                         identities=len(identities)) from None
        exporter.rollback()
    # Rows an identity sees but does not own under the application's original policies are its design (a chat
    # everyone reads): those tables are held to old-equals-new, not to isolation, and the verdict says so.
    shared = rls.shared_by_design(before, identities)
    public = rls.public_by_design(before)
    problems = rls.compare(before, after, identities, shared)
    nothing = [rls.nothing_owned(list(op.tables), len(identities))] if empty else []
    summary = {"identities": len(identities), "tokens": len(after.seen), "tables": list(op.tables), "coverage": covered,
               "write_probes": len(after.writes), "rows_seen": rls.rows_seen(before), "problems": problems[:200],
               "write_probes_by_table": rls.write_probes_by_table(before, after),
               # Per table, the sampled owners whose copy of a row of their own was probed (none: nothing proven)
               "write_owners_by_table": rls.write_owners_by_table(before, after),
               # Tables where an owner could insert a row of its own (old token before the rewrite, or new token
               # after it): after contract, verify --rls holds the canonical token to it (new code's inserts).
               "owners_insert": sorted({t for t, ok in rls.own_inserts(before, "L").items() if ok}
                                       | {t for t, ok in rls.own_inserts(after, "C").items() if ok}),
               **({"proves_nothing": True} if empty else {}), "rls_disabled": disabled,
               # probes whose foreign key check met a row the application changed after the snapshot: not compared
               "write_probes_inconclusive": rls.inconclusive_writes(before, after),
               "rows_by_table": rls.rows_by_table(before), "lock_hold_ms": held,
               # Per table: sampled owners, and how many of them saw their own rows before the rewrite.
               "coverage_by_table": by_table, "owner_unknown": rls.owner_unknown(targets),
               "not_proven": nothing + not_proven + rls.design_notes(shared, public, disabled),
               "shared_by_design": shared, "public_by_design": public,
               # Tables whose old policy reads a whole table per caller: checked for fewer tokens (see rls.py).
               "scan_bound": rls.scan_bound_summary(before, after)}
    runner.ledger.snapshot(runner.run_id, "rls_equivalence", summary)
    if problems:
        _restore(runner, step, f"policies restored: the equivalence check found {len(problems)} differences")
        raise GateFailed(
            f"RLS equivalence failed after rewriting the policies ({len(problems)} differences; the original "
            f"policies were restored): " + "; ".join(problems[:5]),
            fix="review the listed policies; a policy pgconverge cannot rewrite safely can be excluded with "
                "migration.accept_policies and rewritten by hand")
    runner._done(step, result.attempts or 1, step.op.sql_text(), proven=True)
    result.detail.update({k: v for k, v in summary.items() if k != "problems"})
    return result


def _without_helper(runner: Runner, step: Step, resuming: bool) -> StepResult:
    """The database has no RLS identity helper (legacy.helper = ""): no policy to rewrite and no token that names
    anyone, so no equivalence to check. Said as such, with what was looked at (rls.without_helper): the ledger's
    rls_equivalence records it "not applicable", never a pass. A policy that reads the legacy side, made since plan
    refused none, stops the switch here."""
    from pgconverge.execution.runner import GateFailed

    with connect(runner.target, application_name="pgconverge:rls-snapshot") as conn:
        summary, problems = rls.without_helper(conn, runner.spec, runner.catalogs.for_phase(step.phase))
    runner.ledger.snapshot(runner.run_id, "rls_equivalence", {**summary, "problems": problems})
    if problems:
        raise GateFailed("; ".join(problems),
                         fix="set legacy.helper to the function these policies call for the caller's legacy id, or "
                             "rewrite them so that they read neither the legacy table nor a legacy column (or drop "
                             "them), then run the switch again")
    result = runner._run_sql(step, resuming)
    result.detail.update(summary)
    return result


def _sees_nothing(runner: Runner, exc: Exception) -> None:
    """Raise EXC, the refusal of a check whose owners see none of their own rows (nothing changed yet); on the
    preflight's copy, a sample that may lack what the policies read (gates.COPY_UNREAD), note it and go on instead:
    the check on the target still runs and still refuses."""
    from pgconverge.execution import gates

    if gates.COPY_UNREAD not in runner.accept:
        raise exc
    runner.rls_not_proven.append(getattr(exc, "problem", str(exc)))


def _restore(runner: Runner, step: Step, message: str) -> None:
    """Put the old policies back (the rewrite committed) and say so in the ledger; a second signal waits for it."""
    undo = step.op.reverse()

    def restore(attempt: int) -> None:
        out = session.Collected()
        for s in undo.statements():
            out.execute(s)
        session.at_once(runner.work, out, lock_timeout_ms=runner.lock_timeout_ms)

    with runner.interrupts.shielded():
        retry.run(restore, runner.policy)
        runner.ledger.event(runner.run_id, step.phase, step.id, "reverted", message=message)
    runner.undone.append(f"{step.id} (the original policies are back)")


def _say_scan_bound(runner: Runner, cap: rls.Capture) -> None:
    """One line per table whose policy read a whole table for one caller: why the check took that long there,
    and for how many tokens it compared that table (the report shows the same)."""
    note = getattr(runner.progress, "note", None)
    if note is None:
        return
    tokens = len(cap.seen) - 1
    for table, info in cap.scan_bound.items():
        note(f"  {table}: its policy reads a whole table for every caller ({info['first_token_s']:.1f} s for one "
             f"token, as for every query of the application's there); compared for {info['tokens_checked']} of "
             f"{tokens} tokens, within {rls.SCAN_BUDGET_S:.0f} s")


def _stop(runner: Runner, step: Step, side: str, outcome: str, identities: int) -> Callable[[], None]:
    """The capture's STOP: raise Interrupted between two identities (or tokens) once a signal asked to stop."""
    def stop() -> None:
        runner.interrupts.check(f"during the RLS equivalence check of {step.id} ({identities} identities, {side} "
                                f"the rewrite); {outcome}", step=step, stopped="rls_check", side=side,
                                identities=identities)
    return stop


def _ticks(runner: Runner, step: Step, what: str) -> Callable[[int, int], None] | None:
    """The capture's PROGRESS: identities compared so far, shown by a progress that can show it."""
    shown = getattr(runner.progress, "checking", None)
    return None if shown is None else (lambda done, total: shown(step, what, done, total, "identities"))


@contextmanager
def _at(runner: Runner, snapshot: str, name: str) -> Iterator[psycopg.Connection]:
    """A read transaction on SNAPSHOT's data, rolled back (and its locks released) on exit."""
    with connect(runner.target, application_name=name) as conn:
        conn.autocommit = False
        conn.execute("set transaction isolation level repeatable read")
        conn.execute(sql.SQL("set transaction snapshot {}").format(sql.Literal(snapshot)))
        try:
            yield conn
        finally:
            conn.rollback()
