"""`pgconverge report`: a run report (Markdown, HTML, JSON) read from the ledger alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pgconverge.cli.common import ConfigOpt, DsnOpt, JsonOpt, console, fail_cleanly, load_spec, print_json, target
from pgconverge.connection import connect
from pgconverge.errors import PgConvergeError
from pgconverge.outputs import first_unwritable
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
    bad = first_unwritable([p for p in (md, html_file) if p], make_parents=False)
    if bad is not None:  # before reading anything: the report is written whole or not at all
        raise PgConvergeError(f"cannot write the report to {bad[0]}: {bad[1]}",
                              fix="name a file in an existing directory you may write to")
    spec = load_spec(config_file)
    t = target(dsn)
    with connect(t) as conn:
        d = data.collect(conn, spec)
    d = {"target": t.display, **d}
    for path, render in ((md, markdown.render), (html_file, html.render)):
        if path:
            try:
                path.write_text(render(d), encoding="utf-8")
            except OSError as exc:
                raise PgConvergeError(f"cannot write the report to {path}: {exc}",
                                      fix="name a file in an existing directory you may write to") from None
    if as_json:
        print_json(d)
        return
    if not md and not html_file:
        print(markdown.render(d))
        return
    for what, path in (("Markdown", md), ("HTML", html_file)):
        if path:
            console.print(f"wrote {what} report to {escape(str(path))}", highlight=False)
