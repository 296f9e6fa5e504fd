"""The align phase on the fixture: ground truth, privileges, resumability, locks, rollback."""

from __future__ import annotations

import threading
from dataclasses import replace

import psycopg
import pytest
from psycopg import errors

from _support import cli, cli_json, mapping_problems, write_config
from pgconverge import __version__
from pgconverge.config import Spec
from pgconverge.connection import Target
from pgconverge.execution import killpoint
from pgconverge.execution.runner import Runner
from pgconverge.catalog.introspect import load_catalog
from pgconverge.planning import plan as planner


def test_align_maps_every_customer_to_its_ground_truth_profile(conn, fixture_db):
    profiles_before = conn.execute("select count(*) from public.profiles").fetchone()[0]
    out = cli_json("run", "align", "--dsn", fixture_db)
    assert [s["step"] for s in out["steps"]][-5:] == ["align.coverage_gate", "align.report", "align.phone_audit",
                                                     "align.linkage_before", "align.counts_before"]
    assert mapping_problems(conn) == []
    truth = dict(conn.execute("select case_name, count(*) from fixture_truth.expected_mapping group by 1"))
    summary = out["align"]
    assert summary["unusable_numbers"] == truth["null_number"] + truth["unparseable"]
    assert summary["merged_groups"] >= truth["shared_number"] // 2
    assert summary["canonical_duplicate_groups"] >= truth["canonical_twice"]
    assert sum(summary["methods"].values()) == sum(truth.values())
    audit = conn.execute("select data from pgconverge.snapshots where name = 'phone_audit'").fetchone()[0]
    assert audit["checked"] > 100 and audit["unexplained"] == 0


    # Created rows: one per distinct new number, plus one per NULL/unparseable customer; no number duplicated.
    created = conn.execute("select count(distinct profile_id) from pgconverge.legacy_customer_profile "
                           "where method = 'created'").fetchone()[0]
    profiles_after = conn.execute("select count(*) from public.profiles").fetchone()[0]
    assert profiles_after - profiles_before == created
    expected_created = conn.execute("""
        select count(distinct t.expected_group) from fixture_truth.expected_mapping t
        where t.expected_profile_id is null""").fetchone()[0]
    assert created == expected_created
    dup = conn.execute("""
        select k from (select pgconverge.normalize_phone(whatsapp_e164) k from public.profiles p
                       where exists (select 1 from pgconverge.legacy_customer_profile m
                                     where m.profile_id = p.user_id and m.method = 'created')) c
        where k is not null and (select count(*) from public.profiles p2
                                 where pgconverge.normalize_phone(p2.whatsapp_e164) = c.k) > 1""").fetchall()
    assert dup == []
    methods = dict(conn.execute("select method, count(*) from pgconverge.legacy_customer_profile group by 1"))
    assert set(methods) == {"exact", "normalized", "created"}
    # Created rows carry the normalized number and the copied column.
    bad = conn.execute("""
        select count(*) from pgconverge.legacy_customer_profile m join public.profiles p on p.user_id = m.profile_id
        join public.customers c on c.id = m.customer_id
        where m.method = 'created' and m.match_key is not null
          and (p.whatsapp_e164 <> '+' || m.match_key)""").fetchone()[0]
    assert bad == 0


def test_numbers_where_sql_and_phonenumbers_disagree_are_listed(conn, fixture_db):
    # 13 digits under Rwanda's code: the SQL key keeps it (no per-country length rule), phonenumbers
    # knows Rwandan numbers have 9 national digits.
    conn.execute("insert into public.customers (wa_id) values ('+250 1234 567 890')")
    cli("run", "align", "--dsn", fixture_db)
    audit = conn.execute("select data from pgconverge.snapshots where name = 'phone_audit'").fetchone()[0]
    listed = [d for d in audit["sample"] if d["raw"] == "+250 1234 567 890"]
    assert listed and listed[0]["sql"] == "2501234567890" and listed[0]["phonenumbers"] is None
    assert audit["unexplained"] == 0

@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_private_schema_is_closed_to_api_roles(conn, fixture_db, role):
    cli("run", "align", "--dsn", fixture_db)
    for stmt in ("select * from pgconverge.legacy_customer_profile limit 1",
                 "insert into pgconverge.legacy_customer_profile (customer_id, profile_id, method) "
                 "values (1, gen_random_uuid(), 'manual')",
                 "delete from pgconverge.legacy_customer_profile",
                 "select * from pgconverge.events limit 1",
                 "select pgconverge.normalize_phone('0788123456')"):
        with pytest.raises(errors.InsufficientPrivilege):
            with conn.transaction():
                conn.execute(f"set local role {role}")
                conn.execute(stmt)
    assert conn.execute("select count(*) from pgconverge.legacy_customer_profile").fetchone()[0] > 0


def test_rerun_is_a_no_op_and_status_reports_done(conn, fixture_db):
    cli("run", "align", "--dsn", fixture_db)
    before = conn.execute("select md5(string_agg(m::text, ',' order by customer_id)) "
                          "from pgconverge.legacy_customer_profile m").fetchone()[0]
    again = cli_json("run", "align", "--dsn", fixture_db)
    assert {s["status"] for s in again["steps"]} == {"skipped"}
    after = conn.execute("select md5(string_agg(m::text, ',' order by customer_id)) "
                         "from pgconverge.legacy_customer_profile m").fetchone()[0]
    assert before == after
    st = cli_json("status", "--dsn", fixture_db)
    assert st["phases"]["align"] == "done" and st["last_error"] is None


def test_changed_config_is_refused_against_the_ledger(conn, fixture_db, tmp_path):
    cli("run", "align", "--dsn", fixture_db)
    cfg = write_config(tmp_path, '[migration]\ndefault_region = "GB"\n')
    out = cli("run", "align", "--dsn", fixture_db, "--config", cfg, expect=2)
    assert "align.normalize_function already ran with different SQL" in out
    assert "rollback align" in out
    flat = " ".join(out.split())  # an upgrade of pgconverge itself changes its SQL too: the message says so
    assert "or pgconverge itself changed since that run (this is pgconverge" in flat, flat
    assert "go on with the pgconverge version that ran it" in flat, flat
    client = conn.execute("select client from pgconverge.runs order by id desc limit 1").fetchone()[0]
    assert client.endswith(f" pgconverge {__version__}"), client


def test_second_runner_gets_a_clear_error(fixture_db):
    holder = psycopg.connect(fixture_db, autocommit=True, application_name="pgconverge:control")
    try:
        holder.execute("select pg_advisory_lock(hashtextextended('pgconverge:pgconverge', 0))")
        pid = holder.info.backend_pid
        out = cli("run", "align", "--dsn", fixture_db, expect=2)
        assert "another pgconverge runner is working on this database" in out
        assert f"pid {pid} (pgconverge:control" in out
    finally:
        holder.close()
    cli("run", "align", "--dsn", fixture_db)  # the lock went with the connection


def test_lock_held_longer_than_retry_budget_gives_up_cleanly(conn, fixture_db, tmp_path):
    cfg = write_config(tmp_path, "[migration]\nlock_retries = 3\nlock_timeout_ms = 50\n")
    blocker = psycopg.connect(fixture_db, application_name="app-writer")
    try:
        # An application transaction that has written to customers and not committed yet.
        blocker.execute("update public.customers set display_name = display_name where id = 1")
        out = cli("run", "align", "--dsn", fixture_db, "--config", cfg, expect=2)
        assert "could not get its SHARE ROW EXCLUSIVE lock on public.customers" in out
        assert f"pid {blocker.info.backend_pid} (app-writer" in out
        assert conn.execute("select count(*) from pg_trigger where tgname = 'pgconverge_align'").fetchone()[0] == 0
        retries = conn.execute("select count(*) from pgconverge.events where step = 'align.legacy_trigger' "
                               "and event = 'retry' and sqlstate = '55P03'").fetchone()[0]
        assert retries == 2
    finally:
        blocker.rollback()
        blocker.close()
    cli("run", "align", "--dsn", fixture_db, "--config", cfg)
    assert mapping_problems(conn) == []


def test_a_backfill_waiting_for_a_row_says_so_and_names_who_writes(conn, fixture_db, tmp_path):
    # The backfill's batch waits for a row an application transaction holds, not for a table lock: the message says
    # the batches before it are kept, and names the writer, not every session that read the table.
    cfg = write_config(tmp_path, "[migration]\nlock_retries = 2\nlock_timeout_ms = 50\nbatch_size = 100\n")
    cli("run", "align", "--dsn", fixture_db, "--config", cfg)
    killpoint.fail_at("expand.carts.backfill:before")  # expand stops where the new column and its triggers exist
    try:
        cli("run", "expand", "--dsn", fixture_db, "--config", cfg, expect=2)
    finally:
        killpoint.fail_at(None)
    last = conn.execute("select max(id) from public.carts").fetchone()[0]
    writer = psycopg.connect(fixture_db, application_name="app-writer")
    reader = psycopg.connect(fixture_db, application_name="app-reader")
    try:
        writer.execute("update public.carts set status = status where id = %s", (last,))
        reader.execute("select count(*) from public.carts")  # a reader's lock: nothing the backfill waits for
        out = " ".join(cli("run", "expand", "--dsn", fixture_db, "--config", cfg, expect=2).split())
        assert "expand.carts.backfill could not lock the rows of its next batch on public.carts" in out, out
        assert "the batches before it are kept" in out and f"pid {writer.info.backend_pid} (app-writer" in out, out
        assert f"pid {reader.info.backend_pid}" not in out, out
        assert conn.execute("select count(*) from public.carts where profile_id is not null").fetchone()[0] > 0
    finally:
        writer.rollback()
        writer.close()
        reader.rollback()
        reader.close()
    cli("run", "expand", "--dsn", fixture_db, "--config", cfg)
    assert conn.execute("select count(*) from public.carts where profile_id is null").fetchone()[0] == 0


def test_an_index_build_waiting_for_an_open_transaction_names_it(conn, fixture_db, tmp_path):
    # CREATE INDEX CONCURRENTLY waits for every transaction older than it, whatever table lock it holds: a writer
    # with only ROW EXCLUSIVE on profiles is the one to name.
    cfg = write_config(tmp_path, "[migration]\nlock_retries = 2\nlock_timeout_ms = 50\n")
    writer = psycopg.connect(fixture_db, application_name="app-writer")
    try:
        writer.execute("insert into public.profiles (whatsapp_e164) values ('+250788999111')")
        out = " ".join(cli("run", "align", "--dsn", fixture_db, "--config", cfg, expect=2).split())
        assert "align.match_index could not build its index on public.profiles" in out, out
        assert f"pid {writer.info.backend_pid} (app-writer" in out, out
        # more attempts, or longer ones: an application whose transactions outlast each attempt needs the latter
        assert "raise migration.lock_retries" in out and "migration.lock_timeout_ms (now 50 ms)" in out, out
    finally:
        writer.rollback()
        writer.close()
    cli("run", "align", "--dsn", fixture_db, "--config", cfg)


def test_rollback_of_align_removes_what_it_created(conn, fixture_db):
    def objects():
        return conn.execute("""select (select count(*) from public.profiles),
            (select count(*) from pg_trigger where tgname = 'pgconverge_align'),
            (select count(*) from pg_proc where pronamespace = to_regnamespace('pgconverge')
                and proname <> 'ledger_append_only'),
            to_regclass('pgconverge.legacy_customer_profile') is null,
            (select count(*) from pg_indexes where indexname = 'pgconverge_profiles_match_key')""").fetchone()
    before = conn.execute("select count(*) from public.profiles").fetchone()[0]
    cli("run", "align", "--dsn", fixture_db)
    assert objects()[0] > before
    out = cli_json("plan", "--rollback-to", "align", "--dsn", fixture_db)
    assert out["steps"][0]["id"].startswith("rollback.contract.")  # later phases first, skipped when never run
    assert "rollback.align.created_rows_unused" in [s["id"] for s in out["steps"]]
    cli("rollback", "align", "--dsn", fixture_db)
    assert objects() == (before, 0, 0, True, 0)
    # The ledger stays, and the phase can run again.
    assert conn.execute("select count(*) from pgconverge.events where event = 'reverted'").fetchone()[0] >= 8
    cli("run", "align", "--dsn", fixture_db)
    assert mapping_problems(conn) == []


def test_rollback_refused_when_created_rows_are_in_use(conn, fixture_db):
    cli("run", "align", "--dsn", fixture_db)
    conn.execute("create table public.wallets (id int primary key, profile_id uuid references public.profiles)")
    conn.execute("insert into public.wallets select 1, profile_id from pgconverge.legacy_customer_profile "
                 "where method = 'created' limit 1")
    out = cli("rollback", "align", "--dsn", fixture_db, expect=2)
    assert "public.wallets.profile_id references created public.profiles rows" in out
    # Nothing was changed: the trigger and the mapping are still there.
    assert conn.execute("select count(*) from pg_trigger where tgname = 'pgconverge_align'").fetchone()[0] == 1
    assert conn.execute("select to_regclass('pgconverge.legacy_customer_profile') is not null").fetchone()[0]


def test_writers_keep_writing_while_align_runs(conn, fixture_db, tmp_path):
    """Old code inserts customers (new and known numbers), new code inserts profiles; nothing fails or is lost."""
    stop = threading.Event()
    errors_seen: list[str] = []
    inserted: list[int] = []
    known = [r[0] for r in conn.execute(
        "select whatsapp_e164 from public.profiles where whatsapp_e164 like '+2507%' limit 50")]

    def old_code(seed: int):
        with psycopg.connect(fixture_db, autocommit=True) as c:
            i = 0
            while not stop.is_set():
                i += 1
                number = known[i % len(known)] if i % 3 == 0 else f"25078{seed}{i:06d}"
                try:
                    with c.transaction():
                        c.execute("set local role service_role")
                        cid = c.execute("insert into public.customers (wa_id, display_name) values (%s, %s) "
                                        "returning id", (number, f"old {seed}-{i}")).fetchone()[0]
                    inserted.append(cid)
                except psycopg.Error as exc:
                    errors_seen.append(f"old: {exc}")
                stop.wait(0.002)

    def new_code():
        with psycopg.connect(fixture_db, autocommit=True) as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    with c.transaction():
                        c.execute("set local role service_role")
                        c.execute("insert into public.profiles (whatsapp_e164, display_name) values (%s, 'new')",
                                  (f"+23350{i:07d}",))  # Ghana: no fixture number collides
                except psycopg.Error as exc:
                    errors_seen.append(f"new: {exc}")
                stop.wait(0.002)

    threads = [threading.Thread(target=old_code, args=(s,)) for s in (1, 2)] + [threading.Thread(target=new_code)]
    for t in threads:
        t.start()
    try:
        cfg = write_config(tmp_path, "[migration]\nbatch_size = 50\nbatch_pause_ms = 5\n")
        cli("run", "align", "--dsn", fixture_db, "--config", cfg)
        # A few more writes after align finished: the trigger maps them.
        stop.wait(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors_seen == []
    assert len(inserted) > 20
    unmapped = conn.execute("select count(*) from public.customers c where not exists "
                            "(select 1 from pgconverge.legacy_customer_profile m where m.customer_id = c.id)"
                            ).fetchone()[0]
    assert unmapped == 0
    # Customers written with a known number were linked to that number's existing profile.
    wrong = conn.execute("""
        select count(*) from public.customers c join pgconverge.legacy_customer_profile m on m.customer_id = c.id
        join public.profiles p on p.user_id = m.profile_id
        where c.id = any(%s) and pgconverge.normalize_phone(c.wa_id) <> pgconverge.normalize_phone(p.whatsapp_e164)
        """, (inserted,)).fetchone()[0]
    assert wrong == 0
    assert mapping_problems(conn) == []


def test_plan_is_pure_and_lists_locks(conn, fixture_db):
    spec = Spec()
    p = planner.build(spec, load_catalog(conn, spec))
    steps = p.as_dict("align")["steps"]
    assert [s["id"] for s in steps][:3] == ["align.private_schema", "align.normalize_function", "align.mapping_table"]
    index = next(s for s in steps if s["id"] == "align.match_index")
    assert (index["lock"], index["transactional"]) == ("SHARE UPDATE EXCLUSIVE", False)
    assert "concurrently" in index["sql"][0]
    # Planning changed nothing.
    assert conn.execute("select to_regnamespace('pgconverge')").fetchone()[0] is None


def test_runner_api_resumes_after_failure(conn, fixture_db):
    spec = Spec()
    p = planner.build(spec, load_catalog(conn, spec))
    with Runner(Target(fixture_db, "--dsn"), spec, p) as r:
        results = r.run_phase("align")
    assert [x.status for x in results] == ["done"] * len(results)
    assert next(x for x in results if x.step == "align.match").rows == conn.execute("select count(*) from public.customers").fetchone()[0]


def test_plan_comes_from_the_catalog_saved_when_the_migration_started(conn, fixture_db):
    from pgconverge.catalog import baseline

    spec = Spec()
    before = load_catalog(conn, spec)
    assert baseline.load(conn, spec).saved == {}
    cli("run", "align", "--dsn", fixture_db)
    cats = baseline.load(conn, spec)
    assert list(cats.saved) == ["align"]
    assert replace(cats.saved["align"], read_at="") == replace(before, read_at="")  # the round trip is exact
    assert cats.live != before  # align changed the database (a trigger on customers), the plan did not
    cli("rollback", "align", "--dsn", fixture_db)
    assert baseline.load(conn, spec).saved == {}


@pytest.mark.parametrize("ddl, message", [
    ("alter table public.profiles alter column user_id drop default; "
     "alter table public.profiles add foreign key (user_id) references auth.users (id)",
     "canonical.key public.profiles.user_id has no default and references auth.users(id)"),
    ("alter table public.profiles add foreign key (user_id) references auth.users (id) not valid",
     "canonical.key public.profiles.user_id has a default but references auth.users(id)"),
    ("alter table public.profiles add column tier text; update public.profiles set tier = 'basic'; "
     "alter table public.profiles alter column tier set not null",
     "public.profiles has NOT NULL column(s) tier with no default"),
])
def test_canonical_rows_that_cannot_be_created_stop_before_any_change(conn, fixture_db, ddl, message):
    conn.execute(ddl)
    out = cli("run", "align", "--dsn", fixture_db, expect=2)
    assert message in out and "fix:" in out
    if "references auth.users" in message:  # a fix that lifts it, not decisions of the rows there are now
        flat = " ".join(out.split())
        assert "add to public.customers a column referencing auth.users(id)" in flat, flat
        assert "does not lift this" in flat, flat
    assert conn.execute("select to_regnamespace('pgconverge')").fetchone()[0] is None


def test_plan_lists_the_insert_triggers_that_fire_for_created_canonical_rows(conn, fixture_db):
    conn.execute("""
        create table public.welcome_messages (profile_id uuid, sent_at timestamptz default now());
        create function public.welcome() returns trigger language plpgsql as $f$
        begin insert into public.welcome_messages (profile_id) values (new.user_id); return new; end $f$;
        create trigger send_welcome after insert on public.profiles for each row execute function public.welcome();
        create trigger touch_profile before update on public.profiles for each row execute function public.welcome();
    """)
    out = " ".join(cli("plan", "--dsn", fixture_db).split())
    assert ("listed trigger send_welcome on public.profiles: fires on insert, so also for each public.profiles row "
            "align creates") in out, out
    assert "ALTER TABLE public.profiles DISABLE TRIGGER send_welcome" in out
    assert "trigger touch_profile on public.profiles" not in out  # on update only
    cli("run", "align", "--dsn", fixture_db)
    created = conn.execute("select count(*) from pgconverge.legacy_customer_profile where method = 'created'"
                           ).fetchone()[0]
    assert created > 0
    assert conn.execute("select count(*) from public.welcome_messages").fetchone()[0] == created


def test_a_canonical_key_that_is_the_auth_user_is_copied_from_the_legacy_row(conn, fixture_db, tmp_path):
    """Supabase's starter shape: profiles' key is the auth user (references auth.users, no default). Created rows
    cannot invent it, but a legacy column pointing at the same auth users can give it (canonical.copy_columns); the
    refusal says so, and with it align creates each missing row under its customer's auth user."""
    conn.execute("""
        alter table public.profiles alter column user_id drop default;
        alter table public.profiles add foreign key (user_id) references auth.users (id);
        alter table public.customers add column user_id uuid;
        update public.customers set user_id = gen_random_uuid();
        insert into auth.users (id) select user_id from public.customers;
        alter table public.customers add foreign key (user_id) references auth.users (id);""")
    out = " ".join(cli("run", "align", "--dsn", fixture_db, expect=2).split())
    assert "references auth.users(id)" in out and 'canonical.copy_columns = { user_id = "user_id" }' in out, out
    assert conn.execute("select to_regnamespace('pgconverge')").fetchone()[0] is None
    cfg = write_config(tmp_path, '[canonical]\ncopy_columns = { display_name = "display_name", user_id = "user_id" }\n')
    cli("run", "align", "--dsn", fixture_db, "--config", cfg)
    created = conn.execute(
        "select count(*), count(*) filter (where p.user_id = c.user_id) from pgconverge.legacy_customer_profile m "
        "join public.customers c on c.id = m.customer_id join public.profiles p on p.user_id = m.profile_id "
        "where m.method = 'created'").fetchone()
    assert created[0] > 0 and created[0] == created[1], created
    assert conn.execute("select count(*) from public.customers c where not exists (select 1 from "
                        "pgconverge.legacy_customer_profile m where m.customer_id = c.id)").fetchone()[0] == 0
    for phase in ("expand", "switch"):
        cli("run", phase, "--dsn", fixture_db, "--config", cfg)
    assert mapping_problems(conn) == []
    cli("rollback", "align", "--dsn", fixture_db, "--config", cfg, "--yes")
    assert conn.execute("select to_regclass('pgconverge.legacy_customer_profile')").fetchone()[0] is None
