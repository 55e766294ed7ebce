"""Waiting in async tests for state that changes elsewhere (another task, thread or process)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable


async def until(check: Callable[[], Any], seconds: float) -> bool:
    """Whether ``check()`` (run in a thread: it may block) came true within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return True
        await asyncio.sleep(0.05)
    return False
