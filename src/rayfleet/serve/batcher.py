"""Continuous batching for one model per replica.

Why not ``@serve.batch``: in Ray Serve 2.60 its batch loop keeps forming batches
while the model is busy; each batch closes at its timeout and waits in line behind
the running one, so under load the model sees many small batches (we measured a
mean batch of 2–6 texts at 64 concurrent clients with max 32). Here the queue is
drained only when the model is free: everything that arrived during the last model
call becomes the next batch (up to ``max_batch_size``). The wait timeout applies
only when the model was idle, where a short wait lets a burst gather.

Length-aware (``key``, e.g. a text's length): when more is queued than one batch
takes, the batch is the oldest queued item plus the items nearest to it by key,
not the first ``max_batch_size`` to arrive. A model call lasts as long as its
longest input and output, so a batch of similar lengths wastes less on padding
and on sequences that finished early. The oldest always goes, so nothing waits
for more batches than there are ahead of it. (In process, on variable-length
text, batches of 64 in arrival order ran at 73 % of the all-sorted rate, and
batches sorted within every 128 queued at 82 %.)

The model call runs in a worker thread, so the replica's event loop keeps taking
requests while it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ContinuousBatcher", "BatchStats"]


@dataclass
class BatchStats:
    batches: int = 0
    texts: int = 0
    max_batch: int = 0
    busy_s: float = 0.0

    def as_dict(self) -> dict:
        return {
            "batches": self.batches,
            "texts": self.texts,
            "mean_batch_size": (self.texts / self.batches) if self.batches else 0.0,
            "max_batch_size_seen": self.max_batch,
            "model_busy_s": round(self.busy_s, 3),
        }


class ContinuousBatcher:
    """``await batcher.submit(item)`` → ``fn([items...])[i]``, batched across callers."""

    def __init__(self, fn: Callable[[list], list], max_batch_size: int, wait_s: float,
                 on_batch: Callable[[int, float, int], None] | None = None,
                 key: Callable[[object], float] | None = None):
        """``on_batch(size, seconds, waiting)`` after every model call: its texts, its time, the texts
        queued behind it (the replica's metrics). ``key``: batches by nearness in it (see above); None:
        in arrival order."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.wait_s = max(0.0, wait_s)
        self.stats = BatchStats()
        self._on_batch = on_batch
        self._key = key
        self._queue: asyncio.Queue[tuple[object, asyncio.Future]] | None = None
        self._pending: list[tuple[object, asyncio.Future]] = []   # taken from the queue, not run yet: by arrival
        self._task: asyncio.Task | None = None

    async def submit(self, item: object):
        if self._task is None or self._task.done():
            # Created lazily: the queue and the loop task belong to the running event loop.
            self._queue = asyncio.Queue()
            self._pending = []
            self._task = asyncio.get_running_loop().create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, fut))
        return await fut

    def _drain(self) -> None:
        """Everything queued into ``_pending`` (a cancelled request, client gone, costs no model time)."""
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            if not entry[1].done():
                self._pending.append(entry)

    def _next_batch(self) -> list:
        pending = [e for e in self._pending if not e[1].done()]
        n = self.max_batch_size
        if self._key is None or len(pending) <= n:
            batch, self._pending = pending[:n], pending[n:]
            return batch
        keys = [self._key(item) for item, _ in pending]
        oldest = keys[0]
        nearest = sorted(range(1, len(pending)), key=lambda i: (abs(keys[i] - oldest), i))[:n - 1]
        chosen = {0, *nearest}
        self._pending = [e for i, e in enumerate(pending) if i not in chosen]
        return [e for i, e in enumerate(pending) if i in chosen]

    async def _loop(self) -> None:
        queue = self._queue
        idle = True  # nothing arrived while the model last ran
        while True:
            if not self._pending:
                first = await queue.get()
                if first[1].done():
                    continue
                self._pending.append(first)
            self._drain()
            if idle and self.wait_s > 0 and len(self._pending) < self.max_batch_size:
                # The model was idle: give a burst a moment to arrive.
                deadline = time.monotonic() + self.wait_s
                while len(self._pending) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    try:
                        entry = await asyncio.wait_for(queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                    if not entry[1].done():
                        self._pending.append(entry)
                    self._drain()
            batch = self._next_batch()
            if batch:
                await self._run(batch)
            idle = queue.empty() and not self._pending

    async def _run(self, batch: list) -> None:
        items = [item for item, _ in batch]
        t0 = time.perf_counter()
        try:
            results = await asyncio.to_thread(self._fn, items)
            if len(results) != len(items):  # never hand out misaligned results
                raise RuntimeError(f"the model returned {len(results)} outputs for {len(items)} inputs")
        except Exception as e:  # noqa: BLE001 - every caller of this batch gets the error
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        finally:
            s = self.stats
            s.batches += 1
            s.texts += len(items)
            s.max_batch = max(s.max_batch, len(items))
            took = time.perf_counter() - t0
            s.busy_s += took
            if self._on_batch is not None:
                waiting = len(self._pending) + (self._queue.qsize() if self._queue is not None else 0)
                self._on_batch(len(items), took, waiting)
        for (_, fut), out in zip(batch, results):
            if not fut.done():
                fut.set_result(out)
