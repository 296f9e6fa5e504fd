"""A migration begun with a former pgconverge goes on with this one. A check this version adds to a phase the ledger
records as finished (expand.references, switch.coverage) is one the ledger never saw: it only reads, so the next
phase runs it first, where it used to refuse with "needs expand finished first" until the user ran the earlier phase
again by hand. A step that changes something, never run, still refuses."""

from __future__ import annotations

import psycopg

from _support import cli, write_config


def _forget(dsn: str, *steps: str) -> None:
    """The ledger as a version without STEPS left it: their events gone (a superuser lifts the ledger's guard)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("alter table pgconverge.events disable trigger events_append_only")
        conn.execute("delete from pgconverge.events where step = any(%s)", (list(steps),))
        conn.execute("alter table pgconverge.events enable trigger events_append_only")


def test_checks_a_newer_version_adds_to_a_finished_phase_run_before_the_next(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(0.02))
    args = ("--dsn", dsn, "--config", write_config(tmp_path, "[migration]\nobservation_window = 0\n"))
    cli("run", "align", *args)
    cli("run", "expand", *args)
    _forget(dsn, "expand.references")
    out = " ".join(cli("run", "switch", *args).split())
    assert "expand was finished without expand.references, which this pgconverge adds to it and which only read: " \
           "running them first" in out, out
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select count(*) from pgconverge.events where step = 'expand.references' "
                            "and event = 'done'").fetchone()[0] == 1
        assert conn.execute("select count(*) from pgconverge.events where step like 'switch.%' and event = 'done'"
                            ).fetchone()[0] > 0
    # A step that changes something is not run behind the user's back.
    _forget(dsn, "switch.function_tracking")
    out = " ".join(cli("run", "contract", "--yes", "--accept-code-references", "--accept-runtime-use", *args,
                       expect=2).split())
    assert "phase contract needs switch finished first" in out and "switch.function_tracking" in out, out
