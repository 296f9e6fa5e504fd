"""`pgconverge emit`: files applied to a real PostgreSQL 15, pgTAP tests passing, reverse files restoring the schema."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from _support import cli, cli_json, schema_dump
from conftest import PG15_BIN as PG_BIN

SCALE = "0.1"  # the fixture's minimum (200 customers): every identity case, quick to copy


def _dsn(pg15, db: str) -> str:
    host, port = pg15
    return f"host={host} port={port} user=postgres dbname={db}"


def _psql(pg15, db: str, *args: str) -> subprocess.CompletedProcess:
    host, port = pg15
    return subprocess.run([str(PG_BIN / "psql"), "-X", "-q", "-h", host, "-p", str(port), "-U", "postgres", "-d", db,
                           "-v", "ON_ERROR_STOP=1", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def fixture15(pg15):
    """A template database on the v15 server holding the bundled fixture, loaded with `pgconverge fixture load`."""
    _psql(pg15, "postgres", "-c", "create database emit_fixture")
    cli("fixture", "load", "--dsn", _dsn(pg15, "emit_fixture"), "--scale", SCALE)
    return "emit_fixture"


def _copy(pg15, template: str, name: str) -> str:
    r = _psql(pg15, "postgres", "-c", f'drop database if exists "{name}"', "-c",
              f'create database "{name}" template "{template}"')
    assert r.returncode == 0, r.stderr
    return name


def _apply_split(pg15, source: str, files: list[str], switched: str, contracted: str) -> None:
    """FILES applied to copies of SOURCE: those before contract's to SWITCHED, then, on a copy of it, the rest to
    CONTRACTED."""
    cut = next(i for i, f in enumerate(files) if "_pgconverge_contract_" in f)
    for db, template, part in ((switched, source, files[:cut]), (contracted, switched, files[cut:])):
        _copy(pg15, template, db)
        if db == contracted:
            # A database made from a template counts its statistics from zero, which the runtime gate reads as a
            # statistics reset after the baseline: the baseline is taken again there, as after restoring a copy.
            r = _psql(pg15, db, "-c", "select pgconverge.take_runtime_baseline()")
            assert r.returncode == 0, r.stderr
        for f in part:
            r = _psql(pg15, db, "-f", f)
            assert r.returncode == 0, f"{f}:\n{r.stderr}"


def _dump(pg15, db: str) -> list[str]:
    host, port = pg15
    out = subprocess.run([str(PG_BIN / "pg_dump"), "--schema-only", "-h", host, "-p", str(port), "-U", "postgres",
                          db], capture_output=True, text=True, check=True).stdout
    # \restrict carries a random key per dump; comments carry nothing of the schema.
    return [line for line in out.splitlines()
            if line.strip() and not line.startswith(("\\restrict", "\\unrestrict", "--"))]


def _outside_do(code: str) -> str:
    """CODE without its DO blocks (a dollar-quoted body may hold BEGIN and any statement)."""
    return re.sub(r"\bdo (\$\w*\$).*?\1", "do", code, flags=re.S)


def _code(path: Path) -> str:
    """A file's SQL without its comment lines."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))


@pytest.fixture(scope="module")
def emitted(pg15, fixture15, tmp_path_factory):
    out = tmp_path_factory.mktemp("emit") / "project"
    db = _copy(pg15, fixture15, "emit_source")
    data = cli_json("emit", str(out), "--dsn", _dsn(pg15, db), "--config", _config(tmp_path_factory.mktemp("cfg")))
    return out, data


def _config(where: Path) -> str:
    """No observation window: the contract files follow the switch files at once in these tests."""
    p = where / "pgconverge.toml"
    p.write_text("[migration]\nobservation_window = 0\n")
    return str(p)


def test_layout(emitted):
    out, data = emitted
    migrations = sorted((out / "supabase" / "migrations").iterdir())
    assert [str(p) for p in migrations] == data["migrations"]
    names = [p.name for p in migrations]
    assert len(names) > 30
    assert all(re.fullmatch(r"\d{14}_[a-z0-9_]+\.sql", n) for n in names), names
    stamps = [n[:14] for n in names]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), "timestamps strictly increasing"
    concurrently = 0
    for p in migrations:
        code = _code(p)
        # Outside a transaction: the one statement, between the DO blocks that record it in the ledger.
        outside = _outside_do(code)
        if re.search(r"\bconcurrently\b", outside, re.I):
            concurrently += 1
            assert len(re.findall(r"\bconcurrently\b", outside, re.I)) == 1, f"{p.name} holds more than one"
            assert not re.search(r"\b(begin|commit|start transaction)\b", outside, re.I), p.name
        if re.search(r"^\s*call\b", outside, re.I | re.M):
            assert len(re.findall(r"^\s*call\b", outside, re.I | re.M)) == 1, p.name
            assert not re.search(r"\bbegin\s*;", outside, re.I), p.name
        if not re.search(r"\bconcurrently\b|^\s*call\b", outside, re.I | re.M):
            assert re.match(r"\s*begin;", code) and code.rstrip().endswith("commit;"), f"{p.name} is one transaction"
    assert concurrently >= 4  # the mapping's match index and one mirrored index per dependent table
    # Every forward file has its reverse; the batched backfill is a CALL, never a whole-table UPDATE.
    rollback = sorted(p.name for p in (out / "supabase" / "rollback").iterdir())
    assert rollback == [n[:-4] + ".down.sql" for n in names]
    backfill = next(p for p in migrations if "carts_backfill" in p.name)
    assert re.search(r"^call \"pgconverge\".\"run_batches\"", _code(backfill), re.M)
    assert "pgconverge run expand" in backfill.read_text() or "pgconverge run" in backfill.read_text()
    # An error a file raises states its fix in the message: the Supabase CLI prints no HINT. (The sync trigger
    # that expand creates raises with one on a write whose two ids disagree; its message names both ids.)
    raises = [(p.name, m.group(0)) for p in migrations + sorted((out / "supabase" / "rollback").iterdir())
              for m in re.finditer(r"raise exception using.*?;$", _code(p), re.S | re.M)]
    assert len(raises) >= 6, raises
    hinted = [(n, r) for n, r in raises if re.search(r"\bhint\s*=", r)]
    # (expand's files make the sync function; the switch's reverse files give it expand's body back after the
    # rollback of the switch had it make legacy rows for newcomers)
    assert all(("_expand_" in n or "_switch_" in n and n.endswith(".down.sql")) and "which belongs to" in r
               for n, r in hinted), hinted
    # Runner-only steps are said, not dropped.
    assert any("align.report" in s for s in data["not_emitted"])
    assert any("align.phone_audit" in n.read_text() for n in migrations)
    tests = sorted((out / "supabase" / "tests" / "database").glob("*.test.sql"))
    assert [t.name for t in tests] == ["pgconverge_contract.test.sql", "pgconverge_contract_rls.test.sql"]
    earlier = sorted((out / "pgconverge-tests" / "before_contract").glob("*.test.sql"))
    assert len(earlier) == 4
    for t in tests + earlier:
        code = _code(t)
        assert code.startswith("begin;") and "select * from finish();" in code and code.rstrip().endswith("rollback;")
        assert code.splitlines()[1] == "set transaction isolation level repeatable read;", t.name
        n = int(re.search(r"select plan\((\d+)\);", code).group(1))
        assert n == len(re.findall(r"^select (?!plan\(|\* from finish|pg_temp\.)", code, re.M))


def test_contract_layout(pg15, emitted):
    """Contract after switch, its gates first; the reverse files replay the rollback plan in its own order."""
    out, data = emitted
    names = [Path(p).name for p in data["migrations"]]
    phases = [re.match(r"\d{14}_pgconverge_([a-z]+)_", n).group(1) for n in names]
    first = phases.index("contract")
    assert set(phases[first:]) == {"contract"} and "contract" not in phases[:first]
    assert "_switch_runtime_baseline" in names[first - 1]
    assert "_contract_gate_switch_in_place" in names[first] and "_contract_gate_runtime_use" in names[first + 1]
    # The final validation is the last read before the first drop.
    final = next(i for i, n in enumerate(names) if "_contract_final_validation" in n)
    assert "_contract_linkage_after" in names[final - 1] and "drop_legacy" in names[final + 1]
    mig = Path(data["migrations"][0]).parent
    gate = (mig / names[first]).read_text()
    assert "pgconverge audit code DIR --fail-on-findings" in gate
    runtime_gate = (mig / names[first + 1]).read_text()
    assert "set pgconverge.accept_runtime_use = on" in runtime_gate and names[first - 1] in runtime_gate
    assert re.search(r"^do \$", _code(mig / names[first + 1]), re.M)
    assert sum("drop_legacy_index" in n for n in names) == 2  # one per legacy index: carts, sessions
    # Reverse files, latest first, hold the rollback plan's steps in the plan's own order.
    plan = cli_json("plan", "--rollback-to", "align", "--dsn", _dsn(pg15, "emit_source"))
    order = [s["id"] for s in plan["steps"]]
    seen = [m.group(1) for p in reversed(data["rollback"])
            for m in re.finditer(r"^-- (rollback\.[\w.]+):", Path(p).read_text(), re.M)]
    assert len(seen) == len(set(seen)) and sum(s.startswith("rollback.contract.") for s in seen) >= 20
    assert seen == [i for i in order if i in set(seen)]
    # The legacy column comes back with its sync trigger in one transaction; a reverse file whose undo moved to
    # a later file says where it is.
    undo = next(Path(p) for p in data["rollback"] if "-- rollback.contract.carts.legacy_column:" in Path(p).read_text())
    block = re.search(r"^-- rollback\.contract\.carts\.legacy_column:.*?^begin;(.*?)^commit;", undo.read_text(),
                      re.M | re.S).group(1)
    assert re.search(r"add column .*\"customer_id\"", block) and "create trigger \"!pgconverge_sync\"" in block.lower()
    carts = next(Path(p) for p in data["rollback"] if "contract_carts_drop_legacy_column" in p)
    if carts != undo:
        assert f"rollback.contract.carts.legacy_column undoes part of this file; it is in supabase/rollback/" \
               f"{undo.name}" in " ".join(carts.read_text().replace("-- ", "").split())


def _normalized(dump: list[str]) -> list[str]:
    """A schema dump with each table's columns sorted: a column dropped and added again comes back at the end."""
    out, columns = [], None
    for line in dump:
        if columns is not None and line.startswith(")"):
            out += sorted(c.rstrip(",") for c in columns)
            columns = None
        if columns is not None:
            columns.append(line)
            continue
        out.append(line)
        if line.startswith("CREATE TABLE ") and line.rstrip().endswith("("):
            columns = []
    return out


def _owners(conn) -> dict[str, list]:
    return {t: conn.execute(f"select id, customer_id from public.{t} order by id").fetchall()
            for t in ("carts", "orders", "sessions")}


def _prove(pg15, db: str, *files: str) -> subprocess.CompletedProcess:
    host, port = pg15
    return subprocess.run(["pg_prove", "-h", host, "-p", str(port), "-U", "postgres", "-d", db, *files],
                          capture_output=True, text=True)


def test_apply_prove_and_reverse(pg15, fixture15, emitted):
    out, data = emitted
    db = _copy(pg15, fixture15, "emit_apply")
    before = _dump(pg15, db)
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        owners = _owners(conn)
    for f in data["migrations"]:
        r = _psql(pg15, db, "-f", f)
        assert r.returncode == 0, f"{f}:\n{r.stderr}"
        if "_contract_gate_runtime_use" in f:
            assert "gate runtime use: passed, 0 row(s)" in r.stderr
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        # The backfill ran in batches to the end: every dependent row keeps its owner, now by canonical id.
        archived = conn.execute("select format('%I.%I', schemaname, tablename) from pg_tables "
                                "where schemaname = 'archive' and tablename like 'legacy_customer_profile_%'"
                                ).fetchone()[0]
        mapping = dict(conn.execute(f"select customer_id, profile_id from {archived}").fetchall())
        for t in ("carts", "orders", "sessions"):
            now = dict(conn.execute(f"select id, profile_id from public.{t}").fetchall())
            wrong = [i for i, c in owners[t] if c is not None and now[i] != mapping[c]]
            assert not wrong and sum(c is not None for _, c in owners[t]) > 50, (t, wrong[:5])
        assert conn.execute("select count(*) from pg_policies where qual like '%auth_profile_id%'").fetchone()[0] >= 5
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is None
        conn.execute("create extension pgtap")
    tests = sorted(str(p) for p in (out / "supabase" / "tests" / "database").glob("*.test.sql"))
    host, port = pg15
    prove = ["pg_prove", "-h", host, "-p", str(port), "-U", "postgres", "-d", db, *tests]
    r = subprocess.run(prove, capture_output=True, text=True)
    expected = sum(t["assertions"] for t in data["tests"] if "/tests/database/" in t["file"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "All tests successful." in r.stdout and f"Tests={expected}," in r.stdout, r.stdout
    assert expected >= 40

    # A policy that leaks every cart is caught by the RLS tests (the rollback below restores the original).
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        conn.execute("alter policy carts_owner on public.carts using (true) with check (true)")
    rls_file = next(t for t in tests if t.endswith("pgconverge_contract_rls.test.sql"))
    r = subprocess.run([*prove[:-len(tests)], rls_file], capture_output=True, text=True)
    assert r.returncode != 0, r.stdout
    assert "sees exactly its own rows of public.carts" in r.stdout + r.stderr

    for f in reversed(data["rollback"]):
        r = _psql(pg15, db, "-f", f)
        assert r.returncode == 0, f"{f}:\n{r.stderr}"
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        conn.execute("drop extension pgtap")
        assert _owners(conn) == owners  # every dependent row has its legacy id back, the same one
    after = _dump(pg15, db)
    assert _normalized(after) == _normalized(before)
    assert after != before  # only the column order differs: the legacy columns came back at the end
    # The same tests now fail: they check the migrated state, not just anything.
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        conn.execute("create extension pgtap")
    r = subprocess.run(prove, capture_output=True, text=True)
    assert r.returncode != 0 and "All tests successful." not in r.stdout


def test_not_empty_dir_is_refused(pg15, fixture15, tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    msg = cli("emit", str(out), "--dsn", _dsn(pg15, fixture15), expect=2)
    assert "is not empty" in msg and "--force" in msg
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    msg = cli("emit", str(out), "--dsn", _dsn(pg15, fixture15), "--through", "cleanup", expect=2)
    assert "align, expand, switch, contract" in msg


def _wait_for_stats(conn, table: str, updates: int) -> None:
    """Until the server's statistics show UPDATES row updates of TABLE (a backend reports them as it goes idle)."""
    for _ in range(100):
        conn.execute("select pg_stat_clear_snapshot()")
        if conn.execute("select n_tup_upd from pg_stat_user_tables where relid = %s::regclass", (table,)
                        ).fetchone()[0] >= updates:
            return
        time.sleep(0.05)
    raise AssertionError(f"the statistics never showed {updates} updates of {table}")


def _refusal(dsn: str, path: str, *before: str) -> str:
    """The primary message of the error applying the file at PATH raises, after the statements BEFORE, all in one
    transaction rolled back afterwards (the file's own BEGIN only warns inside it)."""
    with psycopg.connect(dsn) as conn:
        for stmt in before:
            conn.execute(stmt)
        with pytest.raises(psycopg.Error) as failed:
            conn.execute(Path(path).read_text())
        conn.rollback()
    return failed.value.diag.message_primary or ""


def test_contract_gates_refuse_and_change_nothing(pg15, fixture15, emitted):
    """After the switch files, a write to the legacy table stops contract at its runtime gate, naming the counts."""
    out, data = emitted
    db = _copy(pg15, fixture15, "emit_gates")
    files = data["migrations"]
    first = next(i for i, f in enumerate(files) if "_pgconverge_contract_" in f)
    for f in files[:first]:
        r = _psql(pg15, db, "-f", f)
        assert r.returncode == 0, f"{f}:\n{r.stderr}"
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        conn.execute("create extension pgtap")
    # The tests of the state before contract pass now, and running them is no use of the legacy side.
    earlier = sorted(str(p) for p in (out / "pgconverge-tests" / "before_contract").glob("*.test.sql"))
    r = _prove(pg15, db, *earlier)
    expected = sum(t["assertions"] for t in data["tests"] if "/before_contract/" in t["file"])
    assert r.returncode == 0 and "All tests successful." in r.stdout, r.stdout + r.stderr
    assert f"Tests={expected}," in r.stdout and expected >= 60, r.stdout

    # Old code is still at work: it updates two legacy rows and calls the legacy helper once.
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        conn.execute("drop extension pgtap")
        base = conn.execute("select n_tup_upd from pgconverge.emitted_runtime_baseline").fetchone()[0]
        conn.execute("update public.customers set wa_id = wa_id where id in (select id from public.customers "
                     "order by id limit 2)")
        conn.execute("select public.auth_customer_id()")
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        _wait_for_stats(conn, "public.customers", base + 2)
        nullable = conn.execute("select table_name from information_schema.columns where table_schema = 'public' "
                                "and column_name = 'profile_id' and is_nullable = 'NO' order by 1").fetchone()[0]
    before = _dump(pg15, db)
    stopped = None
    for f in files[first:]:
        r = _psql(pg15, db, "-f", f)
        if r.returncode:
            stopped = f
            break
    assert stopped is not None and "_contract_gate_runtime_use" in stopped
    assert "0 row(s) of \"public\".\"customers\" inserted, 2 updated, 0 deleted and 1 call(s) of " \
           "public.auth_customer_id()" in r.stderr, r.stderr
    assert "pgconverge audit runtime" in r.stderr and "pgconverge audit code" in r.stderr
    assert "take_runtime_baseline" in r.stderr and "pgconverge.accept_runtime_use" in r.stderr
    assert _dump(pg15, db) == before, "nothing of contract was applied"
    # `pgconverge audit runtime` reads the same baseline.
    audit = cli_json("audit", "runtime", "--dsn", _dsn(pg15, db))
    assert audit["legacy_table"]["n_tup_upd"] == 2 and audit["legacy_helper_calls"] == 1

    # The switch gate names what is missing: a new column that lost its NOT NULL.
    gate = files[first]
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        conn.execute(f"alter table public.{nullable} alter column profile_id drop not null")
    r = _psql(pg15, db, "-f", gate)
    assert r.returncode and f"public.{nullable}.profile_id (is not NOT NULL" in r.stderr, r.stderr
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        conn.execute(f"alter table public.{nullable} alter column profile_id set not null")

    # Each refusal carries its reason and its fix in the message itself, as a driver sees it (the Supabase CLI
    # prints the message, and no HINT): old code at work, no baseline row, no baseline table, the switch undone.
    used = _refusal(_dsn(pg15, db), stopped)
    assert "old code still uses the legacy side" in used and ". Fix: find the callers with `pgconverge audit " \
           "runtime`" in used, used
    assert "select \"pgconverge\".\"take_runtime_baseline\"();" in used and "accept_runtime_use = on" in used, used
    empty = _refusal(_dsn(pg15, db), stopped, "delete from pgconverge.emitted_runtime_baseline")
    assert "holds no baseline" in empty and ". Fix: take a baseline (select " in empty, empty
    with psycopg.connect(_dsn(pg15, db)) as conn:  # accepted on purpose, it warns instead
        conn.execute("delete from pgconverge.emitted_runtime_baseline")
        conn.execute("set local pgconverge.accept_runtime_use = on")
        warned = []
        conn.add_notice_handler(lambda d: warned.append(d.message_primary))
        # The gate's DO block alone: the whole file would go on to its COMMIT, recording the gate as passed.
        conn.execute(re.search(r"^do (\$\w*\$).*?\1", Path(stopped).read_text(), re.S | re.M).group(0))
        conn.rollback()
    assert any("holds no baseline; accepted by pgconverge.accept_runtime_use" in w for w in warned), warned
    missing = _refusal(_dsn(pg15, db), stopped, "alter table pgconverge.emitted_runtime_baseline rename to gone")
    assert "no runtime baseline recorded" in missing and ". Fix: apply the switch files first (supabase/migrations/" \
           f"{Path(files[first - 1]).name} records the baseline)" in missing, missing
    # A role that may not create the archive schema is stopped at the gate, before the first drop.
    archive = _refusal(_dsn(pg15, db), gate, "create role pgc_no_create", "grant pg_read_all_data to pgc_no_create",
                       "set local role pgc_no_create")
    assert "schema archive (does not exist, and pgc_no_create may not create schemas in database" in archive \
           and "GRANT CREATE ON DATABASE" in archive, archive
    archive = _refusal(_dsn(pg15, db), gate, "create role pgc_no_create", "grant pg_read_all_data to pgc_no_create",
                       "create schema archive", "set local role pgc_no_create")
    assert "schema archive (exists, owned by postgres, and pgc_no_create may not create tables in it" in archive \
           and "GRANT CREATE ON SCHEMA archive TO pgc_no_create" in archive, archive
    switch = _refusal(_dsn(pg15, db), gate, f"alter table public.{nullable} alter column profile_id drop not null")
    assert "gate switch in place: contract cannot start: " in switch \
           and ". Fix: apply the align, expand and switch files first" in switch, switch
    assert _dump(pg15, db) == before, "nothing of contract was applied, and every change above was rolled back"

    # Accepting the use on purpose passes with a warning naming the counts; a new baseline passes cleanly.
    r = _psql(pg15, db, "-c", "set pgconverge.accept_runtime_use = on", "-f", stopped)
    assert r.returncode == 0 and "WARNING" in r.stderr and "2 updated" in r.stderr, r.stderr
    r = _psql(pg15, db, "-c", "select pgconverge.take_runtime_baseline()", "-f", stopped)
    assert r.returncode == 0 and "gate runtime use: passed" in r.stderr, r.stderr
    for f in files[files.index(stopped) + 1:]:
        r = _psql(pg15, db, "-f", f)
        assert r.returncode == 0, f"{f}:\n{r.stderr}"
    with psycopg.connect(_dsn(pg15, db), autocommit=True) as conn:
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is None


def test_through_switch(pg15, fixture15, tmp_path):
    """--through switch still writes align..switch only, with every test in tests/database."""
    out = tmp_path / "project"
    data = cli_json("emit", str(out), "--dsn", _dsn(pg15, fixture15), "--through", "switch")
    names = [Path(p).name for p in data["migrations"]]
    assert not any("_contract_" in n for n in names) and "_switch_runtime_baseline" in names[-1]
    assert sorted(p.name for p in (out / "supabase" / "tests" / "database").iterdir()) == [
        "pgconverge_align.test.sql", "pgconverge_expand.test.sql", "pgconverge_switch_helper.test.sql",
        "pgconverge_switch_rls.test.sql"]
    assert not (out / "pgconverge-tests" / "before_contract").exists()
    assert len(data["rollback"]) == len(names)


def test_rollback_after_contract_on_postgres_15(pg15, fixture15, tmp_path):
    """After contract the legacy table's row type is archived with it. The rollback's check of what depends on the
    functions it drops names them with their argument types; Postgres 15 raises on a type that does not exist
    where 16 answers NULL, so it must ask only for the types that do: the rollback, its dry run and its files."""
    dsn = _dsn(pg15, _copy(pg15, fixture15, "emit_rollback15"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = schema_dump(conn)
    cli("run", "--all", "--accept-code-references", "--accept-runtime-use", "--yes", "--skip-preflight", "--dsn", dsn)
    cli("rollback", "align", "--dry-run", "--dsn", dsn)
    cli("emit", str(tmp_path / "project"), "--rollback-to", "align", "--dsn", dsn)
    cli("rollback", "align", "--yes", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema_dump(conn) == before


def test_help_teaches():
    text = " ".join(cli("emit", "--help").split())  # however the terminal wraps it
    for phrase in ("supabase db push", "pg_prove", "supabase test db", "supabase/rollback", "psql",
                   "pgconverge audit code DIR --fail-on-findings", "pgconverge.accept_runtime_use",
                   "pgconverge-tests/before_contract", "[default: contract]", "--phase", "--rollback-to",
                   "never in the future", "supabase migration repair"):
        assert phrase in text, phrase


def test_contract_gate_refuses_a_canonical_helper_that_reads_what_contract_archives(pg15, tmp_path):
    """With a lookup helper (auth.uid() through the legacy table), contract must stop before archiving."""
    _psql(pg15, "postgres", "-c", "drop database if exists emit_uid", "-c", "create database emit_uid")
    cli("fixture", "load", "--dsn", _dsn(pg15, "emit_uid"), "--scale", SCALE, "--helper-style", "uid_lookup")
    data = cli_json("emit", str(tmp_path / "uid"), "--dsn", _dsn(pg15, "emit_uid"))
    files = data["migrations"]
    gate = next(i for i, f in enumerate(files) if "_pgconverge_contract_" in f)
    for f in files[:gate]:
        r = _psql(pg15, "emit_uid", "-f", f)
        assert r.returncode == 0, f"{f}:\n{r.stderr}"
    before = _dump(pg15, "emit_uid")
    r = _psql(pg15, "emit_uid", "-f", files[gate])
    assert r.returncode != 0 and "which contract archives" in r.stderr, r.stderr
    assert _dump(pg15, "emit_uid") == before
