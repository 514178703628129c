"""Retry policy: exponential backoff with full jitter, capped, for transient failures only."""

from __future__ import annotations

import random
from collections.abc import Callable


class RetryLater(Exception):
    """Raised by a job body to be run again after `delay` seconds (the worker maps it to arq's Retry)."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


def backoff_delay(
    retry_number: int, *, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Full jitter (AWS style): uniform in [0, min(cap, base * 2**(n-1))] for the n-th retry."""
    ceiling = min(cap, base * (2 ** max(0, retry_number - 1)))
    return float(ceiling * rng())
