"""Export of tasks with their results (GET /agents/tasks/export) as JSON lines or CSV, in constant
memory however many there are.

Rows come from SQL a page at a time (tasks/export_repository.py, keyset-paginated), each page's
kept results from Redis in one MGET, and each page leaves as one chunk of the answer before the
next is read: the web process holds one page, and a slow reader slows the reads (the server's send
waits for the socket) instead of filling memory. Redis keeps a result for JOB_RESULT_TTL: an older
task is exported with `result: null`, as its status shows it.

The first page is read before the answer starts, so a store that is down is a plain 503. A failure
after that cuts the body short (the transfer does not complete, which every client reports) rather
than ending a file that would look whole. CSV has fixed columns (TaskExportRow's, `result` as JSON
with its `content` beside it), quoted by the csv module; a cell that a spreadsheet would run as a
formula (starting with = + - @, a tab or a CR) gets a leading `'`. The JSON lines are exact.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec

from agent_service.errors import Forbidden, ValidationFailed
from agent_service.kit.deps import Deps
from agent_service.kit.redis import redis_guard
from agent_service.tasks import lifecycle
from agent_service.tasks.export_repository import export_pages
from agent_service.tasks.repository import TaskRecord
from agent_service.tasks.schemas import (
    STATUS_WORDS,
    ExportQuery,
    JobResult,
    TaskExportRow,
    TaskResult,
)

PAGE = 250  # rows per SQL read, per MGET and per chunk of the answer
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv"}
WITH_RESULT = ("SUCCESS", "REVOKED")  # the states whose result Redis may keep (a cancelled stream's partial one)
CSV_COLUMNS = (*(f.encode_name for f in msgspec.structs.fields(TaskExportRow) if f.name != "result"),
               "result_content", "result")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

_json = msgspec.json.Encoder()
_result = msgspec.json.Decoder(TaskResult)


class _Input(msgspec.Struct):
    """What an export shows of a stored job payload (AgentJob): its input."""

    message: str | None = None


_input = msgspec.json.Decoder(_Input)


class Export:
    """An export that has read its first page: what to call it and its body. `rows` counts the
    tasks sent so far; `complete` turns true when the last one was."""

    def __init__(self, deps: Deps, fmt: str, first: list[TaskExportRow], rest: AsyncIterator[list[TaskRecord]]) -> None:
        self._deps, self._format, self._first, self._rest = deps, fmt, first, rest
        self.media_type = MEDIA_TYPES[fmt]
        self.filename = f"tasks-{deps.clock().strftime('%Y-%m-%d')}.{fmt}"
        self.rows = 0
        self.complete = False

    async def chunks(self) -> AsyncIterator[bytes]:
        encode = _jsonl if self._format == "jsonl" else _csv
        if self._format == "csv":
            yield _csv_text([CSV_COLUMNS])
        page, self._first = self._first, []
        while True:
            if page:
                yield encode(page)
                self.rows += len(page)
            records = await anext(self._rest, None)
            if records is None:
                break
            page = await _rows(self._deps, records)
        self.complete = True


async def open_export(deps: Deps, q: ExportQuery, *, owner_id: str, is_admin: bool) -> Export:
    """Check the filters and read the first page (a store that is down is a 503 here, before any byte)."""
    if not is_admin and q.owner not in (None, owner_id):
        raise Forbidden("Only admins may export other users' tasks.", code="insufficient_scope")
    if q.since is not None and q.until is not None and q.since >= q.until:
        raise ValidationFailed("`since` must be before `until`.",
                               errors=[{"path": "query.until", "message": "Must be later than `since`"}])
    pages = export_pages(deps.db, owner_id=q.owner if is_admin else owner_id, state=q.state,
                         agent_id=q.agent_id, since=q.since, until=q.until, size=PAGE)
    first = await anext(pages, None)
    return Export(deps, q.format, await _rows(deps, first) if first else [], pages)


async def _rows(deps: Deps, records: list[TaskRecord]) -> list[TaskExportRow]:
    results = await _results(deps, [r.id for r in records if r.state in WITH_RESULT])
    return [_row(r, results.get(r.id)) for r in records]


@redis_guard
async def _results(deps: Deps, task_ids: Sequence[str]) -> dict[str, TaskResult]:
    """The kept results of these tasks, in one round trip."""
    if not task_ids:
        return {}
    live = lifecycle.live(deps)
    raw: list[bytes | None] = await deps.redis.mget([live.result_key(t) for t in task_ids])
    found: dict[str, TaskResult] = {}
    for task_id, value in zip(task_ids, raw, strict=True):
        if value is not None:
            try:
                found[task_id] = _result.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # not a result this version can read: exported as none, like an expired one
    return found


def _row(r: TaskRecord, result: TaskResult | None) -> TaskExportRow:
    if isinstance(result, JobResult):
        result.chunks = None  # `content` is the whole answer
    return TaskExportRow(
        task_id=r.id, owner_id=r.owner_id, agent_id=r.agent_id, kind=r.kind, state=r.state,  # type: ignore[arg-type]
        status=STATUS_WORDS[r.state], priority=r.priority, tries=r.tries, retries=r.retries,
        worker_losses=r.worker_losses, error=r.error, error_code=r.error_code, session_id=r.session_id,
        request_id=r.request_id, message=_message(r.payload), created_at=r.created_at, started_at=r.started_at,
        completed_at=r.completed_at, scheduled_for=r.scheduled_for, result=result,
    )


def _message(payload: str | None) -> str | None:
    if not payload:
        return None
    try:
        return _input.decode(payload).message
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _jsonl(rows: list[TaskExportRow]) -> bytes:
    return b"".join(_json.encode(row) + b"\n" for row in rows)


def _csv(rows: list[TaskExportRow]) -> bytes:
    return _csv_text([_csv_cells(row) for row in rows])


def _csv_cells(row: TaskExportRow) -> list[str]:
    values: dict[str, Any] = msgspec.to_builtins(row)
    result = values.pop("result")
    values["result_content"] = result.get("content") if isinstance(result, dict) else None
    values["result"] = _json.encode(result).decode() if result is not None else None
    return [_cell(values[name]) for name in CSV_COLUMNS]


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_text(lines: list[Sequence[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(lines)  # RFC 4180 line ends; quoting as needed
    return out.getvalue().encode()
