"""Micro-batching: concurrent requests' work gathered into one call, results handed back to each request.

A :class:`MicroBatcher` owns one worker thread. Request threads :meth:`~MicroBatcher.submit` an item and
wait; the worker takes the first item queued, gathers more until ``max_batch`` items or ``max_wait_ms``
have passed, calls ``process`` once on the list and hands each result (or exception) back to its request.

Why it pays: an encoder forward over 16 photos costs far less than 16 forwards of one (the batched rate
in ``benchmarks/serve_load.py``), and one Milvus search of 16 vectors costs about one search of one.

Waiting is only worth it when more work is on its way: requests announce themselves with
:meth:`~MicroBatcher.expecting` while they decode their photo, and the worker waits (at most
``max_wait_ms``) only while some are announced and not yet submitted. A lone request therefore never
waits: at concurrency 1 micro-batching costs nothing.

Errors stay with their request: when ``process`` raises for a whole batch, the batch is processed
again one item at a time, so only the item that fails gets the exception.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    """What the worker did: batches run, items processed, the largest batch, batches split after a failure."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    split: int = 0


class MicroBatcher(Generic[T, R]):
    """Run ``process(items) -> results`` (one result per item, same order) over batches of submitted items."""

    def __init__(self, process: Callable[[list[T]], Sequence[R]], *, max_batch: int = 16, max_wait_ms: float = 5.0,
                 name: str = "batcher") -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch} and {max_wait_ms}")
        self.process = process
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue[tuple[T, Future[R]] | None] = queue.Queue()
        self._announced = 0
        self._lock = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=f"shelfsight-{name}", daemon=True)
        self._worker.start()

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce an item about to be submitted (its photo is being decoded), so the worker waits for it;
        submit after leaving the block."""
        with self._lock:
            self._announced += 1
        try:
            yield
        finally:
            with self._lock:
                self._announced -= 1

    def submit(self, item: T) -> R:
        """Queue ``item``, wait for its batch to run, return its result (or raise its exception)."""
        return self.enqueue(item).result()

    def enqueue(self, item: T) -> Future[R]:
        """Queue ``item`` and return at once: its future holds the result once its batch has run. A request with
        several items queues a few at a time (``search_many``), so they share batches with other requests'."""
        if self._closed:
            raise RuntimeError("the micro-batcher is closed")
        future: Future[R] = Future()
        self._queue.put((item, future))
        return future

    def close(self) -> None:
        """Stop the worker after the items already queued."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._worker.join(timeout=30)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            closing = self._gather(batch)
            self._execute(batch)
            if closing:
                return

    def _gather(self, batch: list[tuple[T, Future[R]]]) -> bool:
        """Add queued items to ``batch`` until it is full, or nothing more is announced, or the wait is over;
        True when the close mark was met."""
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                with self._lock:
                    waiting_for = self._announced
                if remaining <= 0 or waiting_for <= 0:
                    return False
                try:
                    entry = self._queue.get(timeout=remaining)
                except queue.Empty:
                    return False
            if entry is None:
                return True
            batch.append(entry)
        return False

    def _execute(self, batch: list[tuple[T, Future[R]]]) -> None:
        items = [item for item, _ in batch]
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.largest = max(self.stats.largest, len(items))
        try:
            results = list(self.process(items))
            if len(results) != len(items):
                raise RuntimeError(f"process returned {len(results)} results for {len(items)} items")
        except BaseException as error:  # noqa: BLE001 - handed to the requests below
            if len(batch) == 1:
                batch[0][1].set_exception(error)
                return
            self.stats.split += 1
            for entry in batch:  # one at a time: only the item that fails gets the exception
                self._execute([entry])
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)


class DirectRunner(Generic[T, R]):
    """The batcher's interface without batching: each item is processed alone, in its caller's thread."""

    max_batch = 1
    max_wait = 0.0

    def __init__(self, process: Callable[[list[T]], Sequence[R]]) -> None:
        self.process = process
        self.stats = BatchStats()

    def expecting(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def submit(self, item: T) -> R:
        self.stats.batches += 1
        self.stats.items += 1
        self.stats.largest = 1
        return self.process([item])[0]

    def enqueue(self, item: T) -> Future[R]:
        """Process ``item`` now, in the caller's thread; a future that is already done."""
        future: Future[R] = Future()
        try:
            future.set_result(self.submit(item))
        except BaseException as error:  # noqa: BLE001 - handed over in the future, as the batcher does
            future.set_exception(error)
        return future

    def close(self) -> None:
        pass


def runner(process: Callable[[list[T]], Sequence[R]], *, max_batch: int, max_wait_ms: float,
           name: str) -> MicroBatcher[T, R] | DirectRunner[T, R]:
    """A micro-batcher, or a direct runner when ``max_batch`` is 1 (micro-batching off)."""
    if max_batch <= 1:
        return DirectRunner(process)
    return MicroBatcher(process, max_batch=max_batch, max_wait_ms=max_wait_ms, name=name)


BACKGROUND_NICE = 10
"""How much lower a background thread runs (Linux threads have their own nice value): at +10 it gets about a tenth
of a contended core, and all of an idle one."""


def lower_thread_priority(nice: int = BACKGROUND_NICE) -> None:
    """Run the calling thread at a lower CPU priority (``ThreadPoolExecutor(initializer=...)``); no-op where the
    system has no per-thread priority. A thread cannot raise its priority back, so only dedicated threads call it."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)

