"""A user's catalogue as a manifest: one row per image, CSV or Parquet.

Columns: ``path`` (required; relative paths are resolved against ``image_root``, by default the
manifest's folder), ``label`` (required), and optionally ``product_id``, ``split``, ``coarse_label`` and
``id`` (default: the image's path relative to the image root, so that an id never carries an absolute file
path to the service's clients). A ``group`` column (or the column named by ``group=``) says who shot each
photo; every other column is kept as the item's metadata, which the bench ignores and the service returns.
This is how most teams bring their data, so every problem names the file, the line and the column.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
GROUP_COLUMN = "group"
"""The column read as the photo's group when ``group=`` names none."""
NO_GROUP = "none"
"""``group="none"`` (``--group none``): no group column, not even one called ``group``."""
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".JPG", ".JPEG", ".PNG")
"""Extensions tried when most paths do not exist as written (a column of bare file names)."""
PROBE = 1000
"""Rows whose files are looked for while loading (a full check is ``shelfsight datasets check``)."""


@dataclass(frozen=True)
class Columns:
    """What each column of a manifest is: a known field, the group, or metadata (kept, in column order)."""

    fields: dict[str, str]
    """Column name as written -> the field it fills (``path``, ``label``, ``id``, ``product_id``...)."""
    group: str | None
    """The column (as written) whose values fill ``CatalogItem.group``."""
    metadata: tuple[str, ...]
    """Every other column, as written; the group's is one of them when it is not a known field."""

    @property
    def column_of(self) -> dict[str, str]:
        return {field: column for column, field in self.fields.items()}


def manifest_columns(columns: Sequence[str], *, group: str | None = None, where: str = "manifest") -> Columns:
    """Sort a manifest's columns (case and surrounding spaces ignored, aliases accepted); ``group`` names the
    group column (None: the one called ``group`` if any; ``"none"``: no group)."""
    fields: dict[str, str] = {}
    for column in columns:
        key = str(column).strip().lower()
        name = ALIASES.get(key, key)
        if name in REQUIRED + OPTIONAL:
            if name in fields.values():
                other = next(c for c, f in fields.items() if f == name)
                raise CatalogError(f"{where}: columns {other!r} and {column!r} both give {name!r}; keep one or "
                                   "rename the other.")
            fields[str(column)] = name
    missing = [c for c in REQUIRED if c not in fields.values()]
    if missing:
        raise CatalogError(
            f"{where}: missing required column {missing[0]!r}. Found columns {list(columns)}; a manifest needs "
            f"'path' and 'label' (optional: {', '.join(OPTIONAL)}; aliases: image, category, sku...).")
    chosen = _group_column(columns, fields, group, where)
    return Columns(fields=fields, group=chosen, metadata=tuple(str(c) for c in columns if str(c) not in fields))


def _group_column(columns: Sequence[str], fields: dict[str, str], group: str | None, where: str) -> str | None:
    if group is not None and group.strip().lower() == NO_GROUP:
        return None
    wanted = (group or GROUP_COLUMN).strip().lower()
    found = next((str(c) for c in columns if str(c).strip().lower() == wanted), None)
    if found is None:
        if group is None:
            return None
        raise CatalogError(f"{where}: no column {group!r} to take the groups from; its columns are {list(columns)} "
                           f"(--group none for no group).")
    if fields.get(found) in REQUIRED:
        raise CatalogError(f"{where}: the group column cannot be {found!r} (the image {fields[found]}); name the "
                           "column that says who shot each photo (a seller, a listing, a shoot).")
    return found


def load_manifest(
    manifest: str | os.PathLike[str], *, image_root: str | os.PathLike[str] | None = None, name: str | None = None,
    group: str | None = None,
) -> Catalog:
    """Read a CSV or Parquet manifest into a catalogue, validating every row once; ``group`` names the group
    column (see :func:`manifest_columns`)."""
    path = Path(manifest).expanduser().resolve()
    table = _read_table(path)
    columns = manifest_columns(list(table.columns), group=group, where=str(path))
    root = Path(image_root).expanduser().resolve() if image_root is not None else path.parent
    line_offset = 2 if path.suffix.lower() != ".parquet" else 1
    where = "line" if line_offset == 2 else "row"
    rows = [_read_row(row, columns, root, f"{path}, {where} {position + line_offset}")
            for position, row in enumerate(table.to_dict("records"))]
    if not rows:
        raise CatalogError(f"{path}: the manifest has a header but no rows.")
    ids = _default_ids([item.image_path for item in rows], root)
    items = [item if item.item_id else replace(item, item_id=default) for item, default in zip(rows, ids, strict=True)]
    _refuse_duplicate_ids(items, path, where, line_offset)
    _check_found(items, root, path, columns.column_of["path"], given_root=image_root is not None)
    return Catalog(name=name or path.stem, root=root, items=tuple(items), description=f"manifest {path}")


def _read_row(row: dict[str, object], columns: Columns, root: Path, where: str) -> CatalogItem:
    """One row as an item; its id is empty when the row has none (the caller fills the default)."""
    value = {field: _text(row.get(column)) for column, field in columns.fields.items()}
    raw_path, label = value.get("path"), value.get("label")
    if not raw_path:
        raise CatalogError(f"{where}: empty 'path'. Every row needs an image path.")
    if not label:
        raise CatalogError(f"{where}: empty 'label' for {raw_path!r}. Every row needs a label.")
    return CatalogItem(
        item_id=value.get("id") or "", image_path=Path(os.path.normpath(root / Path(raw_path).expanduser())),
        label=label, split=value.get("split") or "all",
        product_id=value.get("product_id"), coarse_label=value.get("coarse_label"),
        group=_text(row.get(columns.group)) if columns.group else None,
        metadata=tuple((column, _text(row.get(column)) or "") for column in columns.metadata),
    )


def _default_ids(images: list[Path], root: Path) -> list[str]:
    """Each image's path relative to the image root (posix); images outside it, relative to the folder they
    share, so that no id is absolute or climbs out with ``..``."""
    inside = [_relative_to(image, root) for image in images]
    outside = [image.parent for image, relative in zip(images, inside, strict=True) if relative is None]
    base = Path(os.path.commonpath(outside)) if outside else root
    return [relative if relative is not None else Path(os.path.relpath(image, base)).as_posix()
            for image, relative in zip(images, inside, strict=True)]


def _relative_to(image: Path, root: Path) -> str | None:
    try:
        return image.relative_to(root).as_posix()
    except ValueError:
        return None


def _refuse_duplicate_ids(items: Sequence[CatalogItem], path: Path, where: str, line_offset: int) -> None:
    first_line: dict[str, int] = {}
    for position, item in enumerate(items):
        line = position + line_offset
        if item.item_id in first_line:
            raise CatalogError(
                f"{path}, {where} {line}: duplicate id {item.item_id!r} (first seen on {where} "
                f"{first_line[item.item_id]}). Ids must be unique; add an 'id' column if two rows share a path.")
        first_line[item.item_id] = line


def _check_found(items: Sequence[CatalogItem], root: Path, path: Path, column: str, *, given_root: bool) -> None:
    """Refuse a manifest whose first rows' files mostly do not exist, naming the fix: the extension the files
    have and the column lacks, or the image root."""
    probe = items[:PROBE]
    missing = [item.image_path for item in probe if not item.image_path.exists()]
    if len(missing) * 2 <= len(probe):
        return
    for extension in IMAGE_EXTENSIONS:
        found = sum(1 for image in missing if image.with_name(image.name + extension).is_file())
        if found * 2 > len(missing):
            example = missing[0]
            raise CatalogError(
                f"{path}: {len(missing):,} of the first {len(probe):,} image paths do not exist, but {found:,} of "
                f"them do with {extension!r} added (e.g. {example} -> {example.name}{extension}): the {column!r} "
                f"column lacks the files' extension. Add it, e.g. python -c \"import pandas as pd; "
                f"t = pd.read_csv('{path}', dtype=str, keep_default_na=False); t['{column}'] += '{extension}'; "
                f"t.to_csv('{path.with_name(path.stem + '-fixed.csv')}', index=False)\", and use the fixed file.")
    if len(missing) == len(probe):
        raise CatalogError(
            f"{path}: none of the first {len(probe):,} image paths exist (first: {probe[0].image_path}). Relative "
            f"paths are resolved against {root} ({'the image root given' if given_root else 'the manifest folder'}); "
            "pass --image-root DIR to point elsewhere (in a bench config: image_root: DIR).")


def read_columns(manifest: str | os.PathLike[str], *, group: str | None = None) -> Columns:
    """How :func:`load_manifest` reads this manifest's columns (for a report of them)."""
    path = Path(manifest).expanduser().resolve()
    return manifest_columns(list(_read_table(path).columns), group=group, where=str(path))


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
