#!/usr/bin/env bash
# From a fresh machine to a finished test run: install pgconverge, its test tools and the system packages the tests use (pgTAP, Chromium), then run pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
bash "$root/scripts/system-deps.sh"
cd "$root"
# Two workers by default (each with its own embedded Postgres): the suite is database-bound, not CPU-bound.
exec .venv/bin/python -m pytest -n "${PGCONVERGE_TEST_WORKERS:-2}" "$@"
