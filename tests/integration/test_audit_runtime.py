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


def test_a_statistics_reset_after_the_switch_is_named_as_one_not_as_use(make_db, template_factory, tmp_path):
    """pg_stat_reset() (or a crash restart, which discards the statistics) after the switch takes the legacy table's
    counters below the baseline. That is a reset, not use: the audit and contract's gate say so and give the fix
    (check, then --rebaseline), and the gate still refuses (what happened before the reset was not measured)."""
    from _support import write_config

    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")
    with psycopg.connect(dsn, autocommit=True) as app:  # old code's writes before the switch: counted in the baseline
        app.execute("update public.customers set display_name = display_name where id <= 20")
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as dba:
        dba.execute("select pg_stat_reset()")
    out = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert out["reset"] and out["reset_at"], out
    assert out["in_use"] == [] and all(v >= 0 for v in out["legacy_table"].values()), out
    assert any("reset, not use" in b for b in out["not_measured"]), out
    text = " ".join(cli("audit", "runtime", "--dsn", dsn, "--config", cfg).split())
    assert "+-" not in text and "statistics reset" in text and "--rebaseline" in text, text
    refused = " ".join(cli("run", "contract", "--accept-code-references", "--yes", "--dsn", dsn, "--config", cfg,
                           expect=2).split())
    assert "+-" not in refused and "find and update the callers" not in refused, refused
    assert "statistics were reset" in refused and "pgconverge audit runtime --rebaseline" in refused, refused
    assert "or; or" not in refused and "--rebaseline`; or pass --accept-runtime-use" in refused, refused
    # After checking, a new baseline counts from now: nothing unmeasured, nothing in use.
    fresh = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg, "--rebaseline")
    assert not fresh["reset"] and fresh["not_measured"] == [] and fresh["in_use"] == [], fresh


def test_counters_below_their_baseline_are_a_reset_even_with_no_time_recorded(make_db, template_factory, tmp_path):
    """A table's counters can be reset alone; counters that went backwards are still a reset, not use."""
    from _support import write_config

    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")
    with psycopg.connect(dsn, autocommit=True) as app:
        app.execute("update public.customers set display_name = display_name where id <= 20")
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as dba:
        dba.execute("select pg_stat_reset_single_table_counters('public.customers'::regclass)")
        # only the table's counters went back: the database's reset time is not after the baseline
        dba.execute("insert into pgconverge.snapshots (name, data) select name, jsonb_set(data, '{taken_at}', "
                    "to_jsonb(clock_timestamp()::text)) from pgconverge.snapshots where name = 'runtime_baseline' "
                    "order by id desc limit 1")
    out = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert out["reset"] and out["reset_at"] is None and out["in_use"] == [] and out["not_measured"], out
    assert any("--rebaseline" in u for u in out["unavailable"]), out
    assert not any("+-" in x for x in out["in_use"] + out["reads"]), out


def test_track_counts_off_is_not_measured_rather_than_unused(make_db, template_factory, tmp_path):
    """With track_counts off the legacy table's counters never move: every delta reads +0 while old code writes.
    The audit names it as not measured (for the database, or for a role that logs in) and the gate refuses."""
    import uuid

    from psycopg import sql

    from _support import schema_dump, write_config

    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\nrls_sample = 5\n")
    with psycopg.connect(dsn, autocommit=True) as c:
        db = sql.Identifier(c.execute("select current_database()").fetchone()[0])
        c.execute(sql.SQL("alter database {} set track_counts = off").format(db))
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as app:  # old code after the switch, in a session that counts nothing
        assert app.execute("show track_counts").fetchone()[0] == "off"
        app.execute("insert into public.customers (wa_id, display_name) values ('+250788999111', 'old code')")
        app.execute("update public.customers set display_name = display_name || '.' where id <= 20")
        app.execute("select pg_stat_force_next_flush()")
    out = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert out["in_use"] == [] and out["legacy_table"]["n_tup_upd"] == 0, out  # the counters did not move
    assert any("track_counts is off for database" in b for b in out["not_measured"]), out
    assert any("RESET track_counts" in u and "--rebaseline" in u for u in out["unavailable"]), out
    text = " ".join(cli("audit", "runtime", "--dsn", dsn, "--config", cfg, "--fail-on-use", expect=1).split())
    assert "no use of the legacy side" not in text and "track_counts is off" in text, text
    with psycopg.connect(dsn, autocommit=True) as c:
        before = schema_dump(c, ("public", "archive"))
        refused = " ".join(cli("run", "contract", "--accept-code-references", "--yes", "--dsn", dsn, "--config",
                               cfg, expect=2).split())
        assert "contract is blocked, nothing was dropped" in refused and "track_counts is off" in refused, refused
        assert schema_dump(c, ("public", "archive")) == before
        # On again for the database, but off for a role the application logs in as, in this database.
        role = f"old_app_{uuid.uuid4().hex[:8]}"
        c.execute(sql.SQL("alter database {} reset track_counts").format(db))
        c.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
        try:
            c.execute(sql.SQL("alter role {} in database {} set track_counts = off").format(sql.Identifier(role), db))
            out = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
            assert any(f"track_counts is off for role {role} in database" in b for b in out["not_measured"]), out
        finally:
            c.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))
    # Counting again everywhere: a new baseline measures from now.
    fresh = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg, "--rebaseline")
    assert fresh["not_measured"] == [] and fresh["in_use"] == [], fresh


def test_statements_naming_a_legacy_column_are_use(make_db15_statements, tmp_path):
    """pg_stat_statements: old code filtering or deleting by the legacy column (which contract drops) is use, as a
    statement naming the legacy table is; pgconverge's own statements and the schema's DDL are not."""
    from _support import write_config

    dsn = make_db15_statements()
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\nrls_sample = 5\n")
    cli("fixture", "load", "--dsn", dsn, "--scale", "0.05")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create extension pg_stat_statements")
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    cli("verify", "--rls", "--dsn", dsn, "--config", cfg)  # reads every legacy column, as pgconverge
    clean = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert clean["statements"] == [] and clean["in_use"] == [], clean
    old = ["select id, total from public.orders where customer_id = %s",
           "delete from public.sessions where customer_id = %s and created_at < now() - interval '100 years'"]
    with psycopg.connect(dsn, autocommit=True) as app:  # old code after the switch
        for i in range(1, 4):
            for q in old:
                app.execute(q, (i,))
    seen = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    queries = {s["query"]: s["calls"] for s in seen["statements"]}
    assert queries.get("select id, total from public.orders where customer_id = $1") == 3, seen
    assert any(q.startswith("delete from public.sessions where customer_id = $1") for q in queries), seen
    assert len(queries) == 2 and any("customer_id" in u for u in seen["in_use"]), seen
    cli("audit", "runtime", "--dsn", dsn, "--config", cfg, "--fail-on-use", expect=1)
    refused = " ".join(cli("run", "contract", "--accept-code-references", "--yes", "--dsn", dsn, "--config", cfg,
                           expect=2).split())
    assert "contract is blocked" in refused and "public.orders where customer_id" in refused, refused


def test_a_window_without_application_traffic_proves_nothing(make_db, template_factory, tmp_path):
    """A window in which nothing wrote to the canonical or dependent tables (the application down, or pointed at
    another database) is not "no use of the legacy side": the audit says what it saw, and the gate refuses."""
    import time

    from _support import schema_dump, write_config

    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, '[migration]\nobservation_window = "2s"\nrls_sample = 5\n')
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    cli("audit", "runtime", "--dsn", dsn, "--config", cfg, "--rebaseline")
    time.sleep(2.3)
    quiet = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert quiet["in_use"] == [] and quiet["traffic_writes"] == 0, quiet
    assert any("the window saw no application traffic: proves nothing" in b for b in quiet["not_measured"]), quiet
    text = " ".join(cli("audit", "runtime", "--dsn", dsn, "--config", cfg, "--fail-on-use", expect=1).split())
    assert "application traffic in the window: no writes to public.carts, public.orders, public.profiles" in text, text
    assert "the window saw no application traffic: proves nothing" in text, text
    with psycopg.connect(dsn, autocommit=True) as c:
        before = schema_dump(c, ("public", "archive"))
        out = " ".join(cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references",
                           expect=2).split())
        assert "contract is blocked, nothing was dropped" in out and "no application traffic" in out, out
        assert schema_dump(c, ("public", "archive")) == before
        # The application writes (new code, by the new column): the window saw it, and the gate passes.
        profile = c.execute("select profile_id from pgconverge.legacy_customer_profile limit 1").fetchone()[0]
        c.execute("insert into public.carts (profile_id) values (%s)", (profile,))
        c.execute("select pg_stat_force_next_flush()")
    busy = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert busy["traffic"]["public.carts"]["writes"] >= 1 and busy["not_measured"] == [], busy
    cli("audit", "runtime", "--dsn", dsn, "--config", cfg, "--fail-on-use")
    cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references")
