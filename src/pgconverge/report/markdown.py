"""The report as a list of neutral blocks (headings, paragraphs, tables, code), and their Markdown rendering."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from pgconverge.report import checks, verdict
from pgconverge.report.checks import n

# ("h1"|"h2"|"h3"|"p", text) | ("table", headers, rows) | ("code", label, text[, language]) | ("chart", name)
# | ("list", items) | ("verdict", status, text)
Block = tuple


def _v(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:,.1f}"
    if isinstance(x, (dict, list)):
        return json.dumps(x, default=str, sort_keys=True)
    return str(x)


SAMPLE = 20  # rows a sample table shows; the heading says of how many


def _cap(items: list, total: int | None = None) -> tuple[list, str]:
    """The first SAMPLE ITEMS and what they are of: "first 20 of 4,482" (or "all 6")."""
    total = len(items) if total is None else total
    shown = items[:SAMPLE]
    return shown, (f"first {len(shown)} of {n(total)}" if total > len(shown) else f"all {n(total)}")


def rls_line(eq: dict | None) -> str:
    c = checks._rls(eq, None)
    if eq is None:
        return "RLS equivalence: not checked (the switch has not run)"
    problems = eq.get("problems") or []
    status = f"FAILED ({len(problems)} problems)" if c["status"] == checks.FAILED and problems else c["status"]
    return f"RLS equivalence: {status} — {c['looked_at']}"


def blocks(d: dict) -> list[Block]:
    out: list[Block] = [("h1", "pgconverge run report")]
    out += _verdict(d)
    out.append(("h2", "Runs"))
    out.append(("p", f"Ledger: schema `{d['private_schema']}`, {len(d['runs'])} run(s)."))
    out.append(("table", ["run", "command", "started", "client"],
                [[r["id"], r["command"], r["started_at"], r["client"]] for r in d["runs"]]))
    if d.get("rehearsal"):
        out += _rehearsal(d["rehearsal"])
    out.append(("h2", "Phases"))
    out.append(("table", ["phase", "state", "steps", "started", "finished"],
                [[p["phase"], p["state"], len(p["steps"]), p["started_at"], p["finished_at"]] for p in d["phases"]]))
    out.append(("chart", "timeline"))
    for p in d["phases"]:
        out.append(("h3", f"Phase {p['phase']}: {p['state']}"))
        out.append(("table", ["step", "state", "lock", "duration ms", "lock held ms", "attempts", "lock waits",
                              "errors"],
                    [[s["id"], s["state"], s["lock"], s["duration_ms"], s.get("lock_held_ms"), s["attempts"] or None,
                      _waits(s), "; ".join(_err(e) for e in s["errors"]) or None] for s in p["steps"]]))
        stopped = [(s, i, h) for s in p["steps"] for i, h in enumerate(s.get("history") or [], 1)
                   if h["outcome"] not in ("done", "running")]
        if stopped:
            # Every execution that did not finish: interrupted by a signal, failed, killed, or undone by its own check.
            out.append(("table", ["step", "execution", "outcome", "started", "duration ms", "error or where it stopped"],
                        [[s["id"], i, h["outcome"], h["started_at"], h["duration_ms"],
                          _err(h) if h.get("message") else None] for s, i, h in stopped]))
        notes = list(p.get("notes") or []) + [f"{s['id']}: {x}" for s in p["steps"] for x in s["notes"]]
        if notes:  # a throttled backfill notes every pause: capped
            shown, of = _cap(notes)
            out.append(("p", f"Notes ({of}):"))
            out.append(("list", shown))
    out.append(("h2", "SQL sent"))
    for p in d["phases"]:
        for s in p["steps"]:
            if s["sql"]:
                out.append(("code", s["id"], s["sql"]))
    out += _backfill(d["backfill"])
    out += _clients(d.get("clients"))
    out += _identity(d["identity"])
    out.append(("h2", "Row level security"))
    eq = d["rls_equivalence"]
    out.append(("p", rls_line(eq)))
    out += _rls_tables(eq, d.get("rls_policies") or [])
    if eq and eq.get("lock_hold_ms") is not None:
        out.append(("p", f"The policy rewrite held its ACCESS EXCLUSIVE locks for {_v(eq['lock_hold_ms'])} ms; "
                         "the equivalence check around it reads a snapshot and holds no strong lock."))
    problems = (eq or {}).get("problems") or []
    if problems:
        shown, of = _cap(problems)
        out.append(("p", f"Problems ({of}):"))
        out.append(("list", [_v(x) for x in shown]))
    out += _gates(d["contract_gates"])
    out += _counts(d["counts"])
    return out


def _rls_tables(eq: dict | None, policies: list[dict]) -> list[Block]:
    """Per table: the policies the switch rewrote, the rows compared, the tokens checked; then each policy's text
    before and after the rewrite."""
    if not eq:
        return []
    rows_by = eq.get("rows_by_table") or {}
    bound = eq.get("scan_bound") or {}
    tokens = eq.get("tokens")
    names: dict[str, list[str]] = {}
    for p in policies:
        names.setdefault(p["table"], []).append(p["policy"])
    tables = list(dict.fromkeys([*(eq.get("tables") or []), *rows_by, *names]))
    if not tables:
        return []
    out: list[Block] = [("p", "Per table: the policies rewritten and the rows the sampled identities' tokens saw "
                              "there before the rewrite, all compared with what they see after it.")]
    rows = []
    for t in tables:
        b = bound.get(t)
        checked = (f"{b['tokens_checked']} of {b['tokens']} (its policy scans a table per caller)" if b
                   else f"all {tokens}" if tokens is not None else None)
        cov = (eq.get("coverage_by_table") or {}).get(t)
        owners = f"{cov['owners_seeing_own']} of {cov['owners']}" if cov else None
        rows.append([t, ", ".join(names.get(t, [])) or None, rows_by.get(t, 0 if rows_by else None), checked, owners])
    out.append(("table", ["table", "policies rewritten", "rows compared", "tokens checked",
                          "sampled owners seeing their rows"], rows))
    for p in policies:
        out.append(("code", f"{p['table']} policy {p['policy']}: before and after",
                    f"-- before\n{p['before']}\n-- after\n{p['after'] or '(not found in the SQL sent)'}", "sql"))
    return out


def _about(d: dict) -> list[list]:
    srv = d.get("server") or {}
    cfg = d.get("config") or {}
    rows = [["target", d.get("target") or f"host {srv.get('host')} port {srv.get('port')}"],
            ["database", srv.get("database")], ["server", f"PostgreSQL {srv.get('version')}"],
            ["pgconverge", d.get("pgconverge_version")]]
    if cfg.get("legacy") and cfg.get("canonical"):
        rows.append(["migration", f"{cfg['legacy'].get('table')} → {cfg['canonical'].get('table')}"])
    rows.append(["ledger", f"schema {d['private_schema']}, {len(d['runs'])} run(s)"])
    eq = d.get("rls_equivalence") or {}
    policies = next((s for p in d["phases"] for s in p["steps"] if s.get("lock_held_ms") is not None), None)
    if policies is not None:
        rows.append(["strongest lock held", f"ACCESS EXCLUSIVE for {_v(eq.get('lock_hold_ms'))} ms by "
                                            f"{policies['id']} (the step took {_v(policies['duration_ms'])} ms)"])
    return rows


def _verdict(d: dict) -> list[Block]:
    """The verdict block: the verdict, where and with what it ran, what to do next, every check and its coverage."""
    v = d["verdict"]
    out: list[Block] = [("verdict", v["status"], v["verdict"]),
                        ("table", ["item", "value"], _about(d)),
                        ("h3", "What to do next"), ("list", v["next"]),
                        ("h3", "Checks and what they looked at"),
                        ("table", ["check", "status", "looked at", "step"],
                         [[c["check"], c["status"], c["looked_at"], c["step"]] for c in d["checks"]])]
    attempts = d.get("attempts") or []
    if attempts:
        shown, of = _cap(attempts)
        kinds = ", ".join(f"{k} {x}" for x, k in sorted(Counter(a["outcome"] for a in attempts).items()))
        out.append(("h3", f"Interrupted and failed attempts ({kinds}; {of})"))
        out.append(("table", ["step", "run", "outcome", "started", "duration ms", "error or where it stopped"],
                    [[a["step"], a["run_id"], a["outcome"], a["started_at"], a["duration_ms"], a["error"]]
                     for a in shown]))
    else:
        out.append(("p", "No interrupted or failed attempt: every step that started finished."))
    cfg = d.get("config")
    if cfg:
        differs = d.get("config_differs") or []
        label = f"Configuration in effect (from {d.get('config_source')})" + (
            f"; differs from the configuration given to report in {', '.join(differs)}" if differs else "")
        out.append(("code", label, verdict.toml(cfg), "toml"))
    return out


def _gates(gates: list[dict] | None) -> list[Block]:
    out: list[Block] = [("h2", "Contract gates")]
    if gates is None:
        return out + [("p", "Not evaluated (contract has not run).")]
    out.append(("table", ["gate", "status", "accepted", "findings", "to unblock"],
                [[g.get("gate"), checks.gate_status(g), g.get("accepted"), len(g.get("details") or []),
                  g.get("unblock") if checks.gate_status(g) != checks.PASSED else None] for g in gates]))
    for g in gates:
        details = [str(x) for x in g.get("details") or []]
        if details:
            shown, of = _cap(details)
            out.append(("p", f"{g.get('gate')}: {n(len(details))} finding(s) ({of})"))
            out.append(("list", shown))
    return out


def _rehearsal(r: dict) -> list[Block]:
    """What `pgconverge rehearse` adds: where the copy came from and what was verified after each phase."""
    out: list[Block] = [("h2", "Rehearsal"),
                        ("p", f"Rehearsal {'passed' if r['passed'] else 'FAILED'}: a copy of {r['source']} "
                              f"(PostgreSQL {r['source_version']}) restored as database {r['database']} and "
                              "migrated there; the source was only read.")]
    for label, key in (("Roles created in the copy (NOLOGIN)", "roles_created"),
                       ("Extensions left out (the embedded server lacks them)", "extensions_skipped"),
                       ("Objects that could not be restored", "restore_errors")):
        if r.get(key):
            out.append(("p", f"{label}: " + "; ".join(map(str, r[key]))))
    out.append(("table", ["phase", "steps", "seconds", "verification", "verified after the phase"],
                [[p["phase"], p["steps"], p["seconds"], "passed" if p["passed"] else "FAILED",
                  ", ".join(p["invariants"]) + f", RLS of {p['rls_identities']} identities" if p["passed"]
                  else "; ".join(map(str, p["failed"]))] for p in r["phases"]]))
    return out


def _waits(s: dict) -> str | None:
    if not s["lock_waits"]:
        return "0"
    return f"{s['lock_waits']} (" + ", ".join(f"SQLSTATE {k} ×{n}" for k, n in s["retry_sqlstates"].items()) + ")"


def _err(e: dict) -> str:
    return f"[{e['sqlstate']}] {e['message']}" if e.get("sqlstate") else str(e.get("message"))


def _backfill(series: list[dict]) -> list[Block]:
    out: list[Block] = [("h2", "Backfill throughput")]
    if not series:
        return out + [("p", "No batched step has written a checkpoint.")]
    out.append(("table", ["step", "table", "batches", "rows", "batch time ms", "mean rows/s"],
                [[s["step"], s["table"], len(s["batches"]), s["rows"], s["total_ms"], s["mean_rows_per_s"]]
                 for s in series]))
    out.append(("chart", "throughput"))
    shown, of = _cap([(s, b) for s in series for b in s["batches"]])
    out.append(("h3", f"Batches ({of})"))
    out.append(("table", ["step", "at", "batch rows", "rows done", "batch ms", "rows/s"],
                [[s["step"], b["at"], b["batch_rows"], b["rows_done"], b["batch_ms"], b["rows_per_s"]]
                 for s, b in shown]))
    return out


def _clients(c: dict | None) -> list[Block]:
    """Application traffic recorded during the run: per kind of client, flows, failures and latency."""
    if not c:
        return []
    out: list[Block] = [("h2", "Application traffic during the migration")]
    out.append(("table", ["clients", "flows", "failed", "p50 ms", "p99 ms", "max ms"],
                [[k, v["flows"], v["failed"], v["p50_ms"], v["p99_ms"], v["max_ms"]]
                 for k, v in c["summary"].items()]))
    out.append(("chart", "latency"))
    out.append(("p", f"{c.get('rows_written', 0)} rows written by the clients; "
                     f"{len(c.get('linkage_problems') or [])} lost or linked to the wrong person."))
    if c.get("events"):
        t0 = min(e["at"] for e in c["events"])
        out.append(("table", ["at s", "event"], [[round(e["at"] - t0, 1), e["what"]] for e in c["events"]]))
    problems = (c.get("failures") or []) + (c.get("linkage_problems") or [])
    if problems:
        shown, of = _cap(problems)
        out.append(("p", f"Problems ({of}):"))
        out.append(("list", [str(f) for f in shown]))
    return out


def _identity(ident: dict) -> list[Block]:
    out: list[Block] = [("h2", "Identity decisions and conflicts")]
    rep = ident.get("align_report")
    if rep is None:
        out.append(("p", "No align report (align has not finished)."))
    else:
        methods = rep.get("methods") or {}
        out.append(("table", ["method", "legacy rows"], [[k, v] for k, v in sorted(methods.items())]
                    + [["total", sum(methods.values())]]))
        merged = rep.get("merged") or {}
        dup = rep.get("canonical_duplicates") or {}
        bad = rep.get("unusable_numbers") or {}
        out.append(("p", f"{merged.get('groups', 0)} groups of legacy rows merged onto one canonical row; "
                         f"{dup.get('groups', 0)} numbers with several canonical rows (preferred one chosen); "
                         f"{bad.get('rows', 0)} NULL or unparseable numbers."))
        if merged.get("sample"):
            shown, of = _cap(merged["sample"], merged.get("groups"))
            out.append(("h3", f"Merged groups ({of})"))
            out.append(("table", ["legacy rows", "canonical row"],
                        [[", ".join(map(str, g.get("legacy") or [])), g.get("canonical")] for g in shown]))
        if dup.get("sample"):
            shown, of = _cap(dup["sample"], dup.get("groups"))
            out.append(("h3", f"Canonical duplicates ({of} groups)"))
            out.append(("table", ["key", "canonical row", "number", "chosen"],
                        [[g.get("key"), r.get("id"), r.get("number"), r.get("chosen")]
                         for g in shown for r in g.get("rows") or []]))
        if bad.get("sample"):
            shown, of = _cap(bad["sample"], bad.get("rows"))
            out.append(("h3", f"Unusable numbers ({of})"))
            out.append(("table", ["legacy row", "number"], [[r.get("legacy"), r.get("number")] for r in shown]))
    audit = ident.get("phone_audit")
    out.append(("h3", "Phone key audit (SQL normalization vs phonenumbers)"))
    if audit is None:
        return out + [("p", "No phone audit recorded.")]
    out.append(("p", f"{audit.get('checked', 0)} distinct numbers checked, {audit.get('disagreements', 0)} disagree, "
                     f"{audit.get('unexplained', 0)} outside the documented classes."))
    if audit.get("by_reason"):
        out.append(("table", ["reason", "numbers"], [[k, v] for k, v in sorted(audit["by_reason"].items())]))
    if audit.get("sample"):
        shown, of = _cap(audit["sample"], audit.get("disagreements"))
        out.append(("p", f"Disagreements ({of}):"))
        out.append(("table", ["raw", "SQL key", "phonenumbers key", "reason"],
                    [[r.get("raw"), r.get("sql"), r.get("phonenumbers"), r.get("reason")] for r in shown]))
    return out


def _counts(counts: dict) -> list[Block]:
    out: list[Block] = [("h2", "Row counts before and after")]
    before = (counts.get("before") or {}).get("rows") or {}
    after = (counts.get("after") or {}).get("rows") or {}
    if not before and not after:
        return out + [("p", "No counts recorded.")]
    rows = []
    for k in list(before) + [k for k in after if k not in before]:
        b, a = before.get(k), after.get(k)
        rows.append([k, b, a, (a - b) if isinstance(a, int) and isinstance(b, int) else None])
    return out + [("table", ["table", "before", "after", "change"], rows)]


def _cell(x: Any) -> str:
    return _v(x).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", "<br>")


def _line(x: Any) -> str:
    return " ".join(_v(x).split())


def render(d: dict) -> str:
    lines: list[str] = []
    for b in blocks(d):
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "table":
            headers, rows = b[1], b[2]
            lines.append("| " + " | ".join(headers) + " |")
            lines.append("|" + "---|" * len(headers))
            lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
            lines.append("")
        elif kind == "code":
            fence = "````" if "```" in b[2] else "```"
            lines += [f"**{b[1]}**", "", fence + (b[3] if len(b) > 3 else "sql"), b[2].rstrip(), fence, ""]
        elif kind == "list":
            lines += [f"- {_line(x)}" for x in b[1]] + [""]
        elif kind == "verdict":
            lines += [f"**Verdict: {b[2]}**", ""]
    return "\n".join(lines)
