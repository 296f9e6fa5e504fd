"""`emit` and `report` told to write where they cannot: an error naming the path and the fix (exit 2), and nothing
written (emit used to write every migration and rollback file before failing on the tests' directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from _support import cli, cli_json
from test_emit_shapes import _zoo_db


def _written(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("case", ["under_a_file", "tests_dir_is_a_file", "before_contract_is_a_file"])
def test_emit_where_it_cannot_write(make_db, tmp_path, case):
    dsn, args = _zoo_db(make_db, tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / "afile").write_text("x")
    out, blocker = {
        "under_a_file": (root / "afile" / "project", root / "afile"),
        "tests_dir_is_a_file": (root / "p", root / "p" / "supabase" / "tests"),
        "before_contract_is_a_file": (root / "p", root / "p" / "pgconverge-tests" / "before_contract"),
    }[case]
    if blocker != root / "afile":
        blocker.parent.mkdir(parents=True)
        blocker.write_text("not a directory")
    before = _written(root)
    text = " ".join(cli("emit", str(out), *args, "--force", expect=2).split())
    assert "Traceback" not in text and f"{blocker} is not a directory" in text, text
    assert "nothing was written" in text and "fix:" in text, text
    assert _written(root) == before
    data = cli_json("emit", str(out), *args, "--force", expect=2)
    assert str(blocker) in data["problem"] and data["fix"], data


def test_report_where_it_cannot_write(make_db, tmp_path):
    dsn, args = _zoo_db(make_db, tmp_path)
    cli("run", "align", *args)
    (tmp_path / "afile").write_text("x")
    for option, path, why in (("--md", tmp_path / "nodir" / "r.md", f"directory {tmp_path / 'nodir'} does not exist"),
                              ("--html", tmp_path, f"{tmp_path} is a directory"),
                              ("--md", tmp_path / "afile" / "r.md", f"{tmp_path / 'afile'} is not a directory")):
        text = " ".join(cli("report", option, str(path), *args, expect=2).split())
        assert "Traceback" not in text and f"cannot write the report to {path}: {why}" in text, text
        assert "fix:" in text, text
    assert not (tmp_path / "nodir").exists()
    md = tmp_path / "r.md"
    cli("report", "--md", str(md), *args)
    assert md.read_text().startswith("#")


def test_emit_refuses_a_lock_timeout_a_deadlock_would_turn_against_the_application(make_db, tmp_path):
    """The files set lock_timeout as `run` does, so they are refused on the same rule: not over half the server's
    deadlock_timeout; nothing is written."""
    dsn, args = _zoo_db(make_db, tmp_path)
    cfg = Path(args[-1])
    cfg.write_text(cfg.read_text() + "lock_timeout_ms = 1000\n")
    out = tmp_path / "project"
    text = " ".join(cli("emit", str(out), *args, expect=2).split())
    assert "migration.lock_timeout_ms = 1000 is more than half of this server's deadlock_timeout" in text, text
    assert not out.exists() or _written(out) == [], _written(out)
    text = " ".join(cli("emit", str(out), *args, "--rollback-to", "align", expect=2).split())
    assert "migration.lock_timeout_ms = 1000" in text, text
