"""Expand's ADD COLUMN changes the dependents' row type, and Postgres refuses to run a statement prepared before it
that returns whole rows. No DDL can spare such a session, so `plan` lists the hazard with its fix; this test shows
that the hazard is real as listed, and that a statement naming its columns goes on working."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from _support import cli

SMALL = 0.1


def test_plan_lists_the_row_type_change_that_breaks_prepared_whole_row_reads(make_db, template_factory):
    dsn = make_db(template_factory(SMALL))
    listed = " ".join(cli("plan", "--dsn", dsn).split())
    assert "row type of public.carts, public.orders, public.sessions" in listed
    assert "cached plan must not change result type" in listed and "recycle the application's connection pools" \
        in listed
    with psycopg.connect(dsn, autocommit=True) as star, psycopg.connect(dsn, autocommit=True) as named:
        key = star.execute("select min(id) from public.carts").fetchone()[0]
        for _ in range(6):  # psycopg prepares a statement on the server once it has run five times
            star.execute("select * from public.carts where id = %s", (key,))
            named.execute("select id, customer_id from public.carts where id = %s", (key,))
        cli("run", "align", "--dsn", dsn)
        cli("run", "expand", "--dsn", dsn)
        with pytest.raises(errors.FeatureNotSupported, match="cached plan must not change result type"):
            star.execute("select * from public.carts where id = %s", (key,))
        assert named.execute("select id, customer_id from public.carts where id = %s", (key,)).fetchone()[0] == key
