"""Assemble the whole plan from the phase planners."""

from __future__ import annotations

from pgconverge.catalog.model import Catalog
from pgconverge.config import Spec
from pgconverge.operations.base import Plan
from pgconverge.planning import align


def build(spec: Spec, cat: Catalog) -> Plan:
    """Every phase's steps, in order, from the configuration and the catalog alone."""
    return Plan(tuple(align.plan(spec, cat)))
