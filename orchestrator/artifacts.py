"""The service's side of the artifact store: where a run's checkpoints and the shared data cache
live, the store opened with the service's own credentials, and the short-lived credentials a node
gets instead.

Layout under the store root (settings.artifact_uri, or a spec's own `artifact_uri`):

    ROOT/runs/<run id>/checkpoints/step_000100/   a committed checkpoint (manifest.json last)
    ROOT/data/<data set hash>/                    prepared token shards + manifest, shared by runs

A node never receives the service's credentials. For an s3:// store it gets temporary credentials
(orchestrator/grants.py) that reach its own run's folder and its data set's cache folder only,
written to a file on the node (`NODE_CREDENTIALS`, mode 600) rather than put on a command line,
and renewed there while the run lives (boto3 reads the file again for every upload the trainer
starts). A file:// store is a folder this machine (and the local provider) reads directly.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from orchestrator.db.models import aware
from orchestrator.grants import NodeGrant, grant_run_access
from orchestrator.settings import Settings
from orchestrator.spec import RunSpec
from trainer.artifacts import ArtifactStore, open_store, split_uri

#: the node's credentials file, relative to its run directory
NODE_CREDENTIALS = ".aws-credentials"


def store_root(settings: Settings, spec: RunSpec) -> str:
    return (spec.artifact_uri or settings.resolved_artifact_uri).rstrip("/")


def run_folder(settings: Settings, spec: RunSpec, run_id: str) -> str:
    """The run's folder in the store (frozen on the run when it starts: Run.artifact_uri)."""
    return f"{store_root(settings, spec)}/runs/{run_id}"


def checkpoints_uri(run_folder_uri: str) -> str:
    return f"{run_folder_uri.rstrip('/')}/checkpoints"


def data_cache_uri(settings: Settings, spec: RunSpec, data_name: str) -> str:
    return f"{store_root(settings, spec)}/data/{data_name}"


def is_s3(uri: str) -> bool:
    return split_uri(uri)[0] == "s3"


def open_run_store(settings: Settings, uri: str) -> ArtifactStore:
    """A store at `uri` with the service's own credentials (boto3's chain) and endpoint."""
    if is_s3(uri):
        return open_store(uri, endpoint_url=settings.artifact_endpoint_url, region=settings.artifact_region)
    return open_store(uri)


@dataclass(frozen=True)
class NodeAccess:
    """What the trainer processes of one run need to reach the store: environment variables,
    and for s3:// the contents of the credentials file (None for a file:// store)."""

    env: dict[str, str]
    credentials: str | None = None
    expires_at: datetime | None = None

    def env_for(self, workdir: str) -> dict[str, str]:
        """The environment for a process whose run directory is `workdir`."""
        if self.credentials is None:
            return dict(self.env)
        return {**self.env, "AWS_SHARED_CREDENTIALS_FILE": posixpath.join(workdir, NODE_CREDENTIALS)}

    def needs_renewal(self, lifetime_s: float, now: datetime | None = None) -> bool:
        if self.expires_at is None:
            return False
        now = now or datetime.now(timezone.utc)
        return self.expires_at - now < timedelta(seconds=lifetime_s / 3)


def node_access(settings: Settings, run_folder_uri: str, data_cache: str | None) -> NodeAccess:
    """Grant a node access to the run's folder (and its data set's cache folder). Blocks for the
    IAM and STS calls on s3://; nothing to grant for file://."""
    if not is_s3(run_folder_uri):
        return NodeAccess(env={})
    _scheme, bucket, run_prefix = split_uri(run_folder_uri)
    extra = []
    if data_cache is not None:
        c_scheme, c_bucket, c_prefix = split_uri(data_cache)
        if c_scheme == "s3" and c_bucket == bucket:
            extra.append(c_prefix)
    grant = grant_run_access(
        bucket,
        run_prefix,
        endpoint_url=settings.artifact_endpoint_url,
        region=settings.artifact_region,
        duration_s=settings.artifact_grant_s,
        extra_prefixes=tuple(extra),
    )
    # no instance-metadata lookups: the file is the node's only source of credentials
    env = {"AWS_DEFAULT_REGION": grant.region, "AWS_EC2_METADATA_DISABLED": "true"}
    if settings.artifact_endpoint_url:
        env["AWS_ENDPOINT_URL_S3"] = settings.artifact_endpoint_url
    return NodeAccess(env=env, credentials=credentials_ini(grant), expires_at=aware(grant.expiration))


def credentials_ini(grant: NodeGrant) -> str:
    """The grant as an AWS shared credentials file (its default profile)."""
    return (
        "[default]\n"
        f"aws_access_key_id = {grant.access_key_id}\n"
        f"aws_secret_access_key = {grant.secret_access_key}\n"
        f"aws_session_token = {grant.session_token}\n"
    )
