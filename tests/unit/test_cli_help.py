"""Help reads as a command line, not as Python: no `<bool>`, `<str>` or `list[Path]` in any command's help; and
the embedded server is found from any folder of the project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pgconverge import embedded

EXE = str(Path(sys.executable).with_name("pgconverge"))
COMMANDS = ["", "inventory", "plan", "run", "status", "rollback", "verify", "report", "demo", "rehearse", "align",
            "emit", "embedded status", "fixture load", "audit code", "audit runtime"]
PYTHON_TYPES = re.compile(r"<(bool|str|int|float|path|Path)>|list\[")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_speaks_of_values_not_types(command):
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    out = subprocess.run([EXE, *command.split(), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Usage: pgconverge" in out.stdout
    assert not PYTHON_TYPES.search(out.stdout), out.stdout
    if command in ("run", "plan"):
        assert re.search(r"--dsn\s+TEXT", out.stdout) and re.search(r"--config\s+-c\s+PATH", out.stdout)
        assert re.search(r"phase\s+PHASE", out.stdout)


def test_embedded_server_found_from_a_sub_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(embedded.ENV_DIR, raising=False)
    project = tmp_path / "app"
    deep = project / "src" / "db"
    deep.mkdir(parents=True)
    assert embedded.data_dir(deep) == (deep / ".pgconverge" / "pgdata").resolve()  # none anywhere: here
    (project / ".pgconverge" / "pgdata").mkdir(parents=True)
    assert embedded.data_dir(deep) == (deep / ".pgconverge" / "pgdata").resolve()  # not initialized: not a server
    (project / ".pgconverge" / "pgdata" / "PG_VERSION").write_text("16\n")
    assert embedded.data_dir(deep) == (project / ".pgconverge" / "pgdata").resolve()
    assert embedded.data_dir(project) == (project / ".pgconverge" / "pgdata").resolve()
