"""A user's catalogue as a folder of class sub-folders (torchvision's ImageFolder layout).

    catalogue/
      sneakers/  a.jpg b.png ...
      handbags/  c.jpg ...

Optionally one level of split folders above the classes (``train/``, ``val/``, ``test/``).
"""

from __future__ import annotations

import os
from pathlib import Path

from shelfsight.catalog.images import is_image_name
from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.errors import CatalogError

KNOWN_SPLITS = ("train", "val", "valid", "validation", "test", "query", "gallery")


def load_image_folder(root: str | os.PathLike[str], *, name: str | None = None) -> Catalog:
    """Scan ``root``; class = first folder level (or second, under split folders)."""
    base = Path(root).expanduser().resolve()
    if not base.is_dir():
        raise CatalogError(f"{base}: not a folder. An image-folder catalogue is a folder of class sub-folders.")
    subfolders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        raise CatalogError(
            f"{base}: no class sub-folders found. Put each category's images in its own sub-folder "
            "(catalogue/sneakers/a.jpg), or describe them in a CSV manifest (path,label)."
        )
    has_splits = all(p.name.lower() in KNOWN_SPLITS for p in subfolders)
    items: list[CatalogItem] = []
    ignored: list[tuple[str, str]] = []
    if has_splits:
        for split_dir in subfolders:
            _scan_classes(base, split_dir, split_dir.name.lower(), items, ignored)
    else:
        _scan_classes(base, base, "all", items, ignored)
    for stray in sorted(p for p in base.iterdir() if p.is_file()):
        ignored.append((stray.name, "file at the top level has no class folder"))
    if not items:
        raise CatalogError(
            f"{base}: the class folders hold no image files (looked for .jpg, .png, .webp, ...)."
        )
    return Catalog(
        name=name or base.name, root=base, items=tuple(items), description=f"image folder {base}",
        ignored=tuple(ignored),
    )


def _scan_classes(
    base: Path, parent: Path, split: str, items: list[CatalogItem], ignored: list[tuple[str, str]]
) -> None:
    for class_dir in sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                rel = path.relative_to(base).as_posix()
                if filename.startswith("."):
                    ignored.append((rel, "hidden file"))
                elif not is_image_name(path):
                    ignored.append((rel, f"not an image file extension ({path.suffix or 'none'})"))
                else:
                    items.append(CatalogItem(item_id=rel, image_path=path, label=class_dir.name, split=split))
