"""Empty tables: an empty legacy table, and one dependent table with no rows while another has rows.

Every phase must run and roll back (`rollback align`), with one backfill worker and with several
(key ranges of an empty table), and `verify` must say when a check had no rows to look at. Where no row of the
policy tables has an owner, the RLS check compared nothing: `verify --rls` fails as "proves nothing", and contract
goes ahead only with --accept-unproven-rls.
"""

from __future__ import annotations

import psycopg
import pytest

from _small import AUTH_SQL, base_sql, config, insert_cart, policy_sql, roles_sql, visible
from _support import cli, cli_json, schema_dump, write_config

HELPER = ("create function public.auth_customer_id() returns bigint language sql stable as $$ "
          "select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'customer_id', '')::bigint $$;")
ACCEPT = ("--accept-code-references", "--accept-runtime-use")


def _build(conn: psycopg.Connection, empty: str) -> None:
    conn.execute(roles_sql() + AUTH_SQL + base_sql(orders=True) + HELPER + policy_sql("public.auth_customer_id",
                                                                                      ("carts", "orders")))
    if empty == "legacy":
        conn.execute("delete from public.orders; delete from public.carts; delete from public.customers")
    else:
        conn.execute("delete from public.orders")
    conn.execute("analyze")


def _verify_text(dsn: str, cfg: str, expect: int = 0) -> str:
    return " ".join(cli("verify", "--rls", "--dsn", dsn, "--config", cfg, expect=expect).split())


def _contract_needs_acceptance(dsn: str, cfg: str) -> None:
    """No row of the policy tables has an owner: the switch's RLS check compared nothing, so contract's gate does not
    pass (before, it passed with 0 identities), and names the cause and the explicit acceptance; with it, contract
    runs and the report lists the gate as accepted, not passed."""
    out = " ".join(cli("run", "contract", *ACCEPT, "--dsn", dsn, "--config", cfg, expect=2).split())
    assert "switch verified" in out and "proves nothing" in out and "no row there has an owner" in out, out
    assert "--accept-unproven-rls" in out, out
    cli("run", "contract", *ACCEPT, "--accept-unproven-rls", "--dsn", dsn, "--config", cfg)
    gates = {g["gate"]: g for g in cli_json("report", "--dsn", dsn, "--config", cfg)["contract_gates"]}
    assert gates["switch verified"]["passed"] and gates["switch verified"]["accepted"], gates["switch verified"]


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("empty", ["legacy", "dependent"])
def test_every_phase_and_rollback_with_an_empty_table(empty, workers, make_db, tmp_path):
    dsn = make_db()
    cfg = write_config(tmp_path, config("public.auth_customer_id", extra=f"backfill_workers = {workers}"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        _build(conn, empty)
        before = schema_dump(conn, ("public",))
        carts = conn.execute("select count(*) from public.carts").fetchone()[0]
        for phase in ("align", "expand", "switch", "contract"):
            if phase == "contract" and empty == "legacy":
                _contract_needs_acceptance(dsn, cfg)
            else:
                cli("run", phase, *(ACCEPT if phase == "contract" else ()), "--dsn", dsn, "--config", cfg)
            status = cli_json("status", "--dsn", dsn, "--config", cfg)
            assert status["phases"][phase] == "done", status
            if empty == "legacy":  # nothing to compare: the RLS check fails as proving nothing, exit 1
                out = _verify_text(dsn, cfg, expect=1)
                assert "FAIL rls" in out and "proves nothing: no row of" in out and "has an owner" in out, out
                # nothing failed: the checks saw nothing, so the verdict is "proves nothing", with its fix
                assert "verify PROVES NOTHING" in out and "the RLS check proves nothing" in out, out
                assert "fix: verify again once those tables hold rows" in out, out
                assert "public.customers: no rows, so it proves nothing there" in out or phase != "align", out
                assert "no identity has rows in these tables: nothing was compared" in out, out
            else:
                out = _verify_text(dsn, cfg)
                assert "FAIL" not in out, out
            if empty == "dependent" and phase == "expand":
                assert "public.orders: no rows, so it proves nothing there" in out, out
                assert "public.carts: no rows" not in out and "nothing was compared" not in out, out
                checks = {c["step"]: c for c in cli_json("verify", "--dsn", dsn, "--config", cfg)["checks"]}
                examined = checks["expand.invariants"]["coverage"]["rows_examined"]
                assert examined["public.orders"] == 0 and examined["public.carts"] == carts, examined
            if phase == "expand" and empty == "dependent":  # new code writes the empty table's first row
                customer, profile = conn.execute(
                    "select customer_id::text, profile_id::text from pgconverge.legacy_customer_profile "
                    "order by customer_id limit 1").fetchone()
                token = {"customer_id": customer, "profile_id": profile}
                assert insert_cart(conn, token, "profile_id", profile)
                carts += 1
                assert len(visible(conn, token, "orders")) == 0
        if empty == "dependent":
            assert conn.execute("select count(*) from public.carts where profile_id is not null").fetchone()[0] \
                == carts
        cli("report", "--md", str(tmp_path / "report.md"), "--html", str(tmp_path / "report.html"),
            "--dsn", dsn, "--config", cfg)  # batches of zero rows, steps with nothing to do
        cli("rollback", "align", "--dsn", dsn, "--config", cfg)
        assert schema_dump(conn, ("public",)) == before
        assert conn.execute("select count(*) from public.carts").fetchone()[0] == carts
        status = cli_json("status", "--dsn", dsn, "--config", cfg)
        assert {s["state"] for s in status["steps"]} <= {"reverted", "not started"}, status
        # and forward again from there
        cli("run", "align", "--dsn", dsn, "--config", cfg)
        cli("run", "expand", "--dsn", dsn, "--config", cfg)


SMALL = 0.1


@pytest.mark.parametrize("empty, workers", [("sessions", 3), ("carts", 1), ("customers", 1)])
def test_the_fixture_with_an_empty_table(empty, workers, make_db, template_factory, tmp_path):
    """The bundled fixture with one dependent emptied (sessions: uuid keys, cut into ranges; carts: NOT NULL,
    cascading to cart_items), or the legacy table itself (its dependents keep rows with no owner)."""
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, f"[migration]\nbackfill_workers = {workers}\nrls_sample = 10\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"delete from public.{empty}")
        conn.execute("analyze")
        before = schema_dump(conn, ("public",))
        counts = {t: conn.execute(f"select count(*) from public.{t}").fetchone()[0]
                  for t in ("customers", "carts", "orders", "sessions")}
        for phase in ("align", "expand", "switch", "contract"):
            if empty == "customers" and phase == "contract":  # no row has an owner: nothing was compared
                _contract_needs_acceptance(dsn, cfg)
            else:
                cli("run", phase, *(ACCEPT if phase == "contract" else ()), "--dsn", dsn, "--config", cfg)
            if empty == "customers":
                out = _verify_text(dsn, cfg, expect=1)
                assert "FAIL rls" in out and "proves nothing: no row of" in out, out
            else:
                out = _verify_text(dsn, cfg)
                assert "FAIL" not in out, out
        cli("rollback", "align", "--dsn", dsn, "--config", cfg)
        assert schema_dump(conn, ("public",)) == before
        assert counts == {t: conn.execute(f"select count(*) from public.{t}").fetchone()[0] for t in counts}


@pytest.mark.parametrize("empty", ["dependents", "everything"])
def test_verify_proves_nothing_where_the_checks_judged_no_row(empty, make_db, tmp_path):
    """Every dependent table empty after expand (and, the second time, the legacy table too): each check passes over
    nothing, so verify's verdict is "proves nothing", exit 1, not "passed"; the JSON says so at the top, with the
    rows each phase's checks judged (0 for expand), the tables they judged none of, the reason and the fix."""
    dsn = make_db()
    cfg = write_config(tmp_path, config("public.auth_customer_id"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        _build(conn, "legacy" if empty == "everything" else "dependent")
        conn.execute("delete from public.carts")
        customers = conn.execute("select count(*) from public.customers").fetchone()[0]
    for phase in ("align", "expand"):
        cli("run", phase, "--dsn", dsn, "--config", cfg)
    v = cli_json("verify", "--dsn", dsn, "--config", cfg, expect=1)
    assert v["passed"] is False and v["outcome"] == "proves nothing", v
    assert not [c for c in v["checks"] if not c["passed"]], v  # no invariant is broken: they saw nothing
    cov = v["coverage"]
    assert cov["phases"]["expand"]["rows_examined"] == 0 and cov["phases"]["expand"]["row_checks"] >= 1, cov
    assert cov["phases"]["align"]["rows_examined"] == customers, cov
    assert cov["rows_examined"] == customers, cov
    assert cov["proves_nothing"]["public.carts"] == "no rows" == cov["proves_nothing"]["public.orders"], cov
    assert "the checks of expand judged no row (public.carts, public.orders: no rows)" in v["reason"], v
    assert "verify again once those tables hold rows" in v["fix"], v
    assert (customers == 0) == (empty == "everything")
    if empty == "everything":
        assert "the checks of align judged no row (public.customers: no rows)" in v["reason"], v
    out = " ".join(cli("verify", "--dsn", dsn, "--config", cfg, expect=1).split())
    assert "verify PROVES NOTHING on" in out and "verify passed" not in out, out
    assert f"rows judged: align {customers} in 1 table, expand 0 in 2 tables" in out, out
    assert "proves nothing expand.invariants" in out and "fix: verify again once those tables hold rows" in out, out
    # the switch's own checks read the catalog: its phase adds no rows, and the verdict stays "proves nothing"
    cli("run", "switch", "--dsn", dsn, "--config", cfg)
    v = cli_json("verify", "--dsn", dsn, "--config", cfg, expect=1)
    assert v["outcome"] == "proves nothing" and v["coverage"]["phases"]["switch"]["row_checks"] == 0, v


def test_verify_passes_a_partly_empty_database_naming_the_empty_table(make_db, tmp_path):
    """One dependent table empty, the other with rows: the checks judged rows, so verify passes, and says which table
    they proved nothing about, in its last line and in the JSON's coverage."""
    dsn = make_db()
    cfg = write_config(tmp_path, config("public.auth_customer_id"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        _build(conn, "dependent")
        carts = conn.execute("select count(*) from public.carts").fetchone()[0]
    for phase in ("align", "expand"):
        cli("run", phase, "--dsn", dsn, "--config", cfg)
    v = cli_json("verify", "--dsn", dsn, "--config", cfg)
    assert v["passed"] is True and v["outcome"] == "passed" and "reason" not in v, v
    cov = v["coverage"]
    assert cov["proves_nothing"] == {"public.orders": "no rows"}, cov
    assert cov["phases"]["expand"]["tables"] == {"public.carts": carts, "public.orders": 0}, cov
    assert cov["phases"]["expand"]["rows_examined"] == carts > 0, cov
    out = " ".join(cli("verify", "--dsn", dsn, "--config", cfg).split())
    assert "verify passed on" in out and "they prove nothing about public.orders: no rows; nothing changed" in out, out
