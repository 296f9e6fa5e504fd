"""`pgconverge align --decisions FILE`: manual identity decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pgconverge.catalog import baseline
from pgconverge.cli.common import (
    ConfigOpt, DsnOpt, JsonOpt, console, fail_cleanly, load_spec, print_json, resume_hint, target,
)
from pgconverge.connection import connect
from pgconverge.errors import PgConvergeError
from pgconverge.execution import decisions, prechecks
from pgconverge.execution.runner import Runner
from pgconverge.ledger.store import StepState
from pgconverge.operations.base import Plan
from pgconverge.planning import plan as planner

PREREQUISITES = ("align.private_schema", "align.normalize_function", "align.mapping_table")


def used(plan: Plan, states: dict[str, StepState]) -> list[str]:
    """The steps after align that have used the mapping: done, or started and possibly part done.

    A step that only reads (a gate, a snapshot) changes nothing whatever its state: the coverage gate that failed on
    an unmapped row, whose fix is these decisions, does not count. Nor does a step that started and never finished
    where its change commits together with its "done" record (one transaction): it failed, or was stopped, before
    changing anything. What a rollback undid is recorded as reverted and does not count either. A step the plan
    does not know counts (what it did cannot be told)."""
    steps = {s.id: s for s in plan.steps}
    out = []
    for sid, st in states.items():
        if sid.startswith(("align.", "rollback.")) or st.state not in ("done", "pending"):
            continue
        step = steps.get(sid)
        if step is not None and (step.op.reads_only or (
                st.state == "pending" and step.op.executor in ("sql", "policies") and step.op.transactional)):
            continue
        out.append(sid)
    return out


@fail_cleanly
def align(decisions_file: Annotated[Path, typer.Option(
              "--decisions", help="CSV with a header naming the legacy id column and the new column "
                                  "(customer_id,profile_id by default), one decision per line.")],
          dsn: DsnOpt = None, config_file: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Record manual identity decisions: legacy row X becomes canonical row Y (method 'manual').

    Use it before `pgconverge run align` to settle known duplicates, or after align (before expand)
    to correct a decision. The whole file is validated first; either every line is applied or none.
    """
    spec = load_spec(config_file)
    pairs = decisions.read_csv(decisions_file, spec)
    t = target(dsn)
    with connect(t) as conn:
        cats = baseline.load(conn, spec)
        prechecks.configuration(conn, spec, cats)
        cat = cats.for_phase("align")
        plan = planner.build(spec, cats)
        decisions.check(conn, spec, cat, pairs)  # the whole file, before the mapping table is made for it
    with Runner(t, spec, plan, command=f"align --decisions {decisions_file.name}", catalogs=cats,
                resume=resume_hint(["align", "--decisions", str(decisions_file)], t, config_file)) as runner:
        states = runner.ledger.step_states()
        started = used(plan, states)
        if started:
            raise PgConvergeError(
                "manual decisions can no longer change the mapping: later phases have used it "
                f"({', '.join(sorted(started)[:3])} …)",
                fix="roll back to the start of expand (`pgconverge rollback expand`), then apply the decisions")
        for step in plan.phase("align"):
            if step.id in PREREQUISITES and (states.get(step.id) is None or states[step.id].state != "done"):
                runner.run_step(step)
        result = decisions.apply(runner.work, spec, cat, pairs, decisions.digest(decisions_file))
        runner.ledger.event(runner.run_id, "align", "align.decisions", "note",
                            message=f"{result.rows} manual decisions from {decisions_file.name}",
                            detail={"sha256": result.sha256, "new": result.new, "changed": result.changed})
    data = {"rows": result.rows, "new": result.new, "unchanged": result.unchanged,
            "changed": [{"legacy": a, "was": b, "now": c} for a, b, c in result.changed]}
    if as_json:
        print_json(data)
        return
    console.print(f"{result.rows} decisions recorded: {result.new} new, {len(result.changed)} changed, "
                  f"{result.unchanged} already so", highlight=False)
    for a, b, c in result.changed:
        console.print(f"  {a}: {b} → {c}", highlight=False)
