"""The same migration two ways under the same application write load: naive SQL against pgconverge.

    python bench/load.py --scale 20 [--old-clients 4] [--new-clients 2] [--baseline 10] [--settle 5]
                         [--batch-size 1000] [--workers 1] [--rls-sample 10] [--dsn ADMIN_DSN]
                         [--json FILE] [--markdown FILE]

One fixture database is loaded at --scale (2,000 customers per unit, 2-4 carts, orders and
sessions each) and copied fresh for each mode. The client load of bench/clients.py runs for a
baseline period, through the migration and for a settle period after it.

"naive" is the seed plan's SQL as typically written (NAIVE below): the INSERT … LEFT JOIN on the
raw number, a mapping by exact match, ADD COLUMN … REFERENCES, one UPDATE … FROM mapping per
table, plain CREATE INDEX and SET NOT NULL. Its UPDATEs' rows/s under this load are the ceiling
for a backfill's throughput. "pgconverge" is `run align`, `run expand`, `run switch`: contract
drops customer_id, which the old-code clients still write, so with old code running it would
only measure their failures; contract is for after old code is gone.

Reported per mode and per step: wall time, client TPS, p50/p99/max transaction latency, the
longest interval in which no client transaction finished, failed transactions (old and new
code), rows left unlinked or linked to the wrong profile (against fixture_truth, for all rows
and for rows written while the migration ran), and the growth of carts, orders and sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rss  # noqa: E402
from clients import Load, Monitor, longest_gaps, slowest, window  # noqa: E402
from common import admin_dsn, load_fixture, recreate, server_settings, tune_server, vacuum_analyze  # noqa: E402

from pgconverge import embedded  # noqa: E402
from pgconverge.catalog import baseline  # noqa: E402
from pgconverge.config import Settings, Spec  # noqa: E402
from pgconverge.connection import Target  # noqa: E402
from pgconverge.execution.runner import Runner  # noqa: E402
from pgconverge.planning import plan as planner  # noqa: E402

TABLES = ("carts", "orders", "sessions")

NAIVE = [
    ("align: create missing profiles", """insert into public.profiles (user_id, whatsapp_e164, display_name)
        select gen_random_uuid(), c.wa_id, c.display_name from public.customers c
        left join public.profiles p on p.whatsapp_e164 = c.wa_id where p.user_id is null
        on conflict do nothing"""),
    ("align: mapping", """create table public.legacy_customer_profile as
        select c.id as customer_id, (select p.user_id from public.profiles p where p.whatsapp_e164 = c.wa_id
        limit 1) as profile_id from public.customers c"""),
    ("align: mapping key", "alter table public.legacy_customer_profile add primary key (customer_id)"),
] + [step for t in TABLES for step in (
    (f"expand: {t} add column", f"alter table public.{t} add column profile_id uuid references public.profiles"),
    (f"expand: {t} update", f"""update public.{t} d set profile_id = m.profile_id
        from public.legacy_customer_profile m where m.customer_id = d.customer_id"""),
    (f"expand: {t} index", f"create index idx_{t}_profile on public.{t} (profile_id)"),
)] + [("expand: carts set not null", "alter table public.carts alter column profile_id set not null")]


class StepClock:
    """Runner progress that records when each step starts and ends (same clock as the clients)."""

    def __init__(self):
        self.steps: list[dict] = []
        self.rows: dict[str, int] = {}

    def step_started(self, step) -> None:
        self.steps.append({"step": step.id, "t0": time.monotonic(), "t1": None})

    def step_finished(self, step, status, seconds) -> None:
        if status == "skipped":
            return
        self.steps[-1]["t1"] = time.monotonic()

    def batch(self, step, rows_done, total, rows_per_s) -> None:
        self.rows[step.id] = rows_done


def sizes(dsn: str) -> dict:
    with psycopg.connect(dsn, autocommit=True) as c:
        return {t: dict(zip(("heap_mb", "indexes_mb", "total_mb"), (round(float(x) / 1e6, 1) for x in c.execute(
            "select pg_table_size(%s::regclass), pg_indexes_size(%s::regclass), pg_total_relation_size(%s::regclass)",
            (f"public.{t}",) * 3).fetchone()))) for t in TABLES}


def high_water(dsn: str) -> dict:
    """Where rows written from now on start: the last id of carts and orders, the server's clock for sessions."""
    with psycopg.connect(dsn, autocommit=True) as c:
        return {"carts": c.execute("select max(id) from public.carts").fetchone()[0],
                "orders": c.execute("select max(id) from public.orders").fetchone()[0],
                "sessions": c.execute("select clock_timestamp()").fetchone()[0]}


def linkage(dsn: str, hw: dict) -> dict:
    """Per table, for all rows and for rows written during the run: no profile_id although customer_id is set
    (unlinked), a profile_id that is not the truth's for the customer (mis-linked), a profile_id whose customer
    exists but customer_id is empty (legacy_missing: old code cannot see it), and people split over profiles."""
    out = {}
    with psycopg.connect(dsn, autocommit=True) as c:
        for t in TABLES:
            if not c.execute("select exists (select 1 from pg_attribute where attrelid = %s::regclass "
                             "and attname = 'profile_id' and not attisdropped)", (f"public.{t}",)).fetchone()[0]:
                out[t] = {"no_profile_id_column": True, "unlinked": 0, "unlinked_new": 0, "mislinked": 0,
                          "mislinked_new": 0, "legacy_missing": 0, "rows_written": None, "people_split": 0}
                continue
            newer = "d.created_at >= %(hw)s" if t == "sessions" else "d.id > %(hw)s"
            row = c.execute(f"""select
                count(*) filter (where d.customer_id is not null and d.profile_id is null),
                count(*) filter (where d.customer_id is not null and d.profile_id is null and {newer}),
                count(*) filter (where x.expected_profile_id is not null
                                 and d.profile_id is distinct from x.expected_profile_id),
                count(*) filter (where x.expected_profile_id is not null
                                 and d.profile_id is distinct from x.expected_profile_id and {newer}),
                count(*) filter (where d.customer_id is null and d.profile_id is not null and exists (
                    select 1 from fixture_truth.expected_mapping y where y.expected_profile_id = d.profile_id)),
                count(*) filter (where {newer})
                from public.{t} d left join fixture_truth.expected_mapping x on x.customer_id = d.customer_id""",
                {"hw": hw[t]}).fetchone()
            split = c.execute(f"""select count(*) from (select x.expected_group from public.{t} d
                join fixture_truth.expected_mapping x on x.customer_id = d.customer_id
                where d.profile_id is not null group by 1 having count(distinct d.profile_id) > 1) g""").fetchone()[0]
            out[t] = dict(zip(("unlinked", "unlinked_new", "mislinked", "mislinked_new", "legacy_missing",
                               "rows_written"), row), people_split=split)
    return out


def _naive(dsn: str, clock: StepClock) -> list[dict]:
    with psycopg.connect(dsn, autocommit=True) as c:
        for name, stmt in NAIVE:
            rec = {"step": name, "t0": time.monotonic()}
            clock.steps.append(rec)
            try:
                rec["rows"] = c.execute(stmt).rowcount
            except psycopg.Error as exc:
                rec["error"] = str(exc).strip()[:200]
            rec["t1"] = time.monotonic()
    return clock.steps


def _pgconverge(dsn: str, clock: StepClock, spec: Spec) -> list[dict]:
    with psycopg.connect(dsn, autocommit=True) as c:
        cats = baseline.load(c, spec)
    p = planner.build(spec, cats)
    with Runner(Target(dsn, "--dsn"), spec, p, catalogs=cats, progress=clock) as r:
        try:
            for ph in ("align", "expand", "switch"):
                for res in r.run_phase(ph):
                    rec = next((s for s in reversed(clock.steps) if s["step"] == res.step), None)
                    if rec is None:
                        continue
                    if res.rows is not None:
                        rec["rows"] = res.rows
                    kept = {k: res.detail[k] for k in ("scan_bound", "identities", "tokens", "rows_seen")
                            if res.detail.get(k)}
                    if kept:
                        rec["detail"] = kept
        except Exception as exc:  # noqa: BLE001 - recorded in the result, the run goes on to report
            clock.steps[-1]["error"] = str(exc).strip()[:300]
            if clock.steps[-1]["t1"] is None:
                clock.steps[-1]["t1"] = time.monotonic()
    return clock.steps


def run_mode(admin: str, tmpl: str, mode: str, args) -> dict:
    dsn = recreate(admin, f"bench_load_{mode}", tmpl)
    vacuum_analyze(dsn)
    size_before = sizes(dsn)
    hw = high_water(dsn)
    clock = StepClock()
    spec = Spec(migration=Settings(batch_size=args.batch_size, backfill_workers=args.workers,
                                   rls_sample=args.rls_sample))
    floors = policy_floors(dsn, spec) if mode == "pgconverge" else {}
    with Load(dsn, args.old_clients, args.new_clients) as load, Monitor(dsn) as monitor:
        time.sleep(args.baseline)
        rss_start = rss.reset_peak()
        t_start = time.monotonic()
        steps = _naive(dsn, clock) if mode == "naive" else _pgconverge(dsn, clock, spec)
        t_end = time.monotonic()
        peak = rss.peak_mb()
        time.sleep(args.settle)
        t_settled = time.monotonic()
    linked, size_after = linkage(dsn, hw), sizes(dsn)  # before contract drops the legacy column
    contract = run_contract(dsn, spec, args) if mode == "pgconverge" and args.contract else None
    samples, failures = load.samples, load.failures
    for s in steps:
        s.update(window(samples, failures, s["t0"], s["t1"]))
        if s.get("rows") and ("backfill" in s["step"] or s["step"].endswith(" update")):
            s["rows_per_s"] = round(s["rows"] / (s["t1"] - s["t0"]))
        if mode == "pgconverge":  # what pgconverge's own sessions did in the step: running, or waiting on what
            s["own_waits"] = own_waits(monitor.during(s["t0"], s["t1"]).get("pgconverge", {}))
    errors = sorted({f[3] for f in failures})
    return {
        "mode": mode, "seconds": round(t_end - t_start, 1),
        "baseline": window(samples, failures, t_start - args.baseline, t_start),
        "during": window(samples, failures, t_start, t_end),
        "settle": window(samples, failures, t_end, t_settled),
        "longest_gaps": longest_gaps(samples, steps, t_start, t_end, monitor=monitor),
        "slowest": slowest([s for s in samples if t_start <= s[1] <= t_end], steps, monitor=monitor),
        "failure_kinds": errors[:8],
        "steps": [{k: v for k, v in s.items() if k not in ("t0", "t1")} | {"at_s": round(s["t0"] - t_start, 2)}
                  for s in steps],
        "linkage": linked, "size_before": size_before, "size_after": size_after,
        "rss_mb": {"at_start": rss_start, "peak": peak},
        **({"policy_floors": floors} if floors else {}), **({"contract": contract} if contract else {}),
    }


def policy_floors(dsn: str, spec: Spec) -> dict:
    """Per table whose policies the switch rewrites: seconds for one identity to read the whole table through
    its policy, before the migration (fresh copy, before the clients start). A table whose policy reads another
    table for every caller costs its RLS check at least this for one token: the check cannot go below it."""
    from pgconverge.planning.switch import policy_tables
    from pgconverge.verify.tokens import act_as

    with psycopg.connect(dsn, autocommit=True) as c:
        cats = baseline.load(c, spec)
    tables = policy_tables(planner.build(spec, cats))
    out = {}
    with psycopg.connect(dsn) as c:
        legacy_id = c.execute("select customer_id from public.carts where customer_id is not null "
                              "order by id limit 1").fetchone()[0]
        claims = {**dict(spec.migration.token_claims), spec.legacy.claim: str(legacy_id)}
        for t in tables:
            act_as(c, claims)
            t0 = time.monotonic()
            n = c.execute(f"select count(*) from {t}").fetchone()[0]
            out[str(t)] = {"seconds": round(time.monotonic() - t0, 3), "rows_seen": n}
            c.rollback()
    return out


def run_contract(dsn: str, spec: Spec, args) -> dict:
    """Contract after the run, old-code clients gone and new-code clients writing: per step wall time and client
    latency. The gates for code and runtime use are accepted (the old-code clients ran until a moment ago).
    Peak RSS here is this bench process's, which also holds the clients' samples and the monitor's: for the
    command's own memory see bench/rss_cli.py."""
    clock = StepClock()
    with psycopg.connect(dsn, autocommit=True) as c:
        cats = baseline.load(c, spec)
    p = planner.build(spec, cats)
    with Load(dsn, 0, args.new_clients) as load:
        time.sleep(2)
        rss_start = rss.reset_peak()
        t_start = time.monotonic()
        with Runner(Target(dsn, "--dsn"), spec, p, catalogs=cats, progress=clock,
                    accept=frozenset({"code-references", "runtime-use"})) as r:
            try:
                for res in r.run_phase("contract"):
                    rec = next((s for s in reversed(clock.steps) if s["step"] == res.step), None)
                    if rec is not None and res.rows is not None:
                        rec["rows"] = res.rows
            except Exception as exc:  # noqa: BLE001 - recorded in the result
                clock.steps[-1]["error"] = str(exc).strip()[:300]
                if clock.steps[-1]["t1"] is None:
                    clock.steps[-1]["t1"] = time.monotonic()
        t_end = time.monotonic()
        peak = rss.peak_mb()
        time.sleep(1)
    for s in clock.steps:
        s.update(window(load.samples, load.failures, s["t0"], s["t1"]))
    return {"seconds": round(t_end - t_start, 1), "during": window(load.samples, load.failures, t_start, t_end),
            "rss_peak_mb": peak, "rss_at_start_mb": rss_start,
            "steps": [{k: v for k, v in s.items() if k not in ("t0", "t1")} for s in clock.steps]}


def own_waits(seen: dict[str, int], top: int = 5) -> dict[str, float]:
    """The TOP most frequent states of a step's own sessions, as shares of the samples (running = on a CPU or
    ready for one)."""
    total = sum(seen.values())
    return {k: round(v / total, 2) for k, v in sorted(seen.items(), key=lambda kv: -kv[1])[:top]} if total else {}


def _sum(lk: dict, key: str) -> int:
    return sum(lk[t][key] for t in TABLES)


def _growth(r: dict) -> str:
    b = sum(r["size_before"][t]["total_mb"] for t in TABLES)
    a = sum(r["size_after"][t]["total_mb"] for t in TABLES)
    return f"{b:,.0f} → {a:,.0f} MB (+{(a - b) / b * 100:.0f}%)"


def _step_rows(mode: str, steps: list[dict], total: float) -> list[str]:
    out = []
    for s in steps:
        if s["seconds"] < 0.5 and not s["over_100ms"] and not s.get("error") and not s["failed"]:
            continue
        rate = f"{s['rows_per_s']:,}" if s.get("rows_per_s") else ""
        share = f"{100 * s['seconds'] / total:.0f}%" if total else ""
        out.append(f"| {mode} | {s['step']}{' (error)' if s.get('error') else ''} | {s['seconds']} | {share} | "
                   f"{rate} | {s['tps']} | {s['p99_ms']} | {s['max_ms']} | {s['longest_stall_ms']} | {s['failed']} |")
    return out


def markdown(result: dict) -> str:
    a = result["args"]
    out = [f"Scale {a['scale']} ({result['rows']['customers']:,} customers; carts {result['rows']['carts']:,}, "
           f"orders {result['rows']['orders']:,}, sessions {result['rows']['sessions']:,} rows); "
           f"{a['old_clients']} old-code + {a['new_clients']} new-code clients; batch size {a['batch_size']}, "
           f"{a['workers']} backfill worker(s), rls_sample {a['rls_sample']}; {result['machine']}.", "",
           "| | wall s | TPS before → during | p50 ms | p99 ms | max ms | tx > 100 ms | longest stall ms | "
           "failed tx (old/new) | unlinked (written during) | mis-linked (written during) | people split | "
           "carts+orders+sessions size | peak RSS MB |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in result["results"]:
        d, b, lk = r["during"], r["baseline"], r["linkage"]
        out.append(f"| {r['mode']} | {r['seconds']} | {b['tps']} → {d['tps']} | {d['p50_ms']} | {d['p99_ms']} | "
                   f"{d['max_ms']} | {d['over_100ms']} | {d['longest_stall_ms']} | {d['failed_old']}/{d['failed_new']} | "
                   f"{_sum(lk, 'unlinked'):,} ({_sum(lk, 'unlinked_new'):,}) | {_sum(lk, 'mislinked'):,} "
                   f"({_sum(lk, 'mislinked_new'):,}) | {_sum(lk, 'people_split'):,} | {_growth(r)} | "
                   f"{r.get('rss_mb', {}).get('peak', '')} |")
    out += ["", "Per step (steps shorter than 0.5 s with no transaction over 100 ms are left out; "
            "`stall` is the longest interval in which no client transaction finished):", "",
            "| mode | step | s | share | rows/s | TPS | p99 ms | max ms | stall ms | failed |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["results"]:
        out += _step_rows(r["mode"], r["steps"], r["seconds"])
    floors = next((r["policy_floors"] for r in result["results"] if r.get("policy_floors")), None)
    scan = next((s["detail"]["scan_bound"] for r in result["results"] for s in r["steps"]
                 if s.get("detail", {}).get("scan_bound")), None)
    if floors:
        out += ["", "Each policy table read whole by one identity through its policy (before the migration, no "
                "client load): a table whose policy reads another table for every caller costs the RLS check at "
                "least this for one token.", "", "| table | s | rows seen |", "|---|---:|---:|"]
        out += [f"| {t} | {f['seconds']} | {f['rows_seen']:,} |" for t, f in floors.items()]
        if scan:
            out += ["", "Tables the switch's RLS check found scan-bound (first token over 1 s): " + "; ".join(
                f"{t}: first token {v['first_token_s']} s, {v['tokens_checked']} of {v['tokens']} tokens checked"
                for t, v in scan.items())]
    for r in result["results"]:
        c = r.get("contract")
        if c:
            d = c["during"]
            out += ["", f"Contract after the run (new-code clients only): {c['seconds']} s, p99 {d['p99_ms']} ms, "
                        f"max {d['max_ms']} ms, longest stall {d['longest_stall_ms']} ms, failed {d['failed']}, "
                        f"peak RSS {c['rss_peak_mb']} MB.", "",
                    "| mode | step | s | share | rows/s | TPS | p99 ms | max ms | stall ms | failed |",
                    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            out += _step_rows("contract", c["steps"], c["seconds"])
    ceiling = {t: s["rows_per_s"] for r in result["results"] if r["mode"] == "naive" for s in r["steps"]
               for t in TABLES if s["step"] == f"expand: {t} update" and "rows_per_s" in s}
    ours = {t: s["rows_per_s"] for r in result["results"] if r["mode"] == "pgconverge" for s in r["steps"]
            for t in TABLES if s["step"] == f"expand.{t}.backfill" and "rows_per_s" in s}
    if ceiling and ours:
        out += ["", "| table | one UPDATE rows/s (ceiling) | pgconverge backfill rows/s | ratio |",
                "|---|---:|---:|---:|"]
        for t in TABLES:
            if t in ceiling and t in ours:
                out.append(f"| {t} | {ceiling[t]:,} | {ours[t]:,} | {ours[t] / ceiling[t]:.2f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=20)
    ap.add_argument("--old-clients", type=int, default=4)
    ap.add_argument("--new-clients", type=int, default=2)
    ap.add_argument("--baseline", type=float, default=10)
    ap.add_argument("--settle", type=float, default=5)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rls-sample", type=int, default=10)
    ap.add_argument("--modes", default="naive,pgconverge")
    ap.add_argument("--contract", action="store_true",
                    help="after the pgconverge mode, run contract with new-code clients only and report it")
    ap.add_argument("--reuse-template", action="store_true", help="keep the fixture database of an earlier run (loaded first when there is none)")
    ap.add_argument("--server-defaults", action="store_true",
                    help="run the bench's embedded server with Postgres' default memory and WAL settings")
    ap.add_argument("--dsn", help="admin DSN of the server to use (default: a bench-only embedded Postgres)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    admin = admin_dsn(args.dsn)
    if not args.dsn:
        tune_server(admin, defaults=args.server_defaults)
    tmpl = f"bench_load_tmpl_{str(args.scale).replace('.', '_')}"
    load_s = 0.0
    with psycopg.connect(admin, autocommit=True) as c:
        have = c.execute("select 1 from pg_database where datname = %s", (tmpl,)).fetchone()
    if not (args.reuse_template and have):
        tmpl_dsn, load_s = load_fixture(admin, tmpl, args.scale)
        vacuum_analyze(tmpl_dsn)
    with psycopg.connect(embedded.with_database(admin, tmpl), autocommit=True) as c:
        rows = {t: c.execute(f"select count(*) from public.{t}").fetchone()[0] for t in ("customers", *TABLES)}
    result = {"args": vars(args) | {"json": str(args.json), "markdown": str(args.markdown)}, "rows": rows,
              "fixture_load_s": round(load_s, 1), "server": server_settings(admin),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Postgres "
                         f"{server_settings(admin)['server_version']}", "results": []}
    for mode in args.modes.split(","):
        result["results"].append(run_mode(admin, tmpl, mode, args))
        text = markdown(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=str))
        if args.markdown:
            args.markdown.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
