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

Capacity is a count per type per region: a launch takes one, a termination gives it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class Catalog(BaseModel):
    model_config = ConfigDict(extra="ignore")  # allows a "_source" note in the file

    regions: dict[str, str]
    instance_types: dict[str, CatalogType]

    @model_validator(mode="after")
    def _known_regions(self) -> "Catalog":
        for name, item in self.instance_types.items():
            for region, count in item.capacity.items():
                if region not in self.regions:
                    raise ValueError(f"{name}: capacity in unknown region {region!r}")
                if count < 0:
                    raise ValueError(f"{name}: negative capacity in {region}")
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


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read a catalog from JSON or YAML (by suffix); the shipped default when `path` is None."""
    path = Path(path) if path else DEFAULT_CATALOG
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    return Catalog.model_validate(data)
