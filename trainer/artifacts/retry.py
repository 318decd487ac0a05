"""Retry with capped exponential backoff and full jitter, for transfers the SDK gave up on.

botocore already retries each HTTP request (its `standard` mode); this wraps whole operations
(one part, one file) so a connection dropped mid-body, or a run of 5xx longer than the SDK's
budget, costs one part's re-send rather than the whole checkpoint.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

from trainer.artifacts.errors import TransferError

T = TypeVar("T")
log = logging.getLogger(__name__)


def with_retries(fn: Callable[[], T], *, what: str, is_transient: Callable[[BaseException], bool],
                 attempts: int = 5, base_s: float = 0.2, cap_s: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Call fn(); on a transient error wait and call again, at most `attempts` times in all."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified just below
            if not is_transient(e):
                raise
            if attempt == attempts:
                raise TransferError(f"{what} failed after {attempts} attempts: {e}") from e
            delay = random.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))
            log.warning("%s failed (%s); retry %d/%d in %.2fs", what, e, attempt, attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")
