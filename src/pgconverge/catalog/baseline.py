"""The catalog a migration is planned from: the one saved when it started, else the live one.

Planning from the live catalog half-way through would see the migration's own changes
(a legacy column already nullable, mirrored indexes) and produce a different plan. The
catalog read before the first step is saved in the ledger and used until a rollback to
the start of align discards it.
"""

from __future__ import annotations

import psycopg

from pgconverge.catalog.introspect import load_catalog
from pgconverge.catalog.model import Catalog
from pgconverge.catalog.serialize import from_json, to_json
from pgconverge.config import Spec
from pgconverge.ledger.store import Ledger

SNAPSHOT = "baseline_catalog"


def load(conn: psycopg.Connection, spec: Spec) -> tuple[Catalog, str]:
    """Return (catalog, "baseline" | "live")."""
    ledger = Ledger(conn, spec)
    if ledger.exists():
        saved = ledger.latest_snapshot(SNAPSHOT)
        if saved:
            return from_json(saved), "baseline"
    return load_catalog(conn, spec), "live"


def load_live(conn: psycopg.Connection, spec: Spec) -> Catalog | None:
    """The catalog as it is now, or None when it no longer fits the spec (e.g. the legacy table is archived)."""
    from pgconverge.errors import CatalogError

    try:
        return load_catalog(conn, spec)
    except CatalogError:
        return None


def save(ledger: Ledger, run_id: int, cat: Catalog, conn: psycopg.Connection | None = None) -> None:
    ledger.snapshot(run_id, SNAPSHOT, to_json(cat), conn=conn)


def discard(ledger: Ledger, run_id: int) -> None:
    """After a full rollback the next run plans from the database as it is then."""
    ledger.snapshot(run_id, SNAPSHOT, None)
