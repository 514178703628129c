"""Shared body types: the request and query bases, paging, problem details."""

from __future__ import annotations

from typing import Annotated

import msgspec


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every request body: unknown fields are a 422, not silently dropped."""


class Query(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of query-parameter sets."""


class PageQuery(Query):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    cursor: Annotated[str, msgspec.Meta(max_length=512)] | None = None


class FieldError(msgspec.Struct, kw_only=True):
    path: str
    message: str


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    code: str | None = None
    errors: list[FieldError] = msgspec.field(default_factory=list)
