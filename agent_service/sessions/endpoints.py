"""/api/v1/sessions: the caller's conversation sessions."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from agent_service.kit import context
from agent_service.kit.endpoint import Docs, Link, Scoped, endpoint, route
from agent_service.kit.io import json_response, read_query
from agent_service.sessions.schemas import SessionDetail, SessionPage, SessionQuery
from agent_service.sessions.service import SessionService

SCOPE = "sessions"


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="List my sessions", tag="Sessions", response=SessionPage, query=SessionQuery,
        errors=(401, 403, 422),
        links=(Link(name="GetFirstSession", operation="get_session",
                    parameters={"session_id": "$response.body#/items/0/id"},
                    description="The messages of the most recently active session of the page."),),
        description="Live conversation sessions, most recently active first; paginate with `limit` and "
        "the opaque `cursor`. A session expires SESSION_EXPIRY_HOURS after its last activity.",
    ),
)
async def list_sessions(request: Request) -> Response:
    svc = SessionService.from_deps(context.deps(request))
    return json_response(await svc.list_sessions(context.owner_id(request), read_query(request, SessionQuery)))


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="Get a session", tag="Sessions", response=SessionDetail, errors=(401, 403, 404),
        description="One of my sessions with its messages (at most SESSION_MAX_MESSAGES, oldest dropped). "
        "Someone else's, or an expired one, is a 404.",
    ),
)
async def get_session(request: Request) -> Response:
    svc = SessionService.from_deps(context.deps(request))
    return json_response(await svc.get_session(context.owner_id(request), request.path_params["session_id"]))


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="Delete a session", tag="Sessions", status=204, errors=(401, 403, 404),
        description="Forget the conversation. Someone else's session is a 404.",
    ),
)
async def delete_session(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    context.audit(request, "DELETE", "session", session_id)
    await SessionService.from_deps(context.deps(request)).delete_session(context.owner_id(request), session_id)
    return Response(status_code=204)


routes = [
    route("/sessions", list_sessions, ["GET"]),
    route("/sessions/{session_id}", get_session, ["GET"]),
    route("/sessions/{session_id}", delete_session, ["DELETE"]),
]
