"""A lookup helper (auth_customer_id() is the customers row whose auth_user_id is auth.uid()): the switch bridges
auth_profile_id() through the mapping, and for contract the user rewrites it to stand alone (contract's gate asks).
`rollback contract` returns to the switched state, where old code works for every legacy row: the bridged helper
comes back (before, the user's stand-alone one stayed, and a merged person's second legacy row saw none of its
orders with its old token, and old code's insert for it failed on row level security)."""

from __future__ import annotations

import psycopg

from _support import cli, write_config
from _zoo import build, load, set_token


def _probe(dsn: str, zoo, legacy: str, auth: str) -> tuple[int, str]:
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            set_token(conn, zoo, {"sub": auth, "customer_id": legacy})
            seen = conn.execute("select count(*) from public.orders").fetchone()[0]
        try:
            with conn.transaction():
                set_token(conn, zoo, {"sub": auth, "customer_id": legacy})
                conn.execute("insert into public.orders (customer_id) values (%s)", (int(legacy),))
            return seen, "ok"
        except psycopg.Error as exc:
            return seen, exc.sqlstate or "error"


def test_rollback_contract_gives_old_tokens_the_bridged_helper_back(make_db, tmp_path):
    zoo = build(helper_style="lookup", persons=6)
    dsn = make_db()
    load(dsn, zoo)
    args = ("--dsn", dsn, "--config", write_config(tmp_path, zoo.config + "observation_window = 0\n"))
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    with psycopg.connect(dsn, autocommit=True) as conn:  # a merged person's second legacy row, with its own auth user
        legacy, auth = conn.execute(
            "select c.id::text, c.auth_user_id::text from public.customers c join zoo_truth.legacy_person t on "
            "t.legacy_key = c.id::text where t.person = 'p00' order by c.id desc limit 1").fetchone()
    switched = _probe(dsn, zoo, legacy, auth)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(zoo.before_contract_sql)
    cli("run", "contract", "--accept-code-references", "--accept-runtime-use", "--yes", *args)
    cli("rollback", "contract", "--yes", *args)
    seen, inserted = _probe(dsn, zoo, legacy, auth)
    assert switched[1] == "ok" and switched[0] > 0 and inserted == "ok" and seen >= switched[0], (switched, seen,
                                                                                                  inserted)
