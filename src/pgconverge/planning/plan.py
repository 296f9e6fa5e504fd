"""Assemble the whole plan from the phase planners."""

from __future__ import annotations

import dataclasses

from pgconverge.catalog.baseline import Catalogs
from pgconverge.catalog.model import Catalog
from pgconverge.config import Spec
from pgconverge.operations.base import PHASES, Plan, Step
from pgconverge.planning import align, contract, expand, shapes, switch


_PLANNERS = {"align": align, "expand": expand, "switch": switch, "contract": contract}


def build(spec: Spec, cats: Catalog | Catalogs, refuse: bool = True) -> Plan:
    """Every phase's steps, in order, from the configuration and each phase's catalog alone.

    With REFUSE, objects that depend on the legacy key in a way no step can carry over stop it here, all
    named at once (planning/shapes.py), so `plan`, `run` and `emit` refuse alike before any change.
    """
    cats = cats if isinstance(cats, Catalogs) else Catalogs({}, cats)
    if refuse:
        shapes.refuse(spec, cats)
    return Plan(tuple(step for ph in PHASES if ph in _PLANNERS
                      for step in _PLANNERS[ph].plan(spec, cats.for_phase(ph), cats)))


def rollback(spec: Spec, cats: Catalog | Catalogs, to: str) -> Plan:
    """The steps that undo every phase from the last back to (and including) TO, latest first.

    Each phase is undone from the catalog it was planned from; the live one, when readable, shows
    what may have appeared since (new foreign keys to the canonical table, say).
    """
    cats = cats if isinstance(cats, Catalogs) else Catalogs({}, cats)
    phases = [ph for ph in PHASES[PHASES.index(to):] if ph in _PLANNERS]
    steps = []
    for ph in reversed(phases):
        forward = {s.id: s for s in _PLANNERS[ph].plan(spec, cats.for_phase(ph), cats)}
        steps += [_undoes(s, forward) for s in _PLANNERS[ph].rollback(spec, cats.for_phase(ph), cats.live, cats)]
    return Plan(tuple(steps))


def _undoes(step: Step, forward: dict[str, Step]) -> Step:
    """STEP with the forward steps it undoes (Step.undoes): those of its reverts that change anything, when its
    operation is the reverse of one of them and each commits together with its "done" record (one transaction; the
    policy rewrite too, recorded done in the transaction that commits it). Left unknown otherwise: a concurrent
    index build or a batched fill that began may be half done. And, as their operations declare, those of its needs
    that are all or nothing (Step.atomic: one of them started and never done calls for no undo), and those of its
    forward steps that leave nothing behind unless done (Step.leave_nothing)."""
    quiet = tuple(r for r in dict.fromkeys((*step.needs, *step.reverts))
                  if r in forward and (forward[r].op.reads_only or forward[r].op.all_or_nothing))
    step = dataclasses.replace(step, leave_nothing=quiet, atomic=tuple(
        r for r in step.needs if r in quiet and not forward[r].op.reads_only))
    # (The steps only emitted files record, in place of the gates step, change nothing.)
    if step.when is not None or any(r not in forward and r not in contract.EMITTED_GATES for r in step.reverts):
        return step
    changes = [forward[r] for r in step.reverts if r in forward and not forward[r].op.reads_only]
    if not any(f.op.reverse() == step.op for f in changes):
        return step
    if not all(f.op.all_or_nothing for f in changes):
        return step
    return dataclasses.replace(step, undoes=tuple(f.id for f in changes))
