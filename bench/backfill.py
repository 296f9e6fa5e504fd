"""Backfill throughput under the application load: one UPDATE per table against pgconverge's batches.

    python bench/backfill.py --scale 50 [--variant update] [--variant b1000w1] [--variant b1000w2] …
                             [--old-clients 6] [--new-clients 0] [--dsn ADMIN_DSN] [--json FILE]

Every variant starts from a fresh copy of one fixture database after `run align`, with the
client load of bench/clients.py running (a few seconds before, throughout, and after).

  update        ADD COLUMN, then one UPDATE … FROM mapping per table: the ceiling for rows/s; it
                holds a row lock on every row it touched until it commits
  bNwK          pgconverge's expand up to its backfills with batch_size N and backfill_workers K
  bNwK-async    the same with synchronous_commit off in the batch transactions
  bNwK-skip     the same with the batch's rows taken FOR NO KEY UPDATE SKIP LOCKED (rows a client
                holds are passed over; they are counted, and filled afterwards by a second pass)

Reported per variant and table: rows, seconds, rows/s and its ratio to `update` in the same run,
and the client transactions that ended while that table was being filled: p99, max, how many
took over 100 ms, and the longest interval with no transaction finishing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients import Load, window  # noqa: E402
from common import admin_dsn, load_fixture, recreate, run_phases, server_settings, tune_server, vacuum_analyze  # noqa: E402

from pgconverge.catalog import baseline  # noqa: E402
from pgconverge.config import Settings, Spec  # noqa: E402
from pgconverge.connection import Target  # noqa: E402
from pgconverge.execution.runner import Runner  # noqa: E402
from pgconverge.planning import plan as planner  # noqa: E402

TABLES = ("carts", "orders", "sessions")
VARIANT = re.compile(r"^b(\d+)w(\d+)(-async|-skip)?$")


def single_update(dsn: str) -> dict:
    out = {}
    with psycopg.connect(dsn, autocommit=True) as c:
        for t in TABLES:
            c.execute(f"alter table public.{t} add column profile_id uuid references public.profiles (user_id)")
        for t in TABLES:
            t0 = time.monotonic()
            n = c.execute(f"""update public.{t} d set profile_id = m.profile_id
                from pgconverge.legacy_customer_profile m where m.customer_id = d.customer_id""").rowcount
            out[t] = {"rows": n, "t0": t0, "t1": time.monotonic()}
    return out


def _variant_op(op, flavour: str | None, conn: psycopg.Connection):
    if flavour == "-async":
        return dataclasses.replace(op, settings=(*op.settings, ("synchronous_commit", "off")))
    if flavour == "-skip":
        text = op.batch.as_string(conn)
        text, n = re.subn(r"limit %\(n\)s\)", "limit %(n)s for no key update of d skip locked)", text, count=1)
        assert n == 1, text
        return dataclasses.replace(op, batch=sql.SQL(text))
    return op


def pgconverge_backfill(dsn: str, batch: int, workers: int, flavour: str | None) -> dict:
    spec = Spec(migration=Settings(batch_size=batch, backfill_workers=workers))
    with psycopg.connect(dsn, autocommit=True) as c:
        cats = baseline.load(c, spec)
        p = planner.build(spec, cats)
        steps = [s for s in p.phase("expand")]
        last = max(i for i, s in enumerate(steps) if s.id.endswith(".backfill"))
        steps = [dataclasses.replace(s, op=_variant_op(s.op, flavour, c)) if s.id.endswith(".backfill") else s
                 for s in steps[:last + 1]]
    out = {}
    with Runner(Target(dsn, "--dsn"), spec, p, catalogs=cats) as r:
        for s in steps:
            t0 = time.monotonic()
            res = r.run_step(s)
            if s.id.endswith(".backfill"):
                out[s.id.split(".")[1]] = {"rows": res.rows, "t0": t0, "t1": time.monotonic()}
    with psycopg.connect(dsn, autocommit=True) as c:
        for t in TABLES:
            out[t]["left_unfilled"] = c.execute(f"select count(*) from public.{t} where customer_id is not null "
                                                "and profile_id is null").fetchone()[0]
    return out


def run_variant(admin: str, tmpl: str, variant: str, args) -> dict:
    dsn = recreate(admin, "bench_backfill_run", tmpl)
    vacuum_analyze(dsn)
    with Load(dsn, args.old_clients, args.new_clients) as load:
        time.sleep(args.baseline)
        t_start = time.monotonic()
        if variant == "update":
            tables = single_update(dsn)
        else:
            m = VARIANT.match(variant)
            tables = pgconverge_backfill(dsn, int(m[1]), int(m[2]), m[3])
        t_end = time.monotonic()
        time.sleep(1)
    out = {"variant": variant, "baseline": window(load.samples, load.failures, t_start - args.baseline, t_start),
           "during": window(load.samples, load.failures, t_start, t_end), "tables": {}}
    for t, v in tables.items():
        secs = v["t1"] - v["t0"]
        out["tables"][t] = {"rows": v["rows"], "seconds": round(secs, 2), "rows_per_s": round(v["rows"] / secs),
                            **({"left_unfilled": v["left_unfilled"]} if "left_unfilled" in v else {}),
                            "clients": window(load.samples, load.failures, v["t0"], v["t1"])}
    return out


def markdown(result: dict) -> str:
    ceiling = next((r for r in result["runs"] if r["variant"] == "update"), None)
    out = ["| variant | table | rows | rows/s | ratio to one UPDATE | client p99 ms | max ms | tx > 100 ms | "
           "longest stall ms | failed tx |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        for t in TABLES:
            v = r["tables"][t]
            c = v["clients"]
            ratio = f"{v['rows_per_s'] / ceiling['tables'][t]['rows_per_s']:.2f}" if ceiling else ""
            extra = f" ({v['left_unfilled']:,} skipped)" if v.get("left_unfilled") else ""
            out.append(f"| {r['variant']} | {t} | {v['rows']:,}{extra} | {v['rows_per_s']:,} | {ratio} | {c['p99_ms']} "
                       f"| {c['max_ms']} | {c['over_100ms']} | {c['longest_stall_ms']} | {c['failed']} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=20)
    ap.add_argument("--variant", action="append")
    # Old-code clients only by default: new code writing only profile_id fails at once against the plain
    # UPDATE's schema (carts.customer_id is still NOT NULL), and failing clients would load the server less.
    ap.add_argument("--old-clients", type=int, default=6)
    ap.add_argument("--new-clients", type=int, default=0)
    ap.add_argument("--baseline", type=float, default=3)
    ap.add_argument("--reuse-template", action="store_true")
    ap.add_argument("--dsn", help="admin DSN of the server to use (default: a bench-only embedded Postgres)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    variants = args.variant or ["update", "b1000w1", "b5000w1", "b1000w2", "b2000w2"]
    admin = admin_dsn(args.dsn)
    if not args.dsn:
        tune_server(admin)
    tmpl = f"bench_backfill_tmpl_{str(args.scale).replace('.', '_')}"
    load_s = align_s = 0.0
    if not args.reuse_template:
        tmpl_dsn, load_s = load_fixture(admin, tmpl, args.scale)
        align_s = run_phases(tmpl_dsn, ["align"])["align"]
        vacuum_analyze(tmpl_dsn)
    result = {"scale": args.scale, "fixture_load_s": round(load_s, 1), "align_s": round(align_s, 1),
              "clients": {"old": args.old_clients, "new": args.new_clients}, "server": server_settings(admin),
              "runs": []}
    for v in variants:
        result["runs"].append(run_variant(admin, tmpl, v, args))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        print(markdown(result).splitlines()[-3:], flush=True)
    print(f"\nBackfill under load at scale {args.scale}, {args.old_clients} old-code + {args.new_clients} new-code "
          f"clients\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
