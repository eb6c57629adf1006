"""Hugging Face ``datasets`` as a source: ``hf:<folder saved with save_to_disk, or hub name>[?option=value&...]``.

Options, all optional, joined with ``&``:

* ``image``, ``label``, ``product``, ``coarse``, ``id``: column names. Defaults: the first
  ``Image`` column; the first ``ClassLabel`` column, else a column named ``label``.
* ``config``: the hub configuration; ``split``: comma-separated splits to read (default all).
* ``protocol``: a registered dataset whose retrieval protocols and classification splits apply,
  e.g. ``hf:ethz/food101?protocol=food-101`` for a hub copy of Food-101 (its protocols read the
  fields they name, so map the columns they need).

Split names carry over, except ``validation`` which becomes ``val`` (the name the protocols use);
a single saved ``Dataset`` (no ``DatasetDict``) is split ``all``. Every later stage reads image
files, so the images are written once, in their original encoding, under
``CACHE/datasets/hf/<dataset fingerprint>-<column>/<split>/``: the fingerprint changes whenever
the data does, so a changed dataset never reads stale files.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from PIL import Image as PILImage
from rich.console import Console
from rich.progress import Progress

from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.errors import CatalogError, DatasetNotFoundError
from shelfsight.files import replace_folder

if TYPE_CHECKING:
    from datasets import Dataset

PREFIX = "hf:"
OPTIONS = ("image", "label", "product", "coarse", "id", "config", "split", "protocol")
SPLIT_NAMES = {"validation": "val"}


@dataclass(frozen=True)
class HFSource:
    """A parsed ``hf:`` source string."""

    ref: str
    image: str | None = None
    label: str | None = None
    product: str | None = None
    coarse: str | None = None
    id: str | None = None
    config: str | None = None
    split: tuple[str, ...] = ()
    protocol: str | None = None


def parse_source(text: str) -> HFSource:
    """``hf:REF?key=value&...`` -> ``HFSource``; an unknown option is an error that lists the known ones."""
    body = text.removeprefix(PREFIX)
    ref, _, query = body.partition("?")
    if not ref:
        raise CatalogError(f"{text!r}: name a dataset after 'hf:' (a folder saved with save_to_disk, or a hub name).")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False))
    unknown = [key for key in options if key not in OPTIONS]
    if unknown:
        raise CatalogError(f"{text!r}: unknown option {unknown[0]!r}; options are {', '.join(OPTIONS)}.")
    given = {key: value for key, value in options.items() if value}
    return HFSource(ref=ref, image=given.get("image"), label=given.get("label"), product=given.get("product"),
                    coarse=given.get("coarse"), id=given.get("id"), config=given.get("config"),
                    split=tuple(s for s in given.get("split", "").split(",") if s), protocol=given.get("protocol"))


def load_hf(text: str, cache_root: Path, *, splits: tuple[str, ...] | None = None) -> Catalog:
    """The catalogue of a saved or hub dataset, images materialised once as files in the cache."""
    source = parse_source(text)
    parts = _open(source)
    named = {SPLIT_NAMES.get(s, s): s for s in parts if not source.split or s in source.split}
    unknown = [s for s in (*source.split, *(splits or ())) if s not in named and s not in parts]
    if unknown:
        raise CatalogError(f"{text!r}: no split {unknown[0]!r}; the dataset has splits {', '.join(parts)} "
                           "('validation' is read as 'val').")
    chosen = [original for name, original in named.items() if not splits or name in splits or original in splits]
    if not chosen:
        raise CatalogError(f"{text!r}: the dataset has no splits to read.")
    items: list[CatalogItem] = []
    root = cache_root / "datasets" / "hf"
    for split in chosen:
        items.extend(_split_items(text, source, parts[split], SPLIT_NAMES.get(split, split), root))
    return Catalog(name=text, root=root, items=tuple(items), description=f"Hugging Face dataset {source.ref}")


def _open(source: HFSource) -> dict[str, Dataset]:
    """Split name -> Dataset, from a saved folder or from the hub."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - pinned in pyproject
        raise CatalogError("hf: sources need the 'datasets' package: pip install datasets") from None
    folder = Path(source.ref).expanduser()
    if folder.exists():
        try:
            loaded = datasets.load_from_disk(str(folder))
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise CatalogError(f"{folder}: not a dataset saved with save_to_disk ({exc}).") from None
    else:
        try:
            loaded = datasets.load_dataset(source.ref, source.config)
        except Exception as exc:  # noqa: BLE001 - the hub raises many types; all mean "cannot get it"
            raise DatasetNotFoundError(
                f"hf:{source.ref}: not a local folder, and the Hugging Face hub could not provide it ({exc}). "
                "Offline, save the dataset with save_to_disk on a connected machine and point hf: at that folder."
            ) from None
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded.items())
    if isinstance(loaded, datasets.Dataset):
        return {"all": loaded}
    raise CatalogError(f"hf:{source.ref}: an iterable (streaming) dataset cannot be a catalogue; load it as a map "
                       "dataset.")


def _split_items(text: str, source: HFSource, part: Dataset, split: str, root: Path) -> list[CatalogItem]:
    from datasets import ClassLabel, Image

    features = part.features
    image_column = source.image or next((c for c, f in features.items() if isinstance(f, Image)), None)
    label_column = source.label or next((c for c, f in features.items() if isinstance(f, ClassLabel)), None) or (
        "label" if "label" in features else None)
    columns = {"image": image_column, "label": label_column, "product": source.product, "coarse": source.coarse,
               "id": source.id}
    for role, column in columns.items():
        if column is not None and column not in features:
            raise CatalogError(f"{text!r}, split {split!r}: no column {column!r} ({role}); columns are "
                               f"{list(features)}.")
    if image_column is None or label_column is None:
        role = "image" if image_column is None else "label"
        raise CatalogError(f"{text!r}, split {split!r}: no {role} column found among {list(features)}; "
                           f"name it with ?{role}=COLUMN.")
    files = _materialise(part, image_column, root, split)
    values = {role: _as_text(part, column) for role, column in columns.items() if column and role != "image"}
    items = []
    for row, path in enumerate(files):
        label = values["label"][row]
        if label is None:
            raise CatalogError(f"{text!r}, split {split!r}, row {row}: empty label in column {label_column!r}.")
        item_id = values["id"][row] if "id" in values else None
        items.append(CatalogItem(
            item_id=item_id or f"{split}/{row}", image_path=path, label=label, split=split,
            product_id=values["product"][row] if "product" in values else None,
            coarse_label=values["coarse"][row] if "coarse" in values else None,
        ))
    return items


def _as_text(part: Dataset, column: str) -> list[str | None]:
    """A column as strings; class labels by their names."""
    from datasets import ClassLabel

    feature = part.features[column]
    raw = list(part[column])  # respects an indices mapping (select, filter), unlike part.data
    if isinstance(feature, ClassLabel):
        return [feature.int2str(v) if v is not None and v >= 0 else None for v in raw]
    return [str(v) if v is not None and str(v).strip() else None for v in raw]


def _materialise(part: Dataset, column: str, root: Path, split: str) -> list[Path]:
    """The image files of ``part``, written once (original bytes, named by row) under a fingerprinted folder."""
    fingerprint = getattr(part, "_fingerprint", None) or _content_digest(part)
    target = root / f"{fingerprint}-{column}" / split
    marker = target / ".complete"
    if marker.is_file():
        return [target / name for name in marker.read_text(encoding="utf-8").splitlines()]
    from datasets import Image

    raw = part.select_columns([column]).cast_column(column, Image(decode=False))

    def write_images(staging: Path) -> list[str]:
        names: list[str] = []
        console = Console(stderr=True)
        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task(f"writing {split} images", total=len(raw))
            for batch in raw.iter(batch_size=512):
                for cell in batch[column]:
                    names.append(_write_image(cell, staging, len(names)))
                progress.advance(task, len(batch[column]))
        (staging / ".complete").write_text("\n".join(names) + "\n", encoding="utf-8")
        return names

    return [target / name for name in replace_folder(target, write_images)]


def _write_image(cell: dict[str, Any] | None, folder: Path, row: int) -> str:
    """Write one image cell; return its file name (or the absolute path of a local file it points to).

    A missing image gets a name that does not exist, so extraction skips it and says why."""
    data = cell.get("bytes") if cell else None
    source = cell.get("path") if cell else None
    if data is None:
        if source and Path(source).is_absolute() and Path(source).is_file():
            return str(Path(source))
        return f"{row:07d}.missing"
    name = f"{row:07d}{_extension(data, source)}"
    (folder / name).write_bytes(data)
    return name


def _extension(data: bytes, source: str | None) -> str:
    suffix = Path(source).suffix.lower() if source else ""
    if suffix:
        return suffix
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            return f".{(image.format or 'img').lower()}".replace(".jpeg", ".jpg")
    except (OSError, ValueError):
        return ".img"  # not decodable: extraction records the reason


def _content_digest(part: Dataset) -> str:
    """A digest of the dataset's Arrow files (sizes and times), when it carries no fingerprint."""
    import hashlib

    digest = hashlib.sha256()
    for cache_file in part.cache_files:
        stat = os.stat(cache_file["filename"])
        digest.update(f"{cache_file['filename']}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def declared_protocol(dataset: str) -> str | None:
    """The registered dataset named by ``protocol=`` in an ``hf:`` source, else None."""
    return parse_source(dataset).protocol if dataset.startswith(PREFIX) else None


def is_hf_source(text: str) -> bool:
    return text.startswith(PREFIX)

