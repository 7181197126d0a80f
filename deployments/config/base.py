"""The base of every config model, and the name rule models and requests share."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def valid_model_name(name: str) -> bool:
    """Whether ``name`` could be a configured model's name (checked before any lookup)."""
    return bool(_NAME.match(name)) and name != "auto"


class ConfigError(ValueError):
    """A configuration file or dict that does not validate; the message lists key paths."""
