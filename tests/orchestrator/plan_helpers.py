"""Shared by the plan tests: the Lambda simulator's API in process (its catalog, prices and
capacity; nothing is launched, so no sshd), settings that point the `lambda` provider at it, and
throughput records written as the controller writes them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from orchestrator.db.models import ThroughputRecord, utcnow
from orchestrator.db.session import transaction
from orchestrator.settings import Settings
from orchestrator_helpers import sessions


def start_simulator(state_dir: Path):
    from provision.simulator import SimulatorServer
    from simhelpers import sim_config

    return SimulatorServer(sim_config(state_dir, "/usr/sbin/sshd", 22)).start()


def lambda_settings(db_url: str, tmp_path: Path, sim) -> Settings:
    key = tmp_path / "id_ed25519"
    key.write_text("not used: nothing is launched\n")
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        lambda_api_url=sim.url,
        lambda_api_key=sim.cloud.config.api_key.get_secret_value(),
        lambda_ssh_key_name="trainyard",
        ssh_private_key_file=key,
        lambda_retry_attempts=2,
        lambda_retry_base_delay_s=0.01,
        lambda_retry_max_delay_s=0.02,
    )


def add_records(db_url: str, shape_key: str, *rows: dict) -> None:
    """Records of `shape_key` (gpt2-small at seq 1024 unless a row says otherwise), a minute
    apart, the first the newest."""
    factory = sessions(db_url)
    with transaction(factory) as s:
        for i, row in enumerate(rows):
            values = dict(
                source="run", provider="lambda", gpu=None, nodes=1, gpus_per_node=8, shape_key=shape_key,
                preset="gpt2-small", overrides={}, seq_len=1024, precision="auto", micro_batch=20, params=None,
                flops_per_token=None, mfu=None, launch_to_first_step_s=None, eval_s=None, tokens_trained=0,
                created_at=utcnow() - timedelta(minutes=i),
            )  # fmt: skip
            values.update(row)
            s.add(ThroughputRecord(**values))
    factory.kw["bind"].dispose()
