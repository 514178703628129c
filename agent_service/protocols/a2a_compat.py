"""A2A v0.3 on the same endpoint: its method names (`message/send`, `tasks/get`, …) map onto the
v1.0 operations, its params are rewritten into v1.0's before they are read, and v1.0's answers
are rewritten into v0.3's shapes after (`kind` discriminators, lower-case states and roles,
`final` on status updates, `kind: "text"` parts). Error codes are the same in both."""

from __future__ import annotations

from typing import Any

import msgspec

from agent_service.protocols.a2a_schemas import TERMINAL

METHODS = {
    "message/send": "SendMessage",
    "message/stream": "SendStreamingMessage",
    "tasks/get": "GetTask",
    "tasks/cancel": "CancelTask",
    "tasks/resubscribe": "SubscribeToTask",
    "tasks/pushNotificationConfig/set": "CreateTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/get": "GetTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/list": "ListTaskPushNotificationConfigs",
    "tasks/pushNotificationConfig/delete": "DeleteTaskPushNotificationConfig",
    "agent/getAuthenticatedExtendedCard": "GetExtendedAgentCard",
}
_ROLES_IN = {"user": "ROLE_USER", "agent": "ROLE_AGENT"}
_ROLES_OUT = {"ROLE_USER": "user", "ROLE_AGENT": "agent"}


def _part_in(part: Any) -> Any:
    if isinstance(part, dict) and part.get("kind", "text") == "text" and "text" in part:
        return {"text": part["text"], **({"metadata": part["metadata"]} if "metadata" in part else {})}
    return {"data": part}  # a file or data part: refused as a content type the agent does not take


def _message_in(msg: Any) -> Any:
    if not isinstance(msg, dict):
        return msg
    out = {k: v for k, v in msg.items() if k not in ("kind", "role", "parts")}
    if "role" in msg:
        out["role"] = _ROLES_IN.get(msg["role"], msg["role"])
    if isinstance(msg.get("parts"), list):
        out["parts"] = [_part_in(p) for p in msg["parts"]]
    elif "parts" in msg:
        out["parts"] = msg["parts"]
    return out


def _push_in(method: str, params: dict[str, Any]) -> dict[str, Any]:
    if method.endswith("/set"):
        cfg = params.get("pushNotificationConfig")
        return {"taskId": params.get("taskId"), **(cfg if isinstance(cfg, dict) else {})}
    return {"taskId": params.get("id"), "id": params.get("pushNotificationConfigId")}


def _push_out(method: str, value: Any) -> Any:
    def one(cfg: dict[str, Any]) -> dict[str, Any]:
        return {"taskId": cfg["taskId"], "pushNotificationConfig": {k: v for k, v in cfg.items() if k != "taskId"}}
    if method.endswith("/list"):
        return [one(c) for c in value["configs"]]
    return one(value) if value else None


def params_in(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """v0.3 params as the v1.0 method reads them."""
    if method.startswith("tasks/pushNotificationConfig/"):
        return _push_in(method, params)
    if method not in ("message/send", "message/stream"):
        return params
    out = dict(params)
    if "message" in params:
        out["message"] = _message_in(params["message"])
    cfg = params.get("configuration")
    if isinstance(cfg, dict):
        new = {k: v for k, v in cfg.items() if k not in ("blocking", "pushNotificationConfig")}
        if cfg.get("blocking") is False:
            new["returnImmediately"] = True
        if cfg.get("pushNotificationConfig") is not None:
            new["taskPushNotificationConfig"] = cfg["pushNotificationConfig"]
        out["configuration"] = new
    return out


def _state(state: str) -> str:
    return state.removeprefix("TASK_STATE_").lower().replace("_", "-")


def _message(msg: dict[str, Any]) -> dict[str, Any]:
    return {**msg, "kind": "message", "role": _ROLES_OUT.get(msg.get("role", ""), "agent"),
            "parts": [{"kind": "text", **p} for p in msg.get("parts", [])]}


def _status(status: dict[str, Any]) -> dict[str, Any]:
    out = {**status, "state": _state(status["state"])}
    if "message" in status:
        out["message"] = _message(status["message"])
    return out


def _artifact(artifact: dict[str, Any]) -> dict[str, Any]:
    return {**artifact, "parts": [{"kind": "text", **p} for p in artifact.get("parts", [])]}


def _task(task: dict[str, Any]) -> dict[str, Any]:
    out = {**task, "kind": "task", "status": _status(task["status"])}
    if "artifacts" in task:
        out["artifacts"] = [_artifact(a) for a in task["artifacts"]]
    if "history" in task:
        out["history"] = [_message(m) for m in task["history"]]
    return out


def result_out(method: str, value: Any) -> Any:
    """A v1.0 answer (Struct) as the v0.3 method answers: a Task or Message itself, not wrapped."""
    data = msgspec.to_builtins(value)
    if method.startswith("tasks/pushNotificationConfig/"):
        return _push_out(method, data)
    if not isinstance(data, dict):
        return data
    if "task" in data:  # SendMessageResponse / StreamResponse
        return _task(data["task"])
    if "message" in data and "id" not in data:
        return _message(data["message"])
    if "statusUpdate" in data:
        update = data["statusUpdate"]
        return {**update, "kind": "status-update", "status": _status(update["status"]),
                "final": update["status"]["state"] in TERMINAL}
    if "artifactUpdate" in data:
        update = data["artifactUpdate"]
        return {**update, "kind": "artifact-update", "artifact": _artifact(update["artifact"])}
    if "id" in data and "status" in data:  # a Task (tasks/get, tasks/cancel)
        return _task(data)
    return data
