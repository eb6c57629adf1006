"""Verify a download: images per split against the official release, missing and unreadable files.

Loading a dataset reads only its metadata; this reads every image. JPEGs are decoded at a reduced
scale (libjpeg still consumes every byte, so a truncated file is caught) on a thread pool: PIL
releases the GIL while it decodes.

Whether a protocol's queries have duplicates in its gallery (leakage that inflates retrieval scores) is measured
above the catalogue, by ``shelfsight.duplicates.check.with_leakage`` on the catalogue this check loaded (byte-identical
files always, near-duplicates too with a model's embeddings); the report says what it found.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rich.console import Console

from shelfsight.catalog.images import decode_image
from shelfsight.catalog.types import Catalog, CatalogItem
from shelfsight.errors import ImageDecodeError, ShelfsightError
from shelfsight.progress import progress_bar

DRAFT_SIZE = 64
"""Decode JPEGs at this size or a little more: enough to prove the file whole, several times faster."""
PROBE_BATCH = 2048
DOUBTFUL_LABELS = frozenset({
    "unknown", "unk", "skip", "skipped", "not sure", "unsure", "other", "others", "n/a", "na", "none", "misc",
    "miscellaneous", "tbd", "todo", "unlabeled", "unlabelled", "no label", "null", "nan", "undefined",
    "dont know", "don't know", "idk", "ignore", "junk",
})
"""Labels that usually mean "no answer" (an annotator's skip button, a catch-all) rather than a class; compared
case-insensitively, with ``_``/``-`` as spaces; any label made only of ``?`` too."""


@dataclass(frozen=True)
class SplitCount:
    """One split of a download: its images, distinct labels and products, and the official count."""

    split: str
    images: int
    labels: int
    products: int
    expected: int | None = None

    @property
    def matches(self) -> bool | None:
        return None if self.expected is None else self.images == self.expected


@dataclass(frozen=True)
class ProtocolSize:
    name: str
    queries: int
    gallery: int
    leave_one_out: bool


class LeakageFinding(Protocol):
    """One protocol's queries with a duplicate in its gallery (``duplicates.ProtocolLeakage``): declared here, found
    above the catalogue."""

    @property
    def count(self) -> int: ...

    def warning(self) -> str:
        """The line ``datasets check`` prints when ``count`` is not zero."""
        ...


@dataclass(frozen=True)
class CheckReport:
    """What ``check_dataset`` found; ``ok`` is False when anything would distort a benchmark."""

    name: str
    root: Path | None
    splits: tuple[SplitCount, ...] = ()
    protocols: tuple[ProtocolSize, ...] = ()
    errors: tuple[str, ...] = ()
    """Metadata problems: a missing listing, a malformed line, the dataset absent."""
    missing: tuple[str, ...] = ()
    unreadable: tuple[tuple[str, str], ...] = ()
    counts_verified: bool = True
    decoded: bool = True
    ignored: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    leakage: tuple[LeakageFinding, ...] = ()
    """Per protocol: queries with an exact (or, with a model, near) duplicate in the gallery; empty until
    ``duplicates.check.with_leakage`` measures it."""
    doubtful: tuple[tuple[str, int], ...] = ()
    """Labels that look like placeholders ("Not sure", "Skip") with their photo counts: flagged, not dropped."""
    notes: tuple[str, ...] = ()
    """How a manifest's columns were read: the group column, the columns kept as metadata."""
    catalog: Catalog | None = field(default=None, compare=False, repr=False)
    """What was loaded (every split), for the checks made above the catalogue; None when nothing loaded."""

    @property
    def count_mismatches(self) -> tuple[SplitCount, ...]:
        return tuple(s for s in self.splits if s.matches is False)

    @property
    def ok(self) -> bool:
        counts_fail = self.counts_verified and bool(self.count_mismatches)
        return not (self.errors or self.missing or self.unreadable or counts_fail)

    def problems(self, show: int = 5) -> list[str]:
        """One line per kind of problem, with the first few files."""
        lines = list(self.errors)
        if self.counts_verified:
            lines += [_mismatch(s) for s in self.count_mismatches]
        if self.missing:
            lines.append(f"{len(self.missing)} image file(s) missing, e.g. {', '.join(self.missing[:show])}")
        if self.unreadable:
            shown = "; ".join(f"{path} ({reason})" for path, reason in self.unreadable[:show])
            lines.append(f"{len(self.unreadable)} image file(s) unreadable, e.g. {shown}")
        return lines

    def warnings(self) -> list[str]:
        notes = []
        if not self.counts_verified:
            notes += [_mismatch(s) + " (the official counts of this dataset are not confirmed; a warning only)"
                      for s in self.count_mismatches]
        if not self.decoded:
            notes.append("images were not decoded (--no-decode): only their presence was checked")
        notes += [found.warning() for found in self.leakage if found.count]
        if self.doubtful:
            notes.append(doubtful_note(self.doubtful))
        return notes


def doubtful_labels(catalog: Catalog) -> tuple[tuple[str, int], ...]:
    """(label, photos) for each label that looks like a placeholder (:data:`DOUBTFUL_LABELS`), most photos first."""
    counts: dict[str, int] = {}
    for item in catalog:
        key = re.sub(r"[\s_-]+", " ", item.label.strip().lower()).strip(" .!")
        if key in DOUBTFUL_LABELS or (key and set(key) <= {"?", " "}):
            counts[item.label] = counts.get(item.label, 0) + 1
    return tuple(sorted(counts.items(), key=lambda pair: (-pair[1], pair[0])))


def doubtful_note(found: Sequence[tuple[str, int]]) -> str:
    """One line: the placeholder-like labels, their counts, and how to leave them out."""
    listed = ", ".join(f"{label!r} ({count:,})" for label, count in found)
    names = ", ".join(repr(label) for label, _ in found)
    return (f"{sum(c for _, c in found):,} photo(s) have labels that look like placeholders, taken as classes: "
            f"{listed}. If they are not classes, leave them out: drop their rows from the manifest (e.g. pandas "
            f"t[~t['label'].isin([{names}])]) or move their folders away")


def _mismatch(split: SplitCount) -> str:
    return f"split {split.split!r} has {split.images:,} images, the official release {split.expected:,}"


def check_dataset(
    source: str, *, data_dir: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None,
    decode: bool = True, workers: int | None = None, expected: Mapping[str, int] | None = None,
    progress: bool = False, image_root: str | os.PathLike[str] | None = None, group: str | None = None,
) -> CheckReport:
    """Check a registered dataset (or any source ``load_catalog`` reads) split by split, then every file (the
    leakage between a protocol's queries and gallery is ``duplicates.check.with_leakage``'s, on this report).

    ``expected`` overrides the official counts (a deliberately partial copy); ``image_root`` and ``group`` are
    a manifest's (see :func:`shelfsight.catalog.load_catalog`)."""
    from shelfsight.catalog import DATASETS, load_catalog

    entry = DATASETS.get(source)
    wanted = expected if expected is not None else (entry.expected_counts if entry else {})
    errors: list[str] = []
    parts: list[Catalog] = []
    for split in entry.splits if entry else (None,):
        try:
            parts.append(load_catalog(source, data_dir=data_dir, cache_dir=cache_dir,
                                      splits=(split,) if split else None, image_root=image_root, group=group))
        except ShelfsightError as exc:
            if str(exc) not in errors:
                errors.append(str(exc))
    items = tuple(item for part in parts for item in part)
    catalog = Catalog(name=source, root=parts[0].root, items=items) if parts else None
    counts = tuple(_count(split, [i for i in items if i.split == split], wanted.get(split))
                   for split in _split_order(entry.splits if entry else (), items)) if parts else ()
    failures = _probe_files(items, decode=decode, workers=workers, progress=progress)
    return CheckReport(
        name=source, root=catalog.root if catalog else None, splits=counts,
        protocols=_protocol_sizes(source, catalog) if catalog and not errors else (), errors=tuple(errors),
        missing=tuple(path for path, reason in failures if reason == "file not found"),
        unreadable=tuple((path, reason) for path, reason in failures if reason != "file not found"),
        counts_verified=entry.counts_verified if entry and expected is None else True, decoded=decode,
        ignored=tuple(pair for part in parts for pair in part.ignored),
        doubtful=doubtful_labels(catalog) if catalog else (),
        notes=column_notes(source, catalog, group) if catalog else (), catalog=catalog,
    )


def column_notes(source: str | os.PathLike[str], catalog: Catalog, group: str | None) -> tuple[str, ...]:
    """For a manifest: which column gave the groups (and how many), which are kept as metadata."""
    from shelfsight.catalog.manifest import read_columns

    if not Path(source).expanduser().is_file():
        return ()
    columns = read_columns(source, group=group)
    notes = []
    if columns.group is not None:
        groups = len({item.group for item in catalog if item.group is not None})
        notes.append(f"groups: column {columns.group!r}, {groups:,} distinct (a split keeps each group on one side)")
    if columns.metadata:
        notes.append(f"kept as metadata (ignored by the bench, returned by the service): {', '.join(columns.metadata)}")
    return tuple(notes)


def _split_order(declared: Sequence[str], items: Sequence[CatalogItem]) -> list[str]:
    return list(dict.fromkeys([*declared, *(i.split for i in items)]))


def _count(split: str, items: Sequence[CatalogItem], expected: int | None) -> SplitCount:
    return SplitCount(split=split, images=len(items), labels=len({i.label for i in items}),
                      products=len({i.product_id for i in items if i.product_id is not None}), expected=expected)


def _protocol_sizes(source: str, catalog: Catalog) -> tuple[ProtocolSize, ...]:
    from shelfsight.catalog import protocols_for

    sizes = []
    for protocol in protocols_for(source, catalog):
        members = [i for i in catalog if protocol.takes_part(i)]
        sizes.append(ProtocolSize(
            name=protocol.name, queries=sum(i.split in protocol.query_splits for i in members),
            gallery=sum(i.split in protocol.gallery_splits for i in members), leave_one_out=protocol.leave_one_out))
    return tuple(sizes)


def _probe_files(items: Sequence[CatalogItem], *, decode: bool, workers: int | None,
                 progress: bool) -> list[tuple[str, str]]:
    """(path, reason) for every image that is missing or, when ``decode``, does not decode."""
    probe: Callable[[CatalogItem], str | None] = _decode_problem if decode else _presence_problem
    failures: list[tuple[str, str]] = []
    description = "decoding images" if decode else "looking for images"
    with progress_bar(progress, len(items), description, unit="img", console=Console(stderr=True),
                      transient=True) as advance, \
            ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(items), PROBE_BATCH):  # bounded: SOP would be 120k futures at once
            batch = items[start:start + PROBE_BATCH]
            for item, reason in zip(batch, pool.map(probe, batch), strict=True):
                if reason is not None:
                    failures.append((str(item.image_path), reason))
            advance(len(batch))
    return failures


def _presence_problem(item: CatalogItem) -> str | None:
    return None if os.path.isfile(item.image_path) else "file not found"


def _decode_problem(item: CatalogItem) -> str | None:
    try:
        decode_image(item.image_path, draft_size=DRAFT_SIZE)
    except ImageDecodeError as exc:
        return exc.reason
    return None
