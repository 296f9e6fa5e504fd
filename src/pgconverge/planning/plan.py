"""Assemble the whole plan from the phase planners."""

from __future__ import annotations

from pgconverge.catalog.baseline import Catalogs
from pgconverge.catalog.model import Catalog
from pgconverge.config import Spec
from pgconverge.operations.base import PHASES, Plan
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
    return Plan(tuple(step for ph in reversed(phases)
                      for step in _PLANNERS[ph].rollback(spec, cats.for_phase(ph), cats.live, cats)))
