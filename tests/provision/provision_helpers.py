"""Helpers shared by the provision tests: the simulator pieces in tests/simhelpers.py, which the
orchestrator's end-to-end tests use too."""

from simhelpers import (  # noqa: F401 - re-exported for the provision tests
    API_KEY, BOOT_S, FAST_RETRY, LAUNCH_INTERVAL_S, MINUTE_S, NODE_PYTHON, TORCH_SITE, free_ssh_port,
    pid_alive, require_sshd, sim_config, wait_status, write_key_pair,
)
