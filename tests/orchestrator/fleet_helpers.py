"""Machines on the Lambda simulator outside any run, for the tests of every machine accounted for
(test_orphans.py, test_instances.py, test_broken_provider.py): a client of the simulator's API,
its SSH key, the settings of a service that rents from it, and launches "out of band" (what an
operator, a crashed service or another database leaves behind).

Imported as `fleet_helpers` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import time
from pathlib import Path

from orchestrator.settings import Settings
from orchestrator_helpers import LAMBDA_MINUTE_S
from provision.lambda_cloud.client import LambdaClient
from provision.lambda_cloud.transport import RetryPolicy
from simhelpers import API_KEY, FAST_RETRY, write_key_pair

KEY_NAME = "trainyard-fleet"
LIVE = ("booting", "active", "unhealthy", "terminating")


#: the simulator allows one launch per 0.2 s: launches back to back wait for their turn
PATIENT = RetryPolicy(attempts=8, base_delay_s=0.1, max_delay_s=0.3)


def sim_client(lsim, retry: RetryPolicy = FAST_RETRY) -> LambdaClient:
    return LambdaClient(API_KEY, base_url=lsim.url, retry=retry, launch_interval_s=0)


def register_key(lsim, folder: Path) -> Path:
    """An SSH key registered with the simulator as KEY_NAME; returns its private key file."""
    key_file, public = write_key_pair(folder)
    with sim_client(lsim) as c:
        c.add_ssh_key(KEY_NAME, public)
    return key_file


def lambda_settings(lsim, db_url: str, data_dir: Path, key_file: Path, **over: object) -> Settings:
    """A service's settings for the simulator: fast retries, its billing minute, sweeps off unless
    `over` turns them on."""
    values: dict[str, object] = dict(
        data_dir=data_dir,
        database_url=db_url,
        worker_id="worker-fleet",
        lease_s=30,
        reconcile_interval_s=0.1,
        lambda_api_key=API_KEY,
        lambda_api_url=lsim.url,
        lambda_ssh_key_name=KEY_NAME,
        lambda_ssh_port=lsim.cloud.config.ssh_port,
        lambda_launch_interval_s=0.0,
        lambda_retry_attempts=2,
        lambda_retry_base_delay_s=0.01,
        lambda_retry_max_delay_s=0.05,
        ssh_private_key_file=key_file,
        billing_minute_s=LAMBDA_MINUTE_S,
        placement_poll_s=0.5,
        node_active_poll_s=0.05,
        orphan_sweep_interval_s=0,
    )
    values.update(over)
    return Settings(**values)  # type: ignore[arg-type]


def launch(lsim, name: str, instance_type: str = "cpu_4x_general") -> str:
    """Launch one instance called `name` directly through the API (no service involved)."""
    with sim_client(lsim, PATIENT) as c:
        offer = c.instance_types()[instance_type]
        region = offer.regions_with_capacity_available[0].name
        return c.launch(region=region, instance_type=instance_type, ssh_key_name=KEY_NAME, name=name)


def status(lsim, instance_id: str) -> str:
    with lsim.cloud.lock:
        return lsim.cloud.instances[instance_id].status


def wait_status(lsim, instance_id: str, wanted: set[str], timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while (now := status(lsim, instance_id)) not in wanted:
        assert time.monotonic() < deadline, f"{instance_id} is {now}, not {wanted}"
        time.sleep(0.05)
    return now


def terminate_all(lsim) -> None:
    """Give every live instance back (capacity and quota for the next test)."""
    with lsim.cloud.lock:
        live = [i.id for i in lsim.cloud.instances.values() if i.status in LIVE]
    if live:
        with sim_client(lsim) as c:
            c.terminate(live)
