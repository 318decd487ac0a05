"""A faithful local Lambda Cloud: the same REST API, with real sshd "instances" on 127.0.0.x.

Everything above `provision/` (the controller, the CLI, the tests) can then rent, drive and pay
for machines for real without a cloud account: the Lambda client talks HTTP to this server, and
each instance is an OpenSSH server on its own loopback address with its own host key and disk.

    python -m provision.simulator --host 127.0.0.1 --port 8765 --state-dir /tmp/sim \
        [--catalog FILE] [--boot-seconds 5] [--minute-seconds 60] [--ssh-port 22]

Modules: `catalog` (types and prices from a file), `cloud` (state and lifecycle), `sshd` (the
machines), `ledger` (billing), `limits` (rate limits and faults), `api` (Lambda's routes),
`admin` (`/sim/v1`: faults, capacity, billing), `server` (wiring and a threaded runner).
"""

from provision.simulator.cloud import Cloud, SimConfig
from provision.simulator.server import SimulatorServer, create_app

__all__ = ["Cloud", "SimConfig", "SimulatorServer", "create_app"]
