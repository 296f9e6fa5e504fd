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

    def as_dict(self) -> dict:
        return {"error": type(self).__name__, "problem": self.problem, "fix": self.fix}


class ConfigError(PgConvergeError):
    """The configuration file or a config value is invalid."""


class ConnectionFailed(PgConvergeError):
    """The database could not be reached."""


class CatalogError(PgConvergeError):
    """The database does not hold what the configuration describes."""
