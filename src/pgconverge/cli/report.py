"""`pgconverge report`: a run report (Markdown, HTML, JSON) read from the ledger alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pgconverge.cli.common import ConfigOpt, DsnOpt, JsonOpt, console, fail_cleanly, load_spec, print_json, target
from pgconverge.connection import connect
from pgconverge.report import data, html, markdown


@fail_cleanly
def report(dsn: DsnOpt = None, config_file: ConfigOpt = None, as_json: JsonOpt = False,
           md: Annotated[Path | None, typer.Option(
               "--md", help="Write the report as Markdown to this file.", show_default=False)] = None,
           html_file: Annotated[Path | None, typer.Option(
               "--html", help="Write the report as one self-contained HTML file (inline CSS and SVG charts).",
               show_default=False)] = None,
           ) -> None:
    """Report on the migration from the ledger: steps, SQL, locks, timings, retries, backfill
    throughput, identity decisions, phone audit, RLS equivalence, contract gates and row counts.

    Reads only the private schema; changes nothing. Without --md/--html/--json, prints the Markdown.
    """
    spec = load_spec(config_file)
    t = target(dsn)
    with connect(t) as conn:
        d = data.collect(conn, spec)
    d = {"target": t.display, **d}
    if md:
        md.write_text(markdown.render(d), encoding="utf-8")
    if html_file:
        html_file.write_text(html.render(d), encoding="utf-8")
    if as_json:
        print_json(d)
        return
    if not md and not html_file:
        print(markdown.render(d))
        return
    for what, path in (("Markdown", md), ("HTML", html_file)):
        if path:
            console.print(f"wrote {what} report to {escape(str(path))}", highlight=False)
