"""Standard Webhooks signatures (https://www.standardwebhooks.com): `webhook-id`,
`webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">` under a `whsec_<base64 key>` secret. Several secrets (during a
rotation) give several space-separated signatures; a receiver accepts the message if any matches.
Receivers verify with any Standard Webhooks library, e.g. Python's `standardwebhooks`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
KEY_BYTES = 24


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def hint(secret: str) -> str:
    """Enough of a secret to tell two apart, not enough to sign with."""
    return secret[: len(PREFIX) + 4] + "…"


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secrets_: list[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets_),
    }
