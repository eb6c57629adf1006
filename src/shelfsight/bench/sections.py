"""The strategies' sections of the bench config (``toptune:``, ``finetune:``, ``knn:``, ``compress:``,
``zeroshot:``): one per ``Strategy.section`` of the registry, written at the top level of the YAML, gathered
under ``BenchConfig.sections``; settings renamed since are refused with their new names."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from shelfsight.bench import strategies as registry
from shelfsight.bench.strategies import ConfigSection

SECTIONS = "sections"
"""Where the strategies' sections live in the validated config (they are written at the YAML's top level)."""


def sections_model() -> type[BaseModel]:
    """One field per strategy section of the registry (``toptune:``, ``finetune:``, ``knn:``...), defaults its own."""
    sections = registry.config_sections()
    fields: dict[str, Any] = {s.name: (s.model, Field(default_factory=s.model)) for s in sections}
    check = field_validator(*(s.name for s in sections), mode="before")(_given_as_named)
    return create_model("StrategySections", __config__=ConfigDict(extra="forbid", frozen=True),
                        __validators__={"_given_as_named": check}, **fields)


def _given_as_named(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A section holds no seed when the seed is the cell's, and none of its renamed settings' old names."""
    section = next(s for s in registry.config_sections() if s.name == info.field_name)
    if isinstance(value, dict):
        if seeded(section) and "seed" in value:
            raise ValueError(f"set the seed with the top-level 'seed' and 'repeats', not inside {section.name}")
        _refuse(section, {section.name: value}, inside=True)
    return value


if TYPE_CHECKING:
    StrategySections = BaseModel
else:
    StrategySections = sections_model()


def seeded(section: ConfigSection) -> bool:
    """A section whose ``seed`` is the cell's (top-level ``seed`` and ``repeats``), never written in it."""
    return dataclasses.is_dataclass(section.model) and any(f.name == "seed" for f in dataclasses.fields(section.model))


def refuse_old_names(raw: dict[str, Any]) -> None:
    """A renamed top-level setting (``knn_k``) is refused with its new name (a section's own: ``_given_as_named``)."""
    for section in registry.config_sections():
        _refuse(section, raw, inside=False)


def _refuse(section: ConfigSection, raw: dict[str, Any], *, inside: bool) -> None:
    for old, new in section.renamed:
        head, _, tail = old.partition(".")
        given = raw.get(head)
        if (not tail and not inside and head in raw) or (tail and inside and isinstance(given, dict) and tail in given):
            raise ValueError(f"'{old}' is now '{new}': write {_spelled(new, raw, old)}")


def _spelled(new: str, raw: dict[str, Any], old: str) -> str:
    """``knn: {k: 7}`` for the value the old name was given."""
    head, _, tail = old.partition(".")
    value = raw[head][tail] if tail else raw[head]
    section, _, field = new.partition(".")
    return f"{section}: {{{field}: {json.dumps(value)}}}"
