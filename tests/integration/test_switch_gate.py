"""Contract's "switch verified" gate never passes blind: where the switch's own RLS comparison is missing (the switch
applied from emitted files: tests/integration/test_emit_workflow.py) or compared no rows, the gate runs the check itself on the live policies, and a check
in which no identity saw a row of tables that hold rows fails as proving nothing."""

from __future__ import annotations

import psycopg

from _support import cli, write_config

BASE = "[migration]\nrls_sample = 5\nobservation_window = 0\n"
ACCEPT = ("--accept-code-references", "--accept-runtime-use")


def _gate(conn) -> dict:
    gates = conn.execute("select data from pgconverge.snapshots where name = 'contract_gates' "
                         "order by id desc limit 1").fetchone()[0]
    return next(g for g in gates if g["gate"] == "switch verified")


def test_switch_gate_checks_the_live_policies_when_the_switch_left_no_proof(fixture_db, tmp_path):
    dsn = fixture_db
    cfg = write_config(tmp_path, BASE)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # The latest comparison saw no rows (as one over tables that were empty at the switch); the ledger is
        # append-only, so a later record stands in for it.
        conn.execute("""insert into pgconverge.snapshots (run_id, name, data) values
                        (null, 'rls_equivalence', '{"identities": 5, "rows_seen": 0, "problems": []}')""")

        # Tokens that carry a claim value the policies refuse: every identity sees nothing, so the check
        # made now proves nothing, and contract stops without dropping anything.
        (tmp_path / "blind").mkdir()
        blind = write_config(tmp_path / "blind", BASE + 'token_claims = { app_role = "nobody" }\n')
        out = " ".join(cli("run", "contract", "--dsn", dsn, "--config", blind, *ACCEPT, expect=2).split())
        assert "proves nothing" in out, out
        gate = _gate(conn)
        assert not gate["passed"] and gate["coverage"]["rows_seen"] == 0 and gate["coverage"]["checked_now"]
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is not None

        # With the claims the policies read, the check made now sees rows and agrees: contract proceeds.
        cli("run", "contract", "--dsn", dsn, "--config", cfg, *ACCEPT)
        gate = _gate(conn)
        assert gate["passed"] and gate["coverage"]["checked_now"] and gate["coverage"]["rows_seen"] > 0, gate
        assert any("checked now on the live policies" in d for d in gate["details"]), gate
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is None


def test_switch_gate_samples_an_owner_where_its_sample_missed_every_owner(fixture_db, tmp_path):
    """One sampled identity that owns nothing, while other identities own rows: the gate's check adds an owner of
    each table to its sample (verify/rls.py cover_tables), so it compares their rows (before, it compared nothing and
    failed as proving nothing, asking for a larger migration.rls_sample)."""
    from pgconverge.config import load
    from pgconverge.verify import rls

    dsn = fixture_db
    cfg = write_config(tmp_path, "[migration]\nrls_sample = 1\nobservation_window = 0\n")
    for phase in ("align", "expand", "switch"):
        cli("run", phase, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""insert into pgconverge.snapshots (run_id, name, data) values
                        (null, 'rls_equivalence', '{"identities": 1, "rows_seen": 0, "problems": []}')""")
        (picked,) = rls.sample(conn, load(cfg), 1)
        for table in ("sessions", "orders", "carts"):  # the picked identity's rows go; everyone else's stay
            conn.execute(f"delete from public.{table} where customer_id = any(%s::bigint[])", (list(picked.legacy),))
        assert conn.execute("select count(*) from public.carts where customer_id is not null").fetchone()[0] > 0
        cli("run", "contract", "--dsn", dsn, "--config", cfg, *ACCEPT)
        gate = _gate(conn)
        assert gate["passed"] and not gate.get("accepted"), gate
        assert gate["coverage"]["identities"] > 1 and gate["coverage"]["owning"] > 0, gate
        assert all(c["owners"] > 0 for c in gate["coverage"]["by_table"].values()), gate
