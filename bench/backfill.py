"""Backfill throughput: pgconverge's batched backfill against one UPDATE per table, same data, same run.

    python bench/backfill.py --scale 20 [--batch-size 1000] [--dsn ADMIN_DSN] [--json FILE]

Both start from the same copy of the fixture after align. "single UPDATE" is the plan's SQL as
typically written (ADD COLUMN … REFERENCES, then one UPDATE … FROM mapping per table); it is the
ceiling for throughput, holding row locks on the whole table until it commits. pgconverge's rows/s
counts from its first batch to its last, with the sync trigger and the NOT VALID foreign key active.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import admin_dsn, load_fixture, recreate, run_phases, timed, vacuum_analyze  # noqa: E402

from pgconverge.config import Settings, Spec  # noqa: E402

TABLES = ("carts", "orders", "sessions")


def single_update(dsn: str) -> dict:
    out = {}
    with psycopg.connect(dsn, autocommit=True) as c:
        for t in TABLES:
            c.execute(f"alter table public.{t} add column profile_id uuid references public.profiles (user_id)")
            with timed() as tm:
                n = c.execute(f"""update public.{t} d set profile_id = m.profile_id
                    from pgconverge.legacy_customer_profile m where m.customer_id = d.customer_id""").rowcount
            out[t] = {"rows": n, "seconds": tm["seconds"]}
    return out


def pgconverge_backfill(dsn: str, batch_size: int) -> dict:
    spec = Spec(migration=Settings(batch_size=batch_size))
    run_phases(dsn, ["expand"], spec)
    out = {}
    with psycopg.connect(dsn, autocommit=True) as c:
        for t in TABLES:
            rows, secs, batches, worst = c.execute("""
                select max(rows_done), extract(epoch from max(at) - min(at)) + (array_agg(batch_ms order by id))[1] / 1000,
                       count(*), max(batch_ms)
                from pgconverge.checkpoints where step = %s""", (f"expand.{t}.backfill",)).fetchone()
            updated = c.execute(f"select count(*) from public.{t} where profile_id is not null").fetchone()[0]
            out[t] = {"rows": updated, "scanned": rows, "seconds": float(secs), "batches": batches,
                      "longest_batch_ms": round(float(worst), 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=20)
    ap.add_argument("--batch-size", type=int, action="append")
    ap.add_argument("--dsn", help="admin DSN of the server to use (default: a bench-only embedded Postgres)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sizes = args.batch_size or [1000]
    admin = admin_dsn(args.dsn)

    tmpl, load_s = load_fixture(admin, "bench_backfill_tmpl", args.scale)
    align_s = run_phases(tmpl, ["align"])["align"]
    vacuum_analyze(tmpl)
    result = {"scale": args.scale, "load_seconds": round(load_s, 1), "align_seconds": round(align_s, 1), "runs": []}

    naive = single_update(recreate(admin, "bench_backfill_naive", "bench_backfill_tmpl"))
    result["single_update"] = naive
    for size in sizes:
        ours = pgconverge_backfill(recreate(admin, f"bench_backfill_{size}", "bench_backfill_tmpl"), size)
        result["runs"].append({"batch_size": size, "tables": ours})

    print(f"\nBackfill at scale {args.scale} (fixture load {load_s:.1f}s, align {align_s:.1f}s)\n")
    print("| table | rows | single UPDATE rows/s | batch size | pgconverge rows/s | ratio | longest batch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run in result["runs"]:
        for t in TABLES:
            n, o = naive[t], run["tables"][t]
            n_rate, o_rate = n["rows"] / n["seconds"], o["rows"] / o["seconds"]
            o["rows_per_s"], n["rows_per_s"], o["ratio"] = round(o_rate), round(n_rate), round(o_rate / n_rate, 2)
            print(f"| {t} | {n['rows']:,} | {n_rate:,.0f} | {run['batch_size']} | {o_rate:,.0f} | "
                  f"{o_rate / n_rate:.2f} | {o['longest_batch_ms']} ms |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
