"""Fakes of the Modal and E2B SDKs for every test in this folder, and a check that no fake box
leaves a process behind."""

from __future__ import annotations

from typing import Iterator

import pytest

from sandboxes.backends.local import marked_processes
from tests.cloud import fake_e2b, fake_modal
from tests.cloud.boxproc import MARKER_ENV, MARKER_PREFIX


def fake_box_processes() -> list[int]:
    """Live processes of this test session's fake boxes."""
    return sorted(marked_processes(f"{MARKER_ENV}={MARKER_PREFIX}", prefix=True))


@pytest.fixture
def modal_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    yield fake_modal.install(monkeypatch)
    assert fake_box_processes() == [], "a fake Modal box left processes running"


@pytest.fixture
def e2b_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    yield fake_e2b.install(monkeypatch)
    assert fake_box_processes() == [], "a fake E2B box left processes running"
