"""New code goes on signing people up (an auth user and a profile, no customers row) and writing their orders by the
new id while `rollback switch` runs. From before its refill until the restored policies are in place the sync trigger
makes the legacy row of a row written with the new id alone, as the refill does: everyone whose write went through
sees every row of theirs afterwards, and old code writes for them. Before, a person signed up after the refill had
passed the orders kept rows with no customer_id: the restored policies showed them none, and refused old code's
inserts. After the rollback the sync function is expand's again: it makes no legacy row (a person new code signs up
then is refused under the restored policies whatever the trigger did, so the filling would help nobody)."""

from __future__ import annotations

import threading
import uuid

import psycopg

from _support import cli, schema_db
from test_lookup_newcomers import CONFIG, SCHEMA, _as
from test_rollback_switch_newcomers import _old_code_insert

# A slow refill (two rows a batch over a few hundred orders) leaves new code time to sign people up while it walks.
SLOW = CONFIG.replace("[migration]\n", "[migration]\nbatch_size = 2\n")
MORE_ORDERS = "insert into public.orders (customer_id, total) select 1 + i % 12, i from generate_series(1, 400) i"


def _sign_up(conn, number: str) -> uuid.UUID:
    sub = uuid.uuid4()
    conn.execute("insert into auth.users (id) values (%s)", (sub,))
    conn.execute("insert into public.profiles (id, whatsapp_e164) values (%s, %s)", (sub, number))
    return sub


def _sync_definition(conn) -> str:
    return conn.execute("select pg_get_functiondef(t.tgfoid) from pg_trigger t where t.tgrelid = "
                        "'public.orders'::regclass and t.tgname = '!pgconverge_sync'").fetchone()[0]


def test_people_new_code_signs_up_during_rollback_switch_keep_their_rows(make_db, tmp_path):
    dsn, args = schema_db(make_db, tmp_path, SCHEMA + MORE_ORDERS + ";", SLOW)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        expand_body = _sync_definition(conn)
        customers = conn.execute("select count(*) from public.customers").fetchone()[0]
    written: dict[uuid.UUID, int] = {}
    refused: list[str] = []
    stop = threading.Event()

    def new_code() -> None:  # signs a person up, then writes two orders as that person, by the new id alone
        with psycopg.connect(dsn, autocommit=True) as app:
            i = 0
            while not stop.is_set():
                sub = _sign_up(app, f"+2507885{i:05d}")
                written[sub] = 0
                for _ in range(2):
                    try:
                        _as(app, sub, "insert into public.orders (profile_id, total) values (%s, 3) returning total",
                            sub)
                        written[sub] += 1
                    except psycopg.Error as exc:
                        refused.append(f"{exc.sqlstate} {exc}")
                i += 1
                stop.wait(0.003)

    writer = threading.Thread(target=new_code)
    writer.start()
    try:
        cli("rollback", "switch", "--yes", *args)
    finally:
        stop.set()
        writer.join()
    people = [p for p, n in written.items() if n]
    assert len(people) > 5, written
    with psycopg.connect(dsn, autocommit=True) as conn:
        # no row new code wrote lacks its customer_id, and each person sees every order of theirs
        assert conn.execute("select count(*) from public.orders where customer_id is null").fetchone()[0] == 0
        seen = {p: _as(conn, p, "select count(*) from public.orders") for p in people}
        assert seen == {p: written[p] for p in people}, {p: (seen[p], written[p]) for p in people
                                                          if seen[p] != written[p]}
        for p in people[-3:]:
            assert _old_code_insert(conn, p) == "ok"
        # what was refused, was refused by the restored policies (the writer kept on after the rollback)
        assert all(r.startswith("42501") for r in refused), refused[:3]
        # expand's sync function again: a person new code signs up now gets no customers row from pgconverge
        assert _sync_definition(conn) == expand_body
        made = conn.execute("select count(*) from public.customers").fetchone()[0]
        assert made - customers <= len(written)
        later = _sign_up(conn, "+250788599999")
        conn.execute("insert into public.orders (profile_id, total) values (%s, 1)", (later,))
        assert conn.execute("select customer_id from public.orders where profile_id = %s", (later,)).fetchall() == [
            (None,)]
        assert conn.execute("select count(*) from public.customers").fetchone()[0] == made
