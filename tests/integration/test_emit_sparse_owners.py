"""The emitted RLS tests judge a policy table as `verify --rls` does: where no sampled identity owns rows of a table
(one whose rows belong to few people), emit adds an owner of its rows to the samples; where no row of a table has an
owner (an empty table), its assertion is skipped as proving nothing and emit warns, rather than failing on a correctly
migrated database; and rows with owners none of the samples is one of still fail, naming the fix."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from _support import cli
from test_emit_shapes import PSQL, _apply, _emit, _on_pg15, _prove, _zoo_db

CASES = {
    "empty": "delete from public.orders",
    # one owner of orders, and none of the carts' owners: a sample picked for its carts owns no order
    "few_owners": "delete from public.orders where customer_id <> 102; delete from public.carts where customer_id = 102",
}


def _tests(out: Path, where: str) -> list[str]:
    return sorted(str(p) for p in (out / where).glob("*.test.sql"))


def _tap(dsn: str, file: Path) -> str:
    """The TAP output of FILE (pg_prove shows no reason of a skip)."""
    return subprocess.run([PSQL, "-X", "-q", "-t", "-d", dsn, "-f", str(file)], capture_output=True, text=True).stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_rls_tests_of_a_sparse_dependent(pg15, tmp_path, case):
    dsn, args = _zoo_db(_on_pg15(pg15, f"sparse_{case}"), tmp_path, dependents=2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CASES[case])
    out = tmp_path / "project"
    data = _emit(out, args)
    files = data["migrations"]
    unowned = [w for w in data["warnings"] if "public.orders" in w]
    if case == "empty":
        assert unowned and "proves nothing" not in unowned[0] and "prove nothing" in unowned[0], data["warnings"]
        rls = (out / "pgconverge-tests/before_contract/pgconverge_switch_rls.test.sql").read_text()
        assert "-- No sample identity covers public.orders" in rls, rls
    else:
        assert not unowned, data["warnings"]
        assert "102" in [s["legacy_id"] for s in data["sample_identities"]], data["sample_identities"]
    switched = max(i for i, f in enumerate(files) if "_pgconverge_switch_" in f) + 1
    _apply(dsn, files[:switched])
    r = _prove(dsn, out, *_tests(out, "pgconverge-tests/before_contract"))
    assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr
    tap = _tap(dsn, out / "pgconverge-tests/before_contract/pgconverge_switch_rls.test.sql")
    assert ("# SKIP proves nothing for public.orders: no row there has an owner" in tap) == (case == "empty"), tap
    assert cli("verify", "--rls", *args, expect=0)
    _apply(dsn, files[switched:])
    r = _prove(dsn, out, *_tests(out, "supabase/tests/database"))
    assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr
    tap = _tap(dsn, out / "supabase/tests/database/pgconverge_contract_rls.test.sql")
    assert ("# SKIP proves nothing for public.orders: no row there has an owner" in tap) == (case == "empty"), tap


def test_rls_tests_fail_where_rows_have_owners_no_sample_is(pg15, tmp_path):
    """Emitted while orders was empty, tested once it holds a row of someone who is not a sample: that fails, naming
    the fix; so does a test file run where no row of any policy table has an owner."""
    dsn, args = _zoo_db(_on_pg15(pg15, "sparse_later"), tmp_path, dependents=2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CASES["empty"])
    out = tmp_path / "project"
    data = _emit(out, args, "--through", "switch")
    _apply(dsn, data["migrations"])
    rls = "supabase/tests/database/pgconverge_switch_rls.test.sql"
    samples = [s["legacy_id"] for s in data["sample_identities"]]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("insert into public.orders (customer_id) select min(id) from public.customers where id not in "
                     "(select customer_id from pgconverge.legacy_customer_profile where profile_id in (select "
                     f"profile_id from pgconverge.legacy_customer_profile where customer_id in ({', '.join(samples)})))")
    r = _prove(dsn, out, rls)
    assert r.returncode != 0, r.stdout
    assert "proves nothing for public.orders: rows there have owners and none of the sample identities" in r.stdout
    assert "emit the tests again" in r.stdout, r.stdout
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("delete from public.orders; delete from public.carts")
    r = _prove(dsn, out, rls)
    assert r.returncode != 0, r.stdout
    assert "own rows in the policy tables" in r.stdout, r.stdout
