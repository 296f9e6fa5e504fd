"""`pgconverge emit`: the migration plan as Supabase migration files, reverse files and pgTAP tests."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from pgconverge.catalog import baseline
from pgconverge.cli.common import ConfigOpt, DsnOpt, JsonOpt, console, fail_cleanly, load_spec, print_json, target
from pgconverge.connection import connect
from pgconverge.emit import EMITTABLE, EmitError, check_dir, emit as write_files, emit_rollback as write_rollback


def _timestamp(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        raise EmitError(f"--timestamp {value!r} is not a 14-digit UTC time",
                        fix="write it as YYYYMMDDHHMMSS, e.g. 20250101120000") from None


@fail_cleanly
def emit(directory: Annotated[Path, typer.Argument(
             help="Directory to write into (your project's root: it gets supabase/migrations, supabase/rollback, "
                  "supabase/tests/database). Must be new or empty unless --phase, --rollback-to or --force.",
             show_default=False)],
         dsn: DsnOpt = None, config_file: ConfigOpt = None, as_json: JsonOpt = False,
         through: Annotated[str, typer.Option(
             "--through", help=f"Last phase to write: one of {', '.join(EMITTABLE)}.")] = "contract",
         phase: Annotated[str | None, typer.Option(
             "--phase", help="Write this phase's files only, after the migrations already in DIRECTORY; works "
                             "from any state (earlier phases applied by files or by `pgconverge run`).",
             show_default=False)] = None,
         rollback_to: Annotated[str | None, typer.Option(
             "--rollback-to", help="Write the undo back to the start of this phase as new migrations, after the "
                                   "ones already in DIRECTORY.", show_default=False)] = None,
         force: Annotated[bool, typer.Option("--force", help="Write into a directory that is not empty.")] = False,
         timestamp: Annotated[str | None, typer.Option(
             "--timestamp", help="UTC time of the first file (YYYYMMDDHHMMSS); later files follow one second "
                                 "apart. Default: so that the last file is now, or one second after the latest "
                                 "migration already in DIRECTORY when that is later.", show_default=False)] = None
         ) -> None:
    """Write the migration plan as Supabase migration files, with reverse files and pgTAP tests.

    For teams that ship schema changes as SQL files instead of running
    `pgconverge run`. The plan is read from the database as `pgconverge
    plan` reads it (each phase from the catalog saved when it started);
    nothing is changed there.

    \b
    Phase by phase (recommended: emit a phase when you are about to apply
    it, so its files are planned from the database as it is then):
      pgconverge emit . --phase align     # then: supabase db push
      pgconverge emit . --phase expand    # then: supabase db push
      pgconverge emit . --phase switch    # ...
      pgconverge emit . --phase contract
    Each file records its steps in pgconverge's ledger, as `pgconverge
    run` does, so `pgconverge status`, `plan`, `verify` and `run` see
    what the files did, and files and `run` can be mixed. New files are
    dated after the latest migration already in supabase/migrations and
    never in the future.

    \b
    Written under DIRECTORY:
      supabase/migrations/VERSION_pgconverge_STEP.sql (VERSION: YYYYMMDDHHMMSS)
        one plan step per file, in plan order;
        a file that can run in a transaction is BEGIN/COMMIT with a short
        lock_timeout; CREATE/DROP INDEX CONCURRENTLY and each batched
        backfill (a CALL of a procedure that commits after every batch)
        run outside a transaction, each with its ledger records before and
        after it; every file can be applied again after an interruption
        (an index build drops the invalid index an interrupted build left)
      supabase/rollback/VERSION_pgconverge_STEP.down.sql
        what undoes each migration file; apply them latest first (or use
        --rollback-to, below)
      supabase/tests/database/pgconverge_*.test.sql
        pgTAP of the state the written files leave, and nothing else:
        `supabase test db` runs every file under supabase/tests. After
        contract: legacy columns, keys, indexes and triggers gone, legacy
        table and mapping archived, legacy helper retired, and for sample
        identities (picked from this database now) that each sees exactly
        its own rows in every policy table. After switch: new columns,
        keys, indexes, NOT NULLs, the new helper, RLS with old and new
        tokens. Tests of an earlier state are removed from there.
      pgconverge-tests/before_contract/pgconverge_*.test.sql
        (all phases at once only) pgTAP of the state after switch: run
        them after the switch files, before the contract files, with
        pg_prove -d "$DATABASE_URL" pgconverge-tests/before_contract/*.test.sql

    \b
    Applying, either:
      copy supabase/migrations/* into your project, then
        supabase db push
    or with psql, one file at a time in name order:
      for f in supabase/migrations/*.sql; do
        psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f "$f" || break; done
    A batched file (a CALL) must run outside a transaction block: psql
    does that, and so does `supabase db push` (checked with CLI 2.117.0,
    which sends a file's statements in one pipeline). A tool that wraps
    every file in BEGIN/COMMIT cannot: apply that file with psql, mark
    it applied (for the Supabase CLI: `supabase migration repair
    --status applied VERSION`) and go on, or run the phase with
    `pgconverge run`, which goes on from what the files recorded.

    \b
    Testing (pgTAP installed in the database):
      supabase test db
      pg_prove -d "$DATABASE_URL" supabase/tests/database/*.test.sql

    \b
    Rolling back, either as new migrations the CLI's history keeps:
      pgconverge emit . --rollback-to PHASE    # then: supabase db push
    or with the reverse files of the migrations applied, latest file first:
      for f in $(ls -r supabase/rollback/*.down.sql); do
        psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f "$f" || break; done
    A reverse file reads the ledger and refuses, changing nothing, when its
    migration was never applied (start from the latest one applied), or when
    a later reverse file that undoes part of its migration has not run: the
    files stopped part way through a phase. Use --rollback-to then.

    \b
    Contract drops and archives the legacy side. Its first files are
    gates that refuse, changing nothing, unless the switch is in place
    and nothing wrote to the legacy table or called the legacy helper
    since the runtime baseline the last switch file records. Before
    applying contract, run in CI:
      pgconverge audit code DIR --fail-on-findings
    To apply despite known runtime use:
      psql -c 'set pgconverge.accept_runtime_use = on' -f GATE_FILE
    A gate's error message says what failed and how to fix it.
    """
    if through not in EMITTABLE:
        raise typer.BadParameter(f"--through must be one of {', '.join(EMITTABLE)}")
    for name, value in (("--phase", phase), ("--rollback-to", rollback_to)):
        if value is not None and value not in EMITTABLE:
            raise typer.BadParameter(f"{name} must be one of {', '.join(EMITTABLE)}")
    if phase and rollback_to:
        raise typer.BadParameter("--phase and --rollback-to write different things: pass one of them")
    start = _timestamp(timestamp)
    check_dir(directory, force, adding=bool(phase or rollback_to))  # before connecting: costs nothing
    spec = load_spec(config_file)
    t = target(dsn)
    with connect(t) as conn:
        cats = baseline.load(conn, spec)
        if rollback_to:
            result = write_rollback(conn, spec, cats, directory, rollback_to, start=start)
        else:
            result = write_files(conn, spec, cats, directory, through=through, phase=phase, start=start, force=force)
    if as_json:
        print_json({"target": t.display, "directory": str(directory), "through": through, "phase": phase,
                    "rollback_to": rollback_to, **result.as_dict()})
        return
    console.print(f"wrote {len(result.migrations)} migration files, {len(result.rollback)} rollback files and "
                  f"{len(result.tests)} pgTAP files ({sum(n for _, n in result.tests)} assertions) under "
                  f"{directory}", highlight=False)
    for p in (result.migrations[0], result.migrations[-1]) if result.migrations else ():
        console.print(f"  {p}", highlight=False)
    if result.samples:
        console.print("sample identities for the RLS tests: " + ", ".join(
            f"{s.label} = legacy id {s.legacy}" for s in result.samples), highlight=False)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    if result.skipped:
        console.print(f"{len(result.skipped)} runner-only steps are described in comments instead of SQL "
                      "(see the files' headers)", highlight=False)
