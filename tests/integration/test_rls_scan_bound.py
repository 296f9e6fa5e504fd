"""Policies that read a whole table per caller: the RLS check times them and bounds their cost."""

from __future__ import annotations

import psycopg

from _support import cli, cli_json, write_config

from pgconverge.verify import rls


def test_scan_bound_tables_are_checked_within_their_budget(fixture_db, monkeypatch, tmp_path):
    # Every table counts as scan-bound and no budget is left after the first token: each table is
    # checked for exactly one token, the switch still passes, and the ledger says what was checked.
    monkeypatch.setattr(rls, "SCAN_BOUND_S", 0.0)
    monkeypatch.setattr(rls, "SCAN_BUDGET_S", 0.0)
    out = {phase: cli("run", phase, "--dsn", fixture_db) for phase in ("align", "expand", "switch")}
    # The run says why the check spent its time where it did, table by table.
    said = [line for line in out["switch"].splitlines() if "reads a whole table for every caller" in line]
    assert any("public.order_events" in line and "compared for 1 of" in line for line in said), out["switch"]
    with psycopg.connect(fixture_db, autocommit=True) as conn:
        data = conn.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                            "order by id desc limit 1").fetchone()[0]
    assert data["problems"] == []
    bound = data["scan_bound"]
    assert {k for k in bound if not k.endswith("(after)")} == set(data["tables"])
    assert all(v["tokens_checked"] == 1 and v["tokens"] > 1 for v in bound.values())
    # The contract gate that relies on this check says how much of it there was.
    # (no observation window: contract right after the switch)
    gates = cli_json("run", "contract", "--dsn", fixture_db, "--accept-code-references", "--config",
                     write_config(tmp_path, "[migration]\nobservation_window = 0\n"))
    with psycopg.connect(fixture_db, autocommit=True) as conn:
        recorded = conn.execute("select data from pgconverge.snapshots where name = 'contract_gates' "
                                "order by id desc limit 1").fetchone()[0]
    switch_gate = next(g for g in recorded if g["gate"] == "switch verified")
    assert switch_gate["passed"] and any("compared for 1 of" in d for d in switch_gate["details"]), gates


def test_a_table_left_unchecked_is_not_compared_but_a_checked_one_is():
    ident = rls.Identity("p1", ("1", "2"))
    before = rls.Capture(seen={"anon": {}, "L:1": {"a": ["k1"], "b": ["x"]}, "L:2": {"a": ["k2"]}})
    ok = rls.Capture(seen={"anon": {}, "L:1": {"a": ["k1", "k2"]}, "L:2": {"a": ["k1", "k2"]},
                           "C:p1": {"a": ["k1", "k2"], "b": ["y"]}})
    # Table b was not captured for L:2 before: nothing to compare it with. Table a is compared.
    assert rls.compare(before, ok, [ident]) == []
    wrong = rls.Capture(seen={"anon": {}, "L:1": {"a": ["k1"]}, "C:p1": {"a": ["k1", "k2"]}})
    assert any("L:1 on a" in p for p in rls.compare(before, wrong, [ident]))


def test_a_table_slow_for_every_token_is_bounded_below_one_second_a_token(fixture_db, monkeypatch):
    # A policy that costs 0.2 s per query (a stand-in for one that scans a mid-sized table per caller) stays under
    # the one-second mark, yet every token together would take far longer than the budget: it is checked for the
    # tokens the budget holds, and says so, while tables read through an index keep every token.
    monkeypatch.setattr(rls, "SCAN_BOUND_S", 1e9)
    monkeypatch.setattr(rls, "SCAN_SLOW_S", 0.15)
    monkeypatch.setattr(rls, "SCAN_BUDGET_S", 1.0)
    with psycopg.connect(fixture_db, autocommit=True) as conn:
        conn.execute("create policy slow_read on public.order_events for select to authenticated "
                     "using ((select pg_sleep(0.2)) is null)")  # never true: what anyone sees is unchanged
    cli("run", "align", "--dsn", fixture_db)
    cli("run", "expand", "--dsn", fixture_db)
    out = cli("run", "switch", "--dsn", fixture_db)
    assert any("public.order_events" in line and "compared for" in line for line in out.splitlines()), out
    with psycopg.connect(fixture_db, autocommit=True) as conn:
        data = conn.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                            "order by id desc limit 1").fetchone()[0]
    assert data["problems"] == []
    bound = data["scan_bound"]["public.order_events"]
    assert 1 <= bound["tokens_checked"] <= 6 < bound["tokens"], bound
    assert "public.carts" not in data["scan_bound"] and "public.order_items" not in data["scan_bound"], data


def test_a_write_probe_the_snapshot_cannot_answer_is_not_a_difference():
    # The application deleted the owner after the check's snapshot: the probe's foreign key check then fails with a
    # serialization failure (40001), which says nothing about the policies. It is left out, and counted; a real
    # change of outcome still counts.
    ident = rls.Identity("p1", ("1",))
    before = rls.Capture(seen={"anon": {}, "L:1": {"a": ["k1"]}}, writes={"p1|p1|a|L": "allowed"})
    after = rls.Capture(seen={"anon": {}, "L:1": {"a": ["k1"]}, "C:p1": {"a": ["k1"]}},
                        writes={"p1|p1|a|L": "error 40001", "p1|p1|a|C": "allowed"})
    assert rls.compare(before, after, [ident]) == []
    assert rls.inconclusive_writes(before, after) == 1
    after.writes["p1|p1|a|C"] = "refused"
    assert any("allowed before, refused after" in p for p in rls.compare(before, after, [ident]))
