"""When a Hub request is tried again, and how long to wait first: one policy for range reads and commits.

Transient failures (a dropped or stalled connection, 408/425/429/5xx) are retried with exponential backoff and
jitter, or after the Retry-After the server asks for; ATTEMPTS failures in a row (about a minute) end the run.
"""

from __future__ import annotations

import email.utils
import random
import time

ATTEMPTS = 8  # failures in a row (with no progress) before a request gives up
BACKOFF_SECONDS = (0.5, 16.0)  # the first wait, doubled at each failure up to the second; about a minute in all
MAX_RETRY_AFTER_SECONDS = 300  # a longer Retry-After is capped
RETRIED_STATUSES = frozenset({408, 425, 429})  # and every 5xx: the Hub, a CDN or a proxy asks to come back later


def retried_status(status: int) -> bool:
    return status in RETRIED_STATUSES or status >= 500


def backoff(failures: int) -> float:
    """Exponential backoff with jitter: a random wait in the upper half of min(cap, base·2^(n−1))."""
    base, cap = BACKOFF_SECONDS
    return random.uniform(0.5, 1.0) * min(cap, base * 2 ** (failures - 1))


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds to wait (it may be a number of seconds or an HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def wait(failures: int, asked: str | None = None) -> float:
    """Seconds to wait before the next attempt: what the server asked for, else the backoff."""
    seconds = retry_after(asked)
    return seconds if seconds is not None else backoff(max(failures, 1))
