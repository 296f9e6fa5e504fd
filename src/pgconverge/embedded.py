"""Embedded Postgres (pgserver): one server per project directory, started on demand."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from pgconverge.errors import PgConvergeError

ENV_DIR = "PGCONVERGE_EMBEDDED_DIR"


def data_dir(project_dir: Path | None = None) -> Path:
    """Return the embedded server's data directory for this project.

    The project is the nearest directory, from PROJECT_DIR (default: the current one) upwards, that already
    holds an initialized ``.pgconverge/pgdata``, as git finds ``.git``: a command run from a sub-folder
    reaches the server the project's other commands use instead of starting a second, empty one.
    Without one anywhere above, it is ``.pgconverge/pgdata`` of PROJECT_DIR itself.
    """
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser().resolve()
    start = (project_dir or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / ".pgconverge" / "pgdata" / "PG_VERSION").exists():
            return folder / ".pgconverge" / "pgdata"
    return start / ".pgconverge" / "pgdata"


def _pgserver():
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (CI, root shells).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver import _commands, utils
    return pgserver, _commands, utils


@dataclass(frozen=True)
class EmbeddedStatus:
    data_dir: Path
    initialized: bool
    running: bool
    pid: int | None
    uri: str | None

    def as_dict(self) -> dict:
        return {
            "data_dir": str(self.data_dir),
            "initialized": self.initialized,
            "running": self.running,
            "pid": self.pid,
            "uri": self.uri,
        }


def status(path: Path | None = None) -> EmbeddedStatus:
    """Report whether the embedded server at PATH exists and runs, without starting it."""
    path = path or data_dir()
    _, _, utils = _pgserver()
    info = utils.PostmasterInfo.read_from_pgdata(path) if path.exists() else None
    running = bool(info is not None and info.is_running())
    return EmbeddedStatus(
        data_dir=path,
        initialized=(path / "PG_VERSION").exists(),
        running=running,
        pid=info.pid if running else None,
        uri=info.get_uri() if running else None,
    )


def ensure_running(path: Path | None = None, database: str | None = None) -> str:
    """Start the embedded server if needed and return a connection URI for DATABASE."""
    path = path or data_dir()
    if not (path / "PG_VERSION").exists():
        # Say so: a server made here is empty, and a command meant for another project's server would
        # otherwise fail later with "no such table".
        print(f"pgconverge: creating a new embedded Postgres in {path} (none in this directory or above it; "
              f"pass --dsn or set DATABASE_URL to use another server)", file=sys.stderr)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pgserver, _, _ = _pgserver()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # cleanup_mode=None: the server outlives this process and is reused by later commands.
            server = pgserver.get_server(path, cleanup_mode=None)
        return server.get_uri(database)
    except (OSError, subprocess.SubprocessError, AssertionError) as exc:
        log = path / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise PgConvergeError(
            f"could not start the embedded Postgres in {path}: {exc}\n{tail}".rstrip(),
            fix=f"remove {path} to start from a fresh data directory, or pass --dsn to use another server",
        ) from exc


def stop(path: Path | None = None) -> bool:
    """Stop the embedded server at PATH; return False if it was not running."""
    path = path or data_dir()
    st = status(path)
    if not st.running:
        return False
    _, commands, _ = _pgserver()
    user = "pgserver" if os.geteuid() == 0 else None
    commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=path, user=user)
    return True


def with_database(uri: str, database: str) -> str:
    """Return URI pointing at DATABASE on the same server."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(uri)
    params["dbname"] = database
    return make_conninfo(**params)
