"""Every check the ledger records, with what it looked at: a pass over nothing is "proves nothing", not "passed"."""

from __future__ import annotations

from typing import Any

PASSED, FAILED, NOTHING, NOT_RUN = "passed", "FAILED", "proves nothing", "not run"
NOT_MEASURED, ACCEPTED, ATTENTION, ROLLED_BACK = "not measured", "accepted", "attention", "rolled back"
# A check with nothing to look at by the database's design (no RLS identity helper): said so, never "passed".
NOT_APPLICABLE = "not applicable"
# Checks a ledger of an older version recorded without their coverage: shown as such, never as "proves nothing".
_KNOWN = {"align.coverage_gate": "legacy rows have a mapping row", "expand.invariants": "expand invariants",
          "contract.final_validation": "final validation (every row's new id = its legacy id's owner)"}
_NAMES = {"review": "policies left to review", "dependencies": "nothing else depends on what contract drops",
          "filled": "new column filled", "collisions": "no rows collide once merged"}


def n(x: Any) -> str:
    """A count with thousands separators ("—" when unknown)."""
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else "—" if x is None else str(x)


def table_counts(counts: dict[str, Any], only: dict[str, dict] | None = None) -> str:
    """"public.carts 72, public.sessions 0 of 608 (rows with customer_id set)": ONLY gives, for a table a check
    judges only some rows of, which rows and how many the table has."""
    def one(t: str, c: Any) -> str:
        if c is None:
            return f"{t} (absent)"
        part = (only or {}).get(t)
        return f"{t} {n(c)}" + (f" of {n(part.get('table_rows'))} (rows {part.get('which')})" if part else "")
    return ", ".join(one(t, c) for t, c in counts.items())


def _steps(d: dict) -> dict[str, dict]:
    return {s["id"]: s for p in d["phases"] for s in p["steps"]}


def _state(step: dict | None) -> str | None:
    return None if step is None else step["state"]


def build(d: dict) -> list[dict]:
    """[{check, step, status, looked_at, figures}] in the order the migration runs them."""
    steps = _steps(d)
    out: list[dict] = []
    counts_before = ((d.get("counts") or {}).get("before") or {}).get("rows") or {}
    linkage = d.get("linkage") or {}
    for p in d["phases"]:
        for s in p["steps"]:
            detail = s.get("detail") or {}
            if "examined" not in detail and s["id"] not in _KNOWN and not s["id"].endswith(".filled"):
                continue
            if s["id"] == "contract.final_validation":
                out.append(_final_validation(s, linkage))
                continue
            out.append(_check_step(s, detail, counts_before))
            if s["id"] == "align.coverage_gate":
                out.append(_match(d["identity"].get("align_report"), steps.get("align.report")))
                out.append(_phone_audit(d["identity"].get("phone_audit"), steps.get("align.phone_audit")))
                out.append(_linkage(linkage.get("before"), steps.get("align.linkage_before")))
    out.append(_rls(d.get("rls_equivalence"), steps.get("switch.policies")))
    out += _gates(d.get("contract_gates"))
    for c in out:  # what a rollback undid proves nothing about the database now
        if _state(steps.get(c["step"])) == "reverted":
            c["looked_at"] = "undone by a rollback" + (f"; when it ran: {c['looked_at']}"
                                                      if c["status"] != NOT_RUN else "")
            c["status"] = ROLLED_BACK
    return out


def _name(step_id: str) -> str:
    if step_id in _KNOWN:
        return _KNOWN[step_id]
    last = step_id.rsplit(".", 1)[-1]
    return _NAMES.get(last, last.replace("_", " "))


def _check_step(s: dict, detail: dict, counts_before: dict) -> dict:
    examined = detail.get("examined")
    row = {"check": _name(s["id"]), "step": s["id"], "figures": {"rows_by_table": examined}}
    if s["state"] == "failed":
        msg = "; ".join(str(e.get("message")) for e in s["errors"][-1:])
        return {**row, "status": FAILED, "looked_at": msg or "failed"}
    if s["state"] != "done":
        return {**row, "status": NOT_RUN, "looked_at": f"step {s['state']}"}
    if examined is None:
        return {**row, "status": PASSED, "looked_at": "coverage not recorded (ledger written by an older version)"}
    if not examined:
        return {**row, "status": PASSED, "looked_at": "the catalog (no table rows to count)"}
    total = sum(c or 0 for c in examined.values())
    # Tables it judges only some rows of (an invariant of the legacy id: the rows that have one), and of those, the
    # ones with rows but none it judges: nothing was checked there either.
    only = detail.get("judged_only") or {}
    blind = {t: only[t] for t, c in examined.items() if not c and (only.get(t) or {}).get("table_rows")}
    empty = [t for t, c in examined.items() if not c and t not in blind]
    row["figures"].update(rows=total, **({"judged_only": only} if only else {}))
    text = f"{n(total)} rows in {len(examined)} table(s): {table_counts(examined, only)}"
    unjudged = [f"{t}: {n(b['table_rows'])} rows, none {b.get('which')}" for t, b in blind.items()]
    if total == 0:
        if not blind:
            return {**row, "status": NOTHING, "looked_at": text + " — no rows, nothing was checked"}
        return {**row, "status": NOTHING, "looked_at": text + " — no row it judges ("
                + "; ".join(unjudged + ([f"no rows in {', '.join(empty)}"] if empty else [])) + "), nothing was checked"}
    if empty:
        text += f"; no rows in {', '.join(empty)}: nothing was checked there"
    for u in unjudged:
        text += f"; {u}: nothing was checked there"
    return {**row, "status": PASSED, "looked_at": text}


def _match(rep: dict | None, step: dict | None) -> dict:
    """What align's matching decided, from its report: every legacy row, by how it found its canonical row."""
    row = {"check": "identity match (every legacy row placed)", "step": "align.report", "figures": None}
    if rep is None:
        return {**row, "status": NOT_RUN, "looked_at": "no align report recorded"}
    methods = rep.get("methods") or {}
    total = sum(methods.values())
    row["figures"] = {"rows": total, "methods": methods,
                      **{k: (rep.get(k) or {}).get(c) for k, c in (("merged", "groups"),
                                                                   ("canonical_duplicates", "groups"),
                                                                   ("unusable_numbers", "rows"))}}
    text = (f"{n(total)} legacy rows: " + ", ".join(f"{k} {n(v)}" for k, v in sorted(methods.items()))
            + f"; {n(row['figures']['merged'] or 0)} merged groups, {n(row['figures']['unusable_numbers'] or 0)} "
              "without a usable match value")
    if total == 0:
        return {**row, "status": NOTHING, "looked_at": text + " — no legacy row, nothing was matched"}
    return {**row, "status": PASSED, "looked_at": text}


def _phone_audit(audit: dict | None, step: dict | None) -> dict:
    row = {"check": "phone key audit (SQL key vs phonenumbers)", "step": "align.phone_audit",
           "figures": {k: v for k, v in (audit or {}).items() if k != "sample"}}
    if audit is None:
        return {**row, "status": NOT_RUN if step is None else FAILED if _state(step) == "failed" else NOT_RUN,
                "looked_at": "no phone audit recorded"}
    checked = audit.get("checked", 0)
    text = (f"{n(checked)} distinct numbers, {n(audit.get('disagreements', 0))} disagree, "
            f"{n(audit.get('unexplained', 0))} outside the documented classes")
    if not checked:
        return {**row, "status": NOTHING, "looked_at": text + " — no number was compared"}
    return {**row, "status": ATTENTION if audit.get("unexplained") else PASSED, "looked_at": text}


def _linkage(counts: dict | None, step: dict | None) -> dict:
    row = {"check": "owner linkage recorded before the migration", "step": "align.linkage_before", "figures": counts}
    if counts is None:
        why = "not recorded" if step is None else "its table is gone (rolled back or archived)"
        return {**row, "status": NOT_RUN if _state(step) != "done" else PASSED, "looked_at": why}
    total = sum(c["rows"] for c in counts.values())
    text = f"{n(total)} dependent rows" + (f" in {len(counts)} table(s): " if counts else "") \
        + table_counts({t: c["rows"] for t, c in counts.items()})
    orphans = sum(c["no_owner"] for c in counts.values())
    if orphans:
        text += f"; {n(orphans)} with no owner"
    return {**row, "status": NOTHING if total == 0 else PASSED,
            "looked_at": text + (" — no rows: the final validation will compare nothing" if total == 0 else "")}


def _final_validation(s: dict, linkage: dict) -> dict:
    before, after = linkage.get("before"), linkage.get("after")
    examined = (s.get("detail") or {}).get("examined")
    row = {"check": _KNOWN[s["id"]], "step": s["id"], "figures": {"before": before, "after": after,
                                                                   "examined": examined}}
    if s["state"] == "failed":
        return {**row, "status": FAILED, "looked_at": "; ".join(str(e.get("message")) for e in s["errors"][-1:])}
    if s["state"] != "done":
        return {**row, "status": NOT_RUN, "looked_at": f"step {s['state']}"}
    compared = (s.get("detail") or {}).get("compared")
    if compared is not None:
        return _compared(row, compared)
    rows = (sum(c["rows"] for c in before.values()) if before is not None
            else sum(c or 0 for c in examined.values()) if examined else None)
    if rows is None:
        return {**row, "status": PASSED, "looked_at": "coverage not recorded (ledger written by an older version)"}
    row["figures"]["rows"] = rows
    text = f"{n(rows)} rows' owners compared"
    if before:
        text += " (" + table_counts({t: c["rows"] for t, c in before.items()}) + ")"
    if after:
        text += f"; {n(sum(c['rows'] for c in after.values()))} rows after"
    return {**row, "status": NOTHING if rows == 0 else PASSED,
            "looked_at": text + (" — no rows, nothing was compared" if rows == 0 else "")}


def _compared(row: dict, tally: dict) -> dict:
    """The final validation's verdict from its tally: rows checked against the mapping (those with a legacy id),
    and how align's rows fared, matched by their names; rows of a table without a key are not matched."""
    def total(k: str, keyless: bool = False) -> int:
        return sum(c.get(k, 0) for c in tally.values() if bool(c.get("keyless")) == keyless)

    checked = sum(c.get("checked", 0) for c in tally.values())
    row["figures"].update(rows=checked, compared=tally)
    text = f"{n(checked)} rows' new ids checked against the mapping"
    unlinked = sum(c.get("rows", 0) for c in tally.values()) - checked
    if unlinked:
        text += f" ({n(unlinked)} with no legacy id: nothing to check)"
    if any(not c.get("keyless") for c in tally.values()):
        text += (f"; of align's {n(total('before'))} rows, {n(total('kept'))} still have the owner it recorded, "
                 f"{n(total('moved'))} the application moved (another owner or none), "
                 f"{n(total('before') - total('kept') - total('moved'))} are gone")
    nokey = [t for t, c in tally.items() if c.get("keyless")]
    if nokey:
        text += (f"; {', '.join(nokey)} ({n(total('rows', True))} rows) have no key: checked row by row, not "
                 "matched with align's snapshot")
    return {**row, "status": NOTHING if checked == 0 else PASSED,
            "looked_at": text + (" — no row has a legacy id, nothing was checked" if checked == 0 else "")}


def _rls(eq: dict | None, step: dict | None) -> dict:
    row = {"check": "RLS equivalence (old token before = old and new token after)", "step": "switch.policies",
           "figures": eq}
    if eq is None:
        return {**row, "status": NOT_RUN, "looked_at": "not checked (the switch has not run)"}
    if eq.get("not_applicable"):
        policies = eq.get("policies") or []
        return {**row, "status": NOT_APPLICABLE, "looked_at": eq["not_applicable"] + (
            f"; looked at {n(len(eq.get('tables') or []))} tables ({', '.join(eq.get('tables') or [])}) and "
            f"{n(len(policies))} policies on them")}
    cov = eq.get("coverage") or {}
    parts = [f"{n(eq.get('identities', 0))} identities"]
    if cov:
        parts.append(f"{n(cov.get('owning', 0))} own rows, {n(cov.get('seeing_own', 0))} see their own with an "
                     f"old token ({100 * (cov.get('share') or 0):.0f}%)")
    if "tokens" in eq:
        parts.append(f"{n(eq['tokens'])} tokens")
    if "rows_seen" in eq:
        parts.append(f"{n(eq['rows_seen'])} rows compared")
    by_table = eq.get("rows_by_table")
    owners = eq.get("coverage_by_table") or {}
    if owners:  # rows compared, and how many of the table's sampled owners saw their own rows there
        parts.append("per table: " + ", ".join(
            f"{t} {n(c['rows_seen'])} ({n(c['owners_seeing_own'])} of {n(c['owners'])} owners see their own)"
            for t, c in owners.items()))
    elif by_table:
        parts.append("per table: " + table_counts(by_table))
    elif eq.get("tables"):
        parts.append(f"{len(eq['tables'])} tables")
    if "write_probes" in eq:
        parts.append(f"{n(eq['write_probes'])} write probes")
    for t, v in (eq.get("scan_bound") or {}).items():
        parts.append(f"{t} checked for {v['tokens_checked']} of {v['tokens']} tokens (its policy scans a table per "
                     f"caller, {v['first_token_s']} s each)")
    parts += eq.get("not_proven") or []
    text = "; ".join(parts)
    problems = eq.get("problems") or []
    if eq.get("proves_nothing") or not eq.get("identities") or eq.get("rows_seen") == 0:
        return {**row, "status": NOTHING, "looked_at": text + " — no identity saw a row: nothing was compared"}
    if problems:
        return {**row, "status": FAILED, "looked_at": text + f"; {n(len(problems))} differences"}
    if _state(step) == "failed":
        return {**row, "status": FAILED, "looked_at": text}
    return {**row, "status": PASSED, "looked_at": text}


def unavailable(g: dict) -> list[str]:
    """The signals a gate could not read (its details that say "unavailable: …")."""
    return [str(x)[len("unavailable:"):].strip() for x in g.get("details") or []
            if str(x).startswith("unavailable:")]


def gate_status(g: dict) -> str:
    if not g.get("passed"):
        return FAILED
    if g.get("not_applicable"):
        return NOT_APPLICABLE
    if g.get("accepted"):
        return ACCEPTED
    if unavailable(g) or g.get("measured") is False:
        return NOT_MEASURED
    return PASSED


def _gates(gates: list[dict] | None) -> list[dict]:
    if gates is None:
        return [{"check": "contract gates", "step": "contract.gates", "status": NOT_RUN,
                 "looked_at": "not evaluated (contract has not run)", "figures": None}]
    out = []
    for g in gates:
        details = [str(x) for x in g.get("details") or []]
        missing = unavailable(g)
        status = gate_status(g)
        if status == NOT_MEASURED:
            text = f"{len(missing)} signal(s) unavailable: " + "; ".join(missing)
        elif status == NOT_APPLICABLE:
            text = str(g.get("not_applicable"))
        elif details:
            text = f"{len(details)} finding(s): " + details[0][:160] + (" …" if len(details) > 1 else "")
        else:
            text = "nothing found"
        views = (g.get("coverage") or {}).get("views")
        if views is not None:  # the code gate: the views it read, which pass when they read no legacy column
            text += (f"; {views} view(s) over the legacy, canonical and dependent tables (or over such views) "
                     f"looked at, {(g.get('coverage') or {}).get('views_reading_legacy', 0)} reading the legacy table "
                     "or a legacy column")
        out.append({"check": f"contract gate: {g.get('gate')}", "step": "contract.gates", "status": status,
                    "looked_at": text, "figures": {"details": len(details), "unavailable": len(missing)}})
    return out
