"""structlog setup: JSON when stdout is not a TTY; request_id / job_id bound via contextvars.

Standard-library loggers (uvicorn, arq) are routed through the same processors so every
line of a process has one format.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import msgspec
import structlog
from structlog.tracebacks import ExceptionDictTransformer

from agent_service.config import Settings

_SECRET_KEYS = ("password", "token", "api_key", "authorization", "secret", "x-api-key")


@functools.lru_cache(maxsize=4096)
def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(s in lowered for s in _SECRET_KEYS)


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Belt and braces: never let a credential-looking field reach a log line."""
    for key in [k for k in event if _is_secret(k)]:  # the field names repeat: the verdict is memoised
        event[key] = "[redacted]"
    return event


def _fallback(obj: Any) -> Any:
    """What JSON has no type for: as structlog's own renderer shows it."""
    own = getattr(obj, "__structlog__", None)
    return own() if callable(own) else repr(obj)


_line_encoder = msgspec.json.Encoder(enc_hook=_fallback)


def _dumps(event: dict[str, Any], **_: Any) -> str:
    """A line's JSON, compact, by msgspec (several times cheaper than json.dumps, on every request);
    what msgspec cannot encode (a dict with non-text keys) goes to json.dumps as before."""
    try:
        return _line_encoder.encode(event).decode()
    except (TypeError, ValueError, OverflowError):
        return json.dumps(event, default=_fallback)


def configure_logging(settings: Settings, process: str = "app", *, stream: TextIO | None = None,
                      level: str | None = None) -> None:
    use_json = settings.log_json if settings.log_json is not None else not sys.stdout.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stdout.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    # tracebacks without frame locals: locals hold request data, keys and tokens
    exceptions: Any = structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)) \
        if use_json else _identity
    structlog.configure(
        # a line below the level is dropped before anything is formatted (stamped, merged, redacted);
        # an INFO or DEBUG line of ours is rendered here and written by _Direct with no LogRecord on
        # the way; warnings and errors take the stdlib path (error reporting reads their records)
        processors=[structlog.stdlib.filter_by_level, *shared, _Route(exceptions, renderer)],
        logger_factory=_Direct,
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(  # the lines of uvicorn, arq and other stdlib loggers
        foreign_pre_chain=[*shared, structlog.processors.format_exc_info],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, exceptions, renderer],
    )
    # no line shows a record's caller, thread or process: not collecting them saves a stack walk and
    # more per line (the logging HOWTO's "Optimization")
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    global _handler
    handler = _handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "arq.worker", "arq.jobs"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # our own access log replaces uvicorn's
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    structlog.contextvars.bind_contextvars(process=process)


def _identity(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    return event


_handler: logging.StreamHandler[TextIO] | None = None  # the one handler configure_logging installed
_DIRECT = frozenset({"debug", "info"})


class _Route:
    """The last processor: an INFO or DEBUG line rendered to its text, anything louder handed on
    for the stdlib logger (and through it to the handler's formatter and to error reporting)."""

    def __init__(self, *final: Any) -> None:
        self._final = final

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        if method not in _DIRECT:
            return structlog.stdlib.ProcessorFormatter.wrap_for_formatter(logger, method, event)
        out: Any = event
        for processor in self._final:
            out = processor(logger, method, out)
        return out


class _Direct:
    """The logger under our structlog loggers. An INFO or DEBUG line arrives rendered and goes
    straight to the handler's stream (the stdlib path would build a LogRecord and format the line
    again: three times its cost, on every request); louder ones go to the stdlib logger of the
    same name. The level is that logger's either way, so `logging` configuration applies."""

    def __init__(self, name: str | None = None, *_: Any) -> None:
        self.name = name or "root"
        self._std = logging.getLogger(name)

    @property
    def disabled(self) -> bool:
        return self._std.disabled

    def isEnabledFor(self, level: int) -> bool:  # what structlog's filter_by_level asks
        return self._std.isEnabledFor(level)

    def getEffectiveLevel(self) -> int:
        return self._std.getEffectiveLevel()

    def _write(self, line: str, *_: Any, **__: Any) -> None:
        handler = _handler
        if handler is None:
            return
        handler.acquire()
        try:
            handler.stream.write(line + handler.terminator)
            handler.flush()
        except Exception:  # a closed or broken stream loses the line, never the request
            handler.handleError(logging.makeLogRecord({"msg": line}))
        finally:
            handler.release()

    debug = info = _write

    def __getattr__(self, method: str) -> Any:  # warning, error, critical, exception…: the stdlib logger's
        return getattr(self._std, method)


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)
