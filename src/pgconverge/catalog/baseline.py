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
from psycopg import sql

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
    # The catalog the latest expand was planned from, kept by the ledger after a rollback discarded it: what expand
    # made before (the partitions it gave the new column through their partitioned table), for messages only.
    last_expand: Catalog | None = None
    # References the application made since expand was planned that expand takes in (planning/expand.py take_in):
    # saved["expand"] holds them, and is saved over the ledger's by the run's first phase (with SEND_BACK, expand's
    # done checks whose query now reads them too, recorded to be done again).
    taken_in: tuple[str, ...] = ()
    send_back: tuple[str, ...] = ()

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
    last_expand = None
    if ledger.exists():
        for ph in PHASES:
            data = ledger.latest_snapshot(_name(ph))
            if data:
                saved[ph] = from_json(data)
        last_expand = saved.get("expand") or _last_expand(ledger)
    if not saved:
        live = load_catalog(conn, spec)  # errors in the configuration surface here
        _elsewhere(spec, live)
        return Catalogs({}, live, last_expand)
    try:
        live = load_catalog(conn, spec)
    except CatalogError:
        live = None  # e.g. the legacy table is archived: planning uses the saved catalogs
    return Catalogs(saved, live, last_expand)


def _last_expand(ledger: Ledger) -> Catalog | None:
    """The latest catalog expand was planned from, discarded since by a rollback (None where there is none, or it
    cannot be read)."""
    row = ledger.conn.execute(sql.SQL(
        "select data from {} where name = %s and data is not null and data <> 'null'::jsonb "
        "order by id desc limit 1").format(ledger.t("snapshots")), (_name("expand"),)).fetchone()
    if row is None:
        return None
    try:
        return from_json(row[0])
    except (KeyError, TypeError, ValueError):
        return None


def _elsewhere(spec: Spec, cat: Catalog) -> None:
    """Refuse when pgconverge's own triggers on the legacy table or a dependent call functions of another private
    schema: a migration of these tables is under way there (a config whose migration.private_schema was edited, or
    another run's). This one would see no ledger, call the migration's column the application's own, and, planned
    again, run a second migration over the first (a second mapping, its triggers in place of the first's)."""
    own = spec.migration.private_schema
    for table in (cat.legacy, *(d.table for d in cat.dependents)):
        for t in table.triggers:
            if t.name.lstrip("!~").startswith("pgconverge") and t.function.schema != own:
                raise CatalogError(
                    f"a migration of {cat.legacy.name} is under way with migration.private_schema = "
                    f"{t.function.schema!r} (trigger {t.name} on {table.name} calls {t.function}), and this "
                    f"configuration says {own!r}: a migration's private schema holds its ledger and mapping, and "
                    "cannot change while it runs; nothing was changed",
                    fix=f"set migration.private_schema = \"{t.function.schema}\" again (and keep the rest of that "
                        "configuration); to start another migration, roll that one back first with its own "
                        "configuration")


def save(ledger: Ledger, run_id: int, phase: str, cat: Catalog) -> None:
    ledger.snapshot(run_id, _name(phase), to_json(cat))


def discard(ledger: Ledger, run_id: int, phases: list[str]) -> None:
    for ph in phases:
        ledger.snapshot(run_id, _name(ph), None)


def unfinished_rollback(ledger: Ledger) -> dict | None:
    """The rollback that stopped part way, if the latest step recorded is one of its run's: {"phase": the earliest
    phase it undoes, "run_id", "step": the latest step it recorded, "event": that record's kind}; None otherwise.

    A rollback discards the saved catalogs of the phases it undoes after its last step (Runner.run_rollback), so while
    one of them is still there it has steps (or that last bookkeeping) left, wherever it stopped: inside a step, or
    between two, its forward steps then looking half undone. `pgconverge rollback PHASE` goes on from there."""
    if not ledger.exists():
        return None
    row = ledger.conn.execute(sql.SQL(
        "select e.run_id, e.step, e.event, r.command from {e} e join {r} r on r.id = e.run_id "
        "where e.event in ('start', 'done', 'error', 'interrupted', 'reverted') order by e.id desc limit 1").format(
        e=ledger.t("events"), r=ledger.t("runs"))).fetchone()
    if row is None:
        return None
    run_id, step, event, command = row
    words = (command or "").split()
    if words[:2] == ["rollback", "--to"]:  # runs recorded with the earlier spelling
        words = ["rollback", *words[2:]]
    if words[:1] != ["rollback"] or len(words) < 2 or words[1] not in PHASES:
        return None
    phase = words[1]
    if not any(ledger.latest_snapshot(_name(ph)) for ph in PHASES[PHASES.index(phase):]):
        return None
    own = ledger.conn.execute(sql.SQL(
        "select step, event from {} where run_id = %s and phase = 'rollback' "
        "and event in ('start', 'done', 'error', 'interrupted') order by id desc limit 1").format(ledger.t("events")),
        (run_id,)).fetchone()
    if own is not None:  # its own step, rather than a forward step it marked undone
        step, event = own
    return {"phase": phase, "run_id": run_id, "step": step, "event": event}
