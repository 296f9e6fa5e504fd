"""Old code writing a dependent table with only the legacy column is counted, and contract waits for it.

After the switch, old code that inserts a cart with only customer_id still works: the sync trigger fills
profile_id. It is counted (one sequence per reference, advanced by the trigger, no lock and no write in the
application's transaction), `audit runtime` names the rows per table, the contract gate refuses on them,
and it also refuses until the observation window (migration.observation_window) has passed since the
runtime baseline. The emitted runtime gate does the same, with the reason in the error's message.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import psycopg
import pytest

from _support import wait_disconnected, cli, cli_json, schema_dump, write_config
from pgconverge.config import ConfigError, from_dict

WINDOW = 8  # seconds: long enough for the refusals below to run inside it on a loaded machine
OLD_APP = "shop-backend-v1"  # the application name of the old code's sessions


class OldCode:
    """Old code at work as role authenticated with a legacy token: inserts carts with customer_id only."""

    def __init__(self, dsn: str, customer: int, profile):
        self.dsn, self.customer, self.profile = dsn, customer, profile
        self.old_rows = self.new_rows = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name=OLD_APP) as c:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    with c.transaction():
                        c.execute("set local role authenticated")
                        if i % 4:  # old code: the legacy claim, the legacy column
                            claims = {"app_role": "customer", "customer_id": self.customer}
                            c.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
                            c.execute("insert into public.carts (customer_id) values (%s)", (self.customer,))
                            self.old_rows += 1
                        else:  # new code, deployed beside it: not counted
                            claims = {"app_role": "customer", "profile_id": str(self.profile)}
                            c.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
                            c.execute("insert into public.carts (profile_id) values (%s)", (self.profile,))
                            self.new_rows += 1
                except psycopg.Error as exc:
                    self.failures.append(str(exc))
                    return
                time.sleep(0.02)

    def __enter__(self) -> OldCode:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _person(dsn: str) -> tuple[int, object]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("select customer_id, profile_id from pgconverge.legacy_customer_profile "
                         "where profile_id in (select profile_id from pgconverge.legacy_customer_profile "
                         "group by 1 having count(*) = 1) order by 1 limit 1").fetchone()


def _new_code_insert(c: psycopg.Connection, profile, statement: str) -> None:
    """STATEMENT (one %s: the profile) as new code: role authenticated, a token with the canonical claim alone."""
    with c.transaction():
        c.execute("set local role authenticated")
        c.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(
            {"role": "authenticated", "app_role": "customer", "profile_id": str(profile)}),))
        c.execute(statement, (profile,))


def _carts(audit: dict) -> dict:
    return next(w for w in audit["old_code_rows"] if w["table"] == "public.carts")


def _apply(dsn: str, path: str) -> list[str]:
    """Run an emitted file's SQL (plain statements and DO blocks) and return the notices it raised."""
    notices: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute(Path(path).read_text())
    return notices


def _switched_with_emitted_baseline(dsn: str, cfg: str, tmp_path) -> str:
    """The emitted files written from the database before any phase, the runner through the switch, then the emitted
    baseline taken beside the runner's: the path of the emitted runtime gate file."""
    files = cli_json("emit", str(tmp_path / "project"), "--dsn", dsn, "--config", cfg)["migrations"]
    baseline = next(f for f in files if f.endswith("_switch_runtime_baseline.sql"))
    gate = next(f for f in files if "_contract_gate_runtime_use" in f)
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    _apply(dsn, baseline)
    return gate


def _refused(dsn: str, path: str, error: type) -> str:
    """The message of the error applying PATH raises (the Supabase CLI prints the message, not the hint)."""
    with pytest.raises(error) as exc:
        _apply(dsn, path)
    return exc.value.diag.message_primary


def test_old_code_rows_block_contract_until_they_stop_and_the_window_passes(fixture_db, tmp_path):
    """The runner's gate and the emitted gate, side by side on one database at switch state."""
    dsn = fixture_db
    # A short window, and a small RLS sample: the switch's check is not what this test is about.
    cfg = write_config(tmp_path, f'[migration]\nobservation_window = "{WINDOW}s"\nrls_sample = 5\n')
    # The emitted files, from the database before any phase; the runner then brings it to switch state (the same
    # objects the files create) and the emitted baseline is taken beside the runner's.
    files = cli_json("emit", str(tmp_path / "project"), "--dsn", dsn, "--config", cfg)["migrations"]
    baseline = next(f for f in files if f.endswith("_switch_runtime_baseline.sql"))
    gate = next(f for f in files if "_contract_gate_runtime_use" in f)
    assert f"Observation window: {WINDOW} s" in Path(gate).read_text()
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    _apply(dsn, baseline)
    customer, profile = _person(dsn)
    seq = "pgconverge.old_writes_public_carts"
    with psycopg.connect(dsn, autocommit=True) as c:
        # The counters are the private schema's: no API role may touch them, and none needs to.
        for role in ("anon", "authenticated", "service_role"):
            assert not c.execute("select has_sequence_privilege(%s, %s, 'usage') or "
                                 "has_sequence_privilege(%s, %s, 'select') or "
                                 "has_sequence_privilege(%s, %s, 'update')", (role, seq) * 3).fetchone()[0]
    clean = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert {w["table"] for w in clean["old_code_rows"]} == {"public.carts", "public.orders", "public.sessions"}
    assert all(w["rows"] == 0 for w in clean["old_code_rows"]) and clean["in_use"] == []

    with OldCode(dsn, customer, profile) as app:
        while app.old_rows < 5 and not app.failures:
            time.sleep(0.02)
        with psycopg.connect(dsn, autocommit=True) as c:
            before = schema_dump(c, ("public", "archive"))
        seen = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
        assert _carts(seen)["rows"] >= 5 and _carts(seen)["column"] == "customer_id"
        assert any(u.startswith("public.carts: ") and "written with customer_id only" in u for u in seen["in_use"])
        text = " ".join(cli("audit", "runtime", "--dsn", dsn, "--config", cfg).split())
        assert re.search(r"public\.carts: \+\d+ row\(s\) written with customer_id only", text), text
        # Rows keep arriving: contract refuses, names table, column, count and fix, and changes nothing.
        out = " ".join(cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references",
                           expect=2).split())
        assert "contract is blocked, nothing was dropped" in out, out
        assert re.search(r"public\.carts: \d+ row\(s\) written with customer_id only", out), out
        assert "update the writers to set profile_id" in out and "--accept-runtime-use" in out, out
        # So does the emitted gate, with the count and the fix in its message.
        msg = _refused(dsn, gate, psycopg.errors.ObjectInUse)
        assert re.search(r"\d+ row\(s\) of public\.carts written with customer_id only \(update the code that "
                         r"writes them to set profile_id\)", msg) and "nothing of contract was applied" in msg, msg
    assert app.failures == [] and app.old_rows >= 5 and app.new_rows >= 1  # the app role needed no new grant
    with psycopg.connect(dsn, autocommit=True, application_name=OLD_APP) as c:
        # Old code moving a cart (one it wrote) to another customer counts too; pgconverge's own sessions do not.
        other = c.execute("select id from public.customers where id <> %s order by id limit 1",
                          (customer,)).fetchone()[0]
        c.execute("update public.carts set customer_id = %s where id = (select max(id) from public.carts "
                  "where customer_id = %s)", (other, customer))
    with psycopg.connect(dsn, autocommit=True, application_name="pgconverge") as c:
        c.execute("insert into public.carts (customer_id) values (%s)", (customer,))
        assert schema_dump(c, ("public", "archive")) == before
    wait_disconnected(dsn, OLD_APP)
    stopped = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert _carts(stopped)["rows"] == app.old_rows + 1, (stopped, app.old_rows)  # exactly: insert by insert
    assert all(w["rows"] == 0 for w in stopped["old_code_rows"] if w["table"] != "public.carts")

    # The old deployment is retired: the baseline is taken again, and the window starts from it.
    fresh = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg, "--rebaseline")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select pgconverge.take_runtime_baseline()")  # the emitted files' own
    assert fresh["in_use"] == [] and all(w["rows"] == 0 for w in fresh["old_code_rows"])
    assert fresh["observation_window"]["open"] and 0 < fresh["observation_window"]["left_s"] <= WINDOW
    with psycopg.connect(dsn, autocommit=True) as c:
        before = schema_dump(c, ("public", "archive"))
        out = " ".join(cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references",
                           expect=2).split())
        assert "observation window" in out and " left" in out and "migration.observation_window" in out, out
        assert schema_dump(c, ("public", "archive")) == before
    msg = _refused(dsn, gate, psycopg.errors.ObjectNotInPrerequisiteState)
    assert f"under the observation window of {WINDOW} s" in msg and "s left" in msg, msg
    assert "migration.observation_window" in msg and "pgconverge.accept_runtime_use" in msg, msg

    with psycopg.connect(dsn, autocommit=True) as c:  # new code at work in the window: it saw the application
        c.execute("insert into public.carts (profile_id) values (%s)", (profile,))
    left = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)["observation_window"]["left_s"]
    time.sleep(left + 0.2)
    passed = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert not passed["observation_window"]["open"] and passed["in_use"] == []
    assert any(n.startswith("gate runtime use: passed") for n in _apply(dsn, gate))
    cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references")
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select to_regclass('public.customers')").fetchone()[0] is None


@pytest.mark.parametrize("value, seconds", [(0, 0.0), (90, 90.0), ("15m", 900.0), ("1h30m", 5400.0),
                                            ("2.5s", 2.5), ("500ms", 0.5)])
def test_observation_window_values(value, seconds):
    assert from_dict({"migration": {"observation_window": value}}).migration.observation_window == seconds


@pytest.mark.parametrize("value", ["soon", "5y", -1, True, "", 10**9])
def test_observation_window_refuses_what_it_cannot_read(value):
    with pytest.raises(ConfigError) as exc:
        from_dict({"migration": {"observation_window": value}})
    assert "migration.observation_window" in str(exc.value) and "15m" in exc.value.fix


def test_the_default_window_is_fifteen_minutes():
    assert from_dict({}).migration.observation_window == 900.0


def test_a_counter_the_gate_cannot_read_blocks_contract(fixture_db, tmp_path):
    """A dependent's old-code counter gone (an expand made before it existed, a hand-dropped sequence): the gate
    cannot show that table unused, so contract refuses naming it, and goes ahead only when told to."""
    dsn = fixture_db
    cfg = write_config(tmp_path, '[migration]\nobservation_window = 0\nrls_sample = 5\n')
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("drop sequence pgconverge.old_writes_public_orders")
        # Old code still writes the table; the trigger does without its counter.
        c.execute("insert into public.orders (customer_id) select id from public.customers order by id limit 1")
        before = schema_dump(c, ("public", "archive"))
    audit = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert any("public.orders" in b for b in audit["not_measured"]), audit
    out = " ".join(cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references",
                       expect=2).split())
    assert "contract is blocked, nothing was dropped" in out and "not measured" in out, out
    assert "public.orders with customer_id alone" in out and "--accept-runtime-use" in out, out
    with psycopg.connect(dsn, autocommit=True) as c:
        assert schema_dump(c, ("public", "archive")) == before
    cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references", "--accept-runtime-use",
        "--yes")
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select to_regclass('public.customers')").fetchone()[0] is None


def test_emitted_gate_refuses_after_a_statistics_reset_and_with_track_counts_off(fixture_db, tmp_path):
    """The emitted runtime gate, like the runner's: a pg_stat_reset() after the baseline wiped what old code wrote
    before it, so the gate refuses (the cause and the fix in the message, which is all the Supabase CLI prints)
    until the observation window has passed since the reset; and track_counts off leaves the counters still, so
    it refuses naming where it is off."""
    import uuid

    from psycopg import sql

    dsn = fixture_db
    cfg = write_config(tmp_path, f'[migration]\nobservation_window = "{WINDOW}s"\nrls_sample = 5\n')
    gate = _switched_with_emitted_baseline(dsn, cfg, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as c:
        taken = c.execute("select max(taken_at) from pgconverge.emitted_runtime_baseline").fetchone()[0]
        # Old code after the switch writes the legacy table; then the statistics are reset, wiping those writes.
        c.execute("insert into public.customers (wa_id, display_name) values ('+250788999222', 'old code')")
        c.execute("update public.customers set display_name = display_name || '.' where id <= 10")
        c.execute("select pg_stat_force_next_flush()")
        time.sleep(1.5)
        c.execute("select pg_stat_reset()")
        # The window has passed since the baseline, not since the reset.
        time.sleep(max(0.0, WINDOW + 0.3 - c.execute("select extract(epoch from clock_timestamp() - %s)::float8",
                                                      (taken,)).fetchone()[0]))
    msg = _refused(dsn, gate, psycopg.errors.ObjectNotInPrerequisiteState)
    assert "statistics were reset at" in msg and "were not measured" in msg, msg
    assert "take_runtime_baseline\"();" in msg and "since the reset" in msg and "s left" in msg, msg
    assert "pgconverge.accept_runtime_use" in msg and "passed" not in msg.split(";")[0], msg
    # The runner's audit agrees on the same state.
    cli("audit", "runtime", "--dsn", dsn, "--config", cfg, "--fail-on-use", expect=1)
    with psycopg.connect(dsn, autocommit=True) as c:
        reset_at = c.execute("select stats_reset from pg_stat_database where datname = current_database()"
                             ).fetchone()[0]
        time.sleep(max(0.0, WINDOW + 0.3 - c.execute("select extract(epoch from clock_timestamp() - %s)::float8",
                                                      (reset_at,)).fetchone()[0]))
        # New code wrote since the reset: the window saw the application at work (without it, it proves nothing).
        c.execute("insert into public.sessions (profile_id) values (%s)", (_person(dsn)[1],))
        c.execute("select pg_stat_force_next_flush()")
    notices = _apply(dsn, gate)
    assert any(n.startswith("gate runtime use: passed") and "since the statistics reset at" in n
               for n in notices), notices

    # track_counts off for the database, then for a role that logs in there: the counters cannot show writes.
    with psycopg.connect(dsn, autocommit=True) as c:
        db = sql.Identifier(c.execute("select current_database()").fetchone()[0])
        c.execute(sql.SQL("alter database {} set track_counts = off").format(db))
        msg = _refused(dsn, gate, psycopg.errors.ObjectNotInPrerequisiteState)
        assert "track_counts is off for database" in msg and "RESET track_counts" in msg, msg
        assert "nothing of contract was applied" in msg, msg
        c.execute(sql.SQL("alter database {} reset track_counts").format(db))
        role = f"old_app_{uuid.uuid4().hex[:8]}"
        c.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
        try:
            c.execute(sql.SQL("alter role {} in database {} set track_counts = off").format(sql.Identifier(role), db))
            msg = _refused(dsn, gate, psycopg.errors.ObjectNotInPrerequisiteState)
            assert f"track_counts is off for role {role} in database" in msg, msg
        finally:
            c.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))
    assert any(n.startswith("gate runtime use: passed") for n in _apply(dsn, gate))


def test_legacy_rows_pgconverge_makes_for_newcomers_are_not_old_code(fixture_db, tmp_path):
    """After the switch, new code writing a table whose key holds the legacy column for someone with no legacy row gets
    a legacy row made for them: an insert into the legacy table that is pgconverge's, not old code's. The runner's
    audit and the emitted gate take those off the count (and say so); an insert by old code still counts."""
    dsn = fixture_db
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\nrls_sample = 5\n")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table public.favorites (customer_id bigint not null references public.customers (id) "
                  "on delete cascade, product_id bigint not null, primary key (customer_id, product_id)); "
                  "alter table public.favorites enable row level security; "
                  "create policy fav_own on public.favorites for all to authenticated "
                  "using (customer_id = auth_customer_id()); "
                  "grant select, insert, update, delete on public.favorites to authenticated")
    gate = _switched_with_emitted_baseline(dsn, cfg, tmp_path)
    with psycopg.connect(dsn, autocommit=True, application_name="shop-backend-v2") as c:
        for i in range(3):  # people new code signs up through the canonical table, and their favourites
            pid = c.execute("insert into public.profiles (whatsapp_e164, display_name) values (%s, 'newcomer') "
                            "returning user_id", (f"+25078955510{i}",)).fetchone()[0]
            _new_code_insert(c, pid, "insert into public.favorites (profile_id, product_id) values (%s, 7)")
        c.execute("select pg_stat_force_next_flush()")
        assert c.execute("select count(*) from pgconverge.legacy_customer_profile where method = 'reverse'"
                         ).fetchone()[0] == 3
    seen = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert seen["in_use"] == [] and seen["legacy_rows_made"] == 3 and seen["legacy_table"]["n_tup_ins"] == 0, seen
    notices = _apply(dsn, gate)
    assert any(n.startswith("gate runtime use: passed") and "3 legacy row(s) pgconverge made" in n
               for n in notices), notices
    with psycopg.connect(dsn, autocommit=True, application_name=OLD_APP) as c:  # old code signs someone up
        c.execute("insert into public.customers (wa_id, display_name) values ('+250788999222', 'old code')")
        c.execute("select pg_stat_force_next_flush()")
    seen = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert "n_tup_ins +1" in seen["in_use"], seen
    msg = _refused(dsn, gate, psycopg.errors.ObjectInUse)
    assert "1 row(s) of \"public\".\"customers\" inserted" in msg and "besides 3 legacy row(s)" in msg, msg


def test_the_sync_triggers_calls_of_the_legacy_helper_are_not_old_code(fixture_db, tmp_path):
    """New code writing for a merged person (several legacy rows, one canonical row) has the sync trigger ask the
    legacy helper which legacy row is the caller's: calls of the helper that are pgconverge's, not old code's. The
    runner's audit and the emitted gate take them off (and the first says so); a call by old code still counts."""
    dsn = fixture_db
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\nrls_sample = 5\n")
    gate = _switched_with_emitted_baseline(dsn, cfg, tmp_path)
    with psycopg.connect(dsn, autocommit=True, application_name="shop-backend-v2") as c:
        merged = c.execute("select profile_id from pgconverge.legacy_customer_profile group by 1 "
                           "having count(*) > 1 order by 1 limit 3").fetchall()
        assert len(merged) == 3
        for (pid,) in merged:
            _new_code_insert(c, pid, "insert into public.carts (profile_id) values (%s)")
        c.execute("select pg_stat_force_next_flush()")
    seen = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert seen["helper_calls_by_sync"] == 3 and seen["legacy_helper_calls"] == 0 and seen["in_use"] == [], seen
    assert any(n.startswith("gate runtime use: passed") and "0 call(s)" in n for n in _apply(dsn, gate))
    with psycopg.connect(dsn, autocommit=True, application_name=OLD_APP) as c:  # old code asks who is calling
        with c.transaction():
            c.execute("select set_config('request.jwt.claims', '{\"customer_id\": \"1\"}', true)")
            c.execute("select public.auth_customer_id()")
        c.execute("select pg_stat_force_next_flush()")
    seen = cli_json("audit", "runtime", "--dsn", dsn, "--config", cfg)
    assert "legacy helper calls +1" in seen["in_use"], seen
    msg = _refused(dsn, gate, psycopg.errors.ObjectInUse)
    assert "1 call(s) of public.auth_customer_id()" in msg, msg


def test_the_emitted_gate_refuses_a_window_without_application_traffic(fixture_db, tmp_path):
    """The emitted gate, as the runner's: a window above 0 in which nothing wrote to the canonical or dependent tables
    (the application down, or pointed at another database) proves nothing, and nothing of contract is applied; once
    new code writes, it passes and names the writes it saw."""
    import time

    dsn = fixture_db
    cfg = write_config(tmp_path, '[migration]\nobservation_window = "2s"\nrls_sample = 5\n')
    gate = _switched_with_emitted_baseline(dsn, cfg, tmp_path)
    time.sleep(2.3)
    msg = _refused(dsn, gate, psycopg.errors.ObjectNotInPrerequisiteState)
    assert "the window saw no application traffic: proves nothing" in msg, msg
    assert "no writes to public.carts, public.orders, public.profiles, public.sessions" in msg, msg
    _, profile = _person(dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("insert into public.sessions (profile_id) values (%s)", (profile,))
        c.execute("select pg_stat_force_next_flush()")
    notices = _apply(dsn, gate)
    assert any(n.startswith("gate runtime use: passed") and "application traffic: public.sessions +1" in n
               for n in notices), notices
