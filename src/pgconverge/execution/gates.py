"""The contract gates: every reason not to drop the legacy side yet, each with what would unblock it."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING


from pgconverge.audit import runtime
from pgconverge.audit.code import scan
from pgconverge.catalog import calls, introspect, legacy_uses, mentions
from pgconverge.connection import connect
from pgconverge.config import show_identifier
from pgconverge.operations.base import Step
from pgconverge.planning import expand
from pgconverge.execution.sql import archive_access
from pgconverge.verify import invariants

if TYPE_CHECKING:
    from pgconverge.execution.runner import Runner, StepResult

CODE = "code-references"
RUNTIME = "runtime-use"
# The switch's RLS check compared nothing because no row of its tables has an owner (a database without rows).
UNPROVEN_RLS = "unproven-rls"
# On the preflight's copy only: the copy holds a sample of rows, and may lack those the policies read to show an owner
# its own rows (memberships, rows a function reads that its body does not name); the switch's RLS check proving
# nothing there is noted and the copy goes on (the check on the target still runs, and still refuses).
COPY_UNREAD = "copy-unread"


def evaluate(runner: Runner) -> list[dict]:
    """All gates, passed or not: [{gate, passed, details, unblock}]."""
    spec = runner.spec
    cat = runner.catalogs.for_phase("contract")
    out = []
    # Counters first: the checks below read tables, and this backend's own reads must not count.
    rt = runtime.measure(runner.work, spec, cat, expanded=runner.catalogs.saved.get("expand"))
    runtime_gate = runtime_use_gate(rt, RUNTIME in runner.accept)

    out.append(switch_gate(runner))
    # A reference expand did not plan is named by contract's dependency check, with the fix that holds after the
    # switch, beside the other objects made on the legacy side since expand
    results = [r for r in invariants.run(runner.work, runner.plan, ["align", "expand"])
               if r.step != expand.REFERENCES]
    bad = [f"{r.step}: " + "; ".join(" — ".join(x for x in p if x) for p in r.problems[:5])
           for r in results if not r.passed]
    ops = {s.id: s.op for s in runner.plan.steps}
    for sid in {x for r in results if not r.passed for x in getattr(ops.get(r.step), "redo", ())}:
        # Sent back, so that re-running expand does it again (its backfill fills the rows found missing).
        runner.ledger.event(runner.run_id, sid.split(".")[0], sid, "reverted", message="to be done again: the "
                            "contract gate found its invariants broken")
    redone = sorted({x for r in results if not r.passed for x in getattr(ops.get(r.step), "redo", ())})
    fixes = [f for f in dict.fromkeys(r.fix or getattr(ops.get(r.step), "fix", "") for r in results
                                      if not r.passed) if f]
    out.append({"gate": "invariants", "passed": not bad, "details": bad, "unblock": (
        expand.sent_back(redone, "contract") if redone else "")
        + ("; for what that does not fix: " if redone and fixes else "") + "; ".join(fixes)
        or "run `pgconverge verify` and fix what it names"})

    found, unaudited = [], []
    for d in runner.code_dirs:
        if not Path(d).exists():
            unaudited.append(f"--code {d} does not exist: nothing was audited there")
            continue
        result = scan(Path(d), spec)
        found += [(d, f) for f in result.findings]
        if result.proves_nothing:
            unaudited.append(f"--code {d}: no file there is in a language the audit reads (.ts, .tsx, .js, .jsx, "
                             ".mjs, .cjs, .py, .sql), so the audit proves nothing about it")
        if result.unread:
            unaudited.append(f"--code {d}: {len(result.unread)} file(s) in languages the audit does not parse name "
                             "legacy names, not judged: " + ", ".join(result.unread[:SHOWN]))
        if result.unproven:
            unaudited.append(f"--code {d}: {len(result.unproven)} file(s) skipped, not proven clean: "
                             + ", ".join(f"{rel} {why}" for rel, why in result.unproven[:SHOWN]))
    watched = {spec.legacy.table.name, *(d.fk.columns[0] for d in cat.dependents),
               *((spec.legacy.helper.name,) if spec.has_helper else ())}
    live = runner.catalogs.live
    # Each function with the names it uses and where; a name the parse of its body cannot tell from another use of
    # the same word (a JSON key, a variable) is kept, saying why.
    functions = [f"database function {f.signature} uses legacy names: {legacy_uses.describe(uses)}"
                 for f in (live.functions if live else ())
                 if f.name not in (spec.legacy.helper, spec.canonical.helper)
                 and f.name.schema != spec.migration.private_schema and mentions.find(f.code, watched)
                 and (uses := legacy_uses.of_spec(f, spec, cat))]
    views, looked_at = view_references(spec, live)
    jobs = cron_jobs(runner.work, watched)
    code = unaudited + code_details(found, functions, views, jobs, looked_at)
    if not runner.code_dirs:
        code.insert(0, "no application code was audited: pass its directory with --code DIR (repeatable)")
    accepted = CODE in runner.accept
    fix = [] if runner.code_dirs and not unaudited else [
        "run contract again with --code DIR naming your application's source (and check by hand the files the audit "
        "does not read)"]
    if found:
        listing = " and ".join(f"`pgconverge audit code {shlex.quote(d)}`" for d in runner.code_dirs)
        fix.append(f"update the code named (each reference says what to write instead; {listing} lists them all)")
    if functions or views or jobs:
        fix.append("replace the database functions, views and scheduled jobs named so they no longer use the legacy "
                   "names")
    out.append({"gate": "no code references", "passed": not code or accepted, "accepted": accepted and bool(code),
                "details": code, "references": len(found) + len(functions) + len(views) + len(jobs),
                "coverage": {"views": looked_at, "views_reading_legacy": len(views)},
                "unblock": ", ".join(fix) + " — or pass --accept-code-references to contract anyway"})

    out.append(runtime_gate)

    out.append(archive_gate(runner))

    from pgconverge.planning.switch import by_auth_user

    if not spec.has_helper:
        out.append({"gate": "canonical helper stands alone", "passed": True, "not_applicable": NO_HELPER_GATE,
                    "details": [NO_HELPER_GATE], "unblock": ""})
        return out
    leaning = standalone(runner)
    out.append({"gate": "canonical helper stands alone", "passed": not leaning, "details": leaning,
                "unblock": f"replace {spec.canonical.helper}() by a definition that finds the caller's "
                           f"{spec.canonical.table} row without {spec.legacy.table} or the mapping (for a lookup by "
                           f"auth.uid(): {by_auth_user(spec, cat)}), then run contract again"})
    return out


# The helper gate where the database has none (legacy.helper = ""): nothing was looked at, and it says so.
NO_HELPER_GATE = ("not applicable: no RLS identity helper (legacy.helper = \"\"), so no canonical helper to read the "
                  "legacy table or the mapping")

SHOWN = 20  # references listed in a gate's details; the count says how many there are in all


def view_references(spec, live) -> tuple[list[str], int]:
    """The views over the legacy, canonical and dependent tables (and over those views) that read the legacy table
    or a legacy column (planning/shapes.view_readers) or call the legacy helper, each with what it reads; and how
    many views were looked at. The others read only columns contract leaves, and pass."""
    from pgconverge.planning.shapes import view_readers

    if live is None:
        return [], 0
    reads = {v.name: f"reads {', '.join(what)}" for v, what in view_readers(live)}
    out = []
    for v in live.views:
        why = [reads[v.name]] if v.name in reads else []
        if spec.has_helper and mentions.find(v.definition, {spec.legacy.helper.name}):
            why.append(f"calls the legacy helper {spec.legacy.helper}()")
        if why:
            out.append(f"{v.kind} {v.name} {' and '.join(why)}")
    return out, len(live.views)


def cron_jobs(conn, watched: set[str]) -> list[str]:
    """pg_cron's scheduled jobs whose command names the legacy table, a legacy column or the legacy helper: after
    contract each run of one would fail (the table archived, the column dropped), with nobody there to see it."""
    import psycopg

    there = conn.execute("select exists (select 1 from pg_catalog.pg_class c join pg_catalog.pg_namespace n on "
                         "n.oid = c.relnamespace where n.nspname = 'cron' and c.relname = 'job')").fetchone()[0]
    if not there:
        return []
    try:
        with conn.transaction():  # jobs of this database only (pg_cron keeps them all in one)
            jobs = conn.execute("select jobid, coalesce(jobname, ''), command from cron.job "
                                "where database = pg_catalog.current_database() order by jobid").fetchall()
    except psycopg.Error as exc:  # no USAGE on schema cron, or its row level security with row_security off
        return [f"pg_cron's jobs could not be read ({str(exc).strip().splitlines()[0]}): their commands were not "
                "checked for legacy names; grant this role USAGE on schema cron and SELECT on cron.job (with "
                "BYPASSRLS), or check them yourself"]
    return [f"pg_cron job {jid}{f' ({name})' if name else ''} names {', '.join(sorted({m.name for m in found}))}: "
            f"{' '.join(command.split())[:120]}"
            for jid, name, command in jobs if (found := mentions.find(command, watched))]


def code_details(found: list, functions: list[str], views: list[str], jobs: list[str] = (),
                 looked_at: int | None = None) -> list[str]:
    """The code gate's details: each kind counted, then its first SHOWN ("75 references in 12 files of
    ./app; first 20: …"), so a run that finds many stays readable and still says how many there are. Views are
    counted against LOOKED_AT, the views over the legacy, canonical and dependent tables read."""
    out: list[str] = []
    if found:
        files = {(d, f.path) for d, f in found}
        dirs = ", ".join(dict.fromkeys(d for d, _ in found))
        n = len(found)
        out.append(f"{n} reference{'s' if n != 1 else ''} to legacy names in {len(files)} "
                   f"file{'s' if len(files) != 1 else ''} of {dirs}" + (f"; first {SHOWN}:" if n > SHOWN else ":"))
        out += [f"{f.path}:{f.line}:{f.column} {f.category} {f.name} → {f.suggestion}"
                + (f" ({f.reason})" if f.reason else "") for _, f in found[:SHOWN]]
    if functions:
        out.append(f"{len(functions)} database function(s) mention legacy names"
                   + (f"; first {SHOWN}:" if len(functions) > SHOWN else ":"))
        out += functions[:SHOWN]
    if views:
        of = (f" of the {looked_at} over the legacy, canonical and dependent tables (or over such views)"
              if looked_at is not None else "")
        out.append(f"{len(views)} view(s){of} read the legacy table or a legacy column (the others read only columns "
                   "contract leaves)" + (f"; first {SHOWN}:" if len(views) > SHOWN else ":"))
        out += views[:SHOWN]
    if jobs:
        out.append(f"pg_cron's scheduled jobs, {len(jobs)} finding(s)" + (f"; first {SHOWN}:" if len(jobs) > SHOWN
                                                                           else ":"))
        out += jobs[:SHOWN]
    return out


def _flat(details: list[str]) -> str:
    """DETAILS on one line: a heading that ends in ":" is followed by what it heads, the rest by commas."""
    out = ""
    for d in details:
        out += (" " if out.endswith(":") else ", " if out else "") + d
    return out


def _switch_gate_without_helper(runner: Runner) -> dict:
    """The switch gate where the database has no RLS identity helper: nothing to compare, read again now (a policy
    that reads the legacy side, made since the switch, fails it)."""
    from pgconverge.verify import rls

    with connect(runner.target, application_name="pgconverge:rls-gate") as conn:
        summary, problems = rls.without_helper(conn, runner.spec, runner.catalogs.for_phase("switch"))
    coverage = {"identities": 0, "rows_seen": None, "policies": summary["policies"], "tables": summary["tables"]}
    if problems:
        return {"gate": "switch verified", "passed": False, "details": problems, "coverage": coverage,
                "unblock": "rewrite or drop the policies named so that they read neither the legacy table nor a "
                           "legacy column (with legacy.helper = \"\" nothing rewrites them), then run contract again"}
    return {"gate": "switch verified", "passed": True, "not_applicable": summary["not_applicable"],
            "details": [summary["not_applicable"]], "coverage": coverage, "unblock": ""}


def switch_gate(runner: Runner) -> dict:
    """RLS proven after the switch: by the switch's own before/after comparison, or, where that compared no rows
    or is missing (the switch applied from emitted files), by the same check `verify --rls` makes, run now on the
    live policies (old and new tokens of every sampled identity see the same rows, none another's)."""
    from pgconverge.planning.switch import policy_tables
    from pgconverge.verify import rls

    unblock = "run `pgconverge run switch` (it verifies RLS equivalence) or `pgconverge verify --rls`"
    if runner.ledger.unproven("switch.policies"):
        return {"gate": "switch verified", "passed": False, "unblock": (
                    "run `pgconverge run switch` again: it puts the original policies back and rewrites and checks "
                    "them again"),
                "details": ["the policies were rewritten, but the run stopped before their equivalence check "
                            "finished: nothing proves the rewrite"]}
    if not runner.spec.has_helper:
        return _switch_gate_without_helper(runner)
    eq = runner.ledger.latest_snapshot("rls_equivalence")
    if eq and eq.get("problems"):
        return {"gate": "switch verified", "passed": False, "details": eq["problems"][:10], "unblock": unblock}
    # Tables whose old policy scans a table per caller were compared for fewer tokens: say so where it passes.
    partial = [f"{t}: compared for {v['tokens_checked']} of {v['tokens']} tokens (its old policy scans a table "
               f"per caller, {v['first_token_s']} s each)" for t, v in ((eq or {}).get("scan_bound") or {}).items()]
    # The tables of accepted policies are rewritten by hand after the switch, which did not compare them: whatever
    # the switch's own result, they are read now, on the live policies.
    by_hand = next(s.op.checked for s in runner.plan.steps if s.id == "switch.policies")
    if eq and eq.get("rows_seen") not in (0, None) and not eq.get("proves_nothing") and not by_hand:
        return {"gate": "switch verified", "passed": True, "details": partial + (eq.get("not_proven") or []),
                "unblock": unblock,
                "coverage": {"identities": eq.get("identities"), "rows_seen": eq.get("rows_seen"),
                             "by_table": eq.get("coverage_by_table")}}
    why = ("no RLS equivalence result recorded (the switch was applied from files)" if not eq else
           "the switch's RLS check saw no rows for any identity" if not eq.get("rows_seen") else
           f"the policies of {', '.join(by_hand)} were left to be rewritten by hand (migration.accept_policies), "
           "after the switch's own check")
    tables = policy_tables(runner.plan)
    cat = runner.catalogs.for_phase("switch")
    # A connection of its own: the work connection reads with row_security off, and the check needs the policies.
    # The same capture as `verify --rls` after the switch, on one snapshot, and the switch's coverage rule.
    with connect(runner.target, application_name="pgconverge:rls-gate") as conn:
        with conn.transaction():
            conn.execute("set transaction isolation level repeatable read")
            targets = rls.targets(runner.spec, cat, tables)
            identities = rls.sample_covering(conn, runner.spec, cat, targets, runner.spec.migration.rls_sample)
            cap = rls.capture(conn, runner.spec, targets, identities, legacy=True, canonical=True)
            covered = rls.coverage(conn, runner.spec, cat, identities, cap)
            owned = not covered["owning"] and rls.owned_rows_exist(conn, runner.spec, cat, targets, False)
            by_table = rls.table_coverage(cap, identities)
            bare = [] if owned else rls.unsampled(conn, runner.spec, cat, targets, cap, identities, False)
            empty = not covered["owning"] and not owned and not rls.owned_tables(conn, runner.spec, cat, targets,
                                                                                 False)
            disabled = rls.rls_disabled(conn, [str(t) for t in tables])
            # Rows an identity sees and does not own that the policies as the switch began show it: the
            # application's design (a team's members see each other's rows), not a leak.
            own, design, own_notes = rls.own_policies_design(conn, runner.spec, cat, targets, cap, identities,
                                                             live_are_original=False)
    # As the switch read the original policies; the accepted tables' by their original definitions.
    shared, public = rls.recorded_design(runner.spec, cat, eq)
    problems = rls.consistency(cap, identities, shared, public, design)
    seen = rls.rows_seen(cap)
    hidden, not_proven = rls.hidden_from_owners(runner.spec, by_table)
    coverage = {"identities": len(identities), "rows_seen": seen, "owning": covered["owning"],
                "seeing_own": covered["seeing_own"], "checked_now": True, "by_table": by_table}
    if problems:
        return {"gate": "switch verified", "passed": False, "coverage": coverage, "unblock": unblock,
                "details": [f"{why}; checked now on the live policies: {len(problems)} problem(s)"] + problems[:10]}
    if hidden:  # a table where no sampled owner sees its own rows: old and new tokens agree on nothing there
        return {"gate": "switch verified", "passed": False, "coverage": coverage, "unblock": (
                    "fix the policy of each table named so its owners see their rows again (or the claims in "
                    "migration.token_claims, or the grants on what the policy reads), or list a table meant to be "
                    "unreadable to its owners in migration.rls_hidden_from_owners; then `pgconverge verify --rls`"),
                "details": [f"{why}; checked now on the live policies:"] + hidden}
    if bare:  # a table with owned rows whose owners the check could not look at
        return {"gate": "switch verified", "passed": False, "coverage": coverage, "unblock": (
                    "raise migration.rls_sample (0 = every identity), then run contract again"),
                "details": [f"{why}; checked now on the live policies:"] + bare}
    partial += not_proven + rls.design_notes(shared, public, disabled) + rls.own_policies_notes(own, True) + own_notes
    if covered["owning"] and covered["share"] < rls.MIN_COVERAGE:  # identities own rows, yet hardly any saw them
        return {"gate": "switch verified", "passed": False, "coverage": coverage, "unblock": (
                    "give migration.token_claims the claims the policies read (`pgconverge inventory` lists "
                    "them), then `pgconverge verify --rls` must see rows"),
                "details": [f"{why}; checked now: of {covered['owning']} sampled identities that own rows, "
                            f"{covered['seeing_own']} saw any of them — proves nothing"]}
    if owned:  # the sample missed every owner of a compared table's rows: nothing was compared
        return {"gate": "switch verified", "passed": False, "coverage": coverage, "unblock": (
                    "raise migration.rls_sample (0 = every identity), then run contract again"),
                "details": [f"{why}; checked now: none of the {len(identities)} sampled identities owns a row, "
                            "although rows have owners — proves nothing"]}
    if not covered["owning"]:  # no row of the policy tables has an owner: nothing was compared, so nothing proven
        accepted = UNPROVEN_RLS in runner.accept and empty
        return {"gate": "switch verified", "passed": accepted, "accepted": accepted, "coverage": coverage,
                "unblock": (
                    "run contract once the policy tables hold rows of their owners (`pgconverge verify --rls` then "
                    "compares them), or, where the database has no such rows on purpose (a new project), pass "
                    "--accept-unproven-rls to contract: nothing then shows that the rewritten policies let each "
                    "owner see its own rows and no one else's" if empty else unblock),
                "details": partial + [f"{why}; checked now: proves nothing: none of the {len(identities)} sampled "
                                      f"identities owns a row of {', '.join(str(t) for t in tables)}"
                                      + (" and no row there has an owner (the tables are empty, or their rows name no "
                                         "legacy row), so no identity's rows were compared" if empty else "")]}
    return {"gate": "switch verified", "passed": True, "coverage": coverage, "unblock": unblock,
            "details": partial + [f"{why}; checked now on the live policies: {len(identities)} identities, "
                                  f"{seen} rows, old and new tokens agree"]}


def runtime_use_gate(rt: runtime.RuntimeAudit, accepted: bool) -> dict:
    """The runtime gate: no use of the legacy side since the baseline, observed for the whole window.

    --accept-runtime-use accepts both: use it knows of, and a window cut short."""
    from pgconverge.config import format_duration

    blocked = rt.in_use + ([rt.window_detail()] if rt.window_open else []) + [
        f"not measured, so not shown unused: {b}" for b in rt.blind]
    unblock = []
    if rt.reset:  # counters below their baseline: the statistics were reset, nobody used the legacy side for it
        unblock.append("the server's statistics were reset after the runtime baseline ("
                       + (f"at {rt.reset_at}" if rt.reset_at else "time unknown")
                       + "), so use since the baseline was not measured: check that no old code runs, then take "
                         "the baseline again with `pgconverge audit runtime --rebaseline`"
                       + (" (or wait until the observation window has passed since the reset)"
                          if rt.reset_at and rt.observation_window > 0 else ""))
    elif rt.quiet:
        unblock.append("run contract once the application has run against this database for the observation window "
                       "(check its connection string)")
    elif rt.blind:
        unblock.append("give the gate its counters back (the `unavailable` lines say how for each)")
    if any(w["rows"] for w in rt.old_writes):
        unblock.append("update the code that writes " + ", ".join(
            f"{w['table']} with only {w['column']}" for w in rt.old_writes if w["rows"])
            + " to set " + ", ".join(sorted({w["new_column"] for w in rt.old_writes if w["rows"]}))
            + " (or both columns) and deploy it")
    if rt.in_use:
        unblock.append("find and update the callers still using the legacy side (`pgconverge audit runtime`), "
                       "then take the baseline again once the old code is retired "
                       "(`pgconverge audit runtime --rebaseline`)")
    if rt.window_open:
        left = rt.window_left_s
        unblock.append((f"wait {format_duration(left)} and run contract again" if left is not None else
                        "take a runtime baseline and wait for the observation window")
                       + f", or shorten the window: migration.observation_window (now "
                       f"{format_duration(rt.observation_window)}) in the config")
    unblock.append("or pass --accept-runtime-use to contract anyway")
    return {"gate": "no runtime use since the switch", "passed": not blocked or accepted,
            "accepted": accepted and bool(blocked),
            "details": blocked + [f"reads of the legacy table (not counted as use; they include the "
                                  f"legacy foreign keys' checks): {', '.join(rt.reads)}"] * bool(rt.reads)
            + [f"unavailable: {u}" for u in rt.unavailable] + [rt.traffic_detail()] * (rt.baseline_at is not None)
            + [rt.helper_not_applicable] * bool(rt.helper_not_applicable),
            "unblock": "; ".join(unblock)}


def archive_gate(runner: Runner) -> dict:
    """Contract's last steps move the legacy table and the mapping into migration.archive_schema (creating it where
    it does not exist): Postgres lets them only with CREATE on that schema, or on the database to create it. Read now,
    as the role that runs contract, so that a refusal comes before the first drop rather than after the last."""
    schema = runner.spec.migration.archive_schema
    exists, owner, allowed, user, database = runner.work.execute(archive_access(schema)).fetchone()
    shown = show_identifier(schema)
    if allowed:
        return {"gate": "archive schema", "passed": True, "unblock": "",
                "details": [f"{shown} exists (owned by {owner}) and {user} may create tables in it; its own privileges "
                            "are left as they are" if exists
                            else f"{shown} does not exist; {user} may create it"]}
    who = show_identifier(user)
    if exists:
        detail = (f"the archive schema {shown} exists, owned by {owner}, and {user} may not create tables in it: "
                  "contract could not move the legacy table and the mapping there")
        unblock = (f"as {owner} (or a superuser): GRANT CREATE ON SCHEMA {shown} TO {who}; or set "
                   f"migration.archive_schema to a schema that does not exist yet (contract creates it) or "
                   f"one {user} may create tables in; then run contract again")
    else:
        detail = (f"the archive schema {shown} does not exist, and {user} may not create schemas in database "
                  f"{database}: contract could not create it")
        unblock = (f"as the database's owner (or a superuser): GRANT CREATE ON DATABASE "
                   f"{show_identifier(database)} TO {who}; or create the schema {shown} and GRANT "
                   f"CREATE ON SCHEMA {shown} TO {who}; or set migration.archive_schema to a schema {user} may "
                   "create tables in; then run contract again")
    return {"gate": "archive schema", "passed": False, "details": [detail], "unblock": unblock}


def standalone(runner: Runner) -> list[str]:
    """What the canonical helper reads that contract archives, itself or through the functions it calls.

    Every policy calls the canonical helper. Contract rewrites it to read the canonical claim alone when it
    can; a helper that looks the caller up (by auth.uid(), say) through the legacy table and the mapping
    cannot be rewritten so, and once contract archives both, every query through those policies fails.
    Read from the database now (the catalog the plan came from may predate the helper, or a hand-written one).
    """
    spec = runner.spec
    archived = {spec.legacy.table.name, spec.mapping_table.name}
    fn, _ = introspect.function_and_callees(runner.work, spec.canonical.helper)
    if fn is None:
        return []  # the switch gate reports a missing helper
    planned = next((s.op for s in runner.plan.steps if s.id == "contract.canonical_helper"), None)
    if planned is not None:  # contract replaces it first: what matters is what it is replaced by
        fn = calls.from_definition(fn, planned.definition)
    out = []
    for f in [fn, *introspect.callees(runner.work, [fn])]:
        names = sorted({m.name for m in mentions.find(f.code, archived)})
        if names:
            through = "" if f is fn else f" through {f.name}({f.identity_args})"
            out.append(f"{fn.name}() reads {', '.join(names)}{through}, which contract archives")
    return out


def run(runner: Runner, step: Step, resuming: bool) -> StepResult:
    from pgconverge.execution.runner import GateFailed, StepResult

    gates = evaluate(runner)
    runner.ledger.snapshot(runner.run_id, "contract_gates", gates)
    failed = [g for g in gates if not g["passed"]]
    if failed:
        # Every detail, or a count and the first few: a gate that names only some sends the user round again.
        # The ledger keeps one line (the report's tables show it); the terminal gets one detail a line.
        listed = "; ".join(f"{g['gate']}: " + (_flat(g["details"]) or "failed") for g in failed)
        runner.ledger.event(runner.run_id, step.phase, step.id, "error", message=listed)
        shown = "".join(f"\n  {g['gate']}: " + ("\n    ".join(g["details"]) or "failed") for g in failed)
        raise GateFailed(f"contract is blocked, nothing was dropped —{shown}",
                         fix=" / ".join(g["unblock"] for g in failed))
    runner._done(step, 1, [], gates=[g["gate"] for g in gates])
    return StepResult(step.id, "done", 0.0, detail={"accepted": [g["gate"] for g in gates if g.get("accepted")]})
