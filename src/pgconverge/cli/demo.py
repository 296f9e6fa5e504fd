"""`pgconverge demo`: the whole story on the embedded Postgres."""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from psycopg import sql
from rich.markup import escape
from rich.table import Table

from pgconverge import config, embedded
from pgconverge.audit import runtime as runtime_audit
from pgconverge import inventory as inv
from pgconverge.catalog import baseline
from pgconverge.cli import inventory as inventory_cli
from pgconverge.cli.common import JsonOpt, command_line, console, err_console, fail_cleanly, print_json
from pgconverge.cli.progress import RichProgress
from pgconverge.connection import Target, connect
from pgconverge.execution import preflight_copy
from pgconverge.execution.runner import Runner
from pgconverge.fixtures.traffic import Traffic
from pgconverge.ledger.store import Ledger
from pgconverge.planning import plan as planner
from pgconverge.planning import switch
from pgconverge.verify import invariants, rls

DEMO_DB = "pgconverge_demo"
PHASES = ("align", "expand", "switch", "contract")


@fail_cleanly
def demo(
    scale: Annotated[float, typer.Option("--scale", min=0.0, help="Fixture size: 1 ≈ 2,000 customers.")] = 1.0,
    rls_sample: Annotated[int, typer.Option("--rls-sample", min=0,
                                            help="Identities whose RLS view is checked (0 = all).")] = 25,
    show_inventory: Annotated[bool, typer.Option("--inventory/--no-inventory",
                                                 help="Print the full inventory first.")] = False,
    clients: Annotated[int, typer.Option("--clients", min=0,
                                         help="Simulated application clients of each kind, old and new code "
                                              "(0 = no traffic).")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Run pgconverge end to end on the embedded Postgres with the bundled fixture.

    Re-creates the database pgconverge_demo on the embedded server, loads the Supabase-like
    fixture, shows what the migration will touch, preflights the whole plan and its rollback on a
    sampled copy (as `run` does), then runs align, expand, switch and contract
    with the gates of each phase, verifies the invariants and row level security after each,
    and prints a summary. Meanwhile simulated application clients write: old code (legacy token,
    customer_id, new customers as the WhatsApp flow creates them) from the start until the switch is
    done, new code (canonical column and token) from expand on; each runs cart → items → order →
    read-back flows as `authenticated`. Exits 1 if any check, client flow or row written by a client
    (lost or linked to the wrong person) fails.
    """
    from pgconverge import fixtures

    started = time.monotonic()
    out = console if not as_json else err_console
    admin = embedded.ensure_running(database="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DB)))
    t = Target(embedded.with_database(admin, DEMO_DB), "embedded")
    spec = config.Spec()
    # The demo retires its old-code clients and takes the runtime baseline again just before contract; on its own
    # fixture it need not observe for the default window (15 min) first, and says so below.
    spec = replace(spec, migration=replace(spec.migration, rls_sample=rls_sample, observation_window=0.0))
    with connect(t) as conn:
        counts = fixtures.load(conn, scale=scale)
        cats = baseline.load(conn, spec)
        data = inv.build(spec, cats.live)
    out.print(f"[bold]pgconverge demo[/] — {sum(counts.values()):,} rows loaded into {t.dsn} (scale {scale})",
              highlight=False)
    if show_inventory and not as_json:
        inventory_cli.render(data)
    else:
        out.print(f"inventory: {len(data['foreign_keys'])} foreign keys to {data['legacy']['table']}, "
                  f"{len(data['policies'])} RLS policies on legacy names, "
                  f"{sum(len(f['indexes']) for f in data['foreign_keys'])} indexes to mirror", highlight=False)

    plan = planner.build(spec, cats)
    # The bundled edge-function sample still names the legacy side (on purpose: it shows the audit);
    # the demo accepts that so contract runs, and says how many references it would have blocked on.
    from pgconverge.audit import sample_code_dir
    from pgconverge.audit.code import audit_code

    findings = audit_code(sample_code_dir(), spec)
    traffic = Traffic(t.dsn, spec) if clients else None

    def before(ph: str) -> None:
        if traffic and ph == "contract":
            # New code is deployed everywhere: old code retires, and use of the legacy side from here on
            # is what the runtime gate must see.
            traffic.retire_old()
            runtime_audit.record_baseline(runner.work, spec, cats.for_phase("switch"))
            out.print("traffic: old-code clients retired; runtime baseline taken again", highlight=False)
        if ph == "contract":
            out.print("contract: observation window 0 s in the demo (migration.observation_window; a real run waits "
                      "15 min by default after the runtime baseline before contract)", highlight=False)

    def after(row: dict) -> None:
        if traffic and row["phase"] == "expand":
            traffic.start_new(clients)
            out.print(f"traffic: {clients} new-code clients writing ({spec.migration.new_column}; token with both "
                      "claims until the switch)", highlight=False)
        if traffic and row["phase"] == "switch":
            traffic.canonical_only()

    if preflight_copy.enabled():  # as `run` does: the whole plan and its rollback on a sampled copy first
        def stage(st) -> None:
            mark = "[green]ok[/]" if st.passed else "[red]FAILED[/]"
            out.print(f"preflight {st.name}: {mark} in {st.seconds:.1f}s — {escape(st.detail)}", highlight=False,
                      soft_wrap=True)
        checked = preflight_copy.run(spec, t, plan, cats, on_stage=stage)
        if not checked.passed:
            raise preflight_copy.refusal(checked)

    client = None
    again = command_line(["demo", "--scale", str(scale), "--rls-sample", str(rls_sample), "--clients", str(clients)])
    with Runner(t, spec, plan, progress=RichProgress(out, quiet=as_json), command="demo", catalogs=cats,
                accept=frozenset({"code-references"}), code_dirs=(str(sample_code_dir()),),
                resume=f"the demo starts afresh: {again}") as runner, \
            (traffic or contextlib.nullcontext()):
        if traffic:
            traffic.start_old(clients)
            out.print(f"traffic: {clients} old-code clients writing (legacy token, customer_id)", highlight=False)
        rows, ok = run_verified(runner, spec, plan, cats, rls_sample, on_phase=after, before_phase=before)
        if traffic:
            traffic.stop()
            client = traffic.record(runner.work, Ledger(runner.work, spec))
            ok &= not client["linkage_problems"] and not traffic.failures
        equivalence = Ledger(runner.work, spec).latest_snapshot("rls_equivalence") or {}
        html_path, md_path = write_report(runner.work, spec, embedded.data_dir().parent, "demo-report")
    elapsed = round(time.monotonic() - started, 1)
    if as_json:
        print_json({"database": t.dsn, "rows": counts, "phases": rows, "rls_equivalence": equivalence,
                    "clients": client,
                    "passed": ok, "seconds": elapsed, "report": {"html": str(html_path), "md": str(md_path)}})
    else:
        table = summary_table(rows)
        console.print(table)
        console.print(f"contract: the bundled edge-function sample still has {len(findings)} references to the "
                      "legacy side (`pgconverge audit code`); the demo accepted them, a real run would stop there",
                      highlight=False)
        if equivalence:
            console.print(f"switch: {equivalence['identities']} identities saw the same rows before and after, "
                          f"with old and new tokens ({equivalence['write_probes']} write probes), "
                          f"{len(equivalence['problems'])} differences", highlight=False)
        if client:
            for kind, c in client["summary"].items():
                console.print(f"clients ({kind} code): {c['flows']} flows, {c['failed']} failed, p50 {c['p50_ms']} ms, "
                              f"p99 {c['p99_ms']} ms, max {c['max_ms']} ms", highlight=False)
            console.print(f"clients: {client['rows_written']} rows written during the migration, "
                          f"{len(client['linkage_problems'])} lost or linked to the wrong person", highlight=False)
            for f in client["failures"][:5] + client["linkage_problems"][:5]:
                console.print(f"  [red]{escape(f)}[/]", highlight=False)
        console.print(f"report: {html_path} (and {md_path.name})", highlight=False)
        color = "green" if ok else "red"
        console.print(f"\n[{color}]demo {'passed' if ok else 'FAILED'} in {elapsed}s[/]; look further:",
                      highlight=False)
        for line in look_further(t, embedded.data_dir()):
            console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    if not ok:
        raise typer.Exit(1)


def look_further(t: Target, data_dir: Path) -> list[str]:
    """The commands that reach the demo's database afterwards, and how to stop the server it left running.

    The demo's database is not the one a command without --dsn reaches (that is the embedded server's
    `postgres` database, or $DATABASE_URL), so every command names it with --dsn.
    """
    from pgconverge.cli.common import command_line

    def cmd(*args: str) -> str:
        return command_line(list(args), Target(t.dsn, "--dsn"))
    return [f"{cmd('status', '--steps')}    # every step, as the ledger recorded it",
            f"{cmd('verify', '--rls')}    # the invariants and row level security, checked again",
            f"{cmd('report', '--html', 'demo-report.html')}    # the run report, written again",
            f"{cmd('rollback', 'align')}    # every phase undone, back to the fixture as loaded",
            f"psql {shlex.quote(t.dsn)}",
            f"the embedded Postgres ({data_dir}) keeps running for these; stop it with `pgconverge embedded stop` "
            "(from this directory)"]


def run_verified(runner: Runner, spec: config.Spec, plan, cats, rls_sample: int,
                 on_phase: Callable[[dict], None] | None = None,
                 before_phase: Callable[[str], None] | None = None) -> tuple[list[dict], bool]:
    """Run every phase with RUNNER, checking the invariants and row level security after each.

    Returns one summary row per phase and whether every check passed. Shared by demo and rehearse.
    """
    rows, ok = [], True
    for ph in PHASES:
        if before_phase:
            before_phase(ph)
        t0 = time.monotonic()
        results = runner.run_phase(ph)
        seconds = time.monotonic() - t0
        done = [p for p in PHASES[:PHASES.index(ph) + 1]]
        checks = invariants.run(runner.work, plan, ["contract"] if ph == "contract" else done)
        tables = switch.policy_tables(plan)
        summary, problems = rls.check_now(runner.work, spec, cats.for_phase("switch"), tables,
                                          switched=ph in ("switch", "contract"), sample_size=rls_sample,
                                          contracted=(ph == "contract"))
        passed = all(c.passed for c in checks) and not problems
        ok &= passed
        rows.append({"phase": ph, "steps": len(results), "seconds": round(seconds, 2),
                     "invariants": [c.step for c in checks if c.passed],
                     "failed": [c.step for c in checks if not c.passed] + problems[:5],
                     "rls_identities": summary["identities"], "passed": passed})
        if on_phase:
            on_phase(rows[-1])
    return rows, ok


def write_report(conn: psycopg.Connection, spec: config.Spec, out_dir: Path, stem: str,
                 extra: dict | None = None) -> tuple[Path, Path]:
    """Write the run report of the database behind CONN (plus EXTRA sections) as STEM.html and STEM.md in OUT_DIR."""
    from pgconverge.report import data as report_data, html as report_html, markdown as report_md

    report = {**report_data.collect(conn, spec), **(extra or {})}
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out_dir / f"{stem}.html", out_dir / f"{stem}.md"
    html_path.write_text(report_html.render(report), encoding="utf-8")
    md_path.write_text(report_md.render(report), encoding="utf-8")
    return html_path, md_path


def summary_table(rows: list[dict]) -> Table:
    """The per-phase summary: steps, seconds and what was verified (or what failed)."""
    table = Table(title="Summary", title_justify="left")
    for col in ("phase", "steps", "seconds", "verified after the phase"):
        table.add_column(col, overflow="fold")
    for r in rows:
        verdict = ("[green]" + ", ".join(r["invariants"]) + f", RLS of {r['rls_identities']} identities[/]"
                   if r["passed"] else "[red]FAILED: " + "; ".join(r["failed"]) + "[/]")
        table.add_row(r["phase"], str(r["steps"]), f"{r['seconds']:.1f}", verdict)
    return table
