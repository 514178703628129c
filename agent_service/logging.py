"""structlog setup: JSON when stdout is not a TTY; request_id / job_id bound via contextvars.

Standard-library loggers (uvicorn, arq) are routed through the same processors so every
line of a process has one format.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, TextIO

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
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stdout.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        # a line below the level is dropped before anything is formatted (stamped, merged, redacted)
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.processors.format_exc_info],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # tracebacks without frame locals: locals hold request data, keys and tokens
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
            if use_json else _identity,  # type: ignore[list-item]
            renderer,
        ],
    )
    # no line shows a record's caller, thread or process: not collecting them saves a stack walk and
    # more per line (the logging HOWTO's "Optimization")
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stdout)
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


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)
