"""Reading the settings from the environment (and an optional `.env`): the only module that reads
`os.environ`. A bad value fails at start naming the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from agent_service.config.settings import Settings
from agent_service.errors import ConfigError


def env_name(field: str) -> str:
    return field.upper()


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a minimal `.env`: KEY=VALUE lines, `#` comments, optional surrounding quotes."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _convert(name: str, raw: str, typ: Any) -> Any:
    if raw == "" and _accepts_none(typ):
        return None
    try:
        return msgspec.convert(raw, typ, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{env_name(name)}={raw!r} is invalid: {exc}") from None


def _accepts_none(typ: Any) -> bool:
    return "None" in repr(typ)


def load_settings(
    environ: Mapping[str, str] | None = None, *, env_file: str | Path | None = ".env", **overrides: Any
) -> Settings:
    """Build Settings from `environ` (default: os.environ) over an optional `.env` file.

    Real environment variables win over the file; keyword overrides win over both.
    """
    source: dict[str, str] = {}
    if env_file is not None:
        source.update(read_env_file(Path(env_file)))
    source.update(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(Settings):
        key = env_name(field.name)
        if key in source:
            values[field.name] = _convert(field.name, source[key], field.type)
    values.update(overrides)
    try:
        return Settings(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None


def settings_fields() -> list[tuple[str, Any, Any]]:
    """(ENV_NAME, type, default) for every setting: used to check `.env.example` stays complete."""
    return [
        (env_name(f.name), f.type, f.default) for f in msgspec.structs.fields(Settings)
    ]
