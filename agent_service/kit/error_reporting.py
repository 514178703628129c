"""Errors to Sentry, when SENTRY_DSN is set: the web's 500s and the worker's crashed jobs, tagged with
request id, task id and agent, scrubbed of credentials and user data.

Unset, `sentry_sdk` is never imported and every hook here is a check of one module global.

What reaches Sentry: every log line at ERROR, with its exception if it has one (the web's
`http.unhandled_error`, the runner's `job.crashed`, arq's own "job failed" and uvicorn's
"Exception in ASGI application", asyncio's "Task exception was never retrieved"), and uncaught
exceptions of threads and of the process. What never does: request bodies, cookies,
credential headers, query-string secrets, frame locals, breadcrumbs (arq's INFO line of a job
holds its payload), log `extra`, and the values of the secret settings wherever they appear.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import structlog

from agent_service.config import Settings
from agent_service.errors import ConfigError
from agent_service.kit import tracing

FILTERED = "[Filtered]"
# the only fields lifted into tags (searchable in Sentry); everything else is context at most
TAG_KEYS = ("request_id", "task_id", "job_id", "agent", "process")
_TAGS_ATTR = "__agent_service_tags__"
_DROP_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie", "set-cookie",
                           "x-forwarded-for", "forwarded", "x-real-ip", "idempotency-key"})
_SECRET_NAME = re.compile(r"token|secret|password|passwd|api[_-]?key|auth|session|signature|credential|key$", re.I)
# credentials in any text: API keys, bearer tokens, JWTs
_SECRET_TEXT = re.compile(r"sk_live_[A-Za-z0-9_\-]+|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]+"
                          r"|eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
# keys of the event's own structure whose names look secret-ish but hold none
_KEEP_NAMES = frozenset({"session_id", "query_string"})
_MIN_SECRET_CHARS = 6  # a shorter setting value would filter ordinary words out of messages

_state: dict[str, Any] = {}  # "secrets", "ignore" while reporting is on; empty otherwise


def enabled() -> bool:
    return bool(_state)


def setup(settings: Settings, *, process: str, ignore: tuple[type[BaseException], ...] = ()) -> bool:
    """Start reporting if SENTRY_DSN is set; True if it did. `ignore`: exceptions that are outcomes,
    not bugs (a job that failed for a reason stored on its task)."""
    if not settings.sentry_dsn:
        return False
    try:
        import sentry_sdk
        from sentry_sdk.integrations.atexit import AtexitIntegration
        from sentry_sdk.integrations.dedupe import DedupeIntegration
        from sentry_sdk.integrations.excepthook import ExcepthookIntegration
        from sentry_sdk.integrations.logging import LoggingIntegration
        from sentry_sdk.integrations.starlette import StarletteIntegration
        from sentry_sdk.integrations.threading import ThreadingIntegration
        from sentry_sdk.utils import BadDsn
    except ImportError:
        raise ConfigError("SENTRY_DSN is set but sentry-sdk is not installed "
                          "(pip install 'agent-service[observability]')") from None
    _state.update(secrets=secret_values(settings), ignore=ignore)
    try:
        sentry_sdk.init(
            dsn=settings.sentry_dsn,
            environment=settings.sentry_environment or settings.app_env,
            release=f"agent-service@{tracing.package_version()}",
            # the integrations are chosen, not discovered: the auto-enabled ones would add trace
            # headers to the LLM provider's requests (httpx) and job payloads to events (arq)
            default_integrations=False,
            auto_enabling_integrations=False,
            integrations=[
                # events from ERROR lines; no breadcrumbs (arq's INFO line of a job holds its payload)
                LoggingIntegration(level=None, event_level=logging.ERROR, sentry_logs_level=None),
                StarletteIntegration(transaction_style="url"),
                # not AsyncioIntegration: it reports every exception that leaves a task, also those
                # the awaiting code handles (a transient agent error, retried); a task's error nobody
                # retrieved is logged by asyncio at ERROR, and so reported through the logging one
                ThreadingIntegration(),
                ExcepthookIntegration(),
                DedupeIntegration(),
                AtexitIntegration(),
            ],
            send_default_pii=False,
            include_local_variables=False,
            max_request_body_size="never",
            max_breadcrumbs=0,
            traces_sample_rate=None,  # traces go to OpenTelemetry (kit/tracing.py), not to Sentry
            auto_session_tracking=False,
            ignore_errors=list(ignore),
            before_send=_before_send,  # type: ignore[arg-type]  # sentry's Event TypedDict, handled as a dict
            shutdown_timeout=2,
        )
    except BadDsn:
        _state.clear()
        raise ConfigError("SENTRY_DSN is not a valid DSN (https://<key>@<host>/<project>)") from None
    sentry_sdk.get_global_scope().set_tag("process", process)
    return True


def shutdown(timeout: float = 2.0) -> None:
    """Send what is queued and stop (web lifespan end, worker shutdown)."""
    if not _state:
        return
    import sentry_sdk

    _state.clear()
    sentry_sdk.get_client().close(timeout=timeout)


def job_tags(**tags: str | None) -> AbstractContextManager[None]:
    """Around a job: an exception leaving it carries the job's tags, for the report arq makes of it
    after the job's own context (where the log fields live) is gone."""
    return _tagging(tags) if _state else nullcontext()


@contextmanager
def _tagging(tags: dict[str, str | None]) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:  # broad: only tags what passes through, then re-raises it unchanged
        try:
            setattr(exc, _TAGS_ATTR, {k: v for k, v in tags.items() if v is not None})
        except (AttributeError, TypeError):  # an exception type that takes no attributes
            pass
        raise


def secret_values(settings: Settings) -> list[str]:
    """The values of the secret settings (and the passwords inside the store URLs)."""
    values = [settings.llm_api_key, settings.jwt_secret, settings.metrics_token, settings.bootstrap_admin_password]
    for url in (settings.redis_url, settings.database_url):
        if url:
            values.append(urlsplit(url).password)
    return sorted({v for v in values if v and len(v) >= _MIN_SECRET_CHARS}, key=len, reverse=True)


def _before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    return scrub(event, hint, secrets=_state.get("secrets", []), ignore=_state.get("ignore", ()))


def scrub(event: dict[str, Any], hint: dict[str, Any], *, secrets: list[str],
          ignore: tuple[type[BaseException], ...] = ()) -> dict[str, Any] | None:
    """Tag the event and take out whatever must not leave the process (pure: tests call it)."""
    exc_info = hint.get("exc_info")
    exc = exc_info[1] if exc_info else None
    if ignore and isinstance(exc, ignore):
        return None
    tags: dict[str, Any] = event.setdefault("tags", {})
    context = structlog.contextvars.get_contextvars()
    tags.update({k: str(context[k]) for k in TAG_KEYS if context.get(k) is not None})
    tags.update(getattr(exc, _TAGS_ATTR, None) or {})
    trace_id = tracing.current_trace_id()
    if trace_id:
        tags["trace_id"] = trace_id  # the same request or job in the tracing backend
    record = hint.get("log_record")
    if record is not None and isinstance(record.msg, dict):
        # a structlog line: its event name is the message, its fields are the context
        fields = record.msg
        tags.update({k: str(fields[k]) for k in TAG_KEYS if fields.get(k) is not None})
        event["logentry"] = {"message": str(fields.get("event", "")), "params": []}
        event.setdefault("contexts", {})["log"] = {
            k: v for k, v in fields.items()
            if isinstance(v, str | int | float | bool) and k not in ("event", "exc_info", "timestamp", "level")
            and not _SECRET_NAME.search(k)
        }
    for key in ("extra", "breadcrumbs", "user"):
        event.pop(key, None)
    request = event.get("request")
    if isinstance(request, dict):
        _scrub_request(request)
    cleaned: dict[str, Any] = _scrub_values(event, secrets)
    return cleaned


def _scrub_request(request: dict[str, Any]) -> None:
    for key in ("data", "cookies", "env"):
        request.pop(key, None)
    headers = request.get("headers")
    if isinstance(headers, dict):
        request["headers"] = {k: v for k, v in headers.items() if k.lower() not in _DROP_HEADERS}
    if isinstance(request.get("url"), str):
        request["url"] = request["url"].split("?", 1)[0]
    query = request.get("query_string")
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    if isinstance(query, str) and query:
        pairs = parse_qsl(query, keep_blank_values=True)
        request["query_string"] = urlencode([(k, FILTERED if _SECRET_NAME.search(k) else v) for k, v in pairs])


def _scrub_values(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, FILTERED)
        return _SECRET_TEXT.sub(FILTERED, value)
    if isinstance(value, dict):
        return {k: FILTERED if isinstance(k, str) and isinstance(v, str) and _SECRET_NAME.search(k)
                and k not in _KEEP_NAMES else _scrub_values(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_values(v, secrets) for v in value]
    return value
