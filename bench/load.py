"""The same migration two ways under the same application write load: naive SQL against pgconverge.

    python bench/load.py --scale 20 [--clients 4] [--baseline 5] [--dsn ADMIN_DSN] [--json FILE]

Both start from copies of one fixture database. Old-code clients (customer_id only, as service_role)
run cart → item → order → session flows, one transaction each, for a baseline period, through the
migration, and for a settle period after it. "naive" is the seed plan's SQL as typically written:
the INSERT … LEFT JOIN on the raw number, a mapping by exact match, ADD COLUMN … REFERENCES, one
UPDATE … FROM mapping per table, plain CREATE INDEX and SET NOT NULL. "pgconverge" is
`run align`, `run expand`, `run switch` (contract would remove the column old clients write).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import admin_dsn, load_fixture, recreate, run_phases, vacuum_analyze  # noqa: E402

from pgconverge.config import Settings, Spec  # noqa: E402

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


class Clients:
    """Old-code clients writing flows; every transaction's end time and latency recorded."""

    def __init__(self, dsn: str, n: int):
        self.dsn, self.n = dsn, n
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (end time, latency s)
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def run(self, seed: int) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            people = [r[0] for r in c.execute("select id from public.customers order by id limit 500")]
            i = 0
            while not self.stop.is_set():
                i += 1
                customer = people[(seed * 7919 + i) % len(people)]
                t0 = time.monotonic()
                try:
                    with c.transaction():
                        c.execute("set local role service_role")
                        cart = c.execute("insert into public.carts (customer_id) values (%s) returning id",
                                         (customer,)).fetchone()[0]
                        c.execute("insert into public.cart_items (cart_id, product_id, quantity, unit_price) "
                                  "values (%s, 1, 1, 9.5)", (cart,))
                        c.execute("insert into public.orders (customer_id, cart_id, total) values (%s, %s, 9.5)",
                                  (customer, cart))
                        c.execute("insert into public.sessions (customer_id) values (%s)", (customer,))
                        c.execute("update public.carts set status = 'checked_out' where id = %s", (cart,))
                    t1 = time.monotonic()
                    with self.lock:
                        self.samples.append((t1, t1 - t0))
                except psycopg.Error as exc:
                    with self.lock:
                        self.failures.append(f"{type(exc).__name__}: {str(exc).strip()[:120]}")
                self.stop.wait(0.002)

    def __enter__(self):
        self.threads = [threading.Thread(target=self.run, args=(k,)) for k in range(self.n)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()

    def window(self, start: float, end: float) -> dict:
        lat = sorted(x[1] for x in self.samples if start <= x[0] <= end)
        ends = sorted(x[0] for x in self.samples if start <= x[0] <= end)
        gaps = [b - a for a, b in zip([start, *ends], [*ends, end])]
        if not lat:
            return {"transactions": 0, "tps": 0, "p50_ms": None, "p99_ms": None, "max_ms": None,
                    "longest_stall_ms": round((end - start) * 1000)}
        return {"transactions": len(lat), "tps": round(len(lat) / (end - start), 1),
                "p50_ms": round(statistics.median(lat) * 1000, 1),
                "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1),
                "max_ms": round(lat[-1] * 1000, 1), "longest_stall_ms": round(max(gaps) * 1000, 1)}


def linkage(dsn: str) -> dict:
    """Rows left without the new id, and rows whose new id is not the person the fixture's truth names."""
    with psycopg.connect(dsn, autocommit=True) as c:
        out = {}
        for t in TABLES:
            unlinked = c.execute(f"select count(*) from public.{t} where customer_id is not null "
                                 "and profile_id is null").fetchone()[0]
            mislinked = c.execute(f"""select count(*) from public.{t} d join fixture_truth.expected_mapping x
                on x.customer_id = d.customer_id where x.expected_profile_id is not null
                and d.profile_id is distinct from x.expected_profile_id""").fetchone()[0]
            split = c.execute(f"""select count(*) from (select x.expected_group from public.{t} d
                join fixture_truth.expected_mapping x on x.customer_id = d.customer_id
                where d.profile_id is not null group by 1 having count(distinct d.profile_id) > 1) g""").fetchone()[0]
            out[t] = {"unlinked": unlinked, "mislinked": mislinked, "people_split": split}
        out["size_mb"] = round(float(c.execute("select sum(pg_total_relation_size(c.oid)) / 1e6 from pg_class c "
                                         "where c.relname = any(%s)", (list(TABLES),)).fetchone()[0]), 1)
        return out


def run_mode(admin: str, mode: str, clients: int, baseline: float, settle: float, batch: int) -> dict:
    dsn = recreate(admin, f"bench_load_{mode}", "bench_load_tmpl")
    steps = []
    with Clients(dsn, clients) as load:
        time.sleep(baseline)
        t_start = time.monotonic()
        if mode == "naive":
            with psycopg.connect(dsn, autocommit=True) as c:
                for name, stmt in NAIVE:
                    t0 = time.monotonic()
                    try:
                        c.execute(stmt)
                        steps.append({"step": name, "seconds": round(time.monotonic() - t0, 2)})
                    except psycopg.Error as exc:
                        steps.append({"step": name, "seconds": round(time.monotonic() - t0, 2),
                                      "error": str(exc).strip()[:200]})
        else:
            spec = Spec(migration=Settings(batch_size=batch, rls_sample=10))
            for ph, secs in run_phases(dsn, ["align", "expand", "switch"], spec).items():
                steps.append({"step": ph, "seconds": round(secs, 2)})
        t_end = time.monotonic()
        time.sleep(settle)
    before = load.window(t_start - baseline, t_start)
    during = load.window(t_start, t_end)
    return {"mode": mode, "seconds": round(t_end - t_start, 1), "steps": steps, "baseline": before,
            "during": during, "failed": len(load.failures), "failures": sorted(set(load.failures))[:5],
            "linkage": linkage(dsn)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=20)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--baseline", type=float, default=5)
    ap.add_argument("--settle", type=float, default=2)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--dsn")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    admin = admin_dsn(args.dsn)
    tmpl, load_s = load_fixture(admin, "bench_load_tmpl", args.scale)
    vacuum_analyze(tmpl)
    results = [run_mode(admin, m, args.clients, args.baseline, args.settle, args.batch_size)
               for m in ("naive", "pgconverge")]
    print(f"\nMigration under load: scale {args.scale}, {args.clients} old-code clients "
          f"(fixture load {load_s:.0f}s)\n")
    print("| | wall s | TPS before → during | p50 ms | p99 ms | max ms | longest stall ms | failed tx | "
          "unlinked rows | mis-linked rows | people split |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        d, b, lk = r["during"], r["baseline"], r["linkage"]
        print(f"| {r['mode']} | {r['seconds']} | {b['tps']} → {d['tps']} | {d['p50_ms']} | {d['p99_ms']} | "
              f"{d['max_ms']} | {d['longest_stall_ms']} | {r['failed']} | "
              f"{sum(lk[t]['unlinked'] for t in TABLES)} | {sum(lk[t]['mislinked'] for t in TABLES)} | "
              f"{sum(lk[t]['people_split'] for t in TABLES)} |")
    if args.json:
        args.json.write_text(json.dumps({"scale": args.scale, "clients": args.clients, "results": results},
                                        indent=2))


if __name__ == "__main__":
    main()
