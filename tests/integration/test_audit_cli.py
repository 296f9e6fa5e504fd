"""`pgconverge audit code` through the CLI, on the bundled sample and on directories made here."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

import _support
from pgconverge.audit import sample_code_dir
from pgconverge.cli import app

SAMPLE = sample_code_dir()
MARKER = re.compile(r"expect:\s*(.*?)\s*(?:\*/\s*\}?)?\s*$")


def invoke(*args: str):
    return CliRunner().invoke(app, ["audit", "code", *args])


def planted_counts() -> Counter:
    """Per category, the (path, line, name) markers planted in the sample."""
    c: Counter = Counter()
    for p in SAMPLE.rglob("*"):
        if p.suffix in {".ts", ".tsx", ".js", ".py", ".sql"}:
            for line in p.read_text().splitlines():
                m = MARKER.search(line)
                if m:
                    c.update(part.split()[0] for part in m.group(1).split(","))
    return c


def test_json_on_the_sample():
    r = invoke(str(SAMPLE), "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["root"] == str(SAMPLE)
    assert set(data["counts"]) == {"table", "column", "helper", "code_helper"}
    assert sum(data["counts"].values()) == len(data["findings"])
    assert Counter(f["category"] for f in data["findings"]) == Counter(data["counts"])
    # one marker per (line, name); a line may hold the same name twice (.eq('customer_id', customer_id))
    distinct = Counter(f["category"] for f in {(f["path"], f["line"], f["category"], f["name"]): f
                                               for f in data["findings"]}.values())
    assert distinct == planted_counts()
    assert all(c > 0 for c in data["counts"].values())
    first = data["findings"][0]
    assert set(first) == {"path", "line", "column", "code", "category", "name", "suggestion", "reason"}
    assert data["files_scanned"] == 9 and data["skipped"] == []


def test_table_output_on_the_sample():
    r = invoke(str(SAMPLE))
    assert r.exit_code == 0, r.output
    total = sum(planted_counts().values())
    assert re.search(r"\d+ findings in 9 files \(\d+ table, \d+ column, \d+ helper, \d+ code_helper\)", r.output)
    assert "supabase/functions/wa-webhook/exchange/helpers.ts:13:12" in r.output
    assert ".from(`profiles`)" in r.output and "ensureProfile" in r.output
    assert int(r.output.split(" findings in ")[0].split()[-1]) >= total


def test_fail_on_findings(tmp_path: Path):
    r = invoke(str(SAMPLE), "--fail-on-findings", "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["findings"]

    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "index.ts").write_text("// customers are migrated: everything reads profiles now\n"
                                    "export const load = (db) => db.from('profiles').select('user_id, profile_id');\n")
    (clean / "q.sql").write_text("select profile_id from public.carts; -- was customer_id\n")
    r = invoke(str(clean), "--fail-on-findings")
    assert r.exit_code == 0, r.output
    assert "0 findings in 2 files" in r.output
    r = invoke(str(clean), "--fail-on-findings", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["findings"] == []


def test_missing_directory_exits_2(tmp_path: Path):
    missing = tmp_path / "nope"
    r = invoke(str(missing))
    assert r.exit_code == 2
    assert f"{missing} does not exist" in r.output
    r = invoke(str(missing), "--json")
    assert r.exit_code == 2 and "does not exist" in json.loads(r.stdout)["problem"]


def test_config_column_and_code_helper_options(tmp_path: Path):
    cfg = tmp_path / "pgconverge.toml"
    cfg.write_text('[legacy]\ntable = "public.clients"\nhelper = "public.auth_client_id"\n')
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.ts").write_text("await ensureClient(db);\n"
                              "db.from('clients').select('id, client_id, owner_ref');\n"
                              "db.from('customers');\n")
    r = invoke(str(src), "--json", "--config", str(cfg), "--column", "owner_ref",
               "--code-helper", "ensureClient=ensureProfile")
    assert r.exit_code == 0, r.output
    found = {(f["line"], f["category"], f["name"], f["suggestion"]) for f in json.loads(r.stdout)["findings"]}
    assert found == {(1, "code_helper", "ensureClient", "ensureProfile"),
                     (2, "table", "clients", ".from('profiles')"),
                     (2, "column", "client_id", "profile_id"),
                     (2, "column", "owner_ref", "profile_id")}

    r = invoke(str(src), "--code-helper", "ensureClient")
    assert r.exit_code == 2 and "not OLD=NEW" in r.output


def test_audit_help_lists_code():
    r = CliRunner().invoke(app, ["audit", "--help"])
    assert r.exit_code == 0 and "code" in r.output


def test_code_helpers_and_columns_come_from_the_config(tmp_path):
    src = tmp_path / "app"
    src.mkdir()
    (src / "worker.ts").write_text(
        "// upsertShopper is retired soon\n"
        "const who = await upsertShopper(phone);\n"
        "const row = { shopper_ref: who.id };\n")
    cfg = _support.write_config(tmp_path, '[migration]\ncode_helpers = { upsertShopper = "upsertProfile" }\n'
                                 'code_columns = ["shopper_ref"]\n')
    found = _support.cli_json("audit", "code", str(src), "--config", cfg)["findings"]
    assert any(f["line"] == 2 and f["category"] == "code_helper" and "upsertProfile" in f["suggestion"]
               for f in found)
    assert any(f["line"] == 3 and f["category"] == "column" and f["name"] == "shopper_ref" for f in found)
    assert not any(f["line"] == 1 for f in found)  # the comment is not a finding
    bad = _support.write_config(tmp_path, '[migration]\ncode_helpers = { "a b" = "c" }\n')
    out = _support.cli("audit", "code", str(src), "--config", bad, expect=2)
    assert "migration.code_helpers" in out
