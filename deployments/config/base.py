"""The base of every config model, and the name rule models and requests share."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def valid_model_name(name: str) -> bool:
    """Whether ``name`` could be a configured model's name (checked before any lookup)."""
    return bool(_NAME.match(name)) and name != "auto"


class ConfigError(ValueError):
    """A configuration file or dict that does not validate; the message lists key paths."""


def _distinct_cpus(cpus: list[int]) -> list[int]:
    repeated = sorted({c for c in cpus if cpus.count(c) > 1})
    if repeated:
        raise ValueError(f"CPU ids must be distinct; repeated: {repeated}")
    return cpus


#: CPU ids a replica pins itself to (``os.sched_setaffinity``), checked for shape here and
#: against the node's CPUs when the replica starts (deployments/affinity.py).
CpuAffinity = Annotated[
    list[Annotated[int, Field(ge=0, le=4095)]],
    Field(min_length=1, max_length=4096),
    AfterValidator(_distinct_cpus),
]
