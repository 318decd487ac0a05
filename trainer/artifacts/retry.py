"""Retry with capped exponential backoff and full jitter, for transfers the SDK gave up on.

botocore already retries each HTTP request (its `standard` mode); this wraps whole operations
(one part, one file) so a connection dropped mid-body, or a run of 5xx longer than the SDK's
budget, costs one part's re-send rather than the whole checkpoint.

The backoff is tenacity's `wait_random_exponential` ("full jitter"), the same rule the service's
Lambda client uses (`provision.lambda_cloud.transport.RetryPolicy`). Not shared as code: a node
installs the trainer package alone, so the trainer cannot import the service's.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

import tenacity

from trainer.artifacts.errors import TransferError

T = TypeVar("T")
log = logging.getLogger(__name__)


def with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    is_transient: Callable[[BaseException], bool],
    attempts: int = 5,
    base_s: float = 0.2,
    cap_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call fn(); on a transient error wait and call again, at most `attempts` times in all.

    A transient error on the last try becomes TransferError; any other error is raised at once."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None  # tenacity sets both first
        log.warning(
            "%s failed (%s); retry %d/%d in %.2fs",
            what,
            state.outcome.exception(),
            state.attempt_number,
            attempts - 1,
            state.next_action.sleep,
        )

    def give_up(state: tenacity.RetryCallState) -> T:  # only after a transient error on the last try
        assert state.outcome is not None
        e = state.outcome.exception()
        raise TransferError(f"{what} failed after {state.attempt_number} attempts: {e}") from e

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, attempts)),
        wait=tenacity.wait_random_exponential(multiplier=base_s, max=cap_s),
        retry=tenacity.retry_if_exception(is_transient),
        sleep=sleep,
        before_sleep=before_sleep,
        retry_error_callback=give_up,
    )
    return retrying(fn)
