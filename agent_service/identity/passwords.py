"""Password hashing with hashlib.scrypt and a per-user salt.

Verification of an unknown email runs against a dummy hash, so a wrong password and an
unknown user take the same time (no user-enumeration oracle). scrypt is CPU-bound: it runs
in a thread so one login does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets

N, R, P, DKLEN = 2**14, 8, 1, 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=DKLEN)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, digest = stored.split("$")
        expected = _unb64(digest)
        actual = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected), maxmem=64 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return algo == "scrypt" and hmac.compare_digest(actual, expected)


DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


async def verify_password_async(password: str, stored: str | None) -> bool:
    """Constant work whether or not the user exists."""
    ok = await asyncio.to_thread(verify_password, password, stored or DUMMY_HASH)
    return ok and stored is not None


async def hash_password_async(password: str) -> str:
    return await asyncio.to_thread(hash_password, password)
