"""The calibration set: real catalogue photos, transformed copies of some of them, and the pool they are
searched in (their sources mixed with other photos, so a copy can be confused with a different shot).

Copies are written once per (source, transformation, seed) under a work folder and reused, so the embedding
cache (keyed by file size and mtime) serves a second run.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shelfsight.catalog import Catalog, CatalogItem, decode_image
from shelfsight.duplicates.transforms import Transform

COPY_SPLIT = "copy"


@dataclass(frozen=True)
class CalibrationSet:
    """``copies`` (one item per source and transformation, ``product_id`` = the source's id, ``split`` =
    ``copy``, ``coarse_label`` = the transformation) and the ``pool`` they are matched against."""

    copies: Catalog
    pool: Catalog
    sources: tuple[str, ...]

    def transform_of(self, copy: CatalogItem) -> str:
        return str(copy.coarse_label)

    def source_of(self, copy: CatalogItem) -> str:
        return str(copy.product_id)


def draw_items(catalog: Catalog, sources: int, distractors: int, seed: int, split: str | None = None,
               group_negatives: int = 0) -> tuple[list[CatalogItem], list[CatalogItem]]:
    """``sources`` photos to copy and ``distractors`` other photos (of ``split`` when given), disjoint, seeded,
    in catalogue order; plus, among the others, up to ``group_negatives`` more photos of each source's group."""
    items = [i for i in catalog if split is None or i.split == split]
    if sources < 1 or sources + distractors > len(items):
        raise ValueError(f"{catalog.name} has {len(items)} items; cannot draw {sources} sources and "
                         f"{distractors} other photos (need at least one source and no more than it holds)")
    order = np.random.default_rng(seed).permutation(len(items))
    chosen = sorted(order[:sources].tolist()), set(order[sources:sources + distractors].tolist())
    picked = [items[i] for i in chosen[0]]
    if group_negatives > 0:
        chosen[1].update(_group_siblings(items, chosen[0], chosen[1], group_negatives, seed))
    return picked, [items[i] for i in sorted(chosen[1])]


def _group_siblings(items: list[CatalogItem], picked: list[int], taken: set[int], per_source: int,
                    seed: int) -> set[int]:
    """Positions of up to ``per_source`` other photos of each picked photo's group, not already drawn (seeded)."""
    by_group: dict[str, list[int]] = {}
    for position, item in enumerate(items):
        if item.group is not None:
            by_group.setdefault(item.group, []).append(position)
    rng = np.random.default_rng([seed, 1])
    used, added = set(picked) | taken, set()
    for position in picked:
        group = items[position].group
        free = [p for p in by_group.get(group, []) if p not in used] if group is not None else []
        for k in rng.permutation(len(free))[:per_source]:
            used.add(free[k])
            added.add(free[k])
    return added


def build_calibration_set(catalog: Catalog, transforms: tuple[Transform, ...], workdir: str | Path, *,
                          sources: int, distractors: int, seed: int = 0, split: str | None = None,
                          group_negatives: int = 0) -> CalibrationSet:
    """Draw the photos (of ``split``, when given), write each source's transformed copies, and return the copies
    and the pool."""
    picked, others = draw_items(catalog, sources, distractors, seed, split, group_negatives)
    folder = Path(workdir) / f"copies-seed{seed}"
    copies = [_make_copy(item, transform, folder, seed) for item in picked for transform in transforms]
    pool = catalog.subset([i.item_id for i in (*picked, *others)], name=f"{catalog.name}[calibration pool]")
    return CalibrationSet(copies=Catalog(name=f"{catalog.name}[copies]", root=folder, items=tuple(copies)),
                          pool=pool, sources=tuple(i.item_id for i in picked))


def _make_copy(item: CatalogItem, transform: Transform, folder: Path, seed: int) -> CatalogItem:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", item.item_id)
    suffix = item.image_path.suffix if transform.exact else ".jpg"
    path = folder / transform.name / f"{safe}{suffix}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        if transform.exact:
            shutil.copyfile(item.image_path, path)
        else:
            # deterministic per (seed, photo, transformation), so a rerun rebuilds the same copies
            rng = np.random.default_rng([seed, sum(safe.encode()), len(transform.name)])
            image = transform.edit(decode_image(item.image_path), rng).convert("RGB")
            temporary = path.with_suffix(".part.jpg")
            image.save(temporary, format="JPEG", quality=transform.quality)
            temporary.replace(path)
    return CatalogItem(item_id=f"{COPY_SPLIT}/{transform.name}/{item.item_id}", image_path=path, label=item.label,
                       split=COPY_SPLIT, product_id=item.item_id, coarse_label=transform.name)
