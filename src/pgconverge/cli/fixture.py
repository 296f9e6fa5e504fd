"""`pgconverge fixture`: the bundled Supabase-like schema and data."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from pgconverge.cli.common import DsnOpt, JsonOpt, console, fail_cleanly, print_json, target
from pgconverge.connection import connect

app = typer.Typer(help="The bundled Supabase-like fixture (customers, profiles, carts, orders, sessions, "
                       "RLS policies, claim helpers) used by the demo, the tests and the benchmarks.",
                  no_args_is_help=True)

ScaleOpt = Annotated[float, typer.Option(
    "--scale", min=0.0, help="Data volume: 1 ≈ 2,000 customers and ~35,000 rows in all; 500 ≈ 1M customers "
                             "and 3M rows in each of carts, orders and sessions.")]
StyleOpt = Annotated[str, typer.Option(
    "--helper-style", help="How the claim helpers read the JWT: claims_json (request.jwt.claims), "
                           "claim_setting (request.jwt.claim.<name>) or auth_jwt (auth.jwt()).")]


@app.command()
@fail_cleanly
def load(dsn: DsnOpt = None, scale: ScaleOpt = 1.0, seed: int = 42, helper_style: StyleOpt = "claims_json",
         as_json: JsonOpt = False) -> None:
    """Create the fixture schema and generate deterministic data into an empty database."""
    from pgconverge import fixtures

    t = target(dsn)
    started = time.monotonic()
    with connect(t) as conn:
        counts = fixtures.load(conn, scale=scale, seed=seed, helper_style=helper_style)
    elapsed = round(time.monotonic() - started, 2)
    if as_json:
        print_json({"target": t.display, "scale": scale, "seed": seed, "seconds": elapsed, "rows": counts})
        return
    console.print(f"loaded the fixture into {t.display} in {elapsed}s (scale {scale}, seed {seed})",
                  highlight=False)
    for table, n in counts.items():
        console.print(f"  {table:<28} {n:>10,}", highlight=False)
