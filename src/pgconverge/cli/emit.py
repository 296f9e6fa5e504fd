"""`pgconverge emit`: the migration plan as Supabase migration files, reverse files and pgTAP tests."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from pgconverge.catalog import baseline
from pgconverge.cli.common import ConfigOpt, DsnOpt, JsonOpt, console, fail_cleanly, load_spec, print_json, target
from pgconverge.connection import connect
from pgconverge.emit import EMITTABLE, EmitError, check_dir, emit as write_files


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
             help="Directory to write into; it gets supabase/migrations, supabase/rollback and "
                  "supabase/tests/database. Must be new or empty unless --force.", show_default=False)],
         dsn: DsnOpt = None, config_file: ConfigOpt = None, as_json: JsonOpt = False,
         through: Annotated[str, typer.Option(
             "--through", help=f"Last phase to write: one of {', '.join(EMITTABLE)}.")] = "contract",
         force: Annotated[bool, typer.Option("--force", help="Write into a directory that is not empty.")] = False,
         timestamp: Annotated[str | None, typer.Option(
             "--timestamp", help="UTC time of the first file (YYYYMMDDHHMMSS); later files follow one second "
                                 "apart. Default: now.", show_default=False)] = None) -> None:
    """Write the migration plan as Supabase migration files, with reverse files and pgTAP tests.

    For teams that ship schema changes as SQL files instead of running
    `pgconverge run`. The plan is read from the live database, as `pgconverge
    plan` reads it; nothing is changed there.

    \b
    Written under DIRECTORY:
      supabase/migrations/<YYYYMMDDHHMMSS>_pgconverge_<step>.sql
        one plan step per file, in plan order (align to contract);
        a file that can run in a transaction is BEGIN/COMMIT with a short
        lock_timeout; CREATE/DROP INDEX CONCURRENTLY and each batched
        backfill (a CALL of a procedure that commits after every batch)
        are alone in their files, with no BEGIN/COMMIT
      supabase/rollback/<same timestamp>_<same name>.down.sql
        what undoes each migration file; apply them latest first
      supabase/tests/database/pgconverge_*.test.sql
        pgTAP of the final state: legacy columns, keys, indexes and
        triggers gone, legacy table and mapping archived, legacy helper
        retired, and for sample identities (picked from this database
        now) that each sees exactly its own rows in every policy table
      supabase/tests/before_contract/pgconverge_*.test.sql
        pgTAP of the state after switch: new columns, keys, indexes,
        NOT NULLs, the new helper, RLS with old and new tokens; run
        these after the switch files, before the contract files
        (with --through switch they are in tests/database instead)

    \b
    Applying, either:
      copy supabase/migrations/* into your project, then
        supabase db push
    or with psql, one file at a time in name order:
      for f in supabase/migrations/*.sql; do
        psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f "$f" || break; done
    A batched file must run outside a transaction block: psql does
    that; a tool that wraps every file in a transaction cannot, so
    apply those files with psql.

    \b
    Testing (pgTAP installed in the database):
      supabase test db
      pg_prove -d "$DATABASE_URL" supabase/tests/database/*.test.sql

    \b
    Rolling back, latest file first:
      for f in $(ls -r supabase/rollback/*.down.sql); do
        psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f "$f" || break; done

    \b
    Contract drops and archives the legacy side. Its first files are
    gates that refuse, changing nothing, unless the switch is in place
    and nothing wrote to the legacy table or called the legacy helper
    since the runtime baseline the last switch file records. Before
    applying contract, run in CI:
      pgconverge audit code DIR --fail-on-findings
    To apply despite known runtime use:
      psql -c 'set pgconverge.accept_runtime_use = on' -f <gate file>

    Files applied this way are not in pgconverge's ledger, so
    `pgconverge status` and `run` do not see them.
    """
    if through not in EMITTABLE:
        raise typer.BadParameter(f"--through must be one of {', '.join(EMITTABLE)}")
    start = _timestamp(timestamp)
    check_dir(directory, force)  # before connecting: a wrong directory costs nothing
    spec = load_spec(config_file)
    t = target(dsn)
    with connect(t) as conn:
        cats = baseline.load(conn, spec)
        result = write_files(conn, spec, cats, directory, through=through, start=start, force=force)
    if as_json:
        print_json({"target": t.display, "directory": str(directory), "through": through, **result.as_dict()})
        return
    console.print(f"wrote {len(result.migrations)} migration files, {len(result.rollback)} rollback files and "
                  f"{len(result.tests)} pgTAP files ({sum(n for _, n in result.tests)} assertions) under "
                  f"{directory}", highlight=False)
    for p in (result.migrations[0], result.migrations[-1]) if result.migrations else ():
        console.print(f"  {p}", highlight=False)
    if result.samples:
        console.print("sample identities for the RLS tests: " + ", ".join(
            f"{s.label} = legacy id {s.legacy}" for s in result.samples), highlight=False)
    console.print(f"{len(result.skipped)} runner-only steps are described in comments instead of SQL "
                  "(see the files' headers)", highlight=False)
