"""API key material: `sk_live_` + 32 random bytes (URL-safe). Only a SHA-256 hash is stored:
the key has 256 bits of entropy, so a slow hash would add cost without adding safety."""

from __future__ import annotations

import hashlib
import re
import secrets

PREFIX = "sk_live_"
DISPLAY_CHARS = 12
_SHAPE = re.compile(r"^sk_live_[A-Za-z0-9_\-]{43}$")


def generate() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def display_prefix(raw: str) -> str:
    return raw[:DISPLAY_CHARS]


def well_formed(raw: str) -> bool:
    return bool(_SHAPE.match(raw))
