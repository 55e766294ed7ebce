"""The `sandbox` subcommands, the Docker family's tools: ``build-image``, ``reap`` and ``doctor``.

``rlm sandbox ...`` dispatches here (``main(argv)``); ``python -m sandboxes.backends.docker.cli ...``
works too, for machines where only the sandbox layer is wanted (CI brings the image up this way).
Each command imports its module only when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from sandboxes.errors import SandboxError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlm sandbox", description="Manage the Docker sandboxes of this machine.")
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build-image", help="build the kernel image (reused when it is up to date)",
                           description="Build the kernel image from images/Dockerfile. With no base image "
                           "reachable, a base is made from Debian's packages; the Python packages are "
                           "always downloaded as wheels on this host, so the build needs no network.")
    build.add_argument("--tag", default=None, help="image name (default: rlm-sandbox-kernel:guest-<guest version>)")
    build.add_argument("--base-image", default=None,
                       help="base image with Python 3 (default: the Dockerfile's BASE_IMAGE, python:3.12-slim)")
    build.add_argument("--offline", action="store_true",
                       help="never pull: use the base if present, else make one from Debian's packages")
    build.add_argument("--force", action="store_true", help="rebuild even when the image is up to date")

    reap = sub.add_parser("reap", help="remove boxes whose controller is gone or whose lifetime has passed")
    reap.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    reap.add_argument("--json", action="store_true", help="print the result as JSON")

    doctor = sub.add_parser("doctor", help="check the engine, runtimes, image and hardening")
    doctor.add_argument("--image", default=None, help="kernel image to check (default: rlm-sandbox-kernel:guest-<guest version>)")
    doctor.add_argument("--no-boxes", action="store_true", help="do not start boxes to check the hardening")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; return the process exit code (0 success, 1 failure, 2 usage)."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    try:
        if args.command == "build-image":
            from sandboxes.backends.docker.image_build import build_image
            from sandboxes.backends.docker.image_check import default_image

            result = build_image(tag=args.tag or default_image(), base_image=args.base_image, offline=args.offline,
                                 force=args.force, log=_say)
            print(f"{result.tag} {result.image_id} (guest {result.guest_version}, base {result.base_image}"
                  f"{', reused' if result.reused else ''})")
            return 0
        if args.command == "reap":
            from sandboxes.backends.docker.reaper import reap

            found = reap(dry_run=args.dry_run)
            if args.json:
                print(json.dumps([box.__dict__ for box in found], indent=2))
            else:
                for box in found:
                    state = "would remove" if args.dry_run else ("removed" if box.removed else "could not remove")
                    print(f"{state} {box.container}: {box.reason}")
                print(f"{len(found)} box(es) {'to reap' if args.dry_run else 'reaped'}")
            return 0 if all(box.removed or args.dry_run for box in found) else 1
        if args.command == "doctor":
            from sandboxes.backends.docker.doctor import run_doctor

            report = run_doctor(image=args.image, start_boxes=not args.no_boxes)
            print(report.to_json() if args.json else report.to_text())
            return 0 if report.ok else 1
    except SandboxError as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
