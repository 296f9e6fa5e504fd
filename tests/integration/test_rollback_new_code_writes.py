"""`rollback expand` gives the legacy column its NOT NULL back (a check added NOT VALID, validated, then SET NOT
NULL) while new code may still write rows with the new id alone, for people old code never knew. From the refill on
the sync trigger makes their legacy rows as the refill does: no such write fails the check, and the validation finds
no row left without its legacy id. Before, every such write failed from the check on, and the rollback stopped at
the validation for good."""

from __future__ import annotations

import threading

import psycopg
from psycopg import errors

from _support import cli, write_config


def test_new_code_writing_for_newcomers_through_rollback_expand(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg, "--skip-preflight")
    with psycopg.connect(dsn, autocommit=True) as conn:
        newcomers = [conn.execute("insert into public.profiles (whatsapp_e164, display_name) values (%s, 'new') "
                                  "returning user_id", (f"+2507895560{i:02d}",)).fetchone()[0] for i in range(20)]
    cli("rollback", "switch", "--dsn", dsn, "--config", cfg, "--yes")
    refused, written, stop = [], [0], threading.Event()

    def new_code() -> None:  # carts for people with no customer row, by the new id alone, until the column is gone
        with psycopg.connect(dsn, autocommit=True) as app:
            i = 0
            while not stop.is_set():
                try:
                    app.execute("insert into public.carts (profile_id, status) values (%s, 'open')",
                                (newcomers[i % len(newcomers)],))
                    written[0] += 1
                except errors.UndefinedColumn:
                    return  # rolled back: new code has nothing to write any more
                except psycopg.Error as exc:
                    refused.append(f"{exc.sqlstate} {exc}")
                i += 1
                stop.wait(0.005)

    writer = threading.Thread(target=new_code)
    writer.start()
    try:
        cli("rollback", "expand", "--dsn", dsn, "--config", cfg, "--yes")
    finally:
        stop.set()
        writer.join()
    assert written[0] > 0 and refused == [], refused[:5]
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select attnotnull from pg_attribute where attrelid = 'public.carts'::regclass "
                            "and attname = 'customer_id'").fetchone()[0] is True
        # every newcomer who got a cart has a customer now, whose carts they are
        owners = conn.execute("select count(distinct c.customer_id) from public.carts c join "
                              "pgconverge.legacy_customer_profile m on m.customer_id = c.customer_id "
                              "where m.profile_id = any(%s)", (newcomers,)).fetchone()[0]
        assert owners > 0
