"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): 70,000 greyscale 28x28 Zalando article images.

Read from the IDX files (``*-ubyte`` or ``*-ubyte.gz``) found, in order, under the data root
(``fashion-mnist/`` or torchvision's ``FashionMNIST/raw/``), in the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), or downloaded through
torchvision when ``download=True``. The arrays are written once as PNG files in the cache so
every later stage (decoding, serving thumbnails, report grids) sees ordinary image files.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.errors import CatalogError, DatasetNotFoundError
from shelfsight.files import replace_folder
from shelfsight.paths import describe_data_dir
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol

NAME = "fashion-mnist"
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
EXPECTED_COUNTS = {"train": 60_000, "test": 10_000}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
HOW_TO_GET = (
    "Install the Debian package (apt-get install dataset-fashion-mnist), put the four *-ubyte.gz files in "
    "DATA_ROOT/fashion-mnist/, or pass download=True (CLI: --download) when online."
)


def find_raw_dir(data_dir: Path | None, explicit: str | None = None) -> Path | None:
    candidates = []
    if data_dir is not None:
        candidates += [data_dir / NAME, data_dir / "FashionMNIST" / "raw", data_dir]
    candidates.append(DEBIAN_DIR)
    for candidate in candidates:
        if _idx_path(candidate, FILES["test"][0]) is not None:
            return candidate
    return None


def load_fashion_mnist(
    data_dir: Path | None, cache_root: Path, *, splits: tuple[str, ...] | None = None,
    download: bool = False, explicit: str | None = None,
) -> Catalog:
    """Items of the requested splits (default both), as PNG files materialised in the cache."""
    raw_dir = find_raw_dir(data_dir, explicit)
    if raw_dir is None and download:
        raw_dir = _download(cache_root / "downloads")
    if raw_dir is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found (data root: {describe_data_dir(explicit)}; also looked in {DEBIAN_DIR}). "
            + HOW_TO_GET
        )
    wanted = splits or ("train", "test")
    unknown = [s for s in wanted if s not in FILES]
    if unknown:
        raise CatalogError(f"Fashion-MNIST has splits 'train' and 'test', not {unknown[0]!r}")
    items: list[CatalogItem] = []
    png_root = cache_root / "datasets" / NAME
    for split in ("train", "test"):
        if split not in wanted:
            continue
        images_file, labels_file = (_require(raw_dir, f) for f in FILES[split])
        split_dir = _materialise(images_file, labels_file, png_root, split)
        labels = read_idx(labels_file)
        for index, label in enumerate(labels):
            item_id = f"{split}/{index:05d}"
            items.append(CatalogItem(item_id=item_id, image_path=split_dir / f"{index:05d}.png",
                                     label=CLASSES[int(label)], split=split))
    return Catalog(name=NAME, root=png_root, items=tuple(items),
                   description=f"Fashion-MNIST from {raw_dir}: 10 article categories, 28x28 greyscale")


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (the MNIST container: magic, dims, big-endian payload), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise CatalogError(f"{path}: not an unsigned-byte IDX file (bad magic number); re-download it.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise CatalogError(f"{path}: truncated IDX file ({payload.size} bytes for shape {shape}); re-download it.")
    return payload.reshape(shape)


def _idx_path(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _require(folder: Path, stem: str) -> Path:
    found = _idx_path(folder, stem)
    if found is None:
        raise DatasetNotFoundError(f"{folder}: {stem}(.gz) is missing; the download is incomplete. " + HOW_TO_GET)
    return found


def _materialise(images_file: Path, labels_file: Path, png_root: Path, split: str) -> Path:
    """Write the split's images as PNGs once, under a folder named by the source file's digest."""
    digest = hashlib.sha256(images_file.read_bytes()).hexdigest()[:16]
    target = png_root / digest / split
    if (target / ".complete").is_file():
        return target
    images = read_idx(images_file)
    labels = read_idx(labels_file)
    if len(images) != len(labels):
        raise CatalogError(f"{images_file} has {len(images)} images but {labels_file} has {len(labels)} labels.")

    def write_pngs(staging: Path) -> None:
        for index, pixels in enumerate(images):
            Image.fromarray(pixels).save(staging / f"{index:05d}.png", compress_level=1)
        (staging / ".complete").write_text(f"{len(images)}\n")

    replace_folder(target, write_pngs)
    return target


def _download(root: Path) -> Path:
    """Fetch the official files through torchvision (online use only; never in tests)."""
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"


PROTOCOLS = (
    RetrievalProtocol("category", ("test",), ("train",), "label",
                      "test images query train images; relevant = same category (10)"),
)
"""The retrieval protocols of the literature on this dataset, the main one first."""
CLASSIFICATION = ClassificationSplits(train=("train",), test=("test",))
