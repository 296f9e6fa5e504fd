"""What `status`, `verify` and `run` say of a switch that is not proven.

- A run killed between the policy rewrite and its equivalence check leaves the rewrite in force, unproven: status's
  one-line summary says so first (whatever the step states), and `verify` does not pass it, as the report does not.
- A switch over tables whose rows name no owner compared nothing: `run switch` does not mark its check as a pass.
"""

from __future__ import annotations

import signal

import psycopg

from _killer import module_killer, wait_runner_gone
from _small import AUTH_SQL, base_sql, config, policy_sql, roles_sql
from _support import cli, cli_json, write_config

CONFIG = "[migration]\nobservation_window = 0\nrls_sample = 5\n"


killer = module_killer()


def test_a_switch_killed_before_its_check_is_unproven_in_status_and_fails_verify(make_db, template_factory,
                                                                                 tmp_path, killer):
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, CONFIG)
    args = ("--dsn", dsn, "--config", cfg)
    for ph in ("align", "expand"):
        cli("run", ph, *args)
    answer, log = killer.run(["run", "switch", *args], "switch.policies:rls_check")
    assert answer["signal"] == signal.SIGKILL, log[-3000:]
    wait_runner_gone(dsn)

    status = cli_json("status", *args)
    assert next(s for s in status["steps"] if s["step"] == "switch.policies")["state"] == "unproven"
    summary = status["summary"]
    assert summary["state"] == "unproven" and summary["phase"] == "switch", summary
    assert "the live policies are unproven: the check did not finish — resume with pgconverge run switch" in \
        summary["line"], summary
    out = " ".join(cli("status", *args).split())
    assert "the live policies are unproven" in out and "steps done — continue with" not in out, out

    # verify reruns the finished phases' checks (align, expand): they pass, but the policies in force are unproven
    out = " ".join(cli("verify", *args, expect=1).split())
    assert "FAIL switch.policies" in out and "the live policies are unproven: the check did not finish" in out, out
    assert "pgconverge run switch" in out and "verify FAILED" in out, out
    got = cli_json("verify", *args, expect=1)
    assert not got["passed"], got
    check = next(c for c in got["checks"] if c["step"] == "switch.policies")
    assert not check["passed"] and "unproven" in check["failure"], check

    # the switch run again checks the rewrite from the original policies: proven, verify passes, status moves on
    cli("run", "switch", *args)
    assert cli_json("verify", *args)["passed"]
    summary = cli_json("status", *args)["summary"]
    assert summary["state"] != "unproven" and "unproven" not in summary["line"], summary


HELPER = ("create function public.auth_customer_id() returns bigint language sql stable as $$ "
          "select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'customer_id', '')::bigint $$;")


def test_a_switch_whose_check_compared_nothing_is_not_marked_as_a_pass(make_db, tmp_path):
    dsn = make_db()
    cfg = write_config(tmp_path, config("public.auth_customer_id"))
    args = ("--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(roles_sql() + AUTH_SQL + base_sql(orders=True) + HELPER
                     + policy_sql("public.auth_customer_id", ("carts", "orders")))
        conn.execute("delete from public.orders; delete from public.carts; delete from public.customers")
    for ph in ("align", "expand"):
        cli("run", ph, *args)
    out = cli("run", "switch", *args)
    lines = [line for line in out.splitlines() if "switch.policies" in line and "…" not in line]
    assert lines and not any(line.lstrip().startswith("✓") for line in lines), out
    assert any("compared nothing" in line and "proves nothing" in line for line in lines), out
    # a switch over tables with owned rows: its check is a pass
    assert "✓ switch.policies" not in out
