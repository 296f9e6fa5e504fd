"""Emitted files on zoo schemas of particular shapes, applied with psql and rolled back by files alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

import test_emit
from _support import cli_json, schema_dump, write_config
from _zoo import build, load

# The PostgreSQL 15 server of test_emit.py, which has pgTAP, for the tests that run the emitted pgTAP files.

PSQL = "/usr/lib/postgresql/15/bin/psql"


def _apply(dsn: str, files: list[str]) -> None:
    for f in files:
        r = subprocess.run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", f], capture_output=True,
                           text=True)
        assert r.returncode == 0, f"{Path(f).name}:\n{r.stderr}"


def _zoo_db(make_db, tmp_path, **params) -> tuple[str, tuple[str, ...]]:
    """A new database (from MAKE_DB) holding the zoo schema of PARAMS, and the CLI's arguments for it."""
    zoo = build(**params)
    dsn = make_db()
    load(dsn, zoo)
    cfg = write_config(tmp_path, zoo.config + "observation_window = 0\n")
    return dsn, ("--dsn", dsn, "--config", cfg)


def _emit(out: Path, args: tuple[str, ...], *more: str) -> dict:
    return cli_json("emit", str(out), *args, *more)


LEAF_INDEXES = """
    select c.relname, x.relname, exists (select 1 from pg_inherits h where h.inhrelid = i.indexrelid)
    from pg_index i join pg_class c on c.oid = i.indrelid join pg_class x on x.oid = i.indexrelid
    where c.relispartition and c.relkind = 'r' and c.relnamespace = 'public'::regnamespace
    order by 1, 2"""


def test_partition_leaf_indexes_are_attached_and_rolled_back(make_db, tmp_path):
    """Each leaf partition's index built by the files is attached to the partitioned table's index, so no leaf
    gets a second one, and the rollback as files gives back the original schema."""
    dsn, args = _zoo_db(make_db, tmp_path, partitioned="hash", legacy_key="uuid", canonical_key="uuid")
    out = tmp_path / "project"
    with psycopg.connect(dsn, autocommit=True) as conn:
        original, leaves = schema_dump(conn), conn.execute(LEAF_INDEXES).fetchall()
    for phase in ("align", "expand"):
        _apply(dsn, _emit(out, args, "--phase", phase)["migrations"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        now = conn.execute(LEAF_INDEXES).fetchall()
    added = [r for r in now if r not in leaves]
    # One new index per leaf (orders_h0, orders_h1, orders_h2), each attached.
    assert sorted(r[0] for r in added) == ["orders_h0", "orders_h1", "orders_h2"], now
    assert all(r[2] for r in now), now
    for phase in ("switch", "contract"):
        _apply(dsn, _emit(out, args, "--phase", phase)["migrations"])
    _apply(dsn, _emit(out, args, "--rollback-to", "align")["migrations"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema_dump(conn) == original
        assert conn.execute(LEAF_INDEXES).fetchall() == leaves
    assert cli_json("status", *args)["summary"]["state"] == "rolled back"
    assert cli_json("plan", "align", *args)["steps"]


def _down_files(out: Path) -> list[str]:
    """The rollback files, latest first (the order they are applied in)."""
    return [str(p) for p in sorted((out / "supabase" / "rollback").glob("*.down.sql"), reverse=True)]


@pytest.mark.parametrize("shape", [{}, {"partitioned": "range", "transfers": True, "legacy_key": "uuid"}],
                         ids=["plain", "partitioned_two_references_uuid"])
def test_down_files_apply_after_phase_by_phase_emits(make_db, tmp_path, shape):
    """Each phase emitted on its own calls the batch procedure; undoing a later phase leaves it to the earlier. The
    reverse files' ledger guards let a whole rollback through, on a partitioned table and two references too."""
    dsn, args = _zoo_db(make_db, tmp_path, **shape)
    out = tmp_path / "project"
    with psycopg.connect(dsn, autocommit=True) as conn:
        original = schema_dump(conn)
    for phase in ("align", "expand"):
        _apply(dsn, _emit(out, args, "--phase", phase)["migrations"])
    _apply(dsn, _down_files(out))
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema_dump(conn) == original


def test_contract_down_files_apply_after_run(make_db, tmp_path):
    """align and expand by `pgconverge run`, switch and contract as files: contract's undo gives the legacy ids
    back in batches, with no file of this directory having made the batch procedure before."""
    dsn, args = _zoo_db(make_db, tmp_path)
    out = tmp_path / "project"
    for phase in ("align", "expand"):
        cli_json("run", phase, *args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        expanded = schema_dump(conn)
    for phase in ("switch", "contract"):
        _apply(dsn, _emit(out, args, "--phase", phase)["migrations"])
    _apply(dsn, _down_files(out))
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema_dump(conn) == expanded


def _prove(dsn: str, out: Path, *files: str) -> subprocess.CompletedProcess:
    d = conninfo_to_dict(dsn)  # pg_prove takes a database name, not a connection string
    where = [a for k, o in (("host", "-h"), ("port", "-p"), ("user", "-U")) if k in d for a in (o, str(d[k]))]
    return subprocess.run(["/usr/bin/pg_prove", *where, "-d", d["dbname"], *files], cwd=out, capture_output=True,
                          text=True)


def _on_pg15(pg15, name: str):
    """MAKE_DB for the PostgreSQL 15 server: a new database NAME there."""
    def make() -> str:
        with psycopg.connect(test_emit._dsn(pg15, "postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        return test_emit._dsn(pg15, name)
    return make


def _join_pk_switched(pg15, tmp_path) -> tuple[str, Path]:
    """A zoo with a join table whose primary key holds the legacy column (customer_tags (customer_id, tag)), its
    files applied through switch."""
    dsn, args = _zoo_db(_on_pg15(pg15, "shapes_join_pk"), tmp_path, shapes=("join_pk",))
    out = tmp_path / "project"
    _apply(dsn, _emit(out, args, "--through", "switch")["migrations"])
    return dsn, out


def test_rls_tests_of_a_table_keyed_by_ctid(pg15, tmp_path):
    dsn, out = _join_pk_switched(pg15, tmp_path)
    rls = "supabase/tests/database/pgconverge_switch_rls.test.sql"
    assert "customer_tags" in (out / rls).read_text()
    r = _prove(dsn, out, rls)
    assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr


def test_expand_tests_of_a_legacy_column_in_the_primary_key(pg15, tmp_path):
    """expand keeps NOT NULL on a legacy column in the primary key: the test says so rather than NULL allowed."""
    dsn, out = _join_pk_switched(pg15, tmp_path)
    expand = "supabase/tests/database/pgconverge_expand.test.sql"
    r = _prove(dsn, out, expand)
    assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr
    assert "public.customer_tags.customer_id stays NOT NULL" in (out / expand).read_text()


def test_trigger_and_index_tests_look_at_every_partition(pg15, tmp_path):
    """A partitioned dependent: the sync trigger disabled on one leaf partition only, or a leaf's new index made
    invalid on its own, fails the expand tests (each leaves the partitioned table's own as it was); so does a leaf's
    index after contract. On the unbroken database every test passes, before contract and after."""
    dsn, args = _zoo_db(_on_pg15(pg15, "shapes_part_triggers"), tmp_path, partitioned="range")
    out = tmp_path / "project"
    files = _emit(out, args)["migrations"]
    switched = max(i for i, f in enumerate(files) if "_pgconverge_switch_" in f) + 1
    _apply(dsn, files[:switched])
    expand = "pgconverge-tests/before_contract/pgconverge_expand.test.sql"
    contract = "supabase/tests/database/pgconverge_contract.test.sql"
    r = _prove(dsn, out, expand)
    assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr
    leaf_index = ("select i.indexrelid::regclass::text from pg_index i join pg_class c on c.oid = i.indexrelid "
                  "where i.indrelid = 'public.orders_2024_h1'::regclass and c.relname ~ 'profile_id'")
    with psycopg.connect(dsn, autocommit=True) as conn:
        index = conn.execute(leaf_index).fetchone()[0]
    text = (out / expand).read_text()
    assert "index orders_profile_id_idx is valid" in text, text
    for broken, undo, failing in (
            ('alter table public.orders_2024_h1 disable trigger "!pgconverge_sync"',
             'alter table public.orders_2024_h1 enable trigger "!pgconverge_sync"',
             "the sync trigger !pgconverge_sync on public.orders is there and enabled"),
            (f"update pg_index set indisvalid = false where indexrelid = '{index}'::regclass",
             f"update pg_index set indisvalid = true where indexrelid = '{index}'::regclass",
             "index orders_profile_id_idx is valid")):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(broken)
        r = _prove(dsn, out, expand)
        assert r.returncode != 0 and f'"{failing}"' in r.stdout, r.stdout + r.stderr
        assert "orders_2024_h1" in r.stdout + r.stderr, r.stdout + r.stderr  # the failure names the partition
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(undo)
    _apply(dsn, files[switched:])
    r = _prove(dsn, out, *sorted(str(p) for p in (out / "supabase" / "tests" / "database").glob("*.sql")))
    assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        index = conn.execute(leaf_index).fetchone()[0]
        conn.execute(f"update pg_index set indisvalid = false where indexrelid = '{index}'::regclass")
    r = _prove(dsn, out, contract)
    assert r.returncode != 0 and '"index orders_profile_id_idx is valid"' in r.stdout, r.stdout + r.stderr


def test_pgtap_tokens_carry_the_claims_where_the_helper_reads_them(pg15, tmp_path):
    """The legacy helper reads auth.jwt() -> 'app_metadata' ->> 'customer_id': the pgTAP tokens nest the claims
    there, before contract and after."""
    dsn, args = _zoo_db(_on_pg15(pg15, "shapes_app_metadata"), tmp_path, helper_style="app_metadata")
    out = tmp_path / "project"
    files = _emit(out, args)["migrations"]
    switched = max(i for i, f in enumerate(files) if "_pgconverge_switch_" in f) + 1
    _apply(dsn, files[:switched])
    r = _prove(dsn, out, *sorted(str(p) for p in (out / "pgconverge-tests" / "before_contract").glob("*.sql")))
    assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr
    _apply(dsn, files[switched:])
    r = _prove(dsn, out, *sorted(str(p) for p in (out / "supabase" / "tests" / "database").glob("*.sql")))
    assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr


def test_pgtap_tokens_after_contract_name_the_auth_user_the_canonical_lookup_knows(pg15, tmp_path):
    """The legacy helper looks the caller up by auth.uid() and so does the canonical helper's successor, written
    before contract: the token after contract carries the auth user the canonical row is known by, which for a
    merged identity need not be its sample legacy row's."""
    dsn, args = _zoo_db(_on_pg15(pg15, "shapes_lookup"), tmp_path, helper_style="lookup")
    out = tmp_path / "project"
    data = _emit(out, args)
    files = data["migrations"]
    switched = max(i for i, f in enumerate(files) if "_pgconverge_switch_" in f) + 1
    _apply(dsn, files[:switched])
    r = _prove(dsn, out, *sorted(str(p) for p in (out / "pgconverge-tests" / "before_contract").glob("*.sql")))
    assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr
    zoo = build(helper_style="lookup")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(zoo.before_contract_sql)
        # The case this is about: a sample whose legacy row's auth user is not its canonical row's.
        differ = [s["label"] for s in data["sample_identities"] if conn.execute(sql.SQL(
            "select c.auth_user_id::text is distinct from %s from {c} c join {m} m on m.{n} = c.id "
            "where m.{ml}::text = %s").format(c=sql.SQL(zoo.canonical_table), m=sql.SQL(zoo.mapping_table),
                                              n=sql.Identifier(zoo.new_column),
                                              ml=sql.Identifier(zoo.mapping_legacy_column)),
            (s["subject"], s["legacy_id"])).fetchone()[0]]
    assert differ, data["sample_identities"]
    _apply(dsn, files[switched:])
    r = _prove(dsn, out, *sorted(str(p) for p in (out / "supabase" / "tests" / "database").glob("*.sql")))
    assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr


def test_rollback_to_contract_after_contract(pg15, tmp_path):
    """Undoing contract alone: the samples of the tests of the state after switch are picked from the archived
    legacy table and mapping, and those tests pass once the undo is applied."""
    dsn, args = _zoo_db(_on_pg15(pg15, "shapes_undo_contract"), tmp_path)
    out = tmp_path / "project"
    _apply(dsn, _emit(out, args)["migrations"])
    data = _emit(out, args, "--rollback-to", "contract")
    assert len(data["sample_identities"]) == 2, data["sample_identities"]
    _apply(dsn, data["migrations"])
    r = _prove(dsn, out, *sorted(str(p) for p in (out / "supabase" / "tests" / "database").glob("*.sql")))
    assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr
    assert "pgconverge_switch_rls.test.sql" in r.stdout


def test_report_reads_rolled_back_after_files_and_a_rollback_by_the_runner(make_db, tmp_path):
    """Every phase applied from the emitted files, then `pgconverge rollback align`: report's verdict is ROLLED BACK,
    as status reads it (the files' two contract gate steps are undone with the gates step they stand for)."""
    dsn, args = _zoo_db(make_db, tmp_path, dependents=2)
    _apply(dsn, _emit(tmp_path / "project", args)["migrations"])
    cli_json("rollback", "align", "--yes", *args)
    assert cli_json("status", *args)["summary"]["state"] == "rolled back"
    report = cli_json("report", *args)
    assert report["verdict"]["status"] == "ROLLED BACK", report["verdict"]
    contract = next(p for p in report["phases"] if p["phase"] == "contract")
    assert contract["state"] == "reverted", [(s["id"], s["state"]) for s in contract["steps"]]
