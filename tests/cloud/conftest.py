"""Fakes of the Modal and E2B SDKs for every test in this folder, and a check that no fake box
leaves a process behind."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from tests.cloud import fake_e2b, fake_modal
from tests.cloud.boxproc import MARKER_ENV, MARKER_PREFIX


def fake_box_processes() -> list[int]:
    marker = f"{MARKER_ENV}={MARKER_PREFIX}".encode()  # this test session's fake boxes only
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
        if state != b"Z" and any(v.startswith(marker) for v in env):
            found.append(int(entry.name))
    return found


@pytest.fixture
def modal_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    yield fake_modal.install(monkeypatch)
    assert fake_box_processes() == [], "a fake Modal box left processes running"


@pytest.fixture
def e2b_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    yield fake_e2b.install(monkeypatch)
    assert fake_box_processes() == [], "a fake E2B box left processes running"
