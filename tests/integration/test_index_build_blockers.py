"""A concurrent index build outwaited by an older transaction's snapshot: the error names that transaction (it holds
no lock on the table being indexed) and says what the failed build left behind."""

from __future__ import annotations

import psycopg

from _support import cli, write_config


def test_an_old_repeatable_read_report_blocking_an_index_build_is_named(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nlock_retries = 2\nlock_timeout_ms = 100\n")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table public.price_list (id int primary key, name text); "
                  "insert into public.price_list values (1, 'tea')")
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    report = psycopg.connect(dsn, autocommit=True, application_name="nightly-report")
    try:
        pid = report.execute("select pg_backend_pid()").fetchone()[0]
        report.execute("begin isolation level repeatable read")
        report.execute("select count(*) from public.price_list")  # a table the migration never touches
        out = " ".join(cli("run", "expand", "--dsn", dsn, "--config", cfg, expect=2).split())
        assert "the blocker has finished" not in out, out
        assert f"pid {pid} (nightly-report, idle in transaction, transaction open" in out, out
        assert "select count(*) from public.price_list" in out, out
        assert "older than it" in out and "pg_terminate_backend" in out, out
        with psycopg.connect(dsn, autocommit=True) as c:
            invalid = [r[0] for r in c.execute("select indexrelid::regclass::text from pg_index where not indisvalid")]
        assert len(invalid) == 1, invalid
        assert f"left the index public.{invalid[0].removeprefix('public.')} INVALID" in out, out
        assert "the next run drops it and builds it again" in out and "nothing was changed by this step" not in out
    finally:
        report.close()
    cli("run", "expand", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select count(*) from pg_index where not indisvalid").fetchone()[0] == 0
