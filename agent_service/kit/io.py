"""Decode request bodies into Structs (listing every bad field) and encode responses."""

from __future__ import annotations

import functools
import re
from typing import Any, TypeVar

import msgspec
from msgspec import inspect
from starlette.requests import Request
from starlette.responses import Response

from agent_service.errors import BadRequest, MalformedJSON, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

T = TypeVar("T", bound=msgspec.Struct)

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_encoder = msgspec.json.Encoder()


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body exceeds {limit} bytes.")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes.")
    return bytes(body)


def field_errors(obj: Any, typ: type[msgspec.Struct], prefix: str = "$") -> list[dict[str, str]]:
    """Every problem with `obj` as a `typ`, not just the first one msgspec would report."""
    if not isinstance(obj, dict):
        return [{"path": prefix, "message": "Expected a JSON object"}]
    errors: list[dict[str, str]] = []
    fields = {f.encode_name: f for f in msgspec.structs.fields(typ)}
    for key in obj:
        if key not in fields:
            errors.append({"path": f"{prefix}.{key}", "message": "Unknown field"})
    for name, f in fields.items():
        if name not in obj:
            if f.required:
                errors.append({"path": f"{prefix}.{name}", "message": "Field required"})
            continue
        try:
            msgspec.convert(obj[name], f.type)
        except msgspec.ValidationError as exc:
            m = _AT.match(str(exc))
            msg, sub = (m.group("msg"), m.group("path") or "") if m else (str(exc), "")
            errors.append({"path": f"{prefix}.{name}{sub}", "message": msg})
    return errors


def read_query(request: Request, typ: type[T]) -> T:
    """Query parameters as a Struct (strings converted to the field types); errors name `query.x`."""
    params: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        params[key] = value if key not in params else [*([params[key]] if not isinstance(params[key], list)
                                                        else params[key]), value]
    # lenient conversion would read `?until=null` as "no until": a parameter is given or absent
    odd = [{"path": f"query.{k}", "message": "`null` is not a value; leave the parameter out"}
           for k, v in params.items() if v == "null"]
    # and would take `?until=0.5` for a Unix time: a time here is RFC 3339, as documented
    odd += [{"path": f"query.{k}", "message": "Expected an RFC 3339 date-time"}
            for k in _datetime_fields(typ) if isinstance(params.get(k), str) and not _RFC3339.match(params[k])]
    if not odd:
        try:
            return msgspec.convert(params, typ, strict=False)
        except msgspec.ValidationError:
            pass
    named = {e["path"] for e in odd}
    rest = {k: v for k, v in params.items() if f"query.{k}" not in named}
    lenient = [] if not rest else [{"path": "query" + e["path"][1:], "message": e["message"]}
                                   for e in _lenient_errors(rest, typ)]
    # every bad parameter named at once (the odd ones first)
    errors = odd + [e for e in lenient if e["path"] != "query" or not odd]
    raise ValidationFailed("The query parameters are invalid.", errors=errors)


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


@functools.cache
def _datetime_fields(typ: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(f.encode_name for f in msgspec.structs.fields(typ) if "datetime" in repr(f.type))


def _lenient_errors(obj: dict[str, Any], typ: type[msgspec.Struct]) -> list[dict[str, str]]:
    fields = {f.encode_name: f for f in msgspec.structs.fields(typ)}
    errors = [{"path": f"$.{k}", "message": "Unknown parameter"} for k in obj if k not in fields]
    for name, f in fields.items():
        if name in obj:
            try:
                msgspec.convert(obj[name], f.type, strict=False)
            except msgspec.ValidationError as exc:
                errors.append({"path": f"$.{name}", "message": str(exc).split(" - at ")[0]})
    return errors or [{"path": "$", "message": "Invalid parameters"}]


def convert(obj: dict[str, Any], typ: type[T]) -> T:
    """Validate an already-parsed object (e.g. a form) with the same per-field errors as JSON."""
    try:
        return msgspec.convert(obj, typ)
    except msgspec.ValidationError as exc:
        errors = field_errors(obj, typ) or [{"path": "$", "message": str(exc)}]
        raise ValidationFailed("The request body is invalid.", errors=errors) from None


MAX_DEPTH = 64  # deeper JSON is refused before parsing: no recursion limit is ever reached


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether brackets nest deeper than `limit` outside strings (one pass, no parsing)."""
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def _wants_int(t: inspect.Type) -> bool:
    """An int and no float is accepted here (so a float's value would be lost to a float field)."""
    kinds = t.types if isinstance(t, inspect.UnionType) else (t,)
    kinds = tuple(_bare(k) for k in kinds)
    return any(isinstance(k, inspect.IntType) for k in kinds) and not any(isinstance(k, inspect.FloatType)
                                                                       for k in kinds)


def _bare(t: inspect.Type) -> inspect.Type:
    while isinstance(t, inspect.Metadata):
        t = t.type
    return t


def _integral(obj: Any, t: inspect.Type) -> Any:
    """`obj` with each integral float (30.0) that stands where `t` wants an int made an int: JSON
    Schema's `integer` is any number with a zero fractional part, and generated clients send it so.
    A float with a fraction (30.5) is left as it is, for the usual 422."""
    t = _bare(t)
    if isinstance(obj, float):
        return int(obj) if obj.is_integer() and _wants_int(t) else obj
    if isinstance(t, inspect.UnionType):  # the one alternative that can hold a container, if any
        holders = [a for a in map(_bare, t.types) if not isinstance(a, inspect.NoneType | inspect.IntType |
                                                                        inspect.FloatType | inspect.StrType |
                                                                        inspect.BoolType)]
        return _integral(obj, holders[0]) if len(holders) == 1 else obj
    if isinstance(obj, dict):
        if isinstance(t, inspect.StructType):
            fields = {f.encode_name: f.type for f in t.fields}
            return {k: _integral(v, fields[k]) if k in fields else v for k, v in obj.items()}
        if isinstance(t, inspect.DictType):
            return {k: _integral(v, t.value_type) for k, v in obj.items()}
    elif isinstance(obj, list):
        if isinstance(t, inspect.CollectionType | inspect.VarTupleType):
            return [_integral(v, t.item_type) for v in obj]
        if isinstance(t, inspect.TupleType) and len(t.item_types) == len(obj):
            return [_integral(v, it) for v, it in zip(obj, t.item_types, strict=True)]
    return obj


@functools.cache
def _type_info(typ: type) -> inspect.Type:
    return inspect.type_info(typ)


def decode(raw: bytes, typ: type[T]) -> T:
    if too_deep(raw):
        raise BadRequest(f"The request body nests deeper than {MAX_DEPTH} levels.", code="json_too_deep")
    try:
        return msgspec.json.decode(raw, type=typ)
    except msgspec.ValidationError as first:
        try:
            obj = _integral(msgspec.json.decode(raw), _type_info(typ))
        except msgspec.DecodeError:
            raise MalformedJSON("The request body is not valid JSON.") from None
        try:  # the same strict decode, of the body with its integral floats made ints
            return msgspec.json.decode(_encoder.encode(obj), type=typ)
        except msgspec.ValidationError:
            pass
        errors = field_errors(obj, typ) or [{"path": "$", "message": str(first)}]
        raise ValidationFailed("The request body is invalid.", errors=errors) from None
    except msgspec.DecodeError:
        raise MalformedJSON("The request body is not valid JSON.") from None


async def read_json(request: Request, typ: type[T], *, limit: int) -> T:
    if not _is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType("Send the body as application/json.")
    return decode(await read_body(request, limit), typ)


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None, media_type: str = "application/json"
) -> Response:
    return Response(_encoder.encode(obj), status_code=status, headers=headers, media_type=media_type)
