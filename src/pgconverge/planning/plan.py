"""Assemble the whole plan from the phase planners."""

from __future__ import annotations

from pgconverge.catalog.model import Catalog
from pgconverge.config import Spec
from pgconverge.operations.base import PHASES, Plan
from pgconverge.planning import align, expand


_PLANNERS = {"align": align, "expand": expand}


def build(spec: Spec, cat: Catalog) -> Plan:
    """Every phase's steps, in order, from the configuration and the catalog alone."""
    return Plan(tuple(step for ph in PHASES if ph in _PLANNERS for step in _PLANNERS[ph].plan(spec, cat)))


def rollback(spec: Spec, cat: Catalog, to: str, live: Catalog | None = None) -> Plan:
    """The steps that undo every phase from the last back to (and including) TO, latest first.

    CAT is the catalog the migration was planned from; LIVE, when given, is the database as it is
    now, for what may have appeared since (new foreign keys to the canonical table, say).
    """
    phases = [ph for ph in PHASES[PHASES.index(to):] if ph in _PLANNERS]
    return Plan(tuple(step for ph in reversed(phases) for step in _PLANNERS[ph].rollback(spec, cat, live)))
