"""Continuous batching: what queues while the model runs is the next batch."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rayfleet.serve.batcher import ContinuousBatcher

pytestmark = pytest.mark.unit


class SlowModel:
    """Upper-cases texts; each call takes `delay` seconds and records its batch."""

    def __init__(self, delay: float):
        self.delay = delay
        self.batches: list[list[str]] = []
        self.running = threading.Event()

    def __call__(self, texts: list[str]) -> list[str]:
        self.running.set()
        self.batches.append(list(texts))
        time.sleep(self.delay)
        if "boom" in texts:
            raise ValueError("boom in batch")
        return [t.upper() for t in texts]


def test_texts_queued_during_a_call_form_the_next_batch():
    model = SlowModel(0.3)

    async def main():
        b = ContinuousBatcher(model, max_batch_size=32, wait_s=0.0)
        first = asyncio.create_task(b.submit("a"))
        while not model.running.is_set():
            await asyncio.sleep(0.005)
        rest = [asyncio.create_task(b.submit(f"t{i}")) for i in range(40)]
        return await first, await asyncio.gather(*rest), b.stats.as_dict()

    first, rest, stats = asyncio.run(main())
    assert first == "A"
    assert rest == [f"T{i}" for i in range(40)]  # every caller gets its own text back
    # One text, then everything that queued meanwhile up to the cap, then the remainder.
    assert [len(x) for x in model.batches] == [1, 32, 8]
    assert stats["batches"] == 3 and stats["texts"] == 41 and stats["max_batch_size_seen"] == 32


def test_idle_model_waits_for_a_burst():
    model = SlowModel(0.0)

    async def main():
        b = ContinuousBatcher(model, max_batch_size=8, wait_s=0.3)
        tasks = [asyncio.create_task(b.submit("x"))]
        await asyncio.sleep(0.05)  # within the wait: joins the same batch
        tasks += [asyncio.create_task(b.submit("y")) for _ in range(3)]
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == ["X", "Y", "Y", "Y"]
    assert [len(x) for x in model.batches] == [4]


def test_error_reaches_every_caller_of_its_batch_only():
    model = SlowModel(0.2)

    async def main():
        b = ContinuousBatcher(model, max_batch_size=8, wait_s=0.0)
        first = asyncio.create_task(b.submit("ok"))
        while not model.running.is_set():
            await asyncio.sleep(0.005)
        bad = [asyncio.create_task(b.submit(t)) for t in ("boom", "fine")]
        results = await asyncio.gather(first, *bad, return_exceptions=True)
        after = await b.submit("later")  # the batcher survives a failed batch
        return results, after

    results, after = asyncio.run(main())
    assert results[0] == "OK"
    assert all(isinstance(r, ValueError) for r in results[1:])
    assert after == "LATER"


def test_cancelled_request_costs_no_model_time():
    model = SlowModel(0.2)

    async def main():
        b = ContinuousBatcher(model, max_batch_size=8, wait_s=0.0)
        first = asyncio.create_task(b.submit("a"))
        while not model.running.is_set():
            await asyncio.sleep(0.005)
        gone = asyncio.create_task(b.submit("gone"))
        kept = asyncio.create_task(b.submit("kept"))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while its text was queued
        return await first, await kept

    assert asyncio.run(main()) == ("A", "KEPT")
    assert model.batches == [["a"], ["kept"]]


def test_length_aware_batches_take_the_oldest_and_its_nearest_lengths():
    """More queued than a batch takes: the oldest text and the ones nearest to it in length go first, in
    arrival order; the rest make the next batch. Every caller still gets its own text back."""
    model = SlowModel(0.3)
    texts = ["x" * n for n in (50, 3, 48, 2, 52, 4, 49, 1)]

    async def main():
        b = ContinuousBatcher(model, max_batch_size=4, wait_s=0.0, key=len)
        first = asyncio.create_task(b.submit("a"))
        while not model.running.is_set():
            await asyncio.sleep(0.005)
        rest = [asyncio.create_task(b.submit(t)) for t in texts]
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(main())
    assert first == "A" and rest == [t.upper() for t in texts]
    assert [[len(t) for t in batch] for batch in model.batches] == [[1], [50, 48, 52, 49], [3, 2, 4, 1]]


def test_length_aware_never_leaves_the_oldest_behind():
    """Short texts keep arriving, one long text waits: it is the oldest after the first batch, so it goes in
    the second, however many short ones are nearer to each other."""
    model = SlowModel(0.2)

    async def main():
        b = ContinuousBatcher(model, max_batch_size=3, wait_s=0.0, key=len)
        first = asyncio.create_task(b.submit("s"))
        while not model.running.is_set():
            await asyncio.sleep(0.005)
        tasks = [asyncio.create_task(b.submit(t)) for t in ("ss", "L" * 80, "s", "ss", "s", "ss", "s")]
        return await asyncio.gather(first, *tasks)

    asyncio.run(main())
    sizes = [[len(t) for t in batch] for batch in model.batches]
    assert sizes[1][0] == 2 and 80 in sizes[2], sizes   # (the oldest of the second batch is "ss")


def test_arrival_order_without_a_key():
    model = SlowModel(0.3)
    texts = ["x" * n for n in (50, 3, 48, 2, 52)]

    async def main():
        b = ContinuousBatcher(model, max_batch_size=2, wait_s=0.0)
        first = asyncio.create_task(b.submit("a"))
        while not model.running.is_set():
            await asyncio.sleep(0.005)
        await asyncio.gather(*(asyncio.create_task(b.submit(t)) for t in texts))
        await first

    asyncio.run(main())
    assert [[len(t) for t in batch] for batch in model.batches] == [[1], [50, 3], [48, 2], [52]]
