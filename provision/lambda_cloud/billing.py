"""Lambda's billing rule, for estimating and checking what an instance costs.

Lambda prices instances by the hour and bills in one-minute increments, from when the instance is
up (passes health checks, i.e. becomes `active`) until it is terminated. A partial minute's
treatment is undocumented; trainyard charges every started minute, the conservative reading (the
simulator's ledger does the same, and the tests compare the two to the cent).
"""

from __future__ import annotations

import math

MINUTE_S = 60.0


def billed_minutes(up_seconds: float, *, minute_s: float = MINUTE_S) -> int:
    """Started billing minutes in `up_seconds` of uptime."""
    if up_seconds <= 0:
        return 0
    return math.ceil(round(up_seconds / minute_s, 9))
