"""Manual decisions from a CSV: respected by matching, validated as a whole, refused once expand used the mapping."""

import psycopg

from _support import cli, cli_json, mapping_problems


def _two_profiles(conn):
    return [r[0] for r in conn.execute("select user_id::text from public.profiles order by user_id limit 2")]


def test_decisions_before_align_are_respected(conn, fixture_db, tmp_path):
    p1, _ = _two_profiles(conn)
    csv = tmp_path / "d.csv"
    csv.write_text(f"customer_id,profile_id\n1,{p1}\n2,{p1}\n")
    out = cli_json("align", "--decisions", str(csv), "--dsn", fixture_db)
    assert out == {"rows": 2, "new": 2, "unchanged": 0, "changed": []}
    cli("run", "align", "--dsn", fixture_db)
    rows = conn.execute("select customer_id, profile_id::text, method from pgconverge.legacy_customer_profile "
                        "where customer_id in (1, 2) order by 1").fetchall()
    assert rows == [(1, p1, "manual"), (2, p1, "manual")]
    # Everyone else still follows the ground truth.
    assert [p for p in mapping_problems(conn) if not p.startswith(("customer 1 ", "customer 2 ", "group", "profile"))] == []


def test_decisions_after_align_change_the_mapping(conn, fixture_db, tmp_path):
    cli("run", "align", "--dsn", fixture_db)
    was = conn.execute("select profile_id::text from pgconverge.legacy_customer_profile where customer_id = 5"
                       ).fetchone()[0]
    other = next(p for p in _two_profiles(conn) if p != was)
    csv = tmp_path / "d.csv"
    csv.write_text(f"customer_id,profile_id\n5,{other}\n")
    out = cli_json("align", "--decisions", str(csv), "--dsn", fixture_db)
    assert out["changed"] == [{"legacy": "5", "was": was, "now": other}]
    assert conn.execute("select method from pgconverge.legacy_customer_profile where customer_id = 5"
                        ).fetchone()[0] == "manual"


def test_bad_decisions_change_nothing(conn, fixture_db, tmp_path):
    cli("run", "align", "--dsn", fixture_db)
    before = conn.execute("select md5(string_agg(m::text, ',' order by customer_id)) "
                          "from pgconverge.legacy_customer_profile m").fetchone()[0]
    p1, _ = _two_profiles(conn)
    cases = {
        "legacy_id,x\n1,2\n": "the header must name the columns 'customer_id' and 'profile_id'",
        f"customer_id,profile_id\n1,{p1}\n999999,{p1}\n": "line 3: legacy id 999999",
        "customer_id,profile_id\n1,00000000-0000-0000-0000-000000000000\n": "line 2: canonical id",
        f"customer_id,profile_id\nabc,{p1}\n": "not valid bigint",
        f"customer_id,profile_id\n1,{p1}\n1,00000000-0000-0000-0000-000000000001\n": "decided twice",
        "customer_id,profile_id\n1,\n": "need a value",
    }
    for i, (text, message) in enumerate(cases.items()):
        f = tmp_path / f"bad{i}.csv"
        f.write_text(text)
        out = cli("align", "--decisions", str(f), "--dsn", fixture_db, expect=2)
        assert message in out, out
    after = conn.execute("select md5(string_agg(m::text, ',' order by customer_id)) "
                         "from pgconverge.legacy_customer_profile m").fetchone()[0]
    assert before == after


def test_decisions_are_accepted_after_expands_coverage_gate_failed(conn, fixture_db, tmp_path):
    """A legacy row old code writes after align that no canonical row can be made for stops expand at its coverage
    gate, before any change, and the gate's fix is a decision: the decision is accepted (the failed gate changed
    nothing, so nothing has used the mapping) and expand then goes through."""
    cli("run", "align", "--dsn", fixture_db)
    # no canonical row can be made without a number, and this one has none that can be read
    conn.execute("alter table public.profiles add constraint needs_a_number check (whatsapp_e164 is not null) "
                 "not valid")
    with psycopg.connect(fixture_db, application_name="shop") as app:
        stuck = app.execute("insert into public.customers (wa_id) values ('no number') returning id").fetchone()[0]
    out = " ".join(cli("run", "expand", "--dsn", fixture_db, expect=2).split())
    assert "expand.coverage" in out and f"{stuck} has no mapping" in out, out
    assert "pgconverge align --decisions FILE" in out, out
    p1, _ = _two_profiles(conn)
    csv = tmp_path / "d.csv"
    csv.write_text(f"customer_id,profile_id\n{stuck},{p1}\n")
    out = cli_json("align", "--decisions", str(csv), "--dsn", fixture_db)
    assert out == {"rows": 1, "new": 1, "unchanged": 0, "changed": []}, out
    cli("run", "expand", "--dsn", fixture_db)
    assert cli_json("status", "--dsn", fixture_db)["phases"]["expand"] == "done"
    with psycopg.connect(fixture_db, application_name="shop") as app:
        app.execute("insert into public.carts (customer_id) values (%s)", (stuck,))
    assert conn.execute("select profile_id::text from public.carts where customer_id = %s",
                        (stuck,)).fetchone()[0] == p1


def test_decisions_still_refused_once_expand_changed_something(conn, fixture_db, tmp_path):
    cli("run", "align", "--dsn", fixture_db)
    cli("run", "expand", "--dsn", fixture_db)
    p1, _ = _two_profiles(conn)
    csv = tmp_path / "d.csv"
    csv.write_text(f"customer_id,profile_id\n1,{p1}\n")
    out = " ".join(cli("align", "--decisions", str(csv), "--dsn", fixture_db, expect=2).split())
    assert "later phases have used it" in out, out
    cli("rollback", "expand", "--dsn", fixture_db)
    cli_json("align", "--decisions", str(csv), "--dsn", fixture_db)


def test_report_agrees_with_status_after_decisions_then_align(conn, fixture_db, tmp_path):
    """The decisions' record is not a step of align: a clean `run align` after them is reported complete."""
    p1, _ = _two_profiles(conn)
    csv = tmp_path / "d.csv"
    csv.write_text(f"customer_id,profile_id\n1,{p1}\n")
    cli_json("align", "--decisions", str(csv), "--dsn", fixture_db)
    cli("run", "align", "--dsn", fixture_db)
    assert cli_json("status", "--dsn", fixture_db)["phases"]["align"] == "done"
    report = cli_json("report", "--dsn", fixture_db)
    align = next(p for p in report["phases"] if p["phase"] == "align")
    assert align["state"] == "done", align["states"]
    assert "align.decisions" not in [s["id"] for s in align["steps"]]
    assert any("1 manual decisions" in n for n in align["notes"]), align["notes"]
    v = report["verdict"]
    assert v["status"] not in ("INTERRUPTED", "FAILED"), v
    assert "align" not in v["verdict"] or "stopped" not in v["verdict"], v
