"""User-facing errors: each names the problem and the fix."""

from __future__ import annotations


class PgConvergeError(Exception):
    """An error a user can act on: what is wrong, and what to do about it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return self.problem if not self.fix else f"{self.problem}\n  fix: {self.fix}"

    progress: dict | None = None  # where the phase stands when a run stopped on this error (execution/runner.py)

    def as_dict(self) -> dict:
        out = {"error": type(self).__name__, "problem": self.problem, "fix": self.fix}
        if self.progress is not None:
            out["progress"] = self.progress
        return out


class ConfigError(PgConvergeError):
    """The configuration file or a config value is invalid."""


class ConnectionFailed(PgConvergeError):
    """The database could not be reached."""


class CatalogError(PgConvergeError):
    """The database does not hold what the configuration describes."""
