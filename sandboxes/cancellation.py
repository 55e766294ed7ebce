"""Cleanup that finishes, and cancellation that is never swallowed.

A controller is cancelled all the time: a run hits its wall clock, a user presses Ctrl-C, a service
drops a request, a task group stops the siblings of a failed task. Two rules keep that safe:

* Cleanup finishes. Destroying a box must not stop halfway because the task doing it was cancelled,
  or the box leaks until the reaper finds it. ``finish`` runs the cleanup in a task of its own and
  waits for it through any cancellation of the caller.
* Cancellation is never swallowed. Code that stops a helper task and waits for it, or that ignores
  the failures of a best-effort step, must still let a cancellation of its *own* task through,
  after its cleanup; otherwise the caller's ``asyncio.timeout`` or task group waits forever.
  ``stop`` waits for a task without taking on its outcome; ``cancelling`` tells a CancelledError
  that is ours (re-raise it) from one that came out of something we awaited.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, TypeVar

T = TypeVar("T")


def cancelling() -> bool:
    """True when the current task has been asked to stop: a CancelledError now is its own and must
    propagate."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop(task: "asyncio.Future[Any]") -> None:
    """Cancel ``task`` and wait until it has ended. Its own outcome (its cancellation, or an error it
    ended with) is dropped; a cancellation of the caller is not."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved: it failed while stopping, which tells nobody anything


async def finish(cleanup: Awaitable[T]) -> T:
    """Await ``cleanup`` to its end even if the caller is cancelled meanwhile, then re-raise that
    cancellation (the cleanup's own result or error comes back when the caller was not cancelled)."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the caller's cancellation is the news
        raise asyncio.CancelledError
    return task.result()
