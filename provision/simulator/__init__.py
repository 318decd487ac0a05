"""A faithful local Lambda Cloud: the same REST API, with real sshd "instances" on 127.0.0.x.

Everything above `provision/` (the controller, the CLI, the tests) can then rent, drive and pay
for machines for real without a cloud account: the Lambda client talks HTTP to this server, and
each instance is an OpenSSH server on its own loopback address with its own host key and disk.

    python -m provision.simulator --host 127.0.0.1 --port 8765 --state-dir /tmp/sim \
        [--catalog FILE] [--boot-seconds 5] [--minute-seconds 60] [--ssh-port 22]

Modules: `catalog` (types, prices, images from a file), `cloud` (state and lifecycle), `storage`
(file systems, firewall rules), `sshd` (the machines), `keys` (public key formats), `ledger`
(billing), `limits` (rate limits and faults), `bodies` (request bodies with the spec's
constraints), `errors` (Lambda's error codes), `api` and `api_account` (Lambda's routes), `admin`
(`/sim/v1`: faults, capacity, billing), `server` (wiring and a threaded runner).

`lambda-cloud-openapi.json` is Lambda's own OpenAPI spec, "Lambda Cloud API" version 1.10.0, its
compute operations, unchanged: the copy in the `api-evangelist/lambda-labs` repository
(`openapi/_original/lambda-labs-openapi.json`, whose text matches docs.lambda.ai/api/cloud) with
the audit-event, ticket and fabric paths left out. The tests check every response against it;
`python -m provision.simulator --help` says what is served and what is only simulated.
"""

from provision.simulator.cloud import Cloud, SimConfig
from provision.simulator.server import SimulatorServer, create_app

__all__ = ["Cloud", "SimConfig", "SimulatorServer", "create_app"]
