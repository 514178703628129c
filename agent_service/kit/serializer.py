"""arq's job and result serializer: msgpack through msgspec. No pickle on the wire.

arq stores a failed job's exception as its result; msgpack cannot carry exception objects,
so they are reduced to `{"error": type, "message": text}` (the message stays in Redis; the
API shows the task record's error instead).
"""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.msgpack.Encoder(enc_hook=lambda obj: _enc_hook(obj))
_decoder = msgspec.msgpack.Decoder()


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, BaseException):
        return {"error": type(obj).__name__, "message": str(obj)}
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def serialize(obj: dict[str, Any]) -> bytes:
    return _encoder.encode(obj)


def deserialize(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = _decoder.decode(data)
    return result


def storable(obj: Any) -> bool:
    """Whether msgpack can carry `obj` (JSON allows integers beyond 64 bits; msgpack does not)."""
    try:
        _encoder.encode(obj)
    except (TypeError, OverflowError, ValueError):
        return False
    return True
