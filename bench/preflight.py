"""What the preflight of `run` costs: seconds per stage (copy, phases, rollback) at several fixture scales,
and its ratio to the time of `run --all` itself on the same database.

    python bench/preflight.py --scale 1 --scale 50 [--dsn ADMIN_DSN] [--json FILE]

Each scale loads the fixture into a database of the bench's embedded server (or ADMIN_DSN), runs the
preflight (as `plan --check` does; the copy goes to the same server), then `run --all` without it on a
fresh copy of the loaded database.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402
from common import admin_dsn, load_fixture, recreate  # noqa: E402

from pgconverge.catalog import baseline  # noqa: E402
from pgconverge.config import Spec  # noqa: E402
from pgconverge.connection import Target  # noqa: E402
from pgconverge.execution import gates, preflight_copy  # noqa: E402
from pgconverge.execution.runner import Runner  # noqa: E402
from pgconverge.operations.base import PHASES  # noqa: E402
from pgconverge.planning import plan as planner  # noqa: E402


def plan_of(dsn: str, spec: Spec):
    with psycopg.connect(dsn, autocommit=True) as c:
        cats = baseline.load(c, spec)
    return planner.build(spec, cats), cats


def one(admin: str, scale: float) -> dict:
    spec = Spec()
    name = f"bench_preflight_{str(scale).replace('.', '_')}"
    dsn, load_s = load_fixture(admin, name, scale)
    print(f"scale {scale}: fixture loaded in {load_s:.1f}s", flush=True)
    p, cats = plan_of(dsn, spec)
    t0 = time.monotonic()
    result = preflight_copy.run(spec, Target(dsn, "--dsn"), p, cats, server=admin)
    total = time.monotonic() - t0
    stages = {s.name: round(s.seconds, 2) for s in result.stages}
    print(f"scale {scale}: preflight {result.as_dict()['verdict']} in {total:.1f}s "
          + ", ".join(f"{k} {v}s" for k, v in stages.items())
          + f"; {sum(result.sample.values()):,} rows sampled", flush=True)
    run_dsn = recreate(admin, name + "_run", template=name)
    p, cats = plan_of(run_dsn, spec)
    t0 = time.monotonic()
    with Runner(Target(run_dsn, "--dsn"), spec, p, catalogs=cats,
                accept=frozenset({gates.CODE, gates.RUNTIME})) as runner:
        for ph in PHASES:
            runner.run_phase(ph)
    run_s = time.monotonic() - t0
    print(f"scale {scale}: run --all in {run_s:.1f}s; preflight / run = {total / run_s:.2f}", flush=True)
    for db in (name, name + "_run"):
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'drop database if exists "{db}" with (force)')
    return {"scale": scale, "load_s": round(load_s, 1), "preflight_s": round(total, 2), "stages": stages,
            "sample_rows": sum(result.sample.values()), "verdict": result.as_dict()["verdict"],
            "run_all_s": round(run_s, 2), "ratio": round(total / run_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, action="append")
    ap.add_argument("--dsn", help="admin DSN of the server to use (default: the bench's embedded server)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    admin = admin_dsn(a.dsn)
    out = [one(admin, s) for s in a.scale or [1.0]]
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
