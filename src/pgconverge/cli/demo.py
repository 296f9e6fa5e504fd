"""`pgconverge demo`: the whole story on the embedded Postgres."""

from __future__ import annotations

import time
from typing import Annotated

import psycopg
import typer
from psycopg import sql

from pgconverge import config, embedded
from pgconverge import inventory as inv
from pgconverge.catalog.introspect import load_catalog
from pgconverge.cli import inventory as inventory_cli
from pgconverge.cli.common import JsonOpt, console, fail_cleanly, print_json
from pgconverge.connection import Target, connect

DEMO_DB = "pgconverge_demo"


@fail_cleanly
def demo(
    scale: Annotated[float, typer.Option("--scale", min=0.0, help="Fixture size: 1 ≈ 2,000 customers.")] = 1.0,
    as_json: JsonOpt = False,
) -> None:
    """Run pgconverge end to end on the embedded Postgres with the bundled fixture.

    Creates (or re-creates) the database pgconverge_demo on the embedded server, loads the
    Supabase-like fixture and shows the inventory of what the migration will touch.
    """
    from pgconverge import fixtures

    started = time.monotonic()
    admin = embedded.ensure_running(database="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DB)))
    t = Target(embedded.with_database(admin, DEMO_DB), "embedded")
    spec = config.Spec()
    with connect(t) as conn:
        counts = fixtures.load(conn, scale=scale)
        data = inv.build(spec, load_catalog(conn, spec))
    elapsed = round(time.monotonic() - started, 1)
    if as_json:
        print_json({"database": t.dsn, "rows": counts, "inventory": data, "seconds": elapsed})
        return
    console.print(f"[bold]pgconverge demo[/] — fixture loaded into {t.dsn} "
                  f"({sum(counts.values()):,} rows, scale {scale})", highlight=False)
    inventory_cli.render(data)
    console.print(f"\n[green]demo finished in {elapsed}s[/]; explore with: psql '{t.dsn}'", highlight=False)
