"""Fakes of the Modal and E2B SDKs for every test in this folder, and a check that no fake box
leaves a process behind."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from sandboxes.backends.local import kill_sweep, marked_processes
from tests.cloud import fake_e2b, fake_modal
from tests.cloud.boxproc import MARKER_ENV, MARKER_PREFIX


def fake_box_processes() -> list[int]:
    """Live processes of this test session's fake boxes."""
    return sorted(marked_processes(f"{MARKER_ENV}={MARKER_PREFIX}", prefix=True))


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "(gone)"


def assert_no_box_left(provider: str) -> None:
    """Fail the test that leaked a box process, and remove it, so the next tests start clean and
    report only their own leaks."""
    left = {pid: _command_line(pid) for pid in fake_box_processes()}
    if left:
        kill_sweep(lambda: set(fake_box_processes()))
    assert left == {}, f"a fake {provider} box left processes running"


@pytest.fixture
def modal_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    yield fake_modal.install(monkeypatch)
    assert_no_box_left("Modal")


@pytest.fixture
def e2b_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    yield fake_e2b.install(monkeypatch)
    assert_no_box_left("E2B")
