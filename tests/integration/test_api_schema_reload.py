"""PostgREST (Supabase's data API) checks requests against its cache of the schema. After each phase and each
rollback that ran a step, pgconverge tells it to read the schema again on its channel (`pgrst`), so new code's
first request with profile_id after expand, or old code's after a rollback, is not refused by a stale cache."""

from __future__ import annotations

import psycopg

from _support import cli

SMALL = 0.1


def _heard(listener: psycopg.Connection) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=1.0, stop_after=10) if n.channel == "pgrst"]


def test_each_phase_and_rollback_that_ran_a_step_asks_the_api_to_reload_its_schema(make_db, template_factory):
    dsn = make_db(template_factory(SMALL))
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen pgrst")
        cli("run", "align", "--dsn", dsn)
        assert _heard(listener) == ["reload schema"]
        cli("run", "expand", "--dsn", dsn)
        assert _heard(listener) == ["reload schema"]
        cli("run", "expand", "--dsn", dsn)  # nothing left to run: the schema did not change
        assert _heard(listener) == []
        cli("rollback", "expand", "--dsn", dsn, "--yes")
        assert _heard(listener) == ["reload schema"]
