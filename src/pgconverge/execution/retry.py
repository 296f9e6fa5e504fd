"""Retry on lock timeouts and deadlocks, with exponential backoff and full jitter."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import psycopg
from psycopg import errors

T = TypeVar("T")

# The errors a short lock_timeout is meant to produce, and the ones concurrency produces anyway.
RETRYABLE = (errors.LockNotAvailable, errors.DeadlockDetected, errors.SerializationFailure)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 30
    base_s: float = 0.05
    cap_s: float = 2.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))


class RetriesExhausted(Exception):
    def __init__(self, last: psycopg.Error, attempts: int):
        super().__init__(str(last))
        self.last, self.attempts = last, attempts


def run(fn: Callable[[int], T], policy: RetryPolicy,
        on_retry: Callable[[int, psycopg.Error, float], None] | None = None) -> T:
    """Call fn(attempt) until it succeeds, retrying RETRYABLE errors up to policy.attempts times."""
    attempt = 1
    while True:
        try:
            return fn(attempt)
        except RETRYABLE as exc:
            if attempt >= policy.attempts:
                raise RetriesExhausted(exc, attempt) from exc
            pause = policy.delay(attempt)
            if on_retry:
                on_retry(attempt, exc, pause)
            time.sleep(pause)
            attempt += 1
