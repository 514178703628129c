"""The audit archive's file format: gzip JSONL, one `AuditRecord` per line, carrying an integrity tag.

The tag is HMAC-SHA256, under a key derived from the server secret, of the file's name and its
whole uncompressed content. It sits in the gzip header's extra field (RFC 1952 FEXTRA, subfield
`AT`), which every gzip reader skips: the file stays a plain `.jsonl.gz` that `zcat` and
`read_archive` read as before, and files written before tags existed read the same way. Only the
tag tells recovery that this service wrote the file, so only a tagged file may ever be the reason
to delete rows from the table (a file planted in the archive directory has no valid tag).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import TypeVar

import msgspec

from agent_service.audit.schemas import AuditRecord
from agent_service.config import Settings
from agent_service.identity.service import server_secret
from agent_service.kit.private_files import open_private

# a fixed label: the archive key is never the JWT key itself, so a tag is no token signature
KEY_LABEL = b"agent-service/audit-archive/hmac-sha256/v1"
TAG_FIELD = b"AT"
TAG_SIZE = hashlib.sha256().digest_size
# recovery reads a candidate whole into memory: a planted gzip bomb stops here, not in the OOM killer
MAX_RECOVERY_BYTES = 256 * 1024 * 1024
_FEXTRA, _FNAME = 4, 8
_HEADER = struct.Struct("<4sIBB")  # magic+method+flags, mtime, extra flags, OS
_encoder = msgspec.json.Encoder()
_T = TypeVar("_T")


class ArchiveFileCorrupt(Exception):
    """A final archive file is unreadable or does not hold the rows its name says."""


def derive_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), KEY_LABEL, hashlib.sha256).digest()


def archive_key(settings: Settings) -> bytes:
    """The key of this deployment's archive tags."""
    return derive_key(server_secret(settings))  # JWT_SECRET, or development's generated one


def tag_of(key: bytes, name: str, content: bytes) -> bytes:
    """The name is signed too: a genuine file renamed to cover other ids or another day fails."""
    return hmac.new(key, name.encode() + b"\n" + content, hashlib.sha256).digest()


def encode_records(records: list[AuditRecord]) -> bytes:
    return b"".join(_encoder.encode(r) + b"\n" for r in records)


def gzip_bytes(name: str, content: bytes, tag: bytes | None) -> bytes:
    """One gzip member (mtime 0, so the same batch gives the same bytes), the tag in its header."""
    flags = _FNAME | (_FEXTRA if tag is not None else 0)
    header = _HEADER.pack(b"\x1f\x8b\x08" + bytes([flags]), 0, 2, 255)
    if tag is not None:
        extra = TAG_FIELD + struct.pack("<H", len(tag)) + tag
        header += struct.pack("<H", len(extra)) + extra
    header += name.removesuffix(".gz").encode("latin-1") + b"\0"  # FNAME, as gzip.GzipFile writes it
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(content) + deflate.flush()
    return header + body + struct.pack("<II", zlib.crc32(content), len(content) & 0xFFFFFFFF)


def write_tmp(path: Path, data: bytes) -> None:
    """Create `path` 0600 (never an existing one), write and fsync it."""
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, "wb") as raw:
        raw.write(data)
        raw.flush()
        os.fsync(raw.fileno())


def header_tag(data: bytes) -> bytes | None:
    """The tag in the first member's header, or None (an untagged or foreign file)."""
    if len(data) < _HEADER.size + 2 or data[:3] != b"\x1f\x8b\x08" or not data[3] & _FEXTRA:
        return None
    (xlen,) = struct.unpack_from("<H", data, _HEADER.size)
    extra, at = data[_HEADER.size + 2 : _HEADER.size + 2 + xlen], 0
    while at + 4 <= len(extra):
        field, (size,) = extra[at : at + 2], struct.unpack_from("<H", extra, at + 2)
        if field == TAG_FIELD:
            value = extra[at + 4 : at + 4 + size]
            return value if len(value) == TAG_SIZE else None
        at += 4 + size
    return None


class ArchiveFile(msgspec.Struct, frozen=True):
    tag: bytes | None
    content: bytes  # every member, decompressed and CRC-checked

    def verifies(self, key: bytes, name: str) -> bool:
        return self.tag is not None and hmac.compare_digest(self.tag, tag_of(key, name, self.content))

    def lines(self) -> list[bytes]:
        return [line for line in self.content.split(b"\n") if line.strip()]


def load(path: Path, *, limit: int = MAX_RECOVERY_BYTES) -> ArchiveFile:
    """A final file as recovery reads it: a regular file (a symlink is not followed), whole, at most
    `limit` bytes uncompressed; anything else raises ArchiveFileCorrupt."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:  # ELOOP: a symlink planted under an archive's name
        raise ArchiveFileCorrupt(f"{path.name}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ArchiveFileCorrupt(f"{path.name}: not a regular file")
        raw = fh.read(limit + 1)
    try:
        if len(raw) > limit:
            raise ArchiveFileCorrupt(f"{path.name}: more than {limit} bytes")
        with gzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb") as gz:
            content = gz.read(limit + 1)
            # reading to the end checks every member's CRC and length
            if len(content) > limit:
                raise ArchiveFileCorrupt(f"{path.name}: more than {limit} bytes uncompressed")
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ArchiveFileCorrupt(f"{path.name}: {exc}") from exc
    return ArchiveFile(tag=header_tag(raw), content=content)


def read_lines(path: Path, typ: type[_T]) -> list[_T]:
    try:
        with gzip.open(path, "rb") as fh:  # reading to the end checks the gzip CRC and length
            return [msgspec.json.decode(line, type=typ) for line in fh if line.strip()]
    except (OSError, EOFError, msgspec.DecodeError) as exc:
        raise ArchiveFileCorrupt(f"{path.name}: {exc}") from exc
