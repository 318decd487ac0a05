"""Helpers shared by the provision tests: the simulator pieces in tests/simhelpers.py, which the
orchestrator's end-to-end tests use too."""

import time

from provision.base import InstanceStatus
from simhelpers import (  # noqa: F401 - re-exported for the provision tests
    API_KEY,
    BOOT_S,
    FAST_RETRY,
    LAUNCH_INTERVAL_S,
    MINUTE_S,
    NODE_PYTHON,
    TORCH_SITE,
    free_ssh_port,
    pid_alive,
    require_sshd,
    sim_config,
    wait_status,
    write_key_pair,
)


def wait_active(provider, instance_id: str, timeout_s: float = 15.0):
    """Poll a Provider (not the raw client) until the instance is active."""
    deadline = time.monotonic() + timeout_s
    while (inst := provider.get(instance_id)).status is not InstanceStatus.active:
        assert time.monotonic() < deadline, inst
        time.sleep(0.05)
    return inst
