"""Peak RSS of the pgconverge command itself, per phase, at several scales (no client load).

    python bench/rss_cli.py --scale 20 --scale 100 [--json FILE]

Each phase runs as its own `pgconverge run PHASE` process on a fresh copy of the bench's fixture template
(bench/load.py makes the templates); its peak resident memory is read from the kernel when it exits
(os.wait4), so nothing of the bench itself is counted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import admin_dsn, recreate  # noqa: E402

EXE = Path(sys.executable).with_name("pgconverge")


def run(dsn: str, phase: str) -> dict:
    env = {**os.environ, "PGCONVERGE_PREFLIGHT": "off"}
    args = [str(EXE), "run", phase, "--dsn", dsn, "--yes", "--accept-code-references", "--accept-runtime-use"] \
        if phase == "contract" else [str(EXE), "run", phase, "--dsn", dsn]
    t = time.monotonic()
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode()[-500:] if p.stderr else ""
    return {"phase": phase, "seconds": round(time.monotonic() - t, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "exit": p.returncode, **({"stderr": err} if p.returncode else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, action="append", required=True)
    ap.add_argument("--phases", default="align,expand,switch,contract")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    admin = admin_dsn(None)
    out = []
    for scale in args.scale:
        tmpl = f"bench_load_tmpl_{str(scale).replace('.', '_')}"
        dsn = recreate(admin, "bench_rss", tmpl)
        for phase in args.phases.split(","):
            r = {"scale": scale, **run(dsn, phase)}
            print(json.dumps(r), flush=True)
            out.append(r)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
