"""Component schemas from the msgspec Structs, with what msgspec's own schema leaves out.

msgspec documents a `datetime` without a `tz=True` constraint as a bare string, since such a
value could be naive; every timestamp this API sends is UTC with an offset, so each `datetime`
field gets `format: date-time` (generated clients then parse it into a datetime, and schemathesis
checks the format of every answer). Query Structs only describe parameters: their schemas are
made apart and never become components.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import inspect

REF = "#/components/schemas/{name}"
# an opaque cursor is kit/pagination's URL-safe base64 without padding
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"


def _unwrap(t: inspect.Type) -> inspect.Type:
    while isinstance(t, inspect.Metadata):
        t = t.type
    return t


def _is_datetime(t: inspect.Type) -> bool:
    t = _unwrap(t)
    if isinstance(t, inspect.UnionType):
        return any(isinstance(_unwrap(a), inspect.DateTimeType) for a in t.types)
    return isinstance(t, inspect.DateTimeType)


def _structs(t: inspect.Type, found: dict[str, inspect.StructType]) -> None:
    """Every Struct reachable from `t` (fields, unions, collections), by component name."""
    t = _unwrap(t)
    if isinstance(t, inspect.StructType):
        if t.cls.__name__ in found:
            return
        found[t.cls.__name__] = t
        for f in t.fields:
            _structs(f.type, found)
    elif isinstance(t, inspect.UnionType):
        for a in t.types:
            _structs(a, found)
    elif isinstance(t, inspect.CollectionType | inspect.VarTupleType):
        _structs(t.item_type, found)
    elif isinstance(t, inspect.DictType):
        _structs(t.value_type, found)
    elif isinstance(t, inspect.TupleType):
        for a in t.item_types:
            _structs(a, found)


def _date_time(prop: dict[str, Any]) -> None:
    for alt in [prop, *prop.get("anyOf", [])]:
        if alt.get("type") == "string" and "format" not in alt:
            alt["format"] = "date-time"


def schemas(types: list[type], ref_template: str = REF) -> dict[str, dict[str, Any]]:
    """The component schemas of `types` and every Struct they reach, timestamps formatted."""
    _, components = msgspec.json.schema_components(types, ref_template=ref_template)
    found: dict[str, inspect.StructType] = {}
    for info in inspect.multi_type_info(types):
        _structs(info, found)
    for name, info in found.items():
        props = components.get(name, {}).get("properties", {})
        for f in info.fields:
            if f.encode_name in props and _is_datetime(f.type):
                _date_time(props[f.encode_name])
    return components


def query_parameters(query: type) -> list[dict[str, Any]]:
    """One `in: query` parameter per field of a query Struct, its schema inline."""
    schema = schemas([query], "#/$defs/{name}")[query.__name__]
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop_schema = _nullable_stripped(prop)
        if name == "cursor":
            prop_schema = {**prop_schema, "pattern": CURSOR_PATTERN}
        params.append({"name": name, "in": "query", "required": name in required, "schema": prop_schema,
                       "description": prop.get("description", f"The {name.replace('_', ' ')}.")})
    return params


def _nullable_stripped(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is simply absent when unset: document the non-null alternative."""
    alts = prop.get("anyOf")
    if alts:
        non_null = [a for a in alts if a.get("type") != "null"]
        if len(non_null) == 1:
            rest = {k: v for k, v in prop.items() if k != "anyOf" and not (k == "default" and v is None)}
            return {**rest, **non_null[0]}
    return prop


def form_fields(form: type) -> list[str]:
    """The field names of a form Struct, as the form sends them."""
    return [f.encode_name for f in msgspec.structs.fields(form)]
