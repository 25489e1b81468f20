"""When to retry and how long to wait: exponential backoff with jitter, Retry-After honoured.

Only failures that a later attempt can cure are retried: 503 (TorchServe's queue is full or the model
has no worker yet), 507 and 500 "Worker died." (TorchServe restarts the worker in seconds) and
transport errors (refused, reset, timed out). Every 4xx is the caller's to fix and is raised at once.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import httpx

RETRYABLE_STATUS = frozenset({503, 507})


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` retries after the first attempt; waits ``initial`` s doubling up to ``maximum`` s."""

    max_retries: int = 5
    initial: float = 0.5
    maximum: float = 8.0
    # A Retry-After above this is clamped: a bulk job should not sleep for an hour on one header.
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        base = min(self.maximum, self.initial * (2**attempt))
        # "Equal jitter": at least half the backoff, so many clients hitting a full queue spread out
        # without any of them hammering the server at once.
        return base / 2 + random.uniform(0, base / 2)


def is_retryable_status(status: int, body_text: str) -> bool:
    """503/507 always; 500 only when TorchServe says the worker died (a handler's 500 would fail again)."""
    return status in RETRYABLE_STATUS or (status == 500 and "Worker died" in body_text)


def is_retryable_exception(exc: BaseException) -> bool:
    """Transport failures (connection refused/reset, timeouts, broken responses)."""
    return isinstance(exc, httpx.TransportError)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
