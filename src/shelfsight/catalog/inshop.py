"""DeepFashion In-shop Clothes Retrieval (Liu, Luo, Qiu, Wang, Tang, CVPR 2016): shop photos of clothes.

``Eval/list_eval_partition.txt`` says line 1 the number of images, line 2 the header
``image_name item_id evaluation_status``, then one whitespace-separated row per image
(``img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train``). The status is ``train``
(25,882 images of 3,997 items), ``query`` (14,218) or ``gallery`` (12,612); query and gallery
share the other 3,985 items. Images come from ``Img/img.zip``, unpacked at the root or in ``Img/``.

Items: ``product_id`` = ``item_id`` (retrieval: query against gallery, relevant = same item);
``label`` = the category from the path (``WOMEN/Dresses``, 23 of them; classification);
``coarse_label`` = ``MEN`` or ``WOMEN``.
"""

from __future__ import annotations

from pathlib import Path

from shelfsight.catalog.public import (
    DatasetEntry,
    first_root,
    malformed,
    not_found,
    numbered_lines,
    wanted_splits,
)
from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.errors import CatalogError
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol, TrainingItems

NAME = "deepfashion-inshop"
TITLE = "DeepFashion In-shop Clothes Retrieval"
SPLITS = ("train", "query", "gallery")
PARTITION = "list_eval_partition.txt"
HEADER = ("image_name", "item_id", "evaluation_status")
FOLDERS = ("deepfashion-inshop", "inshop", "In-shop Clothes Retrieval Benchmark", "in-shop", "InShop", "")
HOMEPAGE = "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
HOW_TO_GET = (
    f"Request access and download from {HOMEPAGE}: Eval/list_eval_partition.txt and Img/img.zip; put them in "
    "DATA_ROOT/deepfashion-inshop/ (Eval/list_eval_partition.txt, and img/ unzipped there or in Img/)."
)
EXPECTED_COUNTS = {"train": 25_882, "query": 14_218, "gallery": 12_612}


def find_root(data_dir: Path | None) -> Path | None:
    return first_root(data_dir, FOLDERS, lambda p: _partition_file(p) is not None)


def load(data_dir: Path | None, *, splits: tuple[str, ...] | None = None, explicit: str | None = None) -> Catalog:
    """Items of the requested splits (default all three), from the evaluation partition file."""
    root = find_root(data_dir)
    partition = _partition_file(root) if root is not None else None
    if root is None or partition is None:
        raise not_found(TITLE, data_dir, explicit, FOLDERS, HOW_TO_GET)
    wanted = wanted_splits(TITLE, splits, SPLITS)
    base = root / "Img" if not (root / "img").is_dir() and (root / "Img" / "img").is_dir() else root
    items = [item for item in _read_partition(partition, base) if item.split in wanted]
    return Catalog(name=NAME, root=base, items=tuple(items), description=f"{TITLE}: 7,982 clothing items")


def _partition_file(root: Path) -> Path | None:
    """The partition file, recognised by its header line (CelebA ships a file of the same name)."""
    for candidate in (root / "Eval" / PARTITION, root / PARTITION):
        if candidate.is_file():
            with open(candidate, encoding="utf-8", errors="replace") as handle:
                head = [handle.readline() for _ in range(2)]
            if head[1].split()[:1] == [HEADER[0]]:
                return candidate
    return None


def _read_partition(path: Path, base: Path) -> list[CatalogItem]:
    lines = numbered_lines(path)
    count_line = next(lines, (1, ""))
    if not count_line[1].strip().isdigit():
        raise malformed(path, count_line[0], "the number of images on the first line", count_line[1])
    header = next(lines, (2, ""))
    if tuple(header[1].split()) != HEADER:
        raise malformed(path, header[0], f"the header {' '.join(HEADER)!r}", header[1])
    items = []
    for number, text in lines:
        fields = text.split()
        if len(fields) != 3 or fields[2] not in SPLITS or fields[0].count("/") < 3:
            raise malformed(path, number, "'img/<MEN|WOMEN>/<category>/<item_id>/<file> <item_id> "
                            "<train|query|gallery>'", text)
        image_name, item_id, status = fields
        gender, category = image_name.split("/")[1:3]
        items.append(CatalogItem(item_id=image_name, image_path=base / image_name, label=f"{gender}/{category}",
                                 split=status, product_id=item_id, coarse_label=gender))
    declared = int(count_line[1])
    if declared != len(items):
        raise CatalogError(f"{path}: line 1 declares {declared} images but the file lists {len(items)}; "
                           "the file is truncated or edited. Re-download it.")
    return items


PROTOCOLS = (
    RetrievalProtocol("item", ("query",), ("gallery",), "product_id",
                      "query images search the gallery; relevant = same clothing item (3,985 items)",
                      train=TrainingItems(("train",))),
)
"""The retrieval protocols of the literature on this dataset, the main one first."""
CLASSIFICATION = ClassificationSplits(train=("train",), test=("query", "gallery"))  # 23 categories


ENTRY = DatasetEntry(
    protocols=PROTOCOLS, classification=CLASSIFICATION,
    name=NAME, description="DeepFashion In-shop: 52,712 shop photos of 7,982 clothing items in 23 categories",
    splits=SPLITS, expected_counts=EXPECTED_COUNTS, homepage=HOMEPAGE, how_to_get=HOW_TO_GET,
    licence="non-commercial research only (DeepFashion agreement; images belong to their owners)",
    citation="Liu, Luo, Qiu, Wang, Tang. DeepFashion: Powering Robust Clothes Recognition and Retrieval with Rich "
             "Annotations. CVPR 2016.",
    locate=find_root, load=lambda data, cache, splits, download, explicit: load(data, splits=splits, explicit=explicit),
)
