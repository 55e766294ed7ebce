"""The kernel image (checks, reuse, mirror discovery) and the `sandbox` subcommands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sandboxes.backends.docker.cli import main
from sandboxes.backends.docker.engine import GUEST_VERSION_LABEL
from sandboxes.errors import SandboxUnavailable
from sandboxes.guest.protocol import guest_version
from sandboxes.backends.docker.image_build import _apt_mirror
from sandboxes.backends.docker.image_check import check_image
from sandboxes.backends.image_sources import default_base_image


class FakeImages:
    def __init__(self, labels: dict[str, dict[str, str]]) -> None:
        self.labels = labels

    def get(self, name: str) -> Any:
        import docker.errors

        if name not in self.labels:
            raise docker.errors.ImageNotFound(name)
        return type("Image", (), {"attrs": {"Config": {"Labels": self.labels[name]}}})()


class FakeClient:
    def __init__(self, labels: dict[str, dict[str, str]]) -> None:
        self.images = FakeImages(labels)


def test_check_image_names_the_fix() -> None:
    with pytest.raises(SandboxUnavailable, match="not present.*rlm sandbox build-image"):
        check_image(FakeClient({}), "rlm-sandbox-kernel:latest")
    with pytest.raises(SandboxUnavailable, match="stale.*rlm sandbox build-image --tag mine:1"):
        check_image(FakeClient({"mine:1": {GUEST_VERSION_LABEL: "0123"}}), "mine:1")
    check_image(FakeClient({"ok:1": {GUEST_VERSION_LABEL: guest_version()}}), "ok:1")


def test_base_image_is_named_once_in_the_dockerfile() -> None:
    assert default_base_image() == "python:3.12-slim"
    dockerfile = (Path(__file__).resolve().parents[2] / "images" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.12-slim" in dockerfile
    assert "USER 10001:10001" in dockerfile


def test_requirements_hold_only_what_the_guest_needs() -> None:
    text = (Path(__file__).resolve().parents[2] / "images" / "requirements.txt").read_text()
    names = {line.split("=")[0].split("<")[0].split(">")[0].strip().lower()
             for line in text.splitlines() if line.strip() and not line.startswith("#")}
    assert names == {"ipykernel", "jupyter_client", "ipython"}


def test_debootstrap_uses_the_hosts_own_mirror(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n")
    assert _apt_mirror("bookworm", apt) == "http://mirror.invalid/debian"
    (apt / "sources.list.d" / "debian.sources").unlink()
    (apt / "sources.list").write_text("# comment\ndeb [arch=amd64] http://other.invalid/debian bookworm main\n")
    assert _apt_mirror("bookworm", apt) == "http://other.invalid/debian"
    assert _apt_mirror("trixie", apt) is None


@pytest.mark.docker
def test_build_image_is_reused_when_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build-image", "--offline"]) == 0
    assert "reused" in capsys.readouterr().out


@pytest.mark.docker
def test_doctor_reports_engine_runtimes_and_image(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "--no-boxes", "--json"])
    report = json.loads(capsys.readouterr().out)
    names = {c["name"]: c for c in report["checks"]}
    assert code == 0 and report["ok"], report
    assert names["engine"]["ok"] and names["image"]["ok"] and names["runc"]["ok"]
    assert "gVisor (runsc)" in names


@pytest.mark.docker
@pytest.mark.slow
def test_doctor_checks_the_hardening_from_inside_boxes(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[ok  ] runc: no network" in out and "[ok  ] runc: read-only root" in out
    assert "FAIL" not in out


@pytest.mark.docker
def test_reap_dry_run_lists_without_removing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reap", "--dry-run", "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)


@pytest.mark.docker
@pytest.mark.slow
def test_build_from_a_base_image_present_on_the_engine(docker_client: Any) -> None:
    """The registry path without a registry: a base that is already on the engine is used as is."""
    from sandboxes.backends.docker.image_build import DEBIAN_BASE_IMAGE, build_image
    from sandboxes.backends.docker.image_check import image_guest_version

    tag = "rlm-sandbox-kernel:from-local-base"
    messages: list[str] = []
    try:
        result = build_image(tag=tag, base_image=DEBIAN_BASE_IMAGE, client=docker_client, log=messages.append)
        assert result.base_image == DEBIAN_BASE_IMAGE
        assert any("is present" in m for m in messages), messages
        assert not any("pulling" in m for m in messages), messages
        assert image_guest_version(docker_client, tag) == guest_version()
        again = build_image(tag=tag, base_image=DEBIAN_BASE_IMAGE, client=docker_client)
        assert again.reused and again.image_id == result.image_id
        # Later builds keep the recorded base: even with pulling allowed, no registry is asked.
        later: list[str] = []
        third = build_image(tag=tag, client=docker_client, offline=False, log=later.append)
        assert third.reused and third.base_image == DEBIAN_BASE_IMAGE
        assert not any("pull" in m for m in later), later
    finally:
        try:
            docker_client.images.remove(tag, force=True)
        except Exception:
            pass
