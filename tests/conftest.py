"""Shared test setup: quiet operational logs, and a check that no test leaves a box process behind."""

from __future__ import annotations

import logging
import os

import pytest
import structlog

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

MARKER = b"SANDBOX_BOX_ID="


def box_processes(box_id: str | None = None) -> list[int]:
    """PIDs of live processes that belong to a sandbox (all boxes, or one)."""
    wanted = MARKER + box_id.encode() if box_id else MARKER
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and any(v == wanted or (box_id is None and v.startswith(MARKER)) for v in env):
            found.append(int(entry.name))
    return found


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
