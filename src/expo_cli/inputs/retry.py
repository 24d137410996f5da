"""When a Hub request is tried again, and how long to wait first: one policy for header reads, range reads and commits.

Transient failures (a dropped, stalled or dripping connection, 408/425/429/5xx) are retried with exponential backoff
and jitter, or after the Retry-After the server asks for. Every wait is bounded, so no server can hold a run: a
request gives up at ATTEMPTS failures in a row (only a failure that brought half of what was asked starts the count
again: a server that sends one byte and hangs up is failing), a block still incomplete BLOCK_SECONDS after its first
failure is given up however many bytes trickled in, a Retry-After is read strictly and capped, and the whole run
waits at most EXPO_RETRY_BUDGET seconds (default RUN_BUDGET_SECONDS) for retries in all; past any of these the run
ends with one line naming repo, file and byte range (exit 7), and running it again resumes.
"""

from __future__ import annotations

import email.utils
import math
import os
import random
import threading
import time

from ..errors import HubError, UsageError

ATTEMPTS = 8  # failures in a row of one request before it gives up
BACKOFF_SECONDS = (0.5, 16.0)  # the first wait, doubled at each failure up to the second; about a minute in all
BLOCK_SECONDS = 60.0  # a block still incomplete this long after its first failure is given up
MAX_RETRY_AFTER_SECONDS = 60.0  # a longer Retry-After is capped (within the block's deadline)
RUN_BUDGET_SECONDS = 600.0  # seconds a run may wait between attempts, all requests together
BUDGET_VARIABLE = "EXPO_RETRY_BUDGET"
RETRIED_STATUSES = frozenset({408, 425, 429})  # and every 5xx: the Hub, a CDN or a proxy asks to come back later


def retried_status(status: int) -> bool:
    return status in RETRIED_STATUSES or status >= 500


def backoff(failures: int) -> float:
    """Exponential backoff with jitter: a random wait in the upper half of min(cap, base·2^(n−1))."""
    base, cap = BACKOFF_SECONDS
    return random.uniform(0.5, 1.0) * min(cap, base * 2 ** (failures - 1))


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds to wait, or None when absent or malformed (then the backoff applies).

    RFC 9110 allows delta-seconds (digits only) or an HTTP date: "nan", "inf", "-1" or "1e9" are neither, and are
    ignored rather than trusted. The result is capped at MAX_RETRY_AFTER_SECONDS.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(min(int(value), MAX_RETRY_AFTER_SECONDS))  # capped first: 400 digits overflow a float
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


class Budget:
    """The seconds a run may still wait between attempts, shared by every request of the process."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.spent = 0.0
        self._lock = threading.Lock()

    def take(self, seconds: float, what: str) -> None:
        """Account for a wait about to happen; a HubError naming `what` once the budget would be exceeded."""
        with self._lock:
            if self.spent + seconds > self.seconds:
                raise HubError(
                    f"{what}: the run's retry budget is spent ({self.spent:.0f} of {self.seconds:g} s waited for "
                    f"retries; {BUDGET_VARIABLE} sets it); the network or the Hub keeps failing: run again later"
                )
            self.spent += seconds


_budget: Budget | None = None


def budget() -> Budget:
    """This run's retry budget, from EXPO_RETRY_BUDGET (seconds) or RUN_BUDGET_SECONDS."""
    global _budget
    if _budget is None:
        _budget = Budget(budget_seconds(os.environ.get(BUDGET_VARIABLE)))
    return _budget


def new_run() -> Budget:
    """Start a run's budget afresh (read from EXPO_RETRY_BUDGET now, so a bad value is refused before any work)."""
    global _budget
    _budget = Budget(budget_seconds(os.environ.get(BUDGET_VARIABLE)))
    return _budget


def budget_seconds(value: str | None) -> float:
    if value is None or not value.strip():
        return RUN_BUDGET_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise UsageError(f"{BUDGET_VARIABLE}={value!r}: expected a number of seconds (0 or more)")
    return seconds


def wait(failures: int, asked: str | None, what: str, deadline: float | None = None) -> None:
    """Sleep before the next attempt: what the server asked for, else the backoff; counted against the run's
    budget. With a `deadline` (monotonic), a wait that would end past it is refused with a HubError naming `what`."""
    seconds = retry_after(asked)
    seconds = seconds if seconds is not None else backoff(max(failures, 1))
    budget().take(seconds, what)
    if deadline is not None and time.monotonic() + seconds > deadline:
        raise HubError(f"{what}: still failing after {BLOCK_SECONDS:g} s of retries; run again later to resume")
    time.sleep(seconds)
