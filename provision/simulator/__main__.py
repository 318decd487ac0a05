"""`python -m provision.simulator`: run the Lambda Cloud simulator in the foreground.

The API key comes from `$LAMBDA_SIM_API_KEY`; without it a random key is made and written to
`<state-dir>/api-key` (mode 600), never printed. Stop with Ctrl-C or SIGTERM: every simulated
machine (its sshd and all its processes) is destroyed on the way out. `--help` states which of
Lambda's operations are served and what is simulated rather than real (`API_SUBSET`).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import sys
from pathlib import Path

import uvicorn
from pydantic import SecretStr

from provision.simulator.catalog import DEFAULT_CATALOG, load_catalog
from provision.simulator.cloud import Cloud, SimConfig
from provision.simulator.server import create_app
from provision.simulator.sshd import find_sshd
from provision.state_files import atomic_write_text

API_SUBSET = """\
Lambda's API under /api/v1, as its OpenAPI spec 1.10.0 (copied in provision/simulator/
lambda-cloud-openapi.json) describes it. Served: all 24 operations of the compute API:
  instances      list (?cluster_id=), get, rename, launch, terminate, restart
  instance types list
  SSH keys       list, add (OpenSSH, RFC4716, PKCS8 or PEM; or a generated pair), delete
  file systems   list, create, delete
  images, regions  list
  firewall       GET/PUT /firewall-rules; rulesets: list, create, get, update, delete, and global
Not served: audit events, tickets, fabric partitions (outside the compute API).
Simulated, not real:
  - an instance is an sshd on 127.0.0.x; it accepts Lambda's user `ubuntu` where the simulator
    runs as root (an alias of root in the sshd's own mount namespace) and the simulator's user;
  - a file system is a folder under the state dir, shown on instances at its mount point taken
    under the instance's disk ($HOME): /lambda/nfs/NAME is ~/lambda/nfs/NAME;
  - firewall rules and rulesets are kept and checked, not enforced (everything is on loopback);
  - images are listed and checked at launch, but every instance runs this machine's OS;
    user_data is checked (at most 1 MB), not run; there are no 1-Click Clusters, so
    ?cluster_id= lists no instance.
The simulator's own admin API is /sim/v1 (no auth, loopback only): faults, capacity, billing,
the machines' addresses and the SSH users that work.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m provision.simulator",
        description=__doc__.split("\n")[0],
        epilog=API_SUBSET,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address of the API (loopback)")
    p.add_argument("--port", type=int, default=8765, help="port of the API")
    p.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG, help="instance types, prices, capacity (JSON/YAML)")
    p.add_argument("--state-dir", type=Path, required=True, help="instance disks, host keys, ledger.json, api-key")
    p.add_argument("--boot-seconds", type=float, default=5.0, help="booting -> active (Lambda: minutes)")
    p.add_argument("--terminate-seconds", type=float, default=2.0, help="terminating -> terminated")
    p.add_argument("--linger-seconds", type=float, default=300.0, help="terminated instances stay listed this long")
    p.add_argument("--minute-seconds", type=float, default=60.0, help="length of a billing minute (tests: small)")
    p.add_argument("--launch-interval", type=float, default=12.0, help="seconds between launches (0: no limit)")
    p.add_argument("--requests-per-second", type=float, default=1.0, help="general rate limit (0: no limit)")
    p.add_argument("--burst", type=int, default=10, help="requests allowed at once above the rate")
    p.add_argument("--quota", type=int, default=10, help="live instances the account may have")
    p.add_argument("--ssh-port", type=int, default=22, help="port of every instance's sshd")
    p.add_argument("--first-ip", default="127.0.0.11", help="first loopback address given to instances")
    p.add_argument("--last-ip", default="127.0.0.254", help="last loopback address given to instances")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def api_key(state_dir: Path) -> SecretStr:
    key = os.environ.get("LAMBDA_SIM_API_KEY")
    if key:
        return SecretStr(key)
    path = state_dir / "api-key"
    if not path.exists():
        atomic_write_text(path, secrets.token_urlsafe(24) + "\n")
    return SecretStr(path.read_text().strip())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not ipaddress.ip_address(args.host).is_loopback:
        # the admin API has no auth and the machines accept root logins: keep it on this machine
        print(f"simulator: --host must be a loopback address, not {args.host}", file=sys.stderr)
        return 2
    sshd = find_sshd()
    if sshd is None:
        print("simulator: OpenSSH's sshd was not found; run scripts/install-sshd.sh", file=sys.stderr)
        return 2
    args.state_dir.mkdir(parents=True, exist_ok=True)
    config = SimConfig(
        state_dir=args.state_dir,
        catalog=load_catalog(args.catalog),
        api_key=api_key(args.state_dir),
        boot_s=args.boot_seconds,
        terminate_s=args.terminate_seconds,
        linger_s=args.linger_seconds,
        minute_s=args.minute_seconds,
        launch_interval_s=args.launch_interval,
        requests_per_s=args.requests_per_second,
        burst=args.burst,
        quota=args.quota,
        ssh_port=args.ssh_port,
        first_ip=args.first_ip,
        last_ip=args.last_ip,
        sshd=sshd,
    )
    app = create_app(Cloud(config))
    where = "$LAMBDA_SIM_API_KEY" if os.environ.get("LAMBDA_SIM_API_KEY") else args.state_dir / "api-key"
    logging.getLogger("provision.simulator").info(
        "Lambda Cloud simulator on http://%s:%d (API key in %s, admin API at /sim/v1)", args.host, args.port, where
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())
