"""The switch replaces a SECURITY INVOKER legacy helper with a bridged body that reads the private mapping as its
owner, while the application keeps calling it.

Postgres decides how a statement calls a function (through the SECURITY DEFINER wrapper or not) when the statement
starts, and PL/pgSQL compiles whatever body the catalog holds at each call. A statement begun before the swap, that
calls the helper after it, must not run the bridged body as its caller ("permission denied for schema pgconverge"):
the switch first makes the helper SECURITY DEFINER on its old body and waits for such statements to end.
"""

from __future__ import annotations

import threading

import psycopg

from _small import AUTH_SQL, CLEAR, base_sql, config, policy_sql, roles_sql, visible
from _support import cli, write_config
from pgconverge.verify.tokens import act_as

HELPER = """
create function public.auth_customer_id() returns bigint language plpgsql stable as $fn$
begin return nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'customer_id', '')::bigint; end $fn$;
grant execute on function public.auth_customer_id() to anon, authenticated, service_role;
"""



def wait_sql(name: str, helper: str) -> str:
    """public.NAME(seconds): called by the application's statement before it calls HELPER. It returns once HELPER's
    body is the bridged one (or after SECONDS), having read a table this transaction had not locked, so the session
    takes in the catalog changes other sessions committed meanwhile, as any statement opening a new table does; it
    says whether the bridged body was in place then."""
    bridged = (f"(select p.prosrc like '%legacy_customer_profile%' from pg_catalog.pg_proc p "
               f"where p.oid = '{helper}()'::regprocedure)")
    return f"""
create function public.{name}(seconds float) returns boolean language plpgsql volatile as $fn$
declare t0 timestamptz := clock_timestamp();
begin
  loop
    exit when {bridged} or clock_timestamp() - t0 > make_interval(secs => seconds);
    perform pg_sleep(0.05);
  end loop;
  perform 1 from public.profiles limit 1;
  return {bridged};
end $fn$;
grant execute on function public.{name}(float) to authenticated;
"""


WAIT = wait_sql("wait_for_bridge", "public.auth_customer_id")


def _setup(make_db, tmp_path):
    dsn = make_db()
    cfg = write_config(tmp_path, config("public.auth_customer_id"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(roles_sql() + AUTH_SQL + base_sql() + HELPER + WAIT + policy_sql("public.auth_customer_id"))
        customer = conn.execute("select min(customer_id)::text from public.carts").fetchone()[0]
    for phase in ("align", "expand"):
        cli("run", phase, "--dsn", dsn, "--config", cfg)
    return dsn, cfg, customer


class App(threading.Thread):
    """An application session, as role authenticated with an old token, running SQL in one transaction."""

    def __init__(self, dsn: str, customer: str, statement: str, *, hold: threading.Event | None = None):
        super().__init__(daemon=True)
        self.dsn, self.customer, self.statement, self.hold = dsn, customer, statement, hold
        self.started, self.result, self.error, self.pid = threading.Event(), None, None, None
        self.customer_claims = {"customer_id": customer}

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, application_name="shop api") as conn:
                self.pid = conn.info.backend_pid
                with conn.transaction():
                    act_as(conn, self.customer_claims, clear=CLEAR)
                    self.started.set()
                    self.result = conn.execute(self.statement).fetchone()
                    if self.hold is not None:
                        self.hold.wait(120)
        except psycopg.Error as exc:
            self.error = exc
        finally:
            self.started.set()


def _during(app: App, *command: str):
    """APP's statement, begun before COMMAND runs and ended after: what it returned (it must not fail)."""
    app.start()
    assert app.started.wait(30)
    cli(*command)
    app.join(60)
    assert app.error is None, f"the application's statement failed: {app.error}"
    return app.result


def test_a_statement_begun_before_the_swap_keeps_working(make_db, tmp_path):
    dsn, cfg, customer = _setup(make_db, tmp_path)
    result = _during(App(dsn, customer, "select public.wait_for_bridge(8), public.auth_customer_id()::text"),
                     "run", "switch", "--dsn", dsn, "--config", cfg)
    # It ran the old body: the swap waited for its transaction, which had begun before the helper was a definer.
    assert result == (False, customer)
    with psycopg.connect(dsn, autocommit=True) as conn:
        definer, source, config = conn.execute("select prosecdef, prosrc, proconfig from pg_proc "
                                               "where oid = 'public.auth_customer_id()'::regprocedure").fetchone()
        assert definer and "legacy_customer_profile" in source and config == ['search_path=""']
        order = [r[0] for r in conn.execute("select step from pgconverge.events where event = 'done' "
                                            "and phase = 'switch' order by id")]
        assert order.index("switch.legacy_helper_definer") < order.index("switch.settle_helpers") \
            < order.index("switch.legacy_helper"), order
        assert visible(conn, {"customer_id": customer}) != set()


def test_a_transaction_that_stays_open_stops_the_switch_before_the_swap_and_the_switch_resumes(make_db, tmp_path):
    dsn, cfg, customer = _setup(make_db, tmp_path)
    hold = threading.Event()
    app = App(dsn, customer, "select public.auth_customer_id()::text", hold=hold)
    app.start()
    assert app.started.wait(30) and app.error is None
    try:
        out = " ".join(cli("run", "switch", "--dsn", dsn, "--config", cfg, expect=2).split())
        assert "public.auth_customer_id() became SECURITY DEFINER" in out, out
        assert f"pid {app.pid} (shop api" in out and "run the phase (or apply this file) again" in out, out
        with psycopg.connect(dsn, autocommit=True) as conn:
            definer, source = conn.execute("select prosecdef, prosrc from pg_proc "
                                           "where oid = 'public.auth_customer_id()'::regprocedure").fetchone()
            assert definer and "legacy_customer_profile" not in source  # made a definer, body not yet swapped
            # The old token still works meanwhile, and the policies are the old ones.
            assert visible(conn, {"customer_id": customer}) != set()
            assert "auth_customer_id" in conn.execute("select qual from pg_policies where tablename = 'carts'"
                                                      ).fetchone()[0]
    finally:
        hold.set()
        app.join(60)
    assert app.error is None and app.result == (customer,)
    out = cli("run", "switch", "--dsn", dsn, "--config", cfg)
    assert "resuming switch" in out, out
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert "auth_profile_id" in conn.execute("select qual from pg_policies where tablename = 'carts'"
                                                 ).fetchone()[0]
    cli("rollback", "switch", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        definer, source = conn.execute("select prosecdef, prosrc from pg_proc "
                                       "where oid = 'public.auth_customer_id()'::regprocedure").fetchone()
        assert not definer and "legacy_customer_profile" not in source


WAIT_CANONICAL = wait_sql("wait_for_canonical_bridge", "public.auth_profile_id")


def test_rolling_contract_back_gives_the_canonical_helper_its_bridge_without_failing_a_running_statement(
        make_db, tmp_path):
    """After contract the canonical helper reads the claim alone, as its caller; its rollback brings back the bridged
    body, which reads the mapping as its owner."""
    dsn, cfg, customer = _setup(make_db, tmp_path)
    cli("run", "switch", "--dsn", dsn, "--config", cfg)
    cli("run", "contract", "--accept-code-references", "--accept-runtime-use", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(WAIT_CANONICAL)
        profile = conn.execute("select profile_id::text from public.carts where profile_id is not null "
                               "limit 1").fetchone()[0]
        assert not conn.execute("select prosecdef from pg_proc where oid = 'public.auth_profile_id()'::regprocedure"
                                ).fetchone()[0]
    app = App(dsn, customer, "select public.wait_for_canonical_bridge(8), public.auth_profile_id()::text")
    app.customer_claims = {"profile_id": profile}
    assert _during(app, "rollback", "contract", "--dsn", dsn, "--config", cfg) == (False, profile)
    with psycopg.connect(dsn, autocommit=True) as conn:
        definer, source = conn.execute("select prosecdef, prosrc from pg_proc "
                                       "where oid = 'public.auth_profile_id()'::regprocedure").fetchone()
        assert definer and "legacy_customer_profile" in source
