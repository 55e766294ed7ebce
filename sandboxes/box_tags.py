"""Ownership tags for boxes on a cloud provider (Modal tags, E2B metadata).

The same keys the Docker backend puts in container labels, so one reading of them serves every
backend: who created the box, which box it is, and when anyone may destroy it whatever its owner says.
The provider's own lifetime (Modal ``timeout``, E2B ``timeout``) already kills a box when its
controller dies; the tags are what lets an operator list and reap boxes before that.
"""

from __future__ import annotations

import time

from sandboxes.backends.docker.engine import (BOX_ID_LABEL, EXPIRES_LABEL, MANAGED_LABEL, OWNER_LABEL, USER_LABEL_PREFIX,
                                     owner_id)
from sandboxes.spec import SandboxSpec

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
