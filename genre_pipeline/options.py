"""Settings declared once: plain dataclass fields with a description, which the Dagster run config made
from the dataclass (``defs.common.config_from_dataclass``) shows in the UI."""

import dataclasses


def described(default, description: str):
    """A dataclass field with a description."""
    return dataclasses.field(default=default, metadata={"description": description})
