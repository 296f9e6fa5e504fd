"""`audit code` throughput: MB/s over the bundled sample application, repeated to about 150 kB a file, against
reading the same files and searching them for the legacy names with one regular expression (the floor a scan that
parses nothing would reach), in the same run.

    python bench/code_audit.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from pgconverge.audit.code import sample_code_dir, scan
from pgconverge.config import Spec

SOURCE_SUFFIXES = {".ts", ".tsx", ".js", ".py", ".sql"}
FILE_BYTES = 150_000


def _corpus(into: Path) -> int:
    total = 0
    for i, p in enumerate(sorted(sample_code_dir().rglob("*"))):
        if p.suffix in SOURCE_SUFFIXES:
            data = p.read_bytes()
            body = data * max(1, FILE_BYTES // len(data))
            (into / f"{i}_{p.name}").write_bytes(body)
            total += len(body)
    return total


def _grep(root: Path) -> int:
    words = re.compile(rb"\b(customers|customer_id|auth_customer_id)\b")
    return sum(len(words.findall(p.read_bytes())) for p in root.iterdir())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the best is reported")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        total = _corpus(root)
        best: dict[str, float] = {}
        findings = 0
        for _ in range(args.repeat):
            t = time.perf_counter()
            _grep(root)
            best["regex"] = min(best.get("regex", 1e9), time.perf_counter() - t)
            t = time.perf_counter()
            findings = len(scan(root, Spec()).findings)
            best["audit"] = min(best.get("audit", 1e9), time.perf_counter() - t)
    out = {"bytes": total, "findings": findings,
           "audit_mb_s": round(total / best["audit"] / 1e6, 2), "regex_mb_s": round(total / best["regex"] / 1e6, 2),
           "audit_vs_regex": round(best["regex"] / best["audit"], 4)}
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
