"""What every public dataset module shares: its registry entry, finding its root, reading its files.

A dataset module is declarative: constants saying what a full copy holds and where to get it,
a ``find_root`` that recognises the official layout, and a loader that reads the official
metadata files. The loaders never stat every image (Stanford Online Products has 120,053):
``shelfsight datasets check NAME`` does that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shelfsight.catalog.types import Catalog
from shelfsight.errors import CatalogError, DatasetNotFoundError
from shelfsight.paths import describe_data_dir
from shelfsight.protocols import ClassificationSplits, RetrievalProtocol

Loader = Callable[[Path | None, Path, "tuple[str, ...] | None", bool, "str | None"], Catalog]
"""(data root, cache root, splits, download, the data root as the user gave it) -> catalogue."""


@dataclass(frozen=True)
class DatasetEntry:
    """A public dataset shelfsight knows how to read: what it is, where to get it, what a full copy holds."""

    name: str
    description: str
    splits: tuple[str, ...]
    licence: str
    how_to_get: str
    load: Loader
    homepage: str = ""
    expected_counts: Mapping[str, int] = field(default_factory=dict)
    """Images per split in the official release; ``datasets check`` compares a download against them."""
    counts_verified: bool = True
    """False where the counts come from secondary sources: a mismatch is then a warning, not a failure."""
    locate: Callable[[Path | None], Path | None] | None = None
    """Finds the dataset's root without reading it (cheap presence test); None: try loading instead."""
    citation: str = ""
    protocols: tuple[RetrievalProtocol, ...] = ()
    """Its retrieval protocols, the main one first."""
    classification: ClassificationSplits | None = None
    """Where a classifier trains, stops early and is scored."""

    @property
    def expected_total(self) -> int | None:
        return sum(self.expected_counts.values()) if self.expected_counts else None


def first_root(data_dir: Path | None, folders: Iterable[str], is_root: Callable[[Path], bool]) -> Path | None:
    """The first of ``data_dir/<folder>`` (in order) that ``is_root`` recognises."""
    if data_dir is None:
        return None
    for candidate in (data_dir / folder if folder else data_dir for folder in folders):
        if is_root(candidate):
            return candidate
    return None


def not_found(title: str, data_dir: Path | None, explicit: str | None, folders: Iterable[str],
              how_to_get: str) -> DatasetNotFoundError:
    """The error for an absent dataset: where the data root is, where we looked, how to get it."""
    looked = ", ".join(str(data_dir / f) if f else str(data_dir) for f in folders) if data_dir else "nowhere"
    return DatasetNotFoundError(
        f"{title} not found (data root: {describe_data_dir(explicit)}; looked in: {looked}). {how_to_get}"
    )


def require_file(path: Path, how_to_get: str) -> Path:
    """``path`` if it is a file; else a ``DatasetNotFoundError`` naming it (an incomplete download)."""
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: missing; the download looks incomplete. {how_to_get}")
    return path


def wanted_splits(title: str, requested: tuple[str, ...] | None, available: tuple[str, ...]) -> tuple[str, ...]:
    """The requested splits in official order (all by default); an unknown name is an error."""
    if not requested:
        return available
    unknown = [s for s in requested if s not in available]
    if unknown:
        raise CatalogError(f"{title} has splits {', '.join(available)}; there is no split {unknown[0]!r}")
    return tuple(s for s in available if s in requested)


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end) for every non-blank line of a text file."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.rstrip("\r\n")
            if text.strip():
                yield number, text


def malformed(path: Path, line: int, expected: str, got: str) -> CatalogError:
    """A metadata line that is not in the official format: the file, the line, what was expected."""
    return CatalogError(f"{path}, line {line}: expected {expected}, got {got.strip()!r}. "
                        "The file is not in its official format; re-download it.")
