"""`pgconverge verify`: check the invariants of every finished phase, changing nothing."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.markup import escape

from pgconverge.catalog import baseline
from pgconverge.cli.common import ConfigOpt, DsnOpt, JsonOpt, console, fail_cleanly, load_spec, print_json, target
from pgconverge.connection import connect
from pgconverge.execution import privileges
from pgconverge.ledger.store import Ledger
from pgconverge.planning import plan as planner
from pgconverge.verify import invariants


@fail_cleanly
def verify(dsn: DsnOpt = None, config_file: ConfigOpt = None, as_json: JsonOpt = False,
           rls_check: Annotated[bool, typer.Option(
               "--rls", help="Also check row level security as role authenticated with real claims: no identity "
                             "sees another's rows, anonymous callers see nothing, and after the switch old and "
                             "new tokens of one identity see the same rows.")] = False,
           sample: Annotated[int | None, typer.Option(
               "--sample", min=0,
               help="Identities to check with --rls (0 = all). Default: migration.rls_sample.")] = None
           ) -> None:
    """Check the invariants of every finished phase; exit 1 if any fails, or if they prove nothing (a phase's checks
    judged no row: its tables are empty). The last line says how many rows each phase's checks judged.

    align: every legacy row has a mapping. expand: every dependent row's new id is the mapping
    of its legacy id, no row has a legacy id without a new one, the new foreign keys are
    validated and the new indexes valid; what align and expand installed (their triggers enabled,
    the new columns' NOT NULL, keys and indexes) is there as their plans made it. contract: every
    dependent row has the owner it had before the migration, and the new columns hold. Changes nothing: the invariants are read in one read-only snapshot.
    """
    started = time.monotonic()
    spec = load_spec(config_file)
    t = target(dsn)
    with connect(t) as conn:
        cats = baseline.load(conn, spec)
        plan = planner.build(spec, cats, refuse=False)  # read-only: checks what ran, whatever the shapes
        cat = cats.for_phase("switch")
        ledger = Ledger(conn, spec)
        phases = invariants.finished_phases(plan, ledger)
        # A rollback stopped part way fails verify: the phases it was undoing are half undone, a state no phase's
        # checks describe (a check of the phases before it may read a column still to be restored), so none runs.
        stopped = invariants.unfinished_rollback(ledger)
        if stopped:
            phases = []
        nothing = invariants.nothing_to_verify(plan, ledger) if not phases and not stopped else None
        results = []
        if not nothing and phases:
            # A role that row level security filters would check part of the data, and pass: refuse instead.
            privileges.check_catalogs(conn, cats.live, *cats.saved.values(),
                                      outcome="nothing was checked: a check that cannot see every row could pass")
            results = invariants.run(conn, plan, phases) + invariants.unproven_policies(plan, ledger)
            if rls_check:
                results.append(_rls(conn, spec, cat, plan, phases, sample, shown=not as_json))
        results = stopped + results
    seen = invariants.summary(phases, results)
    outcome = invariants.NOTHING_TO_VERIFY if nothing else seen["outcome"]
    # "nothing to verify" (nothing ran, or all was rolled back) is no verdict on the migration: it exits 0.
    ok = outcome in (invariants.PASSED, invariants.NOTHING_TO_VERIFY)
    if as_json:
        print_json({"target": t.display, "phases": phases, "passed": ok, "outcome": outcome,
                    **({"nothing_to_verify": nothing} if nothing else {}),
                    **{k: v for k, v in seen.items() if k != "outcome"},
                    "checks": [r.__dict__ for r in results]})
    else:
        if nothing:
            console.print(f"nothing to verify: {escape(nothing)}", highlight=False)
        for r in results:
            mark = ("[yellow]n/a[/]" if r.not_applicable else "[red]proves nothing[/]" if r.proves_nothing
                    else "[green]pass[/]") if r.passed else "[red]FAIL[/]"
            console.print(f"{mark} {r.step}" + (f" [dim]({escape(r.note)})[/]" if r.note else ""), highlight=False)
            for p in r.problems[:20]:
                console.print("     " + escape(" — ".join(x for x in p if x)), highlight=False)
            if not r.passed:
                console.print(f"     fix: {escape(r.fix)}", highlight=False)
        if results:
            console.print(verdict(t.display, phases, results, time.monotonic() - started, seen), highlight=False,
                          soft_wrap=True)
            if outcome == invariants.NOTHING:
                console.print(f"fix: {escape(seen['fix'])}", highlight=False, soft_wrap=True)
    if not ok:
        raise typer.Exit(1)


def verdict(where: str, phases: list[str], results: list, seconds: float, seen: dict | None = None) -> str:
    """"verify passed on X in 1.2 s: 6 checks of align, expand; rows judged: align 60 in 1 table, …", "verify
    FAILED …: 1 of 6 checks failed (…)", or "verify PROVES NOTHING …; the checks of expand judged no row (public.orders: no rows); …"."""
    seen = seen or invariants.summary(phases, results)
    failed = [r.step for r in results if not r.passed]
    of = f"{len(results)} check{'s' if len(results) != 1 else ''}" + (f" of {', '.join(phases)}" if phases else "")
    na = [r.step for r in results if getattr(r, "not_applicable", "")]
    cov = seen["coverage"]
    judged = "; rows judged: " + ", ".join(
        f"{ph} {p['rows_examined']:,} in {len(p['tables'])} table{'s' if len(p['tables']) != 1 else ''}"
        if p["row_checks"] else f"{ph} none (its checks read the catalog)" for ph, p in cov["phases"].items()) \
        if cov["phases"] else ""
    if seen["outcome"] == invariants.FAILED:
        return (f"[red]verify FAILED[/] on {escape(where)} in {seconds:.1f} s: {len(failed)} of {of} failed "
                f"({escape(', '.join(failed))}){escape(judged)}; nothing was changed")
    if seen["outcome"] == invariants.NOTHING:
        return (f"[red]verify PROVES NOTHING[/] on {escape(where)} in {seconds:.1f} s: {of}{escape(judged)}; "
                f"{escape(seen['reason'])}; nothing was changed")
    unseen = cov["proves_nothing"]
    return (f"[green]verify passed[/] on {escape(where)} in {seconds:.1f} s: {of}"
            + (f" ({len(na)} not applicable: {escape(', '.join(na))})" if na else "") + escape(judged)
            + (f"; they prove nothing about {escape(invariants.why_tables(unseen))}" if unseen else "")
            + "; nothing changed")


def _rls_without_helper(conn, spec, cat) -> invariants.CheckResult:
    """verify --rls where the database has no RLS identity helper (legacy.helper = ""): not applicable, with what was
    looked at; a policy that reads the legacy side fails it."""
    from pgconverge.verify import rls

    with conn.transaction():
        summary, problems = rls.without_helper(conn, spec, cat)
    return invariants.CheckResult(
        "rls", f"row level security over {len(summary['tables'])} tables", not problems, [[p] for p in problems],
        "policies read the legacy side, and nothing rewrites them" if problems else "",
        "rewrite or drop the policies named so that they read neither the legacy table nor a legacy column, or set "
        "legacy.helper to the function they call for the caller's legacy id" if problems else "",
        summary["not_applicable"], {**summary, "rows_seen": None}, not_applicable=summary["not_applicable"])


def _rls(conn, spec, cat, plan, phases, sample, shown: bool = True) -> invariants.CheckResult:
    from pgconverge.cli.progress import RichProgress
    from pgconverge.planning.switch import policy_tables
    from pgconverge.verify import rls

    if not spec.has_helper:
        return _rls_without_helper(conn, spec, cat)
    tables = policy_tables(plan)
    bar = RichProgress(console, quiet=not shown)
    summary, problems = rls.check_now(conn, spec, cat, tables, "switch" in phases or "contract" in phases,
                                      spec.migration.rls_sample if sample is None else sample,
                                      contracted="contract" in phases,
                                      progress=lambda done, total: bar.checking(None, "RLS check", done, total,
                                                                                "identities"))
    if bar.bar is not None:
        bar.bar.stop()
    what = "old and new tokens agree, " if summary["switched"] else ""
    blind = bool(problems) and all(p.startswith("proves nothing") for p in problems)  # fails, as proving nothing
    # Per table: sampled owners, how many of them saw their own rows there, and the rows compared.
    by_table = summary["coverage_by_table"]
    probes = summary["write_probes_by_table"]
    owners_probed = summary["write_owners_by_table"]
    unknown = set(summary["owner_unknown"])
    covered = "; ".join((f"{t}: {c['owners_seeing_own']} of {c['owners']} owners see their rows, {c['rows_seen']} "
                         "rows compared" if c["owners"] else
                         f"{t}: owner unknown (no chain of single-column foreign keys leads from it to a table naming "
                         f"the owner), {c['rows_seen']} rows compared (its owners' view not checked)" if t in unknown
                         else f"{t}: the {c['owners_of_public_rows_only']} sampled owners there own public rows "
                         "only (rows every signed-in caller reads too), so none has a row of its own to be shown apart "
                         f"from others', {c['rows_seen']} rows compared (its owners' view not checked)"
                         if c.get("owners_of_public_rows_only")
                         else f"{t}: no sampled identity owns a row there, {c['rows_seen']} rows compared (its "
                         "owners' view not checked)")
                        + f", {probes.get(t, 0)} write probes"
                        + (f" ({owners_probed.get(t, 0)} owners inserting a copy of a row of their own)"
                           if c["owners"] and t not in unknown else "") for t, c in by_table.items())
    note = "" if summary["rows_seen"] else "no identity has rows in these tables: nothing was compared"
    spelled = summary["legacy_spelled_otherwise"]
    spelled = f"{rls.SPELLED_OTHERWISE}: {spelled} of {summary['identities']} identities" if spelled else ""
    note = "; ".join(x for x in (note, covered, spelled, *summary["not_proven"]) if x)
    empty = any(p.startswith("proves nothing: no row of") for p in problems)
    unsampled = any(p.startswith("proves nothing about") and "sampled identities is one of them" in p
                    for p in problems)
    return invariants.CheckResult(
        "rls", f"{what}isolation of {summary['identities']} identities over {len(tables)} tables",
        not problems, [[p] for p in problems],
        "the RLS check proves nothing: no row of its tables has an owner, so nothing was compared" if empty else
        "the RLS check proves nothing about some tables: none of their owners was sampled" if blind and unsampled
        else "the RLS check proves nothing: its test tokens saw no rows of their own" if blind else
        "row level security differs from what the migration promises" if problems else "",
        "verify again once the tables hold rows of their owners; on a database without such rows on purpose, "
        "contract needs --accept-unproven-rls" if empty else
        "verify again with a larger --sample (0 = every identity)" if blind and unsampled else
        "make the test tokens carry what the application's do, or fix the policy that hides its owners' rows "
        "(see the problem), then verify again" if blind else
        "roll back the switch (`pgconverge rollback switch`) and review the policies listed" if problems
        and summary["switched"] else
        "review the policies listed: no switch has run, so they are the application's own, as pgconverge found them"
        if problems else "",
        note, {"identities": summary["identities"], "rows_seen": summary["rows_seen"], "by_table": by_table,
               "write_probes": summary["write_probes"], "write_probes_by_table": probes,
               "write_owners_by_table": owners_probed,
               "rls_disabled": summary["rls_disabled"], "public_by_design": summary["public_by_design"],
               "not_proven": summary["not_proven"], "owner_unknown": summary["owner_unknown"],
               "legacy_spelled_otherwise": summary["legacy_spelled_otherwise"]}, proves_nothing=blind)
