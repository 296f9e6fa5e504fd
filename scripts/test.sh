#!/usr/bin/env bash
# From a fresh machine to a finished test run: install pgconverge, its test tools and the system packages the tests use (pgTAP, Chromium), then run pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
bash "$root/scripts/system-deps.sh"
cd "$root"
exec .venv/bin/python -m pytest "$@"
