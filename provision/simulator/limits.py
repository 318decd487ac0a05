"""Rate limits and injected faults: the ways the simulated API says "no" besides bad requests.

Lambda documents two limits: about one request per second in general, and one launch per 12
seconds (five a minute). It does not document the 429 body, headers or burst; the simulator
answers 429 with the usual error envelope and a `Retry-After` header, and models the general
limit as a token bucket (`requests_per_s`, `burst`) so that a client's short bursts pass. Set a
rate of 0 to switch a limit off.

Faults are switched on through the admin API (`/sim/v1/faults`): the next N API responses forced
to 429 or to a server error, and types or regions with no capacity. Killing an instance and
changing its host key are faults too, but act on instances (`cloud.py`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up. Thread-safe."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._tokens = float(self.burst)
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> float | None:
        """Take a token: None when allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return None
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return None
            return (1 - self._tokens) / self.rate


class LaunchLimiter:
    """At most one launch request per `interval_s` seconds (refused ones do not count)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()

    def take(self) -> float | None:
        if self.interval_s <= 0:
            return None
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self.interval_s:
                return self.interval_s - (now - self._last)
            self._last = now
            return None


def retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


@dataclass
class Faults:
    """Faults waiting to happen. Guarded by the cloud's lock."""

    #: the next N API responses are 429
    rate_limited: int = 0
    #: the next API responses are these server errors (HTTP statuses), in order
    server_errors: list[int] = field(default_factory=list)
    #: (instance type or "*", region or "*") pairs with no capacity whatever the counts say
    no_capacity: set[tuple[str, str]] = field(default_factory=set)

    def take_forced_status(self) -> int | None:
        """The status to force on this API response, if any (consumes one)."""
        if self.rate_limited > 0:
            self.rate_limited -= 1
            return 429
        if self.server_errors:
            return self.server_errors.pop(0)
        return None

    def capacity_blocked(self, instance_type: str, region: str) -> bool:
        return any(t in ("*", instance_type) and r in ("*", region) for t, r in self.no_capacity)

    def describe(self) -> dict:
        return {
            "rate_limited": self.rate_limited,
            "server_errors": list(self.server_errors),
            "no_capacity": [{"instance_type": t, "region": r} for t, r in sorted(self.no_capacity)],
        }
