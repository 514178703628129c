"""The prose of the OpenAPI document: the overview and the tags, in the order the docs show them."""

DESCRIPTION = """
Host AI agents behind an HTTP API: invoke an agent **synchronously**, **stream** its answer as
Server-Sent Events, or **queue** the invocation as a background job and follow it — status,
progress, live events, result, cancel.

## Features
- Agents: the deterministic `echo` agent and `simple_llm_agent` (any OpenAI-compatible server),
  plus your own agents loaded by dotted path.
- Background jobs on arq/Redis with retries (exponential backoff, full jitter), soft and hard
  time limits, priorities, scheduled runs and idempotent submissions.
- Conversation sessions, an audit log, maintenance jobs, Prometheus metrics and a dashboard.

## Authentication
Every operation except health, this document and the docs pages needs one of:
- `Authorization: Bearer <JWT>` — get one from `POST /api/v1/auth/token` (JSON, or the OAuth2
  password form the **Authorize** button uses); refresh with `/auth/refresh`.
- `X-API-Key: sk_live_…` — mint keys with `POST /api/v1/api-keys`; each key carries scopes and a
  rate-limit tier.

Someone else's resource answers **404**, never 403.

## Rate limits
Per caller and tier (`free` 100/min, `pro` 1000/min, `enterprise` 10000/min; stream routes less),
shared by every server process. Responses carry `RateLimit-Limit`, `RateLimit-Remaining` and
`RateLimit-Reset`; over the limit is a `429` with `Retry-After`.

## Getting started: the async flow
1. `POST /api/v1/agents/echo/invoke-async` with `{"message": "Hello"}` → `202` with `task_id`
   and a `Location`/`status_url`.
2. `GET /api/v1/agents/tasks/{task_id}` until `state` is `SUCCESS` (or follow
   `GET /api/v1/agents/tasks/{task_id}/events` live).
3. Read `result.content`. Cancel with `POST /api/v1/agents/tasks/{task_id}/cancel`.

## Following many tasks over one WebSocket
`GET /api/v1/ws` is a WebSocket (OpenAPI has no WebSocket operations, so it is described here).
Authenticate with the `X-API-Key` or `Authorization` header of the upgrade or, from a browser
(which cannot set those), with a first message `{"type": "auth", "token": "<JWT or API key>"}`
within 5 s (else close 4401); the caller needs `tasks:read` (else 4403). A page's `Origin` must be
one CORS_ORIGINS allows or this server's own, else the upgrade is refused with 403. The server
says `{"type": "ready", …}`; then send `{"type": "subscribe", "task_id": "…", "last_event_id": "…"}`
(the id is optional: resume after it) and `{"type": "unsubscribe", "task_id": "…"}`, as many as
you like. Each event arrives as `{"type": "event", "task_id", "id", "event"}`, `event` being the
same typed event, with the same `id`, as `GET /api/v1/agents/tasks/{task_id}/events` sends;
`{"type": "unsubscribed", "reason": "finished"}` follows a task's last one. A bad message or
subscription gets `{"type": "error", "code", "status", "detail", "task_id"?}` and the connection
goes on (someone else's task: `task_not_found`, 404). Bounds: a connection is one of the
STREAM_MAX_PER_USER live streams (beyond: `too_many_streams`, then close 1013), follows at most
100 tasks, and each `subscribe` counts against the rate limit; after STREAM_MAX_SECONDS the server
sends `{"type": "reconnect", "last_event_ids": {…}}` and closes with 4000: connect again and
subscribe with those ids to miss nothing. `{"type": "ping"}` is answered with `pong`.

Errors are `application/problem+json` (RFC 9457) with the JSON path of each bad field.
""".strip()

TAGS = [
    {"name": "Health", "description": "Liveness, readiness and this document. Public."},
    {"name": "Authentication", "description": "Sign in, rotate and revoke tokens; who am I."},
    {"name": "Agents", "description": "List agents and invoke them synchronously or as a stream."},
    {"name": "Background Jobs", "description": "Queue invocations and follow, list or cancel tasks."},
    {"name": "Sessions", "description": "Conversation sessions whose history agents receive."},
    {"name": "Webhooks", "description": "Signed, retried deliveries of task events to your URLs, and their log."},
    {"name": "Protocols", "description": "A2A, MCP and AG-UI: the agents and tasks for clients of those protocols."},
    {"name": "API Keys", "description": "Mint, list, rotate and revoke API keys."},
    {"name": "Audit Logs", "description": "Who did what, when, from where."},
    {"name": "Admin", "description": "Users, the job system, maintenance, metrics and the dashboard."},
]

# identity's scopes (agent_service/identity/schemas.py SCOPES; a test keeps the two equal), as the
# OAuth2 scheme lists them: an API key holds some of them, a signed-in user every non-admin one
SCOPES = {
    "agents:invoke": "Invoke agents: synchronously, as a stream or queued as a background task.",
    "tasks:read": "Read my tasks: status, result, list and live events.",
    "tasks:cancel": "Cancel my queued or running tasks.",
    "sessions": "Use conversation sessions (`session_id`) and list, read or delete them.",
    "api_keys:manage": "Mint, list, rotate and revoke my API keys.",
    "audit:read": "Read the audit log (granted by admins only).",
    "admin": "Everything, everyone's: users, every task, the job system and maintenance (admins only).",
}
