"""The README's main command, exactly as a user runs it: `scripts/quickstart.sh`.

It sets up (idempotent on an already set-up checkout), starts the service on the embedded
defaults (SQLite + file:// in the data dir), trains gpt2-tiny on the shipped corpus, evaluates the
test loss and prints the results table and the dashboard's address.
"""

from __future__ import annotations

import math
import os
import re
import subprocess

from orchestrator_helpers import REPO, free_port


def test_the_readme_quickstart_trains_evaluates_and_reports(tmp_path):
    port = free_port()
    env = {**os.environ, "TRAINYARD_DATA_DIR": str(tmp_path / "data"), "TRAINYARD_PORT": str(port), "COLUMNS": "200"}
    env = {k: v for k, v in env.items() if k not in ("TRAINYARD_DATABASE_URL", "TRAINYARD_API_URL")}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "quickstart.sh")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, f"quickstart failed ({done.returncode}):\n{err[-3000:]}"

    # the results table: one succeeded run with its tokens, a finite test loss and a cost
    row = next((line for line in out.splitlines() if "quickstart-gpt2-tiny" in line), None)
    assert row is not None, f"no results row in:\n{out}"
    assert "succeeded" in row
    numbers = [float(x.replace(",", "")) for x in re.findall(r"(?<![\w.])\d[\d,]*\.?\d*(?![\w])", row)]
    assert any(n >= 100_000 for n in numbers), f"tokens trained missing from: {row}"
    losses = [n for n in numbers if 0 < n < math.log(50257)]
    assert losses, f"no test loss below the untrained ln(50257) in: {row}"
    assert "$" in row

    # the dashboard's address, served by the service it started on the port it was given
    assert re.search(rf"dashboard: http://127\.0\.0\.1:{port}/runs/[0-9a-f]+", err), err[-2000:]
    # the embedded defaults were used: a SQLite file and the run's directory in the data dir
    assert (tmp_path / "data" / "trainyard.db").exists()
    assert list((tmp_path / "data" / "runs").glob("ty-*/checkpoints/latest"))
