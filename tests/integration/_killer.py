"""Run the pgconverge CLI in separate processes that can be SIGKILLed at named points, cheaply.

Starting Python and importing pgconverge costs most of a second; a kill matrix needs hundreds of runs.
So one parent process (`python _killer.py`) imports the CLI once, and for every run forks a child that
sets the kill point (see pgconverge/execution/killpoint.py), runs the command and exits. The child is a
process of its own, with its own connections, and dies by a real SIGKILL; only the start-up is shared.

Protocol, one JSON object per line: the test writes {"args": [...], "kill_at": "step:point" or null,
"log": path}; the parent answers {"pid": .., "code": exit code or null, "signal": number or null}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg


def _serve() -> None:
    from pgconverge.cli import app
    from pgconverge.execution import killpoint

    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            killpoint._AT = req["kill_at"]
            code = 0
            try:
                app(args=req["args"], prog_name="pgconverge")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - report any crash as exit status 3
                import traceback
                traceback.print_exc()
                code = 3
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        out = {"pid": pid, "code": os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else None,
               "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class Killer:
    """Client side: one forking parent for a whole test module."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=str(logdir))
        self.runs = 0

    def run(self, args: list[str], kill_at: str | None) -> tuple[dict, str]:
        self.runs += 1
        log = self.logdir / f"run-{self.runs}.log"
        self.proc.stdin.write(json.dumps({"args": args, "kill_at": kill_at, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return answer, log.read_text()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def wait_runner_gone(dsn: str, timeout: float = 20) -> None:
    """Wait until the killed runner's backends are gone (its advisory lock goes with its control connection)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as c:
        while time.monotonic() < deadline:
            n = c.execute("select count(*) from pg_stat_activity where datname = current_database() "
                          "and application_name like 'pgconverge%%' and pid <> pg_backend_pid()").fetchone()[0]
            if not n:
                return
            time.sleep(0.01)
    raise AssertionError("the killed runner's connections did not go away")


def kill(killer: Killer, dsn: str, args: list[str], point: str) -> None:
    """Run ARGS killed at POINT; fail if the run got past it (or failed before it) instead of dying there."""
    import signal

    answer, log = killer.run(args, point)
    assert answer["signal"] == signal.SIGKILL, f"not killed at {point}: exit {answer['code']}\n{log[-3000:]}"
    wait_runner_gone(dsn)


def module_killer():
    """A module-scoped `killer` fixture: `killer = module_killer()` in a test module."""
    import pytest

    @pytest.fixture(scope="module")
    def killer(tmp_path_factory):
        k = Killer(tmp_path_factory.mktemp("killer"))
        yield k
        k.close()

    return killer


if __name__ == "__main__":
    _serve()
