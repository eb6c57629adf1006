"""Keep FAISS's numpy API intact while shelfsight calls it.

``faiss.contrib.torch_utils`` (imported by pytorch-metric-learning, among others) replaces
``Index.search`` and friends on every FAISS class with versions that accept torch tensors but
reject numpy-only keywords such as ``params=``, which Milvus Lite and ``FaissFlatIndex`` pass.
The originals stay on the class as ``<method>_numpy``; this module puts them back for the
duration of one shelfsight call, then restores the torch versions, so both users coexist.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

_PATCHED = "faiss.contrib.torch_utils"
_LOCK = threading.RLock()
_F = TypeVar("_F", bound=Callable[..., Any])


def _patched_methods() -> list[tuple[type, str]]:
    import faiss

    found: list[tuple[type, str]] = []
    for value in vars(faiss).values():
        if isinstance(value, type):
            found.extend((value, name[: -len("_numpy")]) for name in vars(value)
                         if name.endswith("_numpy") and name[: -len("_numpy")] in vars(value))
    return found


@contextmanager
def numpy_faiss_api() -> Iterator[None]:
    """Within the block, FAISS classes use their numpy methods (a no-op unless torch_utils was imported)."""
    if _PATCHED not in sys.modules:
        yield
        return
    with _LOCK:
        swapped = [(cls, name, vars(cls)[name]) for cls, name in _patched_methods()]
        for cls, name, _ in swapped:
            setattr(cls, name, vars(cls)[f"{name}_numpy"])
        try:
            yield
        finally:
            for cls, name, torch_version in swapped:
                setattr(cls, name, torch_version)


def uses_numpy_faiss(method: _F) -> _F:
    """Decorator form of ``numpy_faiss_api`` for index methods that reach FAISS."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with numpy_faiss_api():
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextmanager
def faiss_threads(count: int) -> Iterator[None]:
    """FAISS's OpenMP threads within the block (0: leave FAISS's default), restored after.

    On a CPU shared with other processes OpenMP threads wait on each other: training an 8-bit product
    quantiser on 800 vectors took 3 to 110 s with two threads and 0.4 s with one, so timings that must mean
    something on such a machine are taken with one thread (a per-core figure)."""
    if count <= 0:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
