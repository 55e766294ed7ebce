"""API keys: made once, shown once, stored only as a hash, compared in constant time.

A key reads ``rlm_<key id>_<secret>``: the key id finds the tenant (an index lookup on a value that
is not secret), and the SHA-256 of the whole key is compared with ``hmac.compare_digest``. The secret
has 256 bits of entropy, so a plain hash is enough (no password stretching needed). Rotating a key
gives a new key id, so the old key stops working at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

_KEY = re.compile(r"^rlm_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class NewKey:
    key: str
    key_id: str
    key_hash: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> NewKey:
    key_id = secrets.token_hex(8)
    key = f"rlm_{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key=key, key_id=key_id, key_hash=hash_key(key))


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key, or None."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key).encode(), stored_hash.encode())


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
