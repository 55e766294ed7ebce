"""Ownership tags for boxes: Docker container labels, Modal tags, E2B metadata.

The same keys on every provider, so one reading of them serves every backend: who created the box,
which box it is, and when anyone may destroy it whatever its owner says.
The provider's own lifetime (Modal ``timeout``, E2B ``timeout``) already kills a box when its
controller dies; the tags are what lets an operator list and reap boxes before that.
"""

from __future__ import annotations

import os
import socket
import time

from sandboxes.spec import SandboxSpec

LABEL_PREFIX = "org.rlm-sandboxes"
# Present on every container we create; the reaper and the tests filter on it.
MANAGED_LABEL = f"{LABEL_PREFIX}.managed"
# "<hostname>:<pid>:<process start time>" of the controller that owns the box.
OWNER_LABEL = f"{LABEL_PREFIX}.owner"
RUN_ID_LABEL = f"{LABEL_PREFIX}.run-id"
BOX_ID_LABEL = f"{LABEL_PREFIX}.box-id"
# Unix time after which the box may be destroyed by anyone, whatever its owner says.
EXPIRES_LABEL = f"{LABEL_PREFIX}.expires"
# Caller's own labels (SandboxSpec.labels) are recorded under this prefix.
USER_LABEL_PREFIX = f"{LABEL_PREFIX}.label."

# Provider tag values are short strings; longer user labels are cut rather than refused.
MAX_TAG_VALUE = 256


def box_tags(spec: SandboxSpec, box_id: str) -> dict[str, str]:
    tags = {
        MANAGED_LABEL: "true",
        BOX_ID_LABEL: box_id,
        OWNER_LABEL: owner_id(),
        EXPIRES_LABEL: str(int(time.time() + spec.lifetime_s)),
    }
    for key, value in spec.labels.items():
        tags[f"{USER_LABEL_PREFIX}{key}"] = str(value)[:MAX_TAG_VALUE]
    return tags


def process_start_ticks(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).

    With the pid it names one process for good: a pid reused by a later process has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def owner_id() -> str:
    """This controller process, as recorded in the owner label of its boxes."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_ticks(pid) or '?'}"


def owner_alive(owner: str) -> bool | None:
    """Whether the controller named by an owner label still runs; None when it cannot be told here.

    Only owners on this host can be checked; for others the expiry label is what counts.
    """
    try:
        host, pid_text, ticks = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    current = process_start_ticks(pid)
    if current is None:
        return False
    return ticks == "?" or current == ticks
