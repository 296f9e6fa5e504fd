"""What the switch's RLS equivalence check costs as tables grow, with the default sample (50 identities).

    python bench/rls_check.py --scale 1 --scale 5 --scale 10 [--repeat 2] [--dsn ADMIN_DSN] [--json FILE]

Each scale loads the fixture, runs align and expand, and keeps that database as a template. Then `run switch`
runs on fresh copies of it, alternating (REPEAT times each):

  all-tokens  every table read for every token unless one token alone takes SCAN_BOUND_S (the rule before
              SCAN_SLOW_S: a table costing under a second per caller was read for every token)
  shipped     the rule as shipped: a table that costs over SCAN_SLOW_S per token and whose tokens together
              would exceed SCAN_BUDGET_S is read for as many tokens as the budget holds

Reported per run: switch.policies seconds, tokens, and per scan-bound table its first token's seconds and the
tokens checked; per scale the floor, the same read of every policy table as one plain SELECT by the first legacy
token (what the application pays for one query of each table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402
from common import admin_dsn, load_fixture, recreate, run_phases  # noqa: E402

from pgconverge.verify import rls  # noqa: E402

POLICY_TABLES = ("carts", "cart_items", "orders", "order_items", "order_events", "sessions")


def floor(dsn: str) -> dict:
    """Each policy table read whole, once, by the owner of the first order (old policies, old token)."""
    out = {}
    with psycopg.connect(dsn) as c:
        cid = c.execute("select customer_id from public.orders where customer_id is not null "
                        "order by id limit 1").fetchone()[0]
        c.execute("set local role authenticated")
        c.execute("select set_config('request.jwt.claims', %s, true)",
                  (json.dumps({"customer_id": str(cid), "app_role": "customer", "role": "authenticated"}),))
        for t in POLICY_TABLES:
            t0 = time.monotonic()
            c.execute(f"select count(*) from public.{t}").fetchone()
            out[t] = round(time.monotonic() - t0, 3)
        c.rollback()
    return out


def switch(admin: str, template: str, name: str, rule: str) -> dict:
    dsn = recreate(admin, name, template=template)
    saved = rls.SCAN_SLOW_S
    if rule == "all-tokens":
        rls.SCAN_SLOW_S = float("inf")
    try:
        t0 = time.monotonic()
        run_phases(dsn, ["switch"])
        wall = time.monotonic() - t0
    finally:
        rls.SCAN_SLOW_S = saved
    with psycopg.connect(dsn, autocommit=True) as c:
        step = c.execute("select extract(epoch from max(at) filter (where event = 'done') - "
                         "min(at) filter (where event = 'start')) from pgconverge.events "
                         "where step = 'switch.policies'").fetchone()[0]
        eq = c.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                       "order by id desc limit 1").fetchone()[0]
    recreate(admin, name)  # free the copy
    return {"rule": rule, "switch_s": round(wall, 2), "policies_s": round(float(step), 2),
            "tokens": eq["tokens"], "identities": eq["identities"], "problems": len(eq["problems"]),
            "scan_bound": eq["scan_bound"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, action="append")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dsn", help="admin DSN of the server to use (default: a bench-only embedded Postgres)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    admin = admin_dsn(a.dsn)
    results = []
    for scale in a.scale or [1, 5, 10]:
        tag = str(scale).replace(".", "_")
        template, load_s = load_fixture(admin, f"bench_rls_{tag}", scale)
        run_phases(template, ["align", "expand"])
        with psycopg.connect(template, autocommit=True) as c:
            c.execute("vacuum analyze")
        row = {"scale": scale, "load_s": round(load_s, 1), "floor_s": floor(template), "runs": []}
        print(f"scale {scale}: floor (one read per table) {row['floor_s']}", flush=True)
        for i in range(a.repeat):
            for rule in ("all-tokens", "shipped"):
                r = switch(admin, f"bench_rls_{tag}", f"bench_rls_{tag}_run", rule)
                row["runs"].append(r)
                bound = "; ".join(f"{t} {v['tokens_checked']}/{v['tokens']} ({v['first_token_s']} s first)"
                                  for t, v in r["scan_bound"].items()) or "none"
                print(f"scale {scale} run {i + 1} {rule:10}: switch.policies {r['policies_s']} s, "
                      f"{r['tokens']} tokens, scan-bound: {bound}", flush=True)
        recreate(admin, f"bench_rls_{tag}")
        results.append(row)
    if a.json:
        a.json.write_text(json.dumps({"args": vars(a) | {"json": str(a.json)}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
