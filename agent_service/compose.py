"""What every domain contributes to a process, listed once for both entry points: the API routes
(app.py) and the maintenance jobs (worker.py runs them as crons; app.py lists and triggers them).
An entry-point module: it may import anything, and only the entry points import it."""

from __future__ import annotations

from starlette.routing import BaseRoute

from agent_service.agents import endpoints as agents
from agent_service.agents import service as agent_service
from agent_service.audit import endpoints as audit
from agent_service.audit import jobs as audit_jobs
from agent_service.identity import endpoints as identity
from agent_service.identity import jobs as identity_jobs
from agent_service.kit.deps import Deps
from agent_service.kit.maintenance import MaintenanceJob, registry
from agent_service.ops import endpoints as ops
from agent_service.ops import jobs as ops_jobs
from agent_service.protocols import a2a_endpoints as a2a
from agent_service.protocols import agui_endpoints as agui
from agent_service.protocols import mcp_endpoints as mcp
from agent_service.sessions import endpoints as sessions
from agent_service.sessions import jobs as sessions_jobs
from agent_service.tasks import admin_endpoints as task_admin
from agent_service.tasks import batch_endpoints as task_batches
from agent_service.tasks import endpoints as tasks
from agent_service.tasks import lifecycle
from agent_service.tasks import ws_endpoints as task_sockets
from agent_service.usage import endpoints as usage
from agent_service.usage import service as usage_service
from agent_service.webhooks import endpoints as webhooks
from agent_service.webhooks import service as webhook_service
from agent_service.webhooks.jobs import Waker

MAINTENANCE: tuple[MaintenanceJob, ...] = (
    sessions_jobs.CLEANUP_EXPIRED_SESSIONS,
    audit_jobs.ARCHIVE_OLD_AUDIT_LOGS,
    identity_jobs.CLEANUP_TOKEN_BLACKLIST,
    ops_jobs.CLEANUP_TEMP_FILES,
)


def api_routes() -> list[BaseRoute]:
    """Everything under /api/v1. Tasks first: "/agents/tasks/..." must not be taken for an agent id."""
    return [*tasks.routes, *task_batches.routes, *webhooks.routes, *agents.routes, *identity.routes, *ops.api_routes,
            *task_admin.routes, *audit.routes, *sessions.routes, *a2a.routes, *mcp.routes, *agui.routes,
            *task_sockets.routes, *usage.routes]


def root_routes() -> list[BaseRoute]:
    """Domain routes outside /api/v1, at paths a protocol fixes (A2A's well-known agent card)."""
    return [*a2a.root_routes]


def provide_parts(deps: Deps) -> None:
    """What the composition root decides for every process (web and worker alike)."""
    deps.provide(registry, MAINTENANCE)
    # a task event or a redelivery written here queues a delivery pass at once (webhooks/jobs.py)
    wake = deps.part(Waker.of).poke
    deps.provide(lifecycle.outbox_listener, wake)
    deps.provide(webhook_service.wakeup, wake)
    sync_meter: agent_service.Meter = usage_service.SyncMeter(deps)  # budgets and records for sync calls
    deps.provide(agent_service.meter, sync_meter)
