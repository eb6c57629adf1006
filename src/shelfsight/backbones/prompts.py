"""Class prompts for zero-shot tagging: a class name in several sentence templates (and, where a catalogue
ships one, the first sentence of its product description), encoded and averaged into one vector per class.

Prompt ensembling (Radford et al. 2021, section 3.1.4): a text tower was trained on captions, not bare
labels, so "a photo of granny smith." lands nearer the photos than "Granny-Smith"; averaging a class's
normalised prompt vectors and renormalising the mean smooths over the wording of any one template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from shelfsight.backbones.text import TextEncoder

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "a product photo of {}.",
    "a close-up photo of {}.",
    "a photo of {}, a product for sale.",
    "a photo of {} in a shop.",
)
"""Sentence templates; ``{}`` is replaced by the class name (with ``-`` and ``_`` as spaces)."""


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Templates as a tuple, each with one ``{}`` for the class name (a clear error otherwise)."""
    if isinstance(templates, str) or not templates:
        raise ValueError("templates must be a non-empty list of sentences with one '{}' for the class name")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} must contain '{{}}' exactly once (where the class name goes)")
    return tuple(templates)


def readable(label: str) -> str:
    """A class label as words: ``Golden-Delicious`` -> ``Golden Delicious``."""
    return " ".join(re.sub(r"[-_]+", " ", label).split())


def first_sentence(text: str) -> str:
    """The first sentence of a description: the part most like a caption (descriptions run past a text
    tower's context length and drift into storage advice)."""
    words = " ".join(text.split())
    match = re.match(r"(.+?[.!?])(\s|$)", words)
    return match.group(1) if match else words


def class_prompts(name: str, templates: Sequence[str], description: str | None = None) -> list[str]:
    """Every prompt of one class: each template filled with its name, then its description's first sentence."""
    prompts = [template.format(readable(name)) for template in templates]
    if description and description.strip():
        prompts.append(first_sentence(description))
    return prompts


def ensemble_vectors(vectors: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """``(n_classes, d)``: the mean of each class's prompt vectors (rows, grouped in order, ``counts[i]`` for
    class i), each normalised first, the mean renormalised."""
    if sum(counts) != len(vectors) or any(c < 1 for c in counts):
        raise ValueError(f"counts {list(counts)} do not split {len(vectors)} prompt vectors into non-empty groups")
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    means = np.add.reduceat(unit.astype(np.float64), starts, axis=0) / np.asarray(counts, dtype=np.float64)[:, None]
    return (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def class_vectors(text: TextEncoder, prompts: Sequence[Sequence[str]]) -> np.ndarray:
    """One unit vector per class from its prompts (``class_prompts``), through the text tower."""
    flat = [prompt for group in prompts for prompt in group]
    return ensemble_vectors(text.encode(flat), [len(group) for group in prompts])
