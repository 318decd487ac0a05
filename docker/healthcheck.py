"""The image's HEALTHCHECK: GET /api/v1/health of the service in this container; exit 0 when it
answers 200, else 1 with one line saying why (docker and podman keep it in the health log).

It asks where `trainyard serve` listens, from the same TRAINYARD_HOST / TRAINYARD_PORT settings, so
a container started on another port (host networking) is checked on that port; a wildcard address
is asked on loopback. The standard library only: this runs every interval, and a quick start
matters more than a nicer client. The health endpoint needs no API token.
"""

import os
import sys
import urllib.request

host = os.environ.get("TRAINYARD_HOST", "127.0.0.1").strip("[]")
if host in ("", "0.0.0.0", "::"):
    host = "127.0.0.1"
if ":" in host:
    host = f"[{host}]"
url = f"http://{host}:{os.environ.get('TRAINYARD_PORT', '8000')}/api/v1/health"
direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy
try:
    with direct.open(url, timeout=2) as response:
        status = response.status
except OSError as exc:  # refused, timed out, or an HTTP error status (HTTPError is an OSError)
    sys.exit(f"unhealthy: {url}: {exc}")
if status != 200:
    sys.exit(f"unhealthy: {url} answered {status}")
print(f"healthy: {url}")
