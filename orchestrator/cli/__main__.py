"""`python -m orchestrator.cli` is the same as `trainyard` (handy before `pip install -e .`)."""

from orchestrator.cli.main import app

app(prog_name="trainyard")
