"""Identifiers with quotes, semicolons, spaces and unicode are always quoted: no SQL injection, no mix-ups."""

import psycopg

from _support import cli, cli_json, odd_names_config, odd_names_schema, write_config

LEGACY, CANONICAL, DEPENDENT = "Kund; drop table x;--", "Persön", "Order's"


def test_a_schema_of_odd_names_migrates_through_expand(empty_db, tmp_path):
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(odd_names_schema(LEGACY, CANONICAL, DEPENDENT))
        cfg = write_config(tmp_path, odd_names_config(LEGACY, CANONICAL))
        inv = cli_json("inventory", "--dsn", empty_db, "--config", cfg)
        assert [f["table"] for f in inv["foreign_keys"]] == ['"App ""Data"""."Order\'s"']
        cli("run", "align", "--dsn", empty_db, "--config", cfg)
        cli("run", "expand", "--dsn", empty_db, "--config", cfg)
        assert cli_json("verify", "--dsn", empty_db, "--config", cfg)["passed"]
        assert conn.execute("select to_regclass('public.x') is not null").fetchone()[0]  # nothing was injected
        # Every customer got a person; the '078…' spellings met the '+25078…' ones.
        n = conn.execute('select count(distinct "Persön; Key") from "App ""Data"""."Order\'s"').fetchone()[0]
        assert n == 60  # sixty numbers, each its own person
        assert conn.execute('select count(*) from "App ""Data"""."Persön"').fetchone()[0] == 60  # 30 + 30 created
        assert conn.execute('select count(*) from "App ""Data"""."Order\'s" where "Persön; Key" is null'
                            ).fetchone()[0] == 0
        idx = [r[0] for r in conn.execute("select indexdef from pg_indexes where tablename = 'Order''s'")]
        assert any('("Persön; Key")' in d for d in idx), idx  # the legacy column's index, mirrored
        cli("rollback", "align", "--dsn", empty_db, "--config", cfg)
        assert conn.execute("""select count(*) from information_schema.columns
                               where column_name = 'Persön; Key'""").fetchone()[0] == 0
