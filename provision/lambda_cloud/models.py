"""Lambda Cloud's wire objects, as the client reads them.

Parsing is deliberately tolerant: Lambda grows its API by adding fields, so unknown fields are
ignored, and fields the docs say may be missing (`ip` while booting, `private_ip` on some VMs,
`name` when unset) are optional. Only what the provider needs is typed; the rest is dropped.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Region(_Wire):
    name: str
    description: str = ""


class InstanceTypeSpecs(_Wire):
    vcpus: int = 0
    memory_gib: int = 0
    storage_gib: int = 0
    gpus: int = 0


class LambdaInstanceType(_Wire):
    name: str
    description: str = ""
    gpu_description: str = ""
    price_cents_per_hour: int  # lax mode also accepts the old spec's string form ("80")
    specs: InstanceTypeSpecs = Field(default_factory=InstanceTypeSpecs)


class InstanceTypeOffer(_Wire):
    """One entry of GET /instance-types: a type and the regions that can launch it right now."""

    instance_type: LambdaInstanceType
    regions_with_capacity_available: list[Region] = Field(default_factory=list)


class LambdaInstance(_Wire):
    id: str
    status: str
    name: str | None = None
    ip: str | None = None
    private_ip: str | None = None
    hostname: str | None = None
    region: Region
    instance_type: LambdaInstanceType
    ssh_key_names: list[str] = Field(default_factory=list)
    file_system_names: list[str] = Field(default_factory=list)


class SSHKey(_Wire):
    id: str
    name: str
    public_key: str
    #: only when Lambda generated the pair; Lambda does not keep it, so store it at once
    private_key: SecretStr | None = None
