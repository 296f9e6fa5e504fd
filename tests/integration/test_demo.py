"""`pgconverge demo` runs end to end at a small scale and every check passes."""

import json
import os
import re
import subprocess
import sys

from psycopg.conninfo import conninfo_to_dict


def test_demo_runs_every_phase_and_passes(admin_dsn, tmp_path):
    env = dict(os.environ)
    if not os.environ.get("PGCONVERGE_TEST_DSN"):
        # Reuse the test server (its data directory is in the admin DSN's host) instead of starting another.
        env["PGCONVERGE_EMBEDDED_DIR"] = conninfo_to_dict(admin_dsn)["host"]
    else:
        env["PGCONVERGE_EMBEDDED_DIR"] = str(tmp_path / "pgdata")
    out = subprocess.run([sys.executable, "-m", "pgconverge", "demo", "--scale", "0.1", "--rls-sample", "10",
                          "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout)
    assert data["passed"] and [p["phase"] for p in data["phases"]] == ["align", "expand", "switch", "contract"]
    assert all(p["passed"] for p in data["phases"])
    assert data["rls_equivalence"]["problems"] == [] and data["rls_equivalence"]["identities"] == 10
    clients = data["clients"]  # old and new code wrote throughout; nothing they wrote was lost or mis-linked
    assert all(clients["summary"][k]["flows"] > 0 and clients["summary"][k]["failed"] == 0 for k in ("old", "new"))
    assert clients["rows_written"] > 0 and clients["linkage_problems"] == [] and clients["failures"] == []
    html = open(data["report"]["html"], encoding="utf-8").read()
    # the timeline, one throughput chart per phase that ran batches (align's matching, expand's backfills), latency
    assert 'id="chart-timeline"' in html and 'id="chart-latency"' in html and "contract.final_validation" in html
    phases = re.findall(r'<svg id="chart-throughput[^"]*" class="chart-throughput" data-phase="([^"]+)"', html)
    assert phases == ["align", "expand"] and html.count("<svg") == 2 + len(phases), phases
