"""The simulator's instance-type catalog: types, prices, specs, regions, and capacity per region.

Prices change over time, so they live in a file, not in code. `default_catalog.json` (beside this
module) holds Lambda's types with late-2025 prices; tests and users can pass their own JSON or
YAML file of the same shape:

    regions:                       # region code -> description
      us-east-1: Virginia, USA
    instance_types:
      gpu_1x_a100:
        description: 1x A100 (40 GB PCIe)
        gpu_description: A100 (40 GB PCIe)
        price_cents_per_hour: 129
        specs: {vcpus: 30, memory_gib: 200, storage_gib: 512, gpus: 1}
        capacity: {us-east-1: 2}   # how many more can be launched there; absent region = none
    images:                        # optional: what GET /images lists and a launch may name
      - {name: lambda-stack-24-04, description: Lambda Stack 24.04, family: lambda-stack-24-04,
         version: 24.4.0, architecture: x86_64, created_time: "2025-05-01T00:00:00Z",
         updated_time: "2025-10-01T00:00:00Z"}   # regions: [...] to offer it in some only

Capacity is a count per type per region: a launch takes one, a termination gives it back. Lambda
lists an image once per region, each with its own id; the simulator's ids are stable UUIDs made
from the image's name and the region.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

DEFAULT_CATALOG = Path(__file__).with_name("default_catalog.json")


class Specs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vcpus: int = Field(ge=0)
    memory_gib: int = Field(ge=0)
    storage_gib: int = Field(ge=0)
    gpus: int = Field(ge=0)


class CatalogType(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str
    gpu_description: str
    price_cents_per_hour: int = Field(ge=0)
    specs: Specs
    capacity: dict[str, int] = Field(default_factory=dict)


class CatalogImage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    family: str
    version: str
    architecture: Literal["x86_64", "arm64"]
    created_time: AwareDatetime
    updated_time: AwareDatetime
    regions: list[str] | None = None  # None: every region


def iso_time(value: datetime) -> str:
    """An aware datetime as Lambda writes it: ISO 8601 in UTC with a `Z`."""
    return value.isoformat().replace("+00:00", "Z")


class Catalog(BaseModel):
    model_config = ConfigDict(extra="ignore")  # allows a "_source" note in the file

    regions: dict[str, str]
    instance_types: dict[str, CatalogType]
    images: list[CatalogImage] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_regions(self) -> "Catalog":
        for name, item in self.instance_types.items():
            for region, count in item.capacity.items():
                if region not in self.regions:
                    raise ValueError(f"{name}: capacity in unknown region {region!r}")
                if count < 0:
                    raise ValueError(f"{name}: negative capacity in {region}")
        for image in self.images:
            unknown = set(image.regions or []) - set(self.regions)
            if unknown:
                raise ValueError(f"image {image.name}: unknown regions {sorted(unknown)}")
        return self

    def type_json(self, name: str) -> dict[str, Any]:
        """The `InstanceType` object as Lambda's API shows it."""
        item = self.instance_types[name]
        return {
            "name": name,
            "description": item.description,
            "gpu_description": item.gpu_description,
            "price_cents_per_hour": item.price_cents_per_hour,
            "specs": item.specs.model_dump(),
        }

    def region_json(self, code: str) -> dict[str, str]:
        return {"name": code, "description": self.regions.get(code, code)}

    def images_json(self) -> list[dict[str, Any]]:
        """Every `Image` object as Lambda lists them: one per image per region it is offered in."""
        return [
            {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"lambda-sim-image:{image.name}@{region}")),
                "created_time": iso_time(image.created_time),
                "updated_time": iso_time(image.updated_time),
                "name": image.name,
                "description": image.description,
                "family": image.family,
                "version": image.version,
                "architecture": image.architecture,
                "region": self.region_json(region),
            }
            for image in self.images
            for region in (image.regions or list(self.regions))
        ]


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read a catalog from JSON or YAML (by suffix); the shipped default when `path` is None."""
    path = Path(path) if path else DEFAULT_CATALOG
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    return Catalog.model_validate(data)
