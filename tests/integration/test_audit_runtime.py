"""`audit runtime` sees old code at work after the switch: reads of the legacy table, calls of its helper."""

import psycopg

from _support import cli, cli_json


def test_runtime_audit_detects_a_read_and_a_helper_call_after_the_baseline(make_db, template_factory):
    dsn = make_db(template_factory(0.1))
    before = cli_json("audit", "runtime", "--dsn", dsn)
    assert before["baseline_at"] is None and any("no baseline" in u for u in before["unavailable"])
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn)
    clean = cli_json("audit", "runtime", "--dsn", dsn)
    assert clean["baseline_at"] and clean["in_use"] == [] and clean["legacy_helper_calls"] == 0
    assert any("pg_stat_statements" in u for u in clean["unavailable"])  # said plainly, with the reason
    # Rows old code writes to the dependent tables with only customer_id are counted per table (none yet), and
    # contract waits for the default observation window since the baseline.
    assert {(w["table"], w["column"], w["rows"]) for w in clean["old_code_rows"]} == {
        ("public.carts", "customer_id", 0), ("public.orders", "customer_id", 0), ("public.sessions", "customer_id", 0)}
    assert clean["observation_window"]["seconds"] == 900 and clean["observation_window"]["open"]
    # Old code after the switch: it reads the legacy table and asks the legacy helper who is calling.
    with psycopg.connect(dsn, autocommit=True) as app:  # a new session picks up track_functions = all
        app.execute("select count(*) from public.customers")
        with app.transaction():
            app.execute("select set_config('request.jwt.claims', '{\"customer_id\": \"1\"}', true)")
            assert app.execute("select public.auth_customer_id()").fetchone()[0] == 1
        app.execute("select pg_stat_force_next_flush()")
    seen = cli_json("audit", "runtime", "--dsn", dsn)
    assert seen["legacy_table"]["seq_scan"] >= 1 and any(r.startswith("seq_scan +") for r in seen["reads"])
    assert seen["legacy_helper_calls"] >= 1 and "legacy helper calls +1" in seen["in_use"]
    cli("audit", "runtime", "--dsn", dsn, "--fail-on-findings", expect=1)
    # Once the old deployment is retired, --rebaseline starts counting afresh: earlier use no longer counts.
    fresh = cli_json("audit", "runtime", "--dsn", dsn, "--rebaseline")
    assert fresh["baseline_at"] > seen["baseline_at"] and fresh["in_use"] == [] and fresh["legacy_helper_calls"] == 0


def test_rebaseline_before_the_switch_is_refused(make_db, template_factory):
    dsn = make_db(template_factory(0.1))
    out = cli("audit", "runtime", "--dsn", dsn, "--rebaseline", expect=2)
    assert "no switch" in out and "pgconverge run switch" in out


def test_application_sessions_older_than_function_tracking_are_not_measured(make_db, template_factory):
    """The switch turns on track_functions for the database, which a session picks up only when it starts: an
    application session open since before the switch counts none of its calls of the legacy helper, so the audit
    says the count does not cover it (before, its calls read as +0 and nothing said so)."""
    dsn = make_db(template_factory(0.1))
    with psycopg.connect(dsn, autocommit=True, application_name="shop") as app:  # open since before the switch
        for ph in ("align", "expand", "switch"):
            cli("run", ph, "--dsn", dsn)
        with app.transaction():
            app.execute("select set_config('request.jwt.claims', '{\"customer_id\": \"1\"}', true)")
            app.execute("select public.auth_customer_id()")
        out = cli_json("audit", "runtime", "--dsn", dsn)
        assert any("started before the switch turned on function tracking" in u for u in out["unavailable"]), out
        text = " ".join(cli("audit", "runtime", "--dsn", dsn).split())
        assert "are not counted: reconnect them" in text, text
    out = cli_json("audit", "runtime", "--dsn", dsn)  # reconnected
    assert not any("function tracking" in u for u in out["unavailable"]), out
