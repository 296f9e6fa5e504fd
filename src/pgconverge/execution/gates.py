"""The contract gates: every reason not to drop the legacy side yet, each with what would unblock it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pgconverge.audit import runtime
from pgconverge.audit.code import audit_code
from pgconverge.catalog import calls, introspect, mentions
from pgconverge.operations.base import Step
from pgconverge.verify import invariants

if TYPE_CHECKING:
    from pgconverge.execution.runner import Runner, StepResult

CODE = "code-references"
RUNTIME = "runtime-use"


def evaluate(runner: Runner) -> list[dict]:
    """All gates, passed or not: [{gate, passed, details, unblock}]."""
    spec, ledger = runner.spec, runner.ledger
    cat = runner.catalogs.for_phase("contract")
    out = []
    # Counters first: the checks below read tables, and this backend's own reads must not count.
    rt = runtime.measure(runner.work, spec, cat)
    accepted = RUNTIME in runner.accept
    runtime_gate = {"gate": "no runtime use since the switch", "passed": not rt.in_use or accepted,
                    "accepted": accepted and bool(rt.in_use),
                    "details": rt.in_use + [f"reads of the legacy table (not counted as use; they include the "
                                            f"legacy foreign keys' checks): {', '.join(rt.reads)}"] * bool(rt.reads)
                    + [f"unavailable: {u}" for u in rt.unavailable],
                    "unblock": "find and update the callers still using the legacy table or helper "
                               "(`pgconverge audit runtime`), or pass --accept-runtime-use"}

    eq = ledger.latest_snapshot("rls_equivalence")
    ok = bool(eq) and not eq["problems"]
    # Tables whose old policy scans a table per caller were compared for fewer tokens: say so where it passes.
    partial = [f"{t}: compared for {v['tokens_checked']} of {v['tokens']} tokens (its old policy scans a table "
               f"per caller, {v['first_token_s']} s each)" for t, v in ((eq or {}).get("scan_bound") or {}).items()]
    if ok and eq.get("rows_seen") == 0:  # recorded by this version on; a pass over no rows compared nothing
        partial.append("the RLS check saw no rows for any identity: there was nothing to compare")
    out.append({"gate": "switch verified", "passed": ok,
                "details": partial if ok else (eq["problems"][:10] if eq else ["no RLS equivalence result recorded"]),
                "unblock": "run `pgconverge run switch` (it verifies RLS equivalence) or `pgconverge verify --rls`"})
    results = invariants.run(runner.work, runner.plan, ["align", "expand"])
    bad = [f"{r.step}: " + "; ".join(" ".join(p) for p in r.problems[:5]) for r in results if not r.passed]
    ops = {s.id: s.op for s in runner.plan.steps}
    for sid in {x for r in results if not r.passed for x in getattr(ops.get(r.step), "redo", ())}:
        # Sent back, so that re-running expand does it again (its backfill fills the rows found missing).
        runner.ledger.event(runner.run_id, sid.split(".")[0], sid, "reverted", message="to be done again: the "
                            "contract gate found its invariants broken")
    out.append({"gate": "invariants", "passed": not bad, "details": bad,
                "unblock": "run `pgconverge verify` and fix what it names (re-running expand fills missing ids)"})

    code: list[str] = []
    for d in runner.code_dirs:
        code += [f"{f.path}:{f.line}:{f.column} {f.category} {f.name} → {f.suggestion}"
                 for f in audit_code(Path(d), spec)]
    watched = {spec.legacy.table.name, spec.legacy.helper.name, *(d.fk.columns[0] for d in cat.dependents)}
    live = runner.catalogs.live
    functions = [f"database function {f.signature} mentions legacy names" for f in (live.functions if live else ())
                 if f.name not in (spec.legacy.helper, spec.canonical.helper)
                 and f.name.schema != spec.migration.private_schema and mentions.find(f.source, watched)]
    views = [f"{v.kind} {v.name} reads the legacy table or a legacy column" for v in (live.views if live else ())]
    # Every one, counted: a gate that names only the first few sends the user round again.
    code += ([f"{len(functions)} database function(s) mention legacy names"] if functions else []) + functions + views
    if not runner.code_dirs:
        code.insert(0, "no application code was audited (pass --code DIR)")
    accepted = CODE in runner.accept
    out.append({"gate": "no code references", "passed": not code or accepted, "accepted": accepted and bool(code),
                "details": code,
                "unblock": "update the code named (the suggestions say how), or pass --accept-code-references"})

    out.append(runtime_gate)

    leaning = standalone(runner)
    out.append({"gate": "canonical helper stands alone", "passed": not leaning, "details": leaning,
                "unblock": f"replace {spec.canonical.helper}() by a definition that finds the caller's "
                           f"{spec.canonical.table} row without {spec.legacy.table} or the mapping (for a lookup by "
                           "auth.uid(): through the canonical table's own link to the auth user), then run "
                           "contract again"})
    return out


def standalone(runner: Runner) -> list[str]:
    """What the canonical helper reads that contract archives, itself or through the functions it calls.

    Every policy calls the canonical helper. Contract rewrites it to read the canonical claim alone when it
    can; a helper that looks the caller up (by auth.uid(), say) through the legacy table and the mapping
    cannot be rewritten so, and once contract archives both, every query through those policies fails.
    Read from the database now (the catalog the plan came from may predate the helper, or a hand-written one).
    """
    spec = runner.spec
    archived = {spec.legacy.table.name, spec.mapping_table.name}
    fn, _ = introspect.function_and_callees(runner.work, spec.canonical.helper)
    if fn is None:
        return []  # the switch gate reports a missing helper
    planned = next((s.op for s in runner.plan.steps if s.id == "contract.canonical_helper"), None)
    if planned is not None:  # contract replaces it first: what matters is what it is replaced by
        fn = calls.from_definition(fn, planned.definition)
    out = []
    for f in [fn, *introspect.callees(runner.work, [fn])]:
        names = sorted({m.name for m in mentions.find(f.source, archived)})
        if names:
            through = "" if f is fn else f" through {f.name}({f.identity_args})"
            out.append(f"{fn.name}() reads {', '.join(names)}{through}, which contract archives")
    return out


def run(runner: Runner, step: Step, resuming: bool) -> StepResult:
    from pgconverge.execution.runner import GateFailed, StepResult

    gates = evaluate(runner)
    runner.ledger.snapshot(runner.run_id, "contract_gates", gates)
    failed = [g for g in gates if not g["passed"]]
    if failed:
        # Every detail: a gate that names only the first few sends the user round again.
        listed = "; ".join(f"{g['gate']}: " + (", ".join(g["details"]) or "failed") for g in failed)
        runner.ledger.event(runner.run_id, step.phase, step.id, "error", message=listed)
        raise GateFailed(f"contract is blocked, nothing was dropped — {listed}",
                         fix=" / ".join(g["unblock"] for g in failed))
    runner._done(step, 1, [], gates=[g["gate"] for g in gates])
    return StepResult(step.id, "done", 0.0, detail={"accepted": [g["gate"] for g in gates if g.get("accepted")]})
