"""A user's catalogue as a manifest: one row per image, CSV or Parquet.

Columns: ``path`` (required; relative paths are resolved against ``image_root``, by default the
manifest's folder), ``label`` (required), and optionally ``product_id``, ``split``,
``coarse_label`` and ``id`` (default: the path as written). This is how most teams bring their
data, so every problem names the file, the line and the column.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.errors import CatalogError

REQUIRED = ("path", "label")
OPTIONAL = ("id", "product_id", "split", "coarse_label")
ALIASES = {
    "image": "path", "image_path": "path", "file": "path", "filepath": "path", "filename": "path",
    "category": "label", "class": "label", "class_name": "label",
    "item_id": "id", "sku": "product_id", "product": "product_id",
}


def load_manifest(
    manifest: str | os.PathLike[str], *, image_root: str | os.PathLike[str] | None = None, name: str | None = None
) -> Catalog:
    """Read a CSV or Parquet manifest into a catalogue, validating every row once."""
    path = Path(manifest).expanduser().resolve()
    table = _read_table(path)
    table = table.rename(columns={c: ALIASES.get(c.strip().lower(), c.strip().lower()) for c in table.columns})
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise CatalogError(
            f"{path}: missing required column {missing[0]!r}. Found columns {list(table.columns)}; "
            f"a manifest needs 'path' and 'label' (optional: {', '.join(OPTIONAL)})."
        )
    root = Path(image_root).expanduser().resolve() if image_root is not None else path.parent
    line_offset = 2 if path.suffix.lower() != ".parquet" else 1
    where = "line" if line_offset == 2 else "row"
    items: list[CatalogItem] = []
    first_line: dict[str, int] = {}
    for position, row in enumerate(table.to_dict("records")):
        line = position + line_offset
        raw_path = _text(row.get("path"))
        label = _text(row.get("label"))
        if not raw_path:
            raise CatalogError(f"{path}, {where} {line}: empty 'path'. Every row needs an image path.")
        if not label:
            raise CatalogError(f"{path}, {where} {line}: empty 'label' for {raw_path!r}. Every row needs a label.")
        item_id = _text(row.get("id")) or raw_path
        if item_id in first_line:
            raise CatalogError(
                f"{path}, {where} {line}: duplicate id {item_id!r} (first seen on {where} {first_line[item_id]}). "
                "Ids must be unique; add an 'id' column if two rows share a path."
            )
        first_line[item_id] = line
        image_path = Path(raw_path).expanduser()
        if not image_path.is_absolute():
            image_path = root / image_path
        items.append(
            CatalogItem(
                item_id=item_id, image_path=image_path, label=label, split=_text(row.get("split")) or "all",
                product_id=_text(row.get("product_id")), coarse_label=_text(row.get("coarse_label")),
            )
        )
    if not items:
        raise CatalogError(f"{path}: the manifest has a header but no rows.")
    if not any(item.image_path.exists() for item in items[:1000]):
        raise CatalogError(
            f"{path}: none of the first {min(len(items), 1000)} image paths exist (first: {items[0].image_path}). "
            f"Relative paths are resolved against {root}; pass --image-root to point elsewhere."
        )
    return Catalog(name=name or path.stem, root=root, items=tuple(items), description=f"manifest {path}")


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CatalogError(f"{path}: manifest not found.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise CatalogError(f"{path}: cannot parse the manifest ({exc}).") from None
    raise CatalogError(f"{path}: unsupported manifest type {suffix!r}; use .csv, .tsv or .parquet.")


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and value != value):  # NaN from Parquet
        return None
    text = str(value).strip()
    return text or None
