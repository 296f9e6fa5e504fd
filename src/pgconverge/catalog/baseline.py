"""The catalogs a migration is planned from: each phase's as it was when that phase started.

Planning from the live catalog half-way through a phase would see the phase's own changes
(a legacy column already nullable, policies already rewritten) and produce a different plan.
So the catalog read before a phase's first step is saved in the ledger, and that phase is
planned (and rolled back) from it; phases that have not started plan from the database as it
is now, so objects added meanwhile (a new policy, say) are not missed. A rollback discards the
saved catalogs of the phases it undoes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from pgconverge.catalog.introspect import load_catalog
from pgconverge.catalog.model import Catalog
from pgconverge.catalog.serialize import from_json, to_json
from pgconverge.config import Spec
from pgconverge.errors import CatalogError
from pgconverge.ledger.store import Ledger
from pgconverge.operations.base import PHASES


def _name(phase: str) -> str:
    return f"catalog_before_{phase}"


@dataclass
class Catalogs:
    saved: dict[str, Catalog] = field(default_factory=dict)
    live: Catalog | None = None

    def for_phase(self, phase: str) -> Catalog:
        if phase in self.saved:
            return self.saved[phase]
        if self.live is None:
            raise CatalogError(f"the database no longer matches the configuration, and phase {phase} has no saved "
                               "catalog to plan from", fix="check pgconverge.toml and the connection")
        return self.live

    @property
    def current(self) -> Catalog:
        """The live catalog when it can be read, else the latest saved one."""
        if self.live is not None:
            return self.live
        return self.saved[max(self.saved, key=PHASES.index)]


def load(conn: psycopg.Connection, spec: Spec) -> Catalogs:
    ledger = Ledger(conn, spec)
    saved = {}
    if ledger.exists():
        for ph in PHASES:
            data = ledger.latest_snapshot(_name(ph))
            if data:
                saved[ph] = from_json(data)
    if not saved:
        return Catalogs({}, load_catalog(conn, spec))  # errors in the configuration surface here
    try:
        live = load_catalog(conn, spec)
    except CatalogError:
        live = None  # e.g. the legacy table is archived: planning uses the saved catalogs
    return Catalogs(saved, live)


def save(ledger: Ledger, run_id: int, phase: str, cat: Catalog) -> None:
    ledger.snapshot(run_id, _name(phase), to_json(cat))


def discard(ledger: Ledger, run_id: int, phases: list[str]) -> None:
    for ph in phases:
        ledger.snapshot(run_id, _name(ph), None)
