"""What every service's responses share: which model answered."""

from __future__ import annotations

from pydantic import BaseModel


class ModelRef(BaseModel):
    """Which model answered: registered name, version and variant (explain: the weights it
    explains, `torch`). Built from `LoadedModel.info()`."""

    name: str
    version: str
    variant: str
