"""Bounded fan-out: one job per item of a batch, run by a fixed set of workers, as one unit.

Why workers and not a task per item: a batched call from kernel code may carry tens of thousands of
prompts. A coroutine (or an RLM node) per prompt would build as many objects before the first
concurrency slot is taken; a fixed set of workers pulling indices costs as many tasks as there are workers, whatever the
batch size, and nothing per item exists before a worker picks it up.

Why a TaskGroup: expected failures (a limit, a provider error) are the job's to turn into a per-item
answer. Anything else is a bug or a broken resource, and the batch is lost: the other workers are
cancelled at once, so no sibling keeps spending budget on answers nobody will read, and the error is
raised as itself (not wrapped in an ExceptionGroup). Cancelling the caller cancels every worker.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable


async def fan_out(count: int, workers: int, job: Callable[[int], Awaitable[None]]) -> None:
    """Run ``job(i)`` for every ``i`` in ``range(count)``, at most ``workers`` at a time."""
    if count <= 0:
        return
    indices = iter(range(count))

    async def worker() -> None:
        for index in indices:
            await job(index)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(workers, count)):
                group.create_task(worker())
    except BaseExceptionGroup as failed:
        # The first failure is the story; the others, if any, happened while the group was stopping.
        raise failed.exceptions[0] from None
