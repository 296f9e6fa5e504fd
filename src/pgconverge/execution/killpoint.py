"""Fault-injection hook for the test suite: end this process with SIGKILL at a named point of a step.

PGCONVERGE_KILL_AT="<step id>:<point>" names one point:

- ``before``: the step is about to start (nothing of it written yet);
- ``after``: the step has committed and is recorded as done;
- ``commit``: inside the step's transaction, its statements executed and its "done" record written,
  just before COMMIT (for the policy rewrite: the new policies in place but not committed);
- ``batch:<k>``: a batched step has committed its k-th batch of this run (with several backfill workers,
  the k-th of any worker: the others die in the middle of theirs).

The variable is read once per process; when it is unset (always, outside the tests) ``reached``
returns after one comparison with None.
"""

from __future__ import annotations

import os
import signal

_AT = os.environ.get("PGCONVERGE_KILL_AT") or None


def reached(step_id: str, point: str) -> None:
    if _AT is not None and _AT == f"{step_id}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)
