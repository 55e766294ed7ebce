"""Shared test setup: quiet operational logs, and a check that no test leaves a box process behind."""

from __future__ import annotations

import logging

import pytest
import structlog

from sandboxes.backends.local import MARKER_ENV, marked_processes

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

def box_processes(box_id: str | None = None) -> list[int]:
    """PIDs of live processes that belong to a local sandbox (all boxes, or one)."""
    if box_id is None:
        return sorted(marked_processes(f"{MARKER_ENV}=", prefix=True))
    return sorted(marked_processes(f"{MARKER_ENV}={box_id}"))


@pytest.fixture(autouse=True, scope="session")
def no_leftover_box_processes():
    """Every box this test session registered must have no process left when the session ends
    (other sessions' boxes on the same machine are not ours to judge)."""
    from sandboxes import cleanup

    ours: set[str] = set()
    register = cleanup.register

    def recording_register(backend):
        ours.add(backend.box_id)
        register(backend)

    cleanup.register = recording_register
    try:
        yield
    finally:
        cleanup.register = register
    left = {box: pids for box in ours if (pids := box_processes(box))}
    assert not left, f"sandbox processes left running after the tests: {left}"
