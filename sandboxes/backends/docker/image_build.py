"""Building the kernel image, with a container registry or without one.

The image is ``images/Dockerfile`` built on a base with Python: the Dockerfile's ``BASE_IMAGE`` when it
is present locally or can be pulled, otherwise (air-gapped machines, CI without a registry) a base made
here from Debian's packages with debootstrap and cached as ``rlm-sandbox-base:bookworm``. The guest's
Python packages are always downloaded as wheels on the host, for the base's Python version, so the
build itself runs with no network at all.

The guest agent in the image is copied from the controller's own source, and the image is labelled with
its version: a backend compares that label with ``guest_version()`` before starting any container, and
reuses an image whose build key (a digest of everything it was built from) is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sandboxes.backends.docker.engine import BUILD_KEY_LABEL, GUEST_VERSION_LABEL, engine_client
from sandboxes.backends.docker.image_check import BUILD_COMMAND, default_image
from sandboxes.backends.guest_bundle import write_guest
from sandboxes.backends.image_sources import ImageBuildError, default_base_image, images_dir
from sandboxes.box_tags import LABEL_PREFIX
from sandboxes.guest.protocol import guest_sources, guest_version

DEBIAN_BASE_IMAGE = "rlm-sandbox-base:bookworm"
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# On the kernel image: the base it was built on, reused by later rebuilds.
BASE_LABEL = f"{LABEL_PREFIX}.base-image"

Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    tag: str
    image_id: str
    base_image: str
    guest_version: str
    reused: bool
    seconds: float


def build_image(
    *,
    tag: str | None = None,
    base_image: str | None = None,
    offline: bool = False,
    force: bool = False,
    client: Any = None,
    log: Log | None = None,
) -> BuildResult:
    """Build (or reuse) the kernel image and return what was done.

    ``offline`` never asks a container registry: the base is taken from the engine when present and
    otherwise made from Debian's packages. Without it a missing base is pulled first, and made from
    Debian's packages only when the pull fails. ``tag`` defaults to this controller's image
    (``image_check.default_image``).
    """
    tag = tag or default_image()
    say = log or (lambda message: None)
    started = time.monotonic()
    client = client or engine_client()
    try:
        existing = client.images.get(tag)
    except Exception:
        existing = None
    recorded = ((existing.labels or {}).get(BASE_LABEL) if existing is not None else None) or None
    if base_image is None and recorded is not None and _present(client, recorded):
        # Rebuilds keep the base the image was built on: no registry is asked twice.
        base = recorded
    else:
        base = _resolve_base(client, base_image or default_base_image(), offline, say)
    base_id = client.images.get(base).id
    python_version = _base_python_version(client, base)
    requirements = (images_dir() / "requirements.txt").read_text()
    version = guest_version()
    key = _build_key(base_id, python_version, requirements)

    if not force:
        if existing is not None and (existing.labels or {}).get(BUILD_KEY_LABEL) == key:
            say(f"{tag} is up to date (guest {version}); nothing to build")
            return BuildResult(tag, existing.id, base, version, True, time.monotonic() - started)

    wheels = _wheels(python_version, requirements, say)
    with tempfile.TemporaryDirectory(prefix="rlm-image-") as tmp:
        context = Path(tmp)
        _fill_context(context, wheels)
        say(f"building {tag} from {base} (Python {python_version}, guest {version})")
        image_id = _docker_build(client, context, tag, base, version, key, say)
    if existing is not None and existing.id != image_id:
        # The image this tag named before: unused now unless a box still runs on it (then it stays).
        try:
            client.images.remove(existing.id)
        except Exception:
            pass
    say(f"built {tag} ({image_id[:19]}) in {time.monotonic() - started:.1f} s")
    return BuildResult(tag, image_id, base, version, False, time.monotonic() - started)


def _present(client: Any, image: str) -> bool:
    try:
        client.images.get(image)
        return True
    except Exception:
        return False


def _build_key(base_id: str, python_version: str, requirements: str) -> str:
    digest = hashlib.sha256()
    for part in (base_id, python_version, requirements, (images_dir() / "Dockerfile").read_text()):
        digest.update(part.encode())
        digest.update(b"\0")
    for path in guest_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:24]


def _resolve_base(client: Any, base_image: str, offline: bool, say: Log) -> str:
    """The base image to build on: the requested one if present or pullable, else a Debian one."""
    import docker.errors

    if _present(client, base_image):
        say(f"base image {base_image} is present")
        return base_image
    if not offline:
        say(f"pulling base image {base_image}")
        try:
            client.images.pull(base_image)
            return base_image
        except docker.errors.APIError as exc:
            say(f"cannot pull {base_image} ({str(exc)[:160]}); making a base from Debian's packages instead")
    else:
        say(f"{base_image} is not present and --offline is set; using a base made from Debian's packages")
    return ensure_debian_base(client, say)


def ensure_debian_base(client: Any, say: Log) -> str:
    """A minimal Debian image with Python, made by debootstrap and cached under DEBIAN_BASE_IMAGE."""
    if _present(client, DEBIAN_BASE_IMAGE):
        say(f"reusing {DEBIAN_BASE_IMAGE}")
        return DEBIAN_BASE_IMAGE
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if os.path.exists("/usr/sbin/debootstrap") else None
    )
    if debootstrap is None:
        raise ImageBuildError(
            "no base image is reachable and debootstrap is not installed: install it "
            "(`apt-get install debootstrap`), or load a base with Python 3 into the engine "
            "(`docker load`) and pass it with --base-image"
        )
    if os.geteuid() != 0:
        raise ImageBuildError(
            "no base image is reachable and making one from Debian's packages needs root: run "
            f"`sudo {BUILD_COMMAND}`, or pass a local base image with --base-image"
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rlm-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        argv = [debootstrap, "--variant=minbase", "--include=" + ",".join(DEBIAN_PACKAGES), DEBIAN_SUITE, str(rootfs)]
        mirror = _apt_mirror(DEBIAN_SUITE)
        if mirror:
            argv.append(mirror)
        say(f"making {DEBIAN_BASE_IMAGE} with debootstrap (about a minute)")
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-15:])
            raise ImageBuildError(f"debootstrap failed (exit {proc.returncode}):\n{tail}")
        # Package caches and docs are dead weight in every box.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"):
            path = rootfs / junk
            if path.is_dir():
                for child in path.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
        say(f"importing the Debian base into the engine as {DEBIAN_BASE_IMAGE}")
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        try:
            repository, _, image_tag = DEBIAN_BASE_IMAGE.partition(":")
            client.api.import_image(
                src=tar.stdout,
                repository=repository,
                tag=image_tag,
                changes=['CMD ["/bin/bash"]', f'LABEL {LABEL_PREFIX}.base="debootstrap {DEBIAN_SUITE}"'],
                stream_src=True,
            )
        finally:
            tar.stdout.close()
            tar.wait()
        if tar.returncode != 0:
            raise ImageBuildError(f"tar of the Debian root filesystem failed (exit {tar.returncode})")
    say(f"made {DEBIAN_BASE_IMAGE} in {time.monotonic() - started:.0f} s")
    return DEBIAN_BASE_IMAGE


def _apt_mirror(suite: str, etc_apt: Path = Path("/etc/apt")) -> str | None:
    """The Debian mirror this host's apt already uses for ``suite``; None lets debootstrap choose."""
    candidates: list[Path] = [etc_apt / "sources.list"]
    sources_d = etc_apt / "sources.list.d"
    if sources_d.is_dir():
        candidates += sorted(sources_d.iterdir())
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (line.partition(":") for line in stanza.splitlines() if ":" in line and not line.startswith("#"))
                )
                if suite in fields.get("suites", "").split() and "deb" in fields.get("types", "").split():
                    uri = fields.get("uris", "").split()
                    if uri and uri[0].startswith(("http://", "https://")):
                        return uri[0]
        else:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb":
                    rest = [p for p in parts[1:] if not p.startswith("[")]
                    if len(rest) >= 2 and rest[1] == suite and rest[0].startswith(("http://", "https://")):
                        return rest[0]
    return None


def _base_python_version(client: Any, base: str) -> str:
    """The Python version of the base (e.g. "3.11"), asked of the base itself in a throwaway box."""
    try:
        output = client.containers.run(
            base,
            ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            remove=True,
            network_mode="none",
            entrypoint=[],
        )
    except Exception as exc:
        raise ImageBuildError(f"the base image {base} has no working python3 ({str(exc)[:200]})") from None
    version = output.decode().strip()
    if not re.fullmatch(r"3\.\d+", version):
        raise ImageBuildError(f"the base image {base} reports an unexpected Python version {version!r}")
    return version


def _wheels(python_version: str, requirements: str, say: Log) -> Path:
    """Wheels of the guest's packages for the box's Python, downloaded on the host and cached.

    The host reaches the package index through its own configuration (proxies, certificates,
    mirrors), which a build container does not have; air-gapped users can pre-fill this folder.
    """
    machine = platform.machine() or "x86_64"
    digest = hashlib.sha256(f"{python_version}\0{machine}\0{requirements}".encode()).hexdigest()[:16]
    cache = images_dir() / ".build" / f"wheels-py{python_version}-{machine}-{digest}"
    done = cache / ".complete"
    if done.exists():
        say(f"reusing wheels in {cache}")
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
        "-d", str(cache), "-r", str(images_dir() / "requirements.txt"),
    ]  # fmt: skip
    for tagname in ("manylinux2014", "manylinux_2_17", "manylinux_2_28"):
        argv += ["--platform", f"{tagname}_{machine}"]
    say(f"downloading wheels for Python {python_version} into {cache}")
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-15:])
        raise ImageBuildError(
            f"pip could not download the guest's wheels for Python {python_version}:\n{tail}\n"
            f"Check that pip on this host reaches a package index, or put the wheels in {cache} "
            "and create an empty .complete file there."
        )
    done.touch()
    for old in cache.parent.glob("wheels-*"):  # wheels for requirements no longer used
        if old != cache:
            shutil.rmtree(old, ignore_errors=True)
    return cache


def _fill_context(context: Path, wheels: Path) -> None:
    images = images_dir()
    shutil.copy(images / "Dockerfile", context / "Dockerfile")
    shutil.copy(images / "requirements.txt", context / "requirements.txt")
    shutil.copytree(wheels, context / "wheels", ignore=shutil.ignore_patterns(".complete"))
    write_guest(context / "guest")


def _docker_build(client: Any, context: Path, tag: str, base: str, version: str, key: str, say: Log) -> str:
    import docker.errors

    try:
        image, logs = client.images.build(
            path=str(context),
            tag=tag,
            buildargs={"BASE_IMAGE": base, "GUEST_VERSION": version},
            labels={BUILD_KEY_LABEL: key, GUEST_VERSION_LABEL: version, BASE_LABEL: base},
            # Everything the build needs is in the context: no network, so no surprises.
            network_mode="none",
            rm=True,
            forcerm=True,
            pull=False,
        )
    except docker.errors.BuildError as exc:
        lines = []
        for chunk in exc.build_log:
            if isinstance(chunk, dict) and chunk.get("stream"):
                lines.append(chunk["stream"].rstrip())
        tail = "\n".join(line for line in lines[-20:] if line)
        raise ImageBuildError(f"docker build failed: {exc.msg}\n{tail}") from None
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"docker build failed: {exc}") from None
    for chunk in logs:
        if isinstance(chunk, dict) and chunk.get("stream", "").startswith("Step "):
            say(chunk["stream"].strip())
    return image.id
