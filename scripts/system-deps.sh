#!/usr/bin/env bash
# System packages the test suite needs beyond Python: pgTAP with pg_prove (the emitted database tests run
# on PostgreSQL 15), PgBouncer (connection poolers in front of the test server), Chromium (the HTML report is opened headless) and npm (the Supabase CLI). Idempotent; installs only what is
# missing, and only when it can (root with apt-get). Called by test.sh.
set -euo pipefail
need=()
[ -f /usr/share/postgresql/15/extension/pgtap.control ] || need+=(postgresql-15-pgtap)
command -v pg_prove >/dev/null 2>&1 || need+=(libtap-parser-sourcehandler-pgtap-perl)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(npm)  # the pinned Supabase CLI the emit workflow test pushes with
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "pgconverge tests need: ${need[*]} (install them with your package manager)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
