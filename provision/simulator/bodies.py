"""Request bodies of Lambda's API with the constraints its OpenAPI spec states, verbatim.

The patterns and lengths are copied from `lambda-cloud-openapi.json` (beside this module), so a
request Lambda would refuse is refused here too, with 400 `global/invalid-parameters` naming the
field (`api.parse`). Models are strict: a JSON number is not a name, and `true` is not a port.
Fields Lambda does not document are ignored, as `quantity` is only checked (absent or 1).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TAG_KEY = r"^[a-z][a-z0-9-:]+$"
HOSTNAME = r"^[a-z0-9][0-9a-z-]{0,62}$"
MOUNT_POINT = r"^(/home|/lambda/nfs|/data)[//a-zA-Z0-9-]*$"
FILESYSTEM_NAME = r"^[a-zA-Z]+[0-9a-zA-Z-]*$"
USER_DATA_MAX_BYTES = 1024 * 1024  # "cannot exceed 1MB"

Port = Annotated[int, Field(ge=1, le=65535)]


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class Tag(Body):
    key: str = Field(max_length=55, pattern=TAG_KEY)
    value: str = Field(max_length=128)


class FilesystemMount(Body):
    mount_point: str = Field(max_length=256, pattern=MOUNT_POINT)
    file_system_id: str


class RulesetRef(Body):
    id: str


class ImageSpec(Body):
    """`{"id": ...}` or `{"family": ...}`."""

    id: str | None = None
    family: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> "ImageSpec":
        if self.id is None and self.family is None:
            raise ValueError("give the image's id or its family")
        return self


class LaunchRequest(Body):
    region_name: str
    instance_type_name: str
    ssh_key_names: list[str] = Field(min_length=1, max_length=1)  # "exactly one SSH key"
    file_system_names: list[str] = Field(default_factory=list)
    file_system_mounts: list[FilesystemMount] = Field(default_factory=list)
    hostname: str | None = Field(default=None, min_length=1, max_length=63, pattern=HOSTNAME)
    name: str | None = Field(default=None, max_length=64)
    image: ImageSpec | None = None
    user_data: str | None = None
    tags: list[Tag] = Field(default_factory=list)
    firewall_rulesets: list[RulesetRef] = Field(default_factory=list)
    quantity: int | None = Field(default=None, ge=1)

    @field_validator("user_data")
    @classmethod
    def _user_data_size(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode("utf-8", "surrogatepass")) > USER_DATA_MAX_BYTES:
            raise ValueError("user_data cannot exceed 1MB")
        return value


class InstanceIdsRequest(Body):
    """Terminate and restart."""

    instance_ids: list[str] = Field(min_length=1)


class RenameRequest(Body):
    name: str | None = Field(default=None, max_length=64)


class AddKeyRequest(Body):
    name: str = Field(min_length=1, max_length=64)
    public_key: str | None = Field(default=None, min_length=1, max_length=4096)


class FilesystemCreateRequest(Body):
    name: str = Field(min_length=1, max_length=60, pattern=FILESYSTEM_NAME)
    region: str


class FirewallRule(Body):
    protocol: Literal["tcp", "udp", "icmp", "all"]
    port_range: list[Port] | None = Field(default=None, min_length=2, max_length=2)
    source_network: str
    description: str = Field(max_length=128)

    @field_validator("source_network")
    @classmethod
    def _cidr(cls, value: str) -> str:
        # "If no mask is provided, the API assumes /32"
        try:
            return str(ipaddress.IPv4Network(value, strict=False))
        except ValueError:
            raise ValueError("source_network must be an IPv4 address or network in CIDR notation") from None

    @model_validator(mode="after")
    def _ports(self) -> "FirewallRule":
        if self.protocol == "icmp" and self.port_range is not None:
            raise ValueError("port_range is not allowed for icmp")
        if self.protocol != "icmp" and self.port_range is None:
            raise ValueError(f"port_range is required for {self.protocol}")
        if self.port_range is not None and self.port_range[0] > self.port_range[1]:
            raise ValueError("port_range must be [min, max]")
        return self

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class FirewallRulesPut(Body):
    data: list[FirewallRule]


class RulesetCreate(Body):
    name: str = Field(max_length=64)
    region: str
    rules: list[FirewallRule]


class RulesetPatch(Body):
    name: str | None = Field(default=None, max_length=64)
    rules: list[FirewallRule] | None = None


class GlobalRulesetPatch(Body):
    rules: list[FirewallRule] | None = None
