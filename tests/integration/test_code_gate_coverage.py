"""The code audit states what it read, and a verdict over nothing fails as "proves nothing": a `--code` path that
does not exist is refused before anything runs; a tree with no file of a language the audit reads, or with files in
other languages that name a legacy name, fails `audit code --fail-on-findings` and contract's code gate, which
then drops nothing."""

from __future__ import annotations

import json

import psycopg

from _support import cli, schema_dump, write_config

NO_WINDOW = "[migration]\nobservation_window = 0\n"


def _flat(text: str) -> str:
    return " ".join(text.split())


def _trees(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    go = tmp_path / "go_app"
    go.mkdir()
    (go / "main.go").write_text('package main\n\nconst q = "insert into customers (wa_id) values ($1)"\n')
    (go / "README.md").write_text("Our customers are great.\n")  # prose in a file that is not code: not listed
    vue = tmp_path / "vue_app"
    vue.mkdir()
    (vue / "Cart.vue").write_text("<script setup>\nconst { data } = await supabase.from('customers').select()\n"
                                  "</script>\n")
    (vue / "clean.ts").write_text("export const x = supabase.from('profiles').select()\n")
    return empty, go, vue


def test_audit_code_fails_when_it_read_nothing_or_could_not_read_a_reference(tmp_path):
    empty, go, vue = _trees(tmp_path)
    out = _flat(cli("audit", "code", str(empty), "--fail-on-findings", expect=1))
    assert "0 findings in 0 files" in out and "proves nothing: no file under" in out, out
    data = json.loads(cli("audit", "code", str(empty), "--json", "--fail-on-findings", expect=1))
    assert data["proves_nothing"] is True and data["files_scanned"] == 0
    out = _flat(cli("audit", "code", str(go), "--fail-on-findings", expect=1))
    assert "not read: main.go names a legacy name in a language the audit does not parse" in out, out
    assert "README.md" not in out
    data = json.loads(cli("audit", "code", str(vue), "--json", "--fail-on-findings", expect=1))
    assert data["unread"] == ["Cart.vue"] and data["files_scanned"] == 1 and data["findings"] == []
    # Without --fail-on-findings it reports and exits 0, as before.
    cli("audit", "code", str(go))


def test_run_with_a_code_path_that_does_not_exist_is_refused_before_anything(make_db, tmp_path):
    dsn = make_db()
    out = _flat(cli("run", "align", "--dsn", dsn, "--code", str(tmp_path / "app_typo"), expect=2))
    assert f"--code {tmp_path / 'app_typo'} does not exist" in out and "pass the directory that holds" in out, out
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select to_regnamespace('pgconverge')").fetchone()[0] is None


def test_contract_code_gate_fails_over_code_it_could_not_read(make_db, template_factory, tmp_path):
    empty, go, _vue = _trees(tmp_path)
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, NO_WINDOW)
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = schema_dump(conn, ("public", "archive"))
        out = _flat(cli("run", "contract", "--dsn", dsn, "--config", cfg, "--code", str(empty), "--yes", expect=2))
        assert "contract is blocked, nothing was dropped" in out, out
        assert f"--code {empty}: no file there is in a language the audit reads" in out and "proves nothing" in out
        out = _flat(cli("run", "contract", "--dsn", dsn, "--config", cfg, "--code", str(go), "--yes", expect=2))
        assert f"--code {go}: 1 file(s) in languages the audit does not parse name legacy names, not judged: " \
               "main.go" in out, out
        assert schema_dump(conn, ("public", "archive")) == before
    # Accepting the references on purpose still goes through.
    cli("run", "contract", "--dsn", dsn, "--config", cfg, "--code", str(go), "--accept-code-references", "--yes")


# Legacy names reached through a variable, each in a directory of its own: (file, source, the use's place and how).
REACHED = {
    "py_fstring": ("a.py", 'LEGACY = "customers"\ndef f(cur, cid):\n'
                           '    cur.execute(f"select * from {LEGACY} where id = %s", (cid,))\n',
                   'a.py:3:34 table customers → profiles (reached through LEGACY, bound to "customers" at line 1)'),
    "py_local": ("c.py", 'def h(supabase):\n    t = "customers"\n'
                         '    return supabase.table(t).select("*").execute()\n',
                 'c.py:3:27 table customers → .table("profiles") (reached through t, bound to "customers" at '
                 'line 2)'),
    "ts_local": ("a.ts", "export async function f(supabase: any) {\n  const name = 'customers';\n"
                         "  return supabase.from(name).select('*');\n}\n",
                 "a.ts:3:24 table customers → .from('profiles') (reached through name, bound to 'customers' at "
                 "line 2)"),
    "ts_template": ("b.ts", 'const LEGACY = "customers";\nexport async function g(sql: any) {\n'
                            "  return sql.unsafe(`select * from ${LEGACY}`);\n}\n",
                    'b.ts:3:38 table customers → profiles (reached through LEGACY, bound to "customers" at line 1)'),
    "py_column": ("k.py", 'COL = "customer_id"\ndef k(cur):\n'
                          '    cur.execute(f"select id from carts where {COL} = 1")\n',
                  'k.py:3:47 column customer_id → profile_id (reached through COL, bound to "customer_id" at '
                  'line 1)'),
    "ts_helper": ("h.ts", "const HELPER = 'auth_customer_id';\nexport const me = (db: any) => db.rpc(HELPER);\n",
                  "h.ts:2:39 helper auth_customer_id → .rpc('auth_profile_id') (reached through HELPER, bound to "
                  "'auth_customer_id' at line 1)"),
}


def _reached_trees(tmp_path):
    trees = {}
    for case, (name, source, _) in REACHED.items():
        d = tmp_path / case
        d.mkdir()
        (d / name).write_text(source)
        trees[case] = d
    return trees


def test_audit_code_fails_on_names_reached_through_a_variable(tmp_path):
    for case, d in _reached_trees(tmp_path).items():
        data = json.loads(cli("audit", "code", str(d), "--json", "--fail-on-findings", expect=1))
        name, _, use = REACHED[case]
        where, rest = use.split(" ", 1)
        at = [f for f in data["findings"] if f"{f['path']}:{f['line']}:{f['column']}" == where]
        assert at and at[0]["reason"] == rest.split(" (", 1)[1].rstrip(")"), (case, data["findings"])
        out = _flat(cli("audit", "code", str(d), "--fail-on-findings", expect=1))
        assert "reached through" in out, out


def test_contract_code_gate_fails_on_names_reached_through_a_variable(make_db, template_factory, tmp_path):
    trees = _reached_trees(tmp_path)
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, NO_WINDOW)
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = schema_dump(conn, ("public", "archive"))
        for case, d in trees.items():
            out = _flat(cli("run", "contract", "--dsn", dsn, "--config", cfg, "--code", str(d), "--yes", expect=2))
            assert "contract is blocked, nothing was dropped" in out, (case, out)
            assert REACHED[case][2] in out, (case, out)
        assert schema_dump(conn, ("public", "archive")) == before


def _skipped_tree(tmp_path):
    """A clean file, a .ts over 1 MB naming the legacy table, a dangling .py link and a large file without one."""
    app = tmp_path / "skipped_app"
    app.mkdir()
    (app / "util.py").write_text("x = 1\n")
    (app / "orders.ts").write_text('export const load = () => supabase.from("customers").select()\n'
                                   + "// generated\n" * 90000)
    (app / "bundle.js").write_text("export const n = 1;\n" + "// generated\n" * 90000)  # large, names nothing
    (app / "jobs.py").symlink_to(tmp_path / "no_such_checkout" / "jobs.py")
    return app


def test_audit_code_fails_on_skipped_files_not_proven_clean(tmp_path):
    app = _skipped_tree(tmp_path)
    data = json.loads(cli("audit", "code", str(app), "--json", "--fail-on-findings", expect=1))
    assert data["files_scanned"] == 1 and data["findings"] == []
    assert {u["path"]: u["why"] for u in data["unproven"]} == {
        "orders.ts": "is over 1 MB, not parsed, and names a legacy name",
        "jobs.py": "could not be read (No such file or directory)"}, data
    out = _flat(cli("audit", "code", str(app), "--fail-on-findings", expect=1))
    assert "not read: orders.ts is over 1 MB, not parsed, and names a legacy name: not proven clean" in out, out
    assert "not read: jobs.py could not be read" in out, out
    # A large file that names no legacy name is skipped and does not fail the audit.
    (app / "orders.ts").unlink()
    (app / "jobs.py").unlink()
    data = json.loads(cli("audit", "code", str(app), "--json", "--fail-on-findings"))
    assert data["skipped"] == ["bundle.js"] and data["unproven"] == []


def test_contract_code_gate_fails_over_skipped_files_not_proven_clean(make_db, template_factory, tmp_path):
    app = _skipped_tree(tmp_path)
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, NO_WINDOW)
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = schema_dump(conn, ("public", "archive"))
        out = _flat(cli("run", "contract", "--dsn", dsn, "--config", cfg, "--code", str(app), "--yes", expect=2))
        assert "contract is blocked, nothing was dropped" in out, out
        assert f"--code {app}: 2 file(s) skipped, not proven clean: " in out, out
        assert "orders.ts is over 1 MB" in out and "jobs.py could not be read" in out, out
        assert schema_dump(conn, ("public", "archive")) == before
