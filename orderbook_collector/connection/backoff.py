"""When to reconnect, and how long to wait first.

:func:`classify` is the one place that decides whether a connection failure is
worth retrying. Retryable:

* network errors (refused, reset, DNS, TLS), timeouts, a dropped connection;
* handshake answers 5xx, 408, and 429/418 (rate limit and IP ban: wait at
  least ``Retry-After`` seconds, 60 if absent, because retrying early extends a ban);
* anything unexpected from the handshake parser.

Fatal: other 4xx answers to the handshake (a wrong URL or stream name will not
fix itself) and an invalid URI. The collector stops and says why.

:func:`full_jitter` gives the delays: uniform between 0 and
``min(cap, initial * 2**attempt)`` ("full jitter"), so many collectors
restarting together do not reconnect in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from websockets.exceptions import InvalidStatus, InvalidURI

DEFAULT_RETRY_AFTER = 60.0


@dataclass(frozen=True)
class Decision:
    retry: bool
    min_delay: float = 0.0
    reason: str = ""


def classify(exc: BaseException) -> Decision:
    """Decide whether ``exc`` (from opening or running a connection) is retryable."""
    if isinstance(exc, InvalidURI):
        return Decision(False, reason=f"invalid WebSocket URL: {exc}")
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (418, 429):
            return Decision(True, _retry_after(exc), f"HTTP {status} (rate limited), honouring Retry-After")
        if status == 408 or status >= 500:
            return Decision(True, reason=f"HTTP {status}")
        return Decision(False, reason=f"the server refused the connection with HTTP {status}")
    return Decision(True, reason=f"{type(exc).__name__}: {exc}")


def _retry_after(exc: InvalidStatus) -> float:
    value = exc.response.headers.get("Retry-After")
    try:
        return max(float(value), 0.0) if value is not None else DEFAULT_RETRY_AFTER
    except ValueError:
        return DEFAULT_RETRY_AFTER


def full_jitter(initial: float, cap: float, rng: random.Random | None = None) -> Iterator[float]:
    """Endless delays for attempts 0, 1, 2, ...: uniform in [0, min(cap, initial * 2**n)]."""
    rng = rng or random.Random()
    n = 0
    while True:
        yield rng.uniform(0, min(cap, initial * 2**n))
        n = min(n + 1, 62)
