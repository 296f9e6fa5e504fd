"""Headless Chromium driven through the DevTools protocol over a pipe (--remote-debugging-pipe): no port,
no websocket library. Messages are JSON, each ended by a NUL byte; Chromium reads fd 3 and writes fd 4."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-pipe")


class Browser:
    """One Chromium process; call() sends a command and waits for its answer, events are kept in order."""

    def __init__(self, user_data_dir: Path, timeout: float = 30.0):
        self.timeout = timeout
        cmd_r, self._cmd_w = os.pipe()   # we write commands, Chromium reads them on fd 3
        self._resp_r, resp_w = os.pipe()  # Chromium writes answers and events on fd 4

        def wire_fds() -> None:  # in the child, before exec: put the pipe ends at 3 and 4
            a, b = os.dup(cmd_r), os.dup(resp_w)
            os.dup2(a, 3, inheritable=True)
            os.dup2(b, 4, inheritable=True)

        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=wire_fds, close_fds=False)
        os.close(cmd_r)
        os.close(resp_w)
        self._next_id = 0
        self._answers: dict[int, dict] = {}
        self._cond = threading.Condition()
        self.events: queue.Queue[dict] = queue.Queue()
        self.log: list[dict] = []  # every event, for assertions after the fact
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr: list[bytes] = []
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._resp_r, "rb", buffering=0) as f:
            while chunk := f.read(65536):
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    msg = json.loads(raw)
                    if "id" in msg:
                        with self._cond:
                            self._answers[msg["id"]] = msg
                            self._cond.notify_all()
                    else:
                        self.log.append(msg)
                        self.events.put(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        mid = self._next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._answers, self.timeout):
                raise TimeoutError(f"no answer to {method} in {self.timeout}s; chromium stderr: {self.stderr()[-2000:]}")
            answer = self._answers.pop(mid)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def wait_event(self, method: str, session: str | None = None) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} event in {self.timeout}s")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if ev.get("method") == method and (session is None or ev.get("sessionId") == session):
                return ev

    def open_page(self) -> str:
        """A new tab, attached: returns the session id for page-level commands."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        return self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:  # already gone: fall through to the kill
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
