"""Short-lived credentials that reach only one run's prefix: what a node gets instead of ours.

Service code (orchestrator/artifacts.py grants, controller/storage.py revokes): a node never mints
credentials, it only reads the ones the service writes to it (see trainer/upload.py).

The service holds the long-lived credentials. For each run it creates an IAM role whose only
permissions are the run's objects (`arn:aws:s3:::BUCKET/PREFIX/*`: get, put, multipart; no list,
no delete), assumes it through STS for at most `duration_s`, passing the same
policy again as the session policy, and hands the node the resulting temporary key, secret and
session token (as AWS_* environment variables). When the credentials expire, or the role is
revoked at the end of the run, they are worthless. Nodes never hold a key that outlives the run.

Why a role per run, and not the two usual alternatives. Both were checked against the server our
tests run on (moto 5.2 in server mode, whose IAM enforcement is turned on by the tests):
- presigned URLs: moto never verifies a presigned URL's signature, so a test could not show that
  a URL for key A cannot be turned into a write to key B (it would pass, trivially and falsely);
- one shared node role narrowed by an STS session policy (AssumeRole's `Policy`): moto ignores
  session policies (it evaluates only the role's own policies), so the scoping would be untested.
A role whose own policy names the prefix is enforced by moto (signature, session token and the
policy's actions and resources are all checked) exactly as by AWS, so the tests prove the scope.
On AWS the session policy sent along with it is a second, independent limit.

What the service's own credentials need: iam:CreateRole, iam:PutRolePolicy, iam:DeleteRolePolicy,
iam:DeleteRole on `role/trainyard/runs/*` and sts:AssumeRole on those roles. Pass
`permissions_boundary` (a managed policy allowing only S3 on the artifact bucket) and require it
in the service's iam:CreateRole policy (condition iam:PermissionsBoundary), so even a compromised
service cannot mint a role stronger than that. Roles are named from the bucket and prefix, so a
grant is idempotent and revoke_run_access finds the role again. AWS caps a role session at the
role's MaxSessionDuration (1 to 12 h): the controller grants again before `expiration` for runs
that last longer. IAM is eventually consistent; a role a few seconds old may not be assumable yet,
so AssumeRole is retried (tenacity) for up to `propagation_timeout_s`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import tenacity

from trainer.artifacts import ArtifactError
from trainer.artifacts.store import join_key

ROLE_PATH = "/trainyard/runs/"


@dataclass(frozen=True)
class NodeGrant:
    """What a node receives: the run's URI and temporary credentials good only there."""

    uri: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    region: str
    endpoint_url: str | None = None
    role_arn: str = ""

    def credentials(self) -> dict:
        """For open_store(uri, credentials=...)."""
        return {
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
            "region": self.region,
        }

    def env(self) -> dict[str, str]:
        """Environment for the node's `python -m trainer.artifacts ...` (boto3 reads these)."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_SESSION_TOKEN": self.session_token,
            "AWS_DEFAULT_REGION": self.region,
            "TRAINYARD_ARTIFACT_URI": self.uri,
        }
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL_S3"] = self.endpoint_url
        return env


def run_policy(bucket: str, prefix: str, partition: str = "aws", extra_prefixes: tuple[str, ...] = ()) -> dict:
    """The only permissions a node gets: read and write its run's objects (and those under
    `extra_prefixes`: the cache folder of the run's data set), nothing else.

    No s3:ListBucket: AWS could narrow it to the prefix with an s3:prefix condition, but moto
    ignores that condition and would let a node list the whole bucket, so the limit would go
    untested. A node never needs to list (the controller tells it which checkpoint to pull);
    without ListBucket, S3 answers 403 instead of 404 for a missing key, which the store reads as
    "not there, or not yours" (see S3Store._stat)."""
    prefixes = [join_key(p) for p in (prefix, *extra_prefixes)]
    if not all(prefixes):
        raise ArtifactError("a node's grant needs a run prefix, not the whole bucket")
    resources = [f"arn:{partition}:s3:::{bucket}/{p}/*" for p in prefixes]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RunObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                "Resource": resources[0] if len(resources) == 1 else resources,
            },
        ],
    }


def role_name(bucket: str, prefix: str) -> str:
    """A stable IAM role name for (bucket, prefix): readable tail + hash, at most 64 chars."""
    digest = hashlib.sha256(f"{bucket}/{join_key(prefix)}".encode()).hexdigest()[:12]
    tail = re.sub(r"[^A-Za-z0-9+=,.@_-]+", "-", join_key(prefix))[-40:].strip("-")
    return f"ty-{tail}-{digest}" if tail else f"ty-{digest}"


def _clients(credentials: dict | None, endpoint_url: str | None, region: str) -> tuple[Any, Any]:
    """boto3's IAM and STS clients (untyped: boto3 ships no types)."""
    import boto3  # only here: slow to import, and a service with a file:// store never needs it
    from botocore.config import Config

    creds = credentials or {}
    session = boto3.session.Session(
        aws_access_key_id=creds.get("access_key_id"),
        aws_secret_access_key=creds.get("secret_access_key"),
        aws_session_token=creds.get("session_token"),
        region_name=region,
    )
    cfg = Config(connect_timeout=10, read_timeout=30, retries={"max_attempts": 5, "mode": "standard"})
    return (
        session.client("iam", endpoint_url=endpoint_url, config=cfg),
        session.client("sts", endpoint_url=endpoint_url, config=cfg),
    )


def _trust_principal(caller_arn: str) -> str:
    """The principal allowed to assume the run's role: the service itself (as an IAM role ARN when
    the service runs under an assumed role, since a session ARN cannot be a trust principal)."""
    m = re.match(r"^arn:([^:]+):sts::(\d+):assumed-role/([^/]+)/", caller_arn)
    return f"arn:{m.group(1)}:iam::{m.group(2)}:role/{m.group(3)}" if m else caller_arn


def grant_run_access(
    bucket: str,
    run_prefix: str,
    *,
    credentials: dict | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    duration_s: int = 3600,
    permissions_boundary: str | None = None,
    propagation_timeout_s: float = 30.0,
    extra_prefixes: tuple[str, ...] = (),
) -> NodeGrant:
    """Temporary credentials limited to s3://bucket/run_prefix/ and the `extra_prefixes`
    (idempotent per bucket+prefix).

    `credentials`: the service's own ({access_key_id, secret_access_key, session_token?}); default
    boto3's chain. Blocks for the IAM and STS calls (a few seconds at most, plus IAM propagation)."""
    from botocore.exceptions import BotoCoreError, ClientError

    region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    prefix = join_key(run_prefix)
    iam, sts = _clients(credentials, endpoint_url, region)
    name = role_name(bucket, prefix)
    try:
        caller = sts.get_caller_identity()["Arn"]
        partition = caller.split(":")[1]
        policy = json.dumps(run_policy(bucket, prefix, partition, extra_prefixes))
        trust = json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"AWS": _trust_principal(caller)}, "Action": "sts:AssumeRole"}
                ],
            }
        )
        kw = {"PermissionsBoundary": permissions_boundary} if permissions_boundary else {}
        try:
            role_arn = iam.create_role(
                RoleName=name,
                Path=ROLE_PATH,
                AssumeRolePolicyDocument=trust,
                MaxSessionDuration=max(3600, min(duration_s, 43200)),
                Description=f"trainyard run s3://{bucket}/{prefix}",
                **kw,
            )["Role"]["Arn"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "EntityAlreadyExists":
                raise
            role_arn = iam.get_role(RoleName=name)["Role"]["Arn"]
        iam.put_role_policy(RoleName=name, PolicyName="run-prefix", PolicyDocument=policy)
        session_name = "ty-" + hashlib.sha256(prefix.encode()).hexdigest()[:16]
        # a new role takes a few seconds to become assumable on AWS: AccessDenied until then
        not_assumable_yet = tenacity.retry_if_exception(
            lambda e: isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") == "AccessDenied"
        )
        for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_delay(propagation_timeout_s),
            wait=tenacity.wait_fixed(2.0),
            retry=not_assumable_yet,
            reraise=True,
        ):
            with attempt:
                out = sts.assume_role(
                    RoleArn=role_arn, RoleSessionName=session_name, Policy=policy, DurationSeconds=duration_s
                )["Credentials"]
    except (ClientError, BotoCoreError) as e:
        raise ArtifactError(f"cannot grant access to s3://{bucket}/{prefix}: {e}") from None
    return NodeGrant(
        uri=f"s3://{bucket}/{prefix}",
        access_key_id=out["AccessKeyId"],
        secret_access_key=out["SecretAccessKey"],
        session_token=out["SessionToken"],
        expiration=out["Expiration"],
        region=region,
        endpoint_url=endpoint_url,
        role_arn=role_arn,
    )


def revoke_run_access(
    bucket: str,
    run_prefix: str,
    *,
    credentials: dict | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> None:
    """Delete the run's role: its sessions lose every permission at once. Idempotent."""
    from botocore.exceptions import BotoCoreError, ClientError

    iam, _ = _clients(credentials, endpoint_url, region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    name = role_name(bucket, run_prefix)
    try:
        for call in (
            partial(iam.delete_role_policy, RoleName=name, PolicyName="run-prefix"),
            partial(iam.delete_role, RoleName=name),
        ):
            try:
                call()
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") != "NoSuchEntity":
                    raise
    except (ClientError, BotoCoreError) as e:
        raise ArtifactError(f"cannot revoke access to s3://{bucket}/{join_key(run_prefix)}: {e}") from None
