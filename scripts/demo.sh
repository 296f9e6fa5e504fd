#!/usr/bin/env bash
# From a fresh machine to a finished demo: install pgconverge into ./.venv, then run `pgconverge demo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/pgconverge demo "$@"
