"""The expand phase: every dependent row gets the new id, kept in sync with the legacy one, constrained online."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import errors

from _support import (DEPENDENTS, cli, cli_json, has_private_schema, linkage_problems, mapping_problems, schema_dump,
                      write_config)


@pytest.fixture
def expanded(conn, fixture_db):
    cli("run", "align", "--dsn", fixture_db)
    cli("run", "expand", "--dsn", fixture_db)
    return conn


def test_every_row_gets_its_ground_truth_profile(expanded):
    conn = expanded
    assert mapping_problems(conn) == []
    assert linkage_problems(conn) == []
    for t in DEPENDENTS:
        # Rows without a customer keep NULL; every other row is filled.
        assert conn.execute(f"select count(*) from public.{t} where customer_id is null and profile_id is not null"
                            ).fetchone()[0] == 0
        assert conn.execute(f"select count(*) from public.{t} where customer_id is not null and profile_id is null"
                            ).fetchone()[0] == 0
    assert conn.execute("select count(*) from public.orders where customer_id is null").fetchone()[0] > 0
    # The profile each cart points at is the one the fixture's truth names (for pre-existing profiles).
    wrong = conn.execute("""select count(*) from public.carts c join fixture_truth.expected_mapping t
        on t.customer_id = c.customer_id where t.expected_profile_id is not null
        and c.profile_id <> t.expected_profile_id""").fetchone()[0]
    assert wrong == 0


def test_constraints_and_indexes_mirror_the_legacy_ones(expanded):
    conn = expanded
    nulls = dict(conn.execute("""select c.relname || '.' || a.attname, a.attnotnull from pg_attribute a
        join pg_class c on c.oid = a.attrelid where c.relname = any(%s) and a.attname in ('customer_id', 'profile_id')
        and c.relnamespace = 'public'::regnamespace""", (list(DEPENDENTS),)).fetchall())
    assert nulls == {"carts.customer_id": False, "carts.profile_id": True, "orders.customer_id": False,
                     "orders.profile_id": False, "sessions.customer_id": False, "sessions.profile_id": False}
    fks = dict(conn.execute("""select conrelid::regclass::text, pg_get_constraintdef(oid) from pg_constraint
        where conname like '%%profile_id_fkey' and convalidated""").fetchall())
    assert fks == {"carts": "FOREIGN KEY (profile_id) REFERENCES profiles(user_id) ON DELETE CASCADE",
                   "orders": "FOREIGN KEY (profile_id) REFERENCES profiles(user_id) ON DELETE SET NULL",
                   "sessions": "FOREIGN KEY (profile_id) REFERENCES profiles(user_id) ON DELETE SET NULL"}
    idx = dict(conn.execute("""select indexrelid::regclass::text, pg_get_indexdef(indexrelid) || ' ' || indisvalid
        from pg_index where indexrelid::regclass::text like 'idx_%%profile%%'""").fetchall())
    assert idx == {
        "idx_carts_profile_status": "CREATE INDEX idx_carts_profile_status ON public.carts USING btree "
                                    "(profile_id, status) true",
        "idx_orders_profile_id": "CREATE INDEX idx_orders_profile_id ON public.orders USING btree (profile_id) true",
        "idx_sessions_profile": "CREATE INDEX idx_sessions_profile ON public.sessions USING btree (profile_id) "
                                "WHERE (profile_id IS NOT NULL) true"}
    assert conn.execute("select count(*) from pg_constraint where conname like '%%not_null'").fetchone()[0] == 0


def test_on_delete_of_a_profile_mirrors_the_legacy_foreign_keys(expanded):
    conn = expanded
    pid = conn.execute("""select c.profile_id from public.carts c join public.orders o on o.profile_id = c.profile_id
        join public.sessions s on s.profile_id = c.profile_id limit 1""").fetchone()[0]
    with pytest.raises(psycopg.errors.QueryCanceled):  # a way to roll back the transaction at the end
        with conn.transaction():
            orders = [r[0] for r in conn.execute("select id from public.orders where profile_id = %s", (pid,))]
            conn.execute("delete from public.profiles where user_id = %s", (pid,))
            assert conn.execute("select count(*) from public.carts where profile_id = %s", (pid,)).fetchone()[0] == 0
            left = conn.execute("select profile_id, customer_id from public.orders where id = any(%s)",
                                (orders,)).fetchall()
            assert left and all(r == (None, None) for r in left)  # SET NULL, and the legacy id follows
            assert conn.execute("select count(*) from public.sessions where profile_id = %s",
                                (pid,)).fetchone()[0] == 0
            raise psycopg.errors.QueryCanceled("roll back")
    assert conn.execute("select count(*) from public.profiles where user_id = %s", (pid,)).fetchone()[0] == 1


def test_sync_trigger_lets_old_and_new_code_write(expanded):
    conn = expanded
    cid, pid = conn.execute("select customer_id, profile_id from pgconverge.legacy_customer_profile limit 1").fetchone()
    first_customer = conn.execute("select min(customer_id) from pgconverge.legacy_customer_profile "
                                  "where profile_id = %s", (pid,)).fetchone()[0]
    with conn.transaction():
        conn.execute("set local role service_role")
        # old code: customer_id only
        assert conn.execute("insert into public.carts (customer_id) values (%s) returning profile_id",
                            (cid,)).fetchone()[0] == pid
        # new code: profile_id only
        assert conn.execute("insert into public.carts (profile_id) values (%s) returning customer_id",
                            (pid,)).fetchone()[0] == first_customer
        # old code creating a brand-new customer and a cart for it, in one transaction
        new_cid = conn.execute("insert into public.customers (wa_id) values ('+250781111999') returning id"
                               ).fetchone()[0]
        new_pid = conn.execute("insert into public.orders (customer_id) values (%s) returning profile_id",
                               (new_cid,)).fetchone()[0]
        assert new_pid is not None
        # moving a row: either id moves the other
        oid = conn.execute("insert into public.orders (customer_id) values (%s) returning id", (cid,)).fetchone()[0]
        assert conn.execute("update public.orders set customer_id = %s where id = %s returning profile_id",
                            (new_cid, oid)).fetchone()[0] == new_pid
        assert conn.execute("update public.orders set profile_id = %s where id = %s returning customer_id",
                            (pid, oid)).fetchone()[0] is not None
        assert conn.execute("update public.orders set customer_id = null where id = %s returning profile_id",
                            (oid,)).fetchone()[0] is None
    with pytest.raises(errors.CheckViolation, match="belongs to"):
        conn.execute("insert into public.carts (customer_id, profile_id) values (%s, %s)", (cid, new_pid))


def test_writers_keep_writing_during_expand(conn, fixture_db, tmp_path):
    cli("run", "align", "--dsn", fixture_db)
    ids = conn.execute("select customer_id, profile_id from pgconverge.legacy_customer_profile "
                       "order by customer_id limit 200").fetchall()
    stop, ready = threading.Event(), threading.Event()
    failures: list[str] = []
    written = {"old": 0, "new": 0}

    def old_code():
        with psycopg.connect(fixture_db, autocommit=True) as c:
            i = 0
            while not stop.is_set():
                i += 1
                cid = ids[i % len(ids)][0]
                try:
                    with c.transaction():
                        c.execute("set local role service_role")
                        if i % 10 == 0:
                            cid = c.execute("insert into public.customers (wa_id) values (%s) returning id",
                                            (f"+25078{i:07d}",)).fetchone()[0]
                        cart = c.execute("insert into public.carts (customer_id) values (%s) returning id",
                                         (cid,)).fetchone()[0]
                        c.execute("insert into public.orders (customer_id, cart_id) values (%s, %s)", (cid, cart))
                        c.execute("insert into public.sessions (customer_id) values (%s)", (cid,))
                        c.execute("update public.carts set status = 'checked_out' where id = %s", (cart,))
                    written["old"] += 1
                except psycopg.Error as exc:
                    failures.append(f"old: {exc}")
                stop.wait(0.003)

    def new_code():
        ready.wait()
        with psycopg.connect(fixture_db, autocommit=True) as c:
            i = 0
            while not stop.is_set():
                i += 1
                pid = ids[i % len(ids)][1]
                try:
                    with c.transaction():
                        c.execute("set local role service_role")
                        cart = c.execute("insert into public.carts (profile_id) values (%s) returning id",
                                         (pid,)).fetchone()[0]
                        c.execute("insert into public.orders (profile_id, cart_id) values (%s, %s)", (pid, cart))
                        c.execute("insert into public.sessions (profile_id) values (%s)", (pid,))
                    written["new"] += 1
                except psycopg.Error as exc:
                    failures.append(f"new: {exc}")
                stop.wait(0.003)

    def deploy_new_code_when_ready():
        # New code starts once every dependent table has its column and sync trigger.
        with psycopg.connect(fixture_db, autocommit=True) as c:
            while not stop.is_set():
                n = c.execute("select count(*) from pg_trigger where tgname = '!pgconverge_sync'").fetchone()[0]
                if n == len(DEPENDENTS):
                    ready.set()
                    return
                time.sleep(0.01)
            ready.set()

    threads = [threading.Thread(target=f) for f in (old_code, old_code, new_code, deploy_new_code_when_ready)]
    for t in threads:
        t.start()
    try:
        cfg = write_config(tmp_path, "[migration]\nbatch_size = 100\nbatch_pause_ms = 5\n")
        cli("run", "expand", "--dsn", fixture_db, "--config", cfg)
        stop.wait(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert written["old"] > 20 and written["new"] > 5
    assert linkage_problems(conn) == []
    # Rows new code wrote carry the legacy id back wherever the profile has a customer.
    missing = conn.execute("select count(*) from public.carts c where c.customer_id is null and exists "
                           "(select 1 from pgconverge.legacy_customer_profile m where m.profile_id = c.profile_id)"
                           ).fetchone()[0]
    assert missing == 0
    assert cli_json("status", "--dsn", fixture_db)["phases"]["expand"] == "done"


def test_plan_takes_no_long_exclusive_lock(conn, fixture_db):
    steps = cli_json("plan", "expand", "--dsn", fixture_db)["steps"]
    assert steps and all(s["sql"] for s in steps)
    for s in steps:
        if s["lock"] == "ACCESS EXCLUSIVE":
            assert s["cost"] == "instant", s["id"]
        if s["operation"] == "CreateIndexConcurrently":
            assert not s["transactional"] and "CONCURRENTLY" in s["sql"][0].upper()


def test_rollback_of_expand_restores_the_schema_and_gives_rows_back(conn, fixture_db):
    cli("run", "align", "--dsn", fixture_db)
    before = schema_dump(conn)
    cli("run", "expand", "--dsn", fixture_db)
    # New code writes a cart for a profile that has no customer: rollback must make one.
    orphan = conn.execute("""select p.user_id from public.profiles p where not exists
        (select 1 from pgconverge.legacy_customer_profile m where m.profile_id = p.user_id)
        and p.whatsapp_e164 is not null limit 1""").fetchone()[0]
    cart = conn.execute("insert into public.carts (profile_id) values (%s) returning id", (orphan,)).fetchone()[0]
    cli("rollback", "expand", "--dsn", fixture_db)
    assert schema_dump(conn) == before
    cid = conn.execute("select customer_id from public.carts where id = %s", (cart,)).fetchone()[0]
    assert cid is not None
    assert conn.execute("select profile_id, method from pgconverge.legacy_customer_profile where customer_id = %s",
                        (cid,)).fetchone() == (orphan, "reverse")
    # And forward again.
    cli("run", "expand", "--dsn", fixture_db)
    assert linkage_problems(conn) == []


def test_verify_passes_after_expand_and_names_a_mislinked_row(expanded, fixture_db):
    conn = expanded
    out = cli_json("verify", "--dsn", fixture_db)
    assert out["passed"] and out["phases"] == ["align", "expand"]
    assert [c["step"] for c in out["checks"]] == ["align.coverage_gate", "expand.invariants",
                                                  "expand.new_columns_hold", "expand.references",
                                                  "expand.triggers_hold"]
    # A row changed behind the trigger's back (as a careless manual fix would).
    conn.execute("alter table public.orders disable trigger \"!pgconverge_sync\"")
    conn.execute("update public.orders set profile_id = (select user_id from public.profiles order by user_id desc "
                 "limit 1) where id = (select min(id) from public.orders where customer_id is not null)")
    conn.execute("alter table public.orders enable trigger \"!pgconverge_sync\"")
    out = cli_json("verify", "--dsn", fixture_db, expect=1)
    failed = [c for c in out["checks"] if not c["passed"]]
    assert [c["step"] for c in failed] == ["expand.invariants"]
    assert failed[0]["problems"][0][0] == "public.orders: 1 rows whose profile_id is not the mapping's"


def test_a_dependent_table_without_a_key_is_walked_by_pages(conn, fixture_db, tmp_path):
    conn.execute("""create table public.loyalty (customer_id bigint references public.customers on delete cascade,
                                                 points int);
                    insert into public.loyalty select id, id % 7 from public.customers, generate_series(1, 3)""")
    cfg = write_config(tmp_path, "[migration]\nbatch_size = 100\n")
    cli("run", "align", "--dsn", fixture_db, "--config", cfg)
    plan = cli_json("plan", "expand", "--dsn", fixture_db, "--config", cfg)["steps"]
    backfill = next(s for s in plan if s["id"] == "expand.loyalty.backfill")
    assert "pages per transaction: no key" in backfill["description"] and "ctid" in backfill["sql"][0]
    out = cli_json("run", "expand", "--dsn", fixture_db, "--config", cfg)
    assert next(s for s in out["steps"] if s["step"] == "expand.loyalty.backfill")["rows"] > 1
    assert conn.execute("select count(*) from public.loyalty where profile_id is null").fetchone()[0] == 0
    wrong = conn.execute("""select count(*) from public.loyalty l join pgconverge.legacy_customer_profile m
        on m.customer_id = l.customer_id where l.profile_id <> m.profile_id""").fetchone()[0]
    assert wrong == 0
    cli("rollback", "expand", "--dsn", fixture_db, "--config", cfg)
    assert conn.execute("select count(*) from information_schema.columns where table_name = 'loyalty' "
                        "and column_name = 'profile_id'").fetchone()[0] == 0


def test_rows_a_not_valid_foreign_key_lets_point_nowhere_are_refused_before_any_change(conn, fixture_db):
    """No mapping reaches a legacy id with no legacy row: `plan` and `run` refuse such rows before align, naming the
    table and the ids; once they are gone the migration runs, and its rollback leaves the key NOT VALID."""
    conn.execute("""create table public.events (customer_id bigint not null, kind text not null);
        insert into public.events select id, 'x' from public.customers;
        insert into public.events values (900001, 'orphan'), (900002, 'orphan'), (900002, 'orphan');
        alter table public.events add constraint events_customer_id_fkey foreign key (customer_id)
          references public.customers (id) on delete cascade not valid""")
    before = schema_dump(conn)
    for args in (("plan",), ("run", "align")):
        out = " ".join(cli(*args, "--dsn", fixture_db, expect=2).split())
        assert ("public.events: 3 rows have a customer_id with no public.customers row (foreign key "
                "events_customer_id_fkey is NOT VALID): ids 900001, 900002") in out, out
        assert "delete those rows" in out and "nothing was changed" in out, out
    assert schema_dump(conn) == before and not has_private_schema(conn)
    conn.execute("delete from public.events where kind = 'orphan'")
    cli("run", "align", "--dsn", fixture_db)
    out = cli_json("run", "expand", "--dsn", fixture_db)
    assert out["steps"][0]["step"] == "expand.orphans" and out["steps"][0]["status"] == "done", out["steps"][0]
    assert conn.execute("select count(*) from public.events where profile_id is null").fetchone()[0] == 0
    cli("rollback", "align", "--dsn", fixture_db)
    assert schema_dump(conn) == before


def test_new_code_with_a_merged_identitys_token_writes_under_the_legacy_policies(expanded):
    """Before the switch, a token names one legacy row of a merged person; new code writes only the new id.

    The legacy id the sync trigger gives back must be the caller's own, or the legacy policies' WITH CHECK
    (customer_id = auth_customer_id()) refuses the row.
    """
    from pgconverge.verify.tokens import act_as

    conn = expanded
    pid, later = conn.execute("""select profile_id, max(customer_id) from pgconverge.legacy_customer_profile
        group by profile_id having count(*) > 1 limit 1""").fetchone()
    with conn.transaction():
        act_as(conn, {"app_role": "customer", "customer_id": later, "profile_id": str(pid)})
        cart = conn.execute("insert into public.carts (profile_id) values (%s) returning id", (pid,)).fetchone()[0]
        assert conn.execute("select customer_id from public.carts where id = %s", (cart,)).fetchone()[0] == later
        conn.execute("reset role")
