"""The host folder of the Docker boxes' channels: private whether it is the default or
``$RLM_SANDBOX_RUN_DIR``. Needs no engine."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandboxes.backends.docker.channel_dirs import RUN_DIR_ENV, channel_parent
from sandboxes.errors import SandboxUnavailable


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_run_dir_override_is_made_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = tmp_path / "fresh"
    monkeypatch.setenv(RUN_DIR_ENV, str(fresh))
    assert channel_parent() == str(fresh)
    assert _mode(fresh) == 0o700
    open_one = tmp_path / "open"
    open_one.mkdir(mode=0o777)
    os.chmod(open_one, 0o777)
    monkeypatch.setenv(RUN_DIR_ENV, str(open_one))
    assert channel_parent() == str(open_one)
    assert _mode(open_one) == 0o700  # closed to other users, as the default folder is


def test_the_run_dir_override_must_be_a_folder_of_this_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "real"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    monkeypatch.setenv(RUN_DIR_ENV, str(link))
    with pytest.raises(SandboxUnavailable, match=RUN_DIR_ENV):
        channel_parent()
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 54321, 54321)
    else:
        theirs = Path("/")  # root's
    monkeypatch.setenv(RUN_DIR_ENV, str(theirs))
    with pytest.raises(SandboxUnavailable, match="not a folder of this user"):
        channel_parent()
